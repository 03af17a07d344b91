"""Step proofs: a named equation against the ground truth it must equal, checked exactly.

A norm's derivation is a ``Derivation`` record: its forward graph, its table
of ``Step`` records (written the way its document writes the equations) and
the hooks that tie its result to the library. ``normlab.derivation.DERIVATIONS``
keys them by norm; ``batchnorm.py`` holds the one of docs/derivation.md.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .graph import POINTS_PER_SIZE, Graph, evaluate, is_identity, relative_gap, sample_points
from .result import CheckResult

#: Batch sizes every step is checked for.
BATCH_SIZES: tuple[int, ...] = (2, 3, 4, 5)


class Step(NamedTuple):
    """A named equation of the derivation and the ground truth it must equal.

    formula, truth: Graph -> tuple of SymPy expressions (one per i for an
        indexed quantity, else one).
    node_level: True if the equation is an identity in the node symbols (mu,
        sigma2 free); it is then also checked off the forward graph.
    """

    name: str
    equation: str  # LaTeX, as the document states it
    formula: Callable[[Graph], tuple]
    truth: Callable[[Graph], tuple]
    node_level: bool


class Derivation(NamedTuple):
    """One norm's machine-checked derivation.

    graph: m -> the symbolic forward graph for batch size m.
    steps: the equations, in the order of the document.
    exact: Graph -> (dx, dgamma, dbeta) as exact expressions: the ground
        truth the library's closed form is compared with.
    library: (x, dout, gamma, beta, eps, *constants) -> (dx, dgamma, dbeta)
        from the library's closed form, for one feature: x, dout, dx (m,)
        float64; gamma, beta, eps and the values of ``Graph.constants()``
        floats; dgamma, dbeta (1,).
    prefix: put before every check name, so that rows of different norms
        differ; empty for batch norm, the derivation of docs/derivation.md.
    """

    norm: str
    graph: Callable[[int], Graph]
    steps: tuple[Step, ...]
    exact: Callable[[Graph], tuple[tuple, tuple, tuple]]
    library: Callable[..., tuple]
    prefix: str = ""

    def step(self, name: str) -> Step:
        """The step called name, or KeyError listing the known ones."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"unknown {self.norm} step {name!r}; known steps: {', '.join(self.step_names())}")

    def step_names(self) -> tuple[str, ...]:
        """Names of all checked steps, in the order of the document."""
        return tuple(s.name for s in self.steps)


def verify(step: Step, G: Graph, *, points: int = POINTS_PER_SIZE) -> tuple[bool, float, str]:
    """Check one step on one graph. Returns (passed, error, where it failed)."""
    formula, truth = step.formula(G), step.truth(G)
    # Exact rational points first: cheap, and a failure gives a concrete counterexample.
    for where, values in sample_points(G, step.node_level, points):
        got, want = evaluate(formula, values), evaluate(truth, values)
        if got != want:
            return False, relative_gap(got, want), f"m={G.m}, {where}"
    if not is_identity(formula, truth, G, node_level=step.node_level):
        return False, float("nan"), f"m={G.m}, not a symbolic identity"
    return True, 0.0, ""


def check(derivation: Derivation, name: str, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> CheckResult:
    """Check a step exactly for every batch size; error is 0.0 when all are exact."""
    step = derivation.step(name)
    label = f"step {derivation.prefix}{name} (m={batch_sizes[0]}..{batch_sizes[-1]})"
    for m in batch_sizes:
        ok, err, where = verify(step, derivation.graph(m))
        if not ok:
            return CheckResult(label, False, err, f"differs from the symbolic derivative at {where}", "step")
    npts = POINTS_PER_SIZE + (1 if step.node_level else 0)
    return CheckResult(label, True, 0.0, f"symbolic identity; exact at {npts} rational points per m", "step")

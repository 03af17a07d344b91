"""The machine-checked derivation of the closed-form backward.

Every equation of docs/derivation.md is a named *step*, proved with SymPy
against symbolic differentiation of the loss (``steps``, ``batchnorm``);
every wrong line of the handwritten seed derivation is an *erratum* shown to
fail (``errata``); and the library's backward is compared with the exact
result and with the staged graph (``numeric``). ``normlab check`` and
tests/test_derivation.py run them all through ``run_checks``.

Derivations are keyed by norm in ``DERIVATIONS``: another norm's derivation
is one module that builds a ``Derivation`` record (its graph, its steps, its
exact gradients and the library call they must match) plus one line here.

SymPy is an optional dependency (``pip install normlab[derive]``): importing
this package does not import it; running a check without it raises an
ImportError that names the extra.
"""

from __future__ import annotations

from . import batchnorm, batchrenorm, errata, rmsnorm, steps
from .errata import ERRATA, ERRATA_BATCH_SIZE, Erratum
from .graph import POINTS_PER_SIZE, Graph, forward_graph, is_identity, rational_point, require_sympy
from .numeric import NUMERIC_TOLERANCE, check_closed_form_exact, numerical_check
from .result import CheckResult
from .steps import BATCH_SIZES, Derivation, Step

__all__ = [
    "BATCH_SIZES",
    "CheckResult",
    "DERIVATIONS",
    "Derivation",
    "ERRATA",
    "Erratum",
    "Graph",
    "NUMERIC_TOLERANCE",
    "STEPS",
    "Step",
    "check_closed_form_exact",
    "check_erratum",
    "check_step",
    "erratum",
    "forward_graph",
    "is_identity",
    "numerical_check",
    "rational_point",
    "require_sympy",
    "run_checks",
    "step",
    "step_names",
    "verify_erratum",
    "verify_step",
]

#: Every checked derivation, by norm.
DERIVATIONS: dict[str, Derivation] = {
    "batchnorm": batchnorm.DERIVATION,
    "rmsnorm": rmsnorm.DERIVATION,
    "batchrenorm": batchrenorm.DERIVATION,
}

#: Batch norm's steps: the equations of docs/derivation.md, in its order.
STEPS: tuple[Step, ...] = batchnorm.STEPS


def _derivation(norm: str) -> Derivation:
    try:
        return DERIVATIONS[norm]
    except KeyError:
        raise KeyError(f"no derivation for norm {norm!r}; known: {', '.join(DERIVATIONS)}") from None


def step(name: str, norm: str = "batchnorm") -> Step:
    """The step record called name in norm's derivation."""
    return _derivation(norm).step(name)


def step_names(norm: str = "batchnorm") -> tuple[str, ...]:
    """Names of norm's checked steps, in the order of its document."""
    return _derivation(norm).step_names()


def verify_step(name: str, m: int, *, norm: str = "batchnorm",
                points: int = POINTS_PER_SIZE) -> tuple[bool, float, str]:
    """Check one step at one batch size. Returns (passed, error, where it failed)."""
    d = _derivation(norm)
    return steps.verify(d.step(name), d.graph(m), points=points)


def check_step(name: str, batch_sizes: tuple[int, ...] = BATCH_SIZES, *, norm: str = "batchnorm") -> CheckResult:
    """Check a step exactly for every batch size; error is 0.0 when all are exact."""
    return steps.check(_derivation(norm), name, batch_sizes)


def erratum(erratum_id: str) -> Erratum:
    """The erratum record with this id (e.g. "E3")."""
    return errata.erratum(erratum_id)


def verify_erratum(erratum_id: str, m: int = ERRATA_BATCH_SIZE) -> tuple[bool, bool, str]:
    """(right version holds, wrong version fails, detail) at m's rational points."""
    return errata.verify(erratum(erratum_id), m)


def check_erratum(erratum_id: str) -> CheckResult:
    """Passed when the corrected line holds and the seed's line fails."""
    return errata.check(erratum(erratum_id))


def run_checks(*, numeric: bool = True) -> list[CheckResult]:
    """Every registered step for m = 2..5, every erratum, and the library against the results.

    numeric: include the float64 comparison of batchnorm_backward with the staged graph.
    Raises ImportError (with the pip command) when SymPy is missing.
    """
    require_sympy()  # fail early and clearly without the optional dependency
    results = [steps.check(d, s.name) for d in DERIVATIONS.values() for s in d.steps]
    results += [errata.check(e) for e in ERRATA]
    results += [check_closed_form_exact(d) for d in DERIVATIONS.values()]
    if numeric:
        results.append(numerical_check())
    return results

"""The machine-checked derivation of batch norm's closed-form backward.

Every equation of docs/derivation.md is a named *step* here, and every wrong
line of the handwritten seed derivation is an *erratum* record. Each step is
checked with SymPy against ground truth obtained by symbolic differentiation
of the loss ``l = sum_i g_i * y_i`` (``g`` is the upstream gradient ``dout``,
random and never all ones: with all ones batch norm's dx is identically zero
and a check of it proves nothing).

Exactness: the checks evaluate at random *rational* points, choosing
``eps = q**2 - sigma2`` for a rational ``q`` so that ``sqrt(sigma2 + eps) = q``
and every quantity stays rational. Equality is then exact (``==`` on
``sympy.Rational``), with no tolerance that could hide a wrong factor.

Partial derivatives that treat ``mu`` and ``sigma2`` as independent nodes of
the graph (the "local" derivatives and ``dvar``) are taken with separate
node symbols; the values of those symbols are substituted afterwards. Steps
that hold only on the forward graph (where ``mu`` really is the batch mean)
are evaluated only there; node-level identities are also evaluated at an
off-graph point, where e.g. ``sum_i (x_i - mu)`` is not zero.

SymPy is an optional dependency (``pip install normlab[derive]``); it is
imported inside the functions that need it, never at import time.

Public API: ``forward_graph``, ``rational_point``, ``STEPS``/``step_names``,
``ERRATA``/``erratum``, ``verify_step``/``check_step``,
``verify_erratum``/``check_erratum``, ``is_identity``,
``closed_form_backward``, ``check_numpy_formula``, ``numerical_check``,
``run_checks``, ``CheckResult``.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = [
    "CheckResult",
    "ERRATA",
    "Erratum",
    "Graph",
    "STEPS",
    "Step",
    "check_erratum",
    "check_numpy_formula",
    "check_step",
    "closed_form_backward",
    "erratum",
    "forward_graph",
    "is_identity",
    "numerical_check",
    "rational_point",
    "run_checks",
    "step_names",
    "verify_erratum",
    "verify_step",
]

#: Batch sizes every step is checked for.
BATCH_SIZES: tuple[int, ...] = (2, 3, 4, 5)
#: Random on-graph points per batch size (plus one off-graph point for node-level steps).
POINTS_PER_SIZE = 2
#: Batch size of the errata checks: small, but large enough that no term vanishes by accident.
ERRATA_BATCH_SIZE = 3
#: Relative tolerance of the float64 comparison against the implementation.
NUMERIC_TOLERANCE = 1e-9


class CheckResult(NamedTuple):
    """One line of ``normlab check``.

    error: 0.0 for exact symbolic equality; a relative error for numerical
    checks; 1.0 for an erratum whose wrong version was shown to fail.
    """

    name: str
    passed: bool
    error: float
    detail: str


def _sympy():
    """Import SymPy on first use, with an actionable message when it is missing."""
    try:
        import sympy
    except ImportError as exc:  # pragma: no cover - exercised only without sympy
        raise ImportError(
            "the derivation checks need SymPy, an optional dependency: "
            "pip install 'normlab[derive]' (or pip install sympy)"
        ) from exc
    return sympy


# ----------------------------------------------------------------------------- forward graph

@dataclass(frozen=True)
class Graph:
    """Symbols of the batch-norm forward graph for one feature and batch size m.

    x, g: inputs x_1..x_m and the upstream gradient g_i = dl/dy_i (dout).
    gamma, beta, eps: the affine parameters and the variance offset.
    mu, sigma2: *independent* symbols for the mean and variance nodes, so that
        partial derivatives can hold them fixed; their forward values are
        substituted afterwards.
    xhat_node: independent symbols for the normalized node, used only to take
        dl/dxhat_i with everything upstream held fixed.
    """

    m: int
    x: tuple[Any, ...]
    g: tuple[Any, ...]
    gamma: Any
    beta: Any
    eps: Any
    mu: Any
    sigma2: Any
    xhat_node: tuple[Any, ...]

    # The staged forward graph. Each method is one node of the diagram in
    # docs/derivation.md: mean -> centred -> variance -> sqrt -> inverse -> product -> affine.

    def mean(self):
        """mu = (1/m) sum_i x_i, as an expression in x."""
        return sum(self.x) / self.m

    def centred(self, mu=None):
        """c_i = x_i - mu (mu defaults to the mean node symbol)."""
        mu = self.mu if mu is None else mu
        return tuple(xi - mu for xi in self.x)

    def variance(self, mu=None):
        """sigma2 = (1/m) sum_i (x_i - mu)^2, the biased batch variance."""
        return sum(c**2 for c in self.centred(mu)) / self.m

    def sqrt(self, sigma2=None):
        """s = sqrt(sigma2 + eps)."""
        sp = _sympy()
        sigma2 = self.sigma2 if sigma2 is None else sigma2
        return sp.sqrt(sigma2 + self.eps)

    def inverse(self, sigma2=None):
        """invstd = 1 / sqrt(sigma2 + eps)."""
        return 1 / self.sqrt(sigma2)

    def xhat(self, mu=None, sigma2=None):
        """Product node: xhat_i = (x_i - mu) * invstd."""
        inv = self.inverse(sigma2)
        return tuple(c * inv for c in self.centred(mu))

    def affine(self, xhat):
        """y_i = gamma * xhat_i + beta."""
        return tuple(self.gamma * xh + self.beta for xh in xhat)

    def loss(self, xhat):
        """l = sum_i g_i y_i: its gradient w.r.t. y is exactly g (dout)."""
        return sum(gi * yi for gi, yi in zip(self.g, self.affine(xhat)))

    def full_loss(self):
        """l as a function of x, g, gamma, beta, eps only (mean and variance substituted)."""
        mu = self.mean()
        return self.loss(self.xhat(mu, self.variance(mu)))


@functools.lru_cache(maxsize=None)
def forward_graph(m: int) -> Graph:
    """The symbolic forward graph for batch size m >= 2."""
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"batch size m must be an int >= 2, got {m!r}")
    sp = _sympy()
    return Graph(
        m=m,
        x=tuple(sp.symbols(f"x_1:{m + 1}", real=True)),
        g=tuple(sp.symbols(f"g_1:{m + 1}", real=True)),
        gamma=sp.Symbol("gamma", real=True),
        beta=sp.Symbol("beta", real=True),
        eps=sp.Symbol("epsilon", positive=True),
        mu=sp.Symbol("mu", real=True),
        sigma2=sp.Symbol("sigma2", nonnegative=True),
        xhat_node=tuple(sp.symbols(f"xhat_1:{m + 1}", real=True)),
    )


# ----------------------------------------------------------------------------- ground truth

def _truth_forward_var(G: Graph):
    """Variance by a different route, E[x^2] - E[x]^2, so the check is not a tautology."""
    mean = G.mean()
    return (sum(xi**2 for xi in G.x) / G.m - mean**2,)


def _truth_dxhat(G: Graph):
    """dl/dxhat_i with xhat as free nodes."""
    sp = _sympy()
    l = G.loss(G.xhat_node)
    return tuple(sp.diff(l, xh) for xh in G.xhat_node)


def _truth_dvar(G: Graph):
    """dl/dvar holding x and mu fixed: sigma2 feeds only xhat."""
    sp = _sympy()
    return (sp.diff(G.loss(G.xhat()), G.sigma2),)


def _truth_dmu(G: Graph):
    """dl/dmu through both of its paths: directly into xhat and via sigma2(mu)."""
    sp = _sympy()
    l = G.loss(G.xhat(G.mu, G.variance(G.mu)))
    return (sp.diff(l, G.mu),)


@functools.lru_cache(maxsize=None)
def _truth_dx_cached(m: int):
    sp = _sympy()
    G = forward_graph(m)
    l = G.full_loss()
    return tuple(sp.diff(l, xi) for xi in G.x)


def _truth_dx(G: Graph):
    """dl/dx_i of the full loss: the quantity the whole derivation is after."""
    return _truth_dx_cached(G.m)


def _truth_dgamma(G: Graph):
    """dl/dgamma of the full loss."""
    sp = _sympy()
    return (sp.diff(G.full_loss(), G.gamma),)


def _truth_dbeta(G: Graph):
    """dl/dbeta of the full loss."""
    sp = _sympy()
    return (sp.diff(G.full_loss(), G.beta),)


def _truth_local_dxhat_dmu(G: Graph):
    """Partial of xhat_i w.r.t. the mu node, x_i and sigma2 held fixed."""
    sp = _sympy()
    return tuple(sp.diff(xh, G.mu) for xh in G.xhat())


def _truth_local_dxhat_dvar(G: Graph):
    """Partial of xhat_i w.r.t. the sigma2 node, x_i and mu held fixed."""
    sp = _sympy()
    return tuple(sp.diff(xh, G.sigma2) for xh in G.xhat())


def _truth_local_dvar_dmu(G: Graph):
    """Partial of sigma2(x, mu) w.r.t. the mu node."""
    sp = _sympy()
    return (sp.diff(G.variance(G.mu), G.mu),)


def _truth_local_dvar_dx(G: Graph):
    """Partial of sigma2(x, mu) w.r.t. x_i with the mu node held fixed."""
    sp = _sympy()
    return tuple(sp.diff(G.variance(G.mu), xi) for xi in G.x)


def _truth_local_dmu_dx(G: Graph):
    """Partial of the mean w.r.t. x_i."""
    sp = _sympy()
    return tuple(sp.diff(G.mean(), xi) for xi in G.x)


def _truth_local_dxhat_dx(G: Graph):
    """Partial of xhat_i w.r.t. its own x_i, mu and sigma2 held fixed."""
    sp = _sympy()
    return tuple(sp.diff(xh, xi) for xh, xi in zip(G.xhat(), G.x))


def _truth_inv_sum(G: Graph):
    """sum_i dl/dx_i: shifting every x_i by the same amount leaves l unchanged."""
    return (sum(_truth_dx(G)),)


def _truth_inv_xhat(G: Graph):
    """sum_i dl/dx_i * xhat_i: the scaling invariance, broken only by eps."""
    return (sum(d * xh for d, xh in zip(_truth_dx(G), G.xhat())),)


# ----------------------------------------------------------------------------- the derivation's steps

# Each step formula takes the Graph and returns a tuple of SymPy expressions in
# the node symbols (x, g, gamma, beta, eps, mu, sigma2); indexed quantities
# return one expression per i. They are written the way the document writes
# them, building later steps from earlier ones.

def _half():
    return _sympy().Rational(1, 2)


def step_dxhat(G: Graph):
    r"""$\partial l/\partial\hat x_i = \text{dout}_i\,\gamma$."""
    return tuple(gi * G.gamma for gi in G.g)


def step_dvar(G: Graph):
    r"""$\partial l/\partial\sigma^2 = -\tfrac12\sum_i \partial l/\partial\hat x_i\,(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}$."""
    sp = _sympy()
    dxhat = step_dxhat(G)
    return (-_half() * sum(d * c for d, c in zip(dxhat, G.centred()))
            * (G.sigma2 + G.eps) ** sp.Rational(-3, 2),)


def step_dmu(G: Graph):
    r"""$\partial l/\partial\mu$ with both paths: direct, and through $\sigma^2$."""
    (dvar,) = step_dvar(G)
    direct = sum(d * (-G.inverse()) for d in step_dxhat(G))
    via_var = dvar * (-2 * sum(G.centred()) / G.m)
    return (direct + via_var,)


def step_dmu_simplified(G: Graph):
    r"""On the forward graph $\sum_i(x_i-\mu)=0$, so only the direct path is left."""
    return (sum(d * (-G.inverse()) for d in step_dxhat(G)),)


def step_dx(G: Graph):
    r"""$\partial l/\partial x_i$ along all three paths: via $\hat x_i$, via $\sigma^2$, via $\mu$."""
    (dvar,) = step_dvar(G)
    (dmu,) = step_dmu(G)
    return tuple(d * G.inverse() + dvar * 2 * c / G.m + dmu / G.m
                 for d, c in zip(step_dxhat(G), G.centred()))


def step_dx_closed(G: Graph):
    r"""The boxed closed form $\frac{(\sigma^2+\epsilon)^{-1/2}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j]$."""
    dxhat, xhat, m = step_dxhat(G), G.xhat(), G.m
    sum_d = sum(dxhat)
    sum_dx = sum(d * xh for d, xh in zip(dxhat, xhat))
    return tuple(G.inverse() / m * (m * d - sum_d - xh * sum_dx) for d, xh in zip(dxhat, xhat))


def step_dgamma(G: Graph):
    r"""$\partial l/\partial\gamma = \sum_i \text{dout}_i\hat x_i$."""
    return (sum(gi * xh for gi, xh in zip(G.g, G.xhat())),)


def step_dbeta(G: Graph):
    r"""$\partial l/\partial\beta = \sum_i \text{dout}_i$."""
    return (sum(G.g),)


def step_local_dxhat_dmu(G: Graph):
    r"""$\partial\hat x_i/\partial\mu = -(\sigma^2+\epsilon)^{-1/2}$."""
    return tuple(-G.inverse() for _ in G.x)


def step_local_dxhat_dvar(G: Graph):
    r"""$\partial\hat x_i/\partial\sigma^2 = -\tfrac12(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}$."""
    sp = _sympy()
    return tuple(-_half() * c * (G.sigma2 + G.eps) ** sp.Rational(-3, 2) for c in G.centred())


def step_local_dvar_dmu(G: Graph):
    r"""$\partial\sigma^2/\partial\mu = \frac1m\sum_i -2(x_i-\mu)$."""
    return (sum(-2 * c for c in G.centred()) / G.m,)


def step_local_dvar_dx(G: Graph):
    r"""$\partial\sigma^2/\partial x_i = \frac2m(x_i-\mu)$, mu held fixed."""
    return tuple(2 * c / G.m for c in G.centred())


def step_local_dmu_dx(G: Graph):
    r"""$\partial\mu/\partial x_i = 1/m$."""
    return tuple(1 / _sympy().Integer(G.m) for _ in G.x)


def step_local_dxhat_dx(G: Graph):
    r"""$\partial\hat x_i/\partial x_i = (\sigma^2+\epsilon)^{-1/2}$, mu and sigma2 held fixed."""
    return tuple(G.inverse() for _ in G.x)


def step_forward_var(G: Graph):
    r"""$\sigma^2 = \frac1m\sum_i(x_i-\mu)^2$, written with x (not xhat)."""
    return (G.variance(),)


def step_inv_sum(G: Graph):
    r"""$\sum_i \partial l/\partial x_i = 0$."""
    return (_sympy().Integer(0),)


def step_inv_xhat(G: Graph):
    r"""$\sum_i \partial l/\partial x_i\,\hat x_i = \frac{\epsilon}{\sigma^2+\epsilon}\,\text{invstd}\sum_i d\hat x_i\hat x_i$."""
    dxhat, xhat = step_dxhat(G), G.xhat()
    return (G.eps / (G.sigma2 + G.eps) * G.inverse() * sum(d * xh for d, xh in zip(dxhat, xhat)),)


class Step(NamedTuple):
    """A named equation of the derivation and the ground truth it must equal.

    node_level: True if the equation is an identity in the node symbols (mu,
        sigma2 free); it is then also checked off the forward graph.
    """

    name: str
    equation: str  # LaTeX, as docs/derivation.md states it
    formula: Callable[[Graph], tuple]
    truth: Callable[[Graph], tuple]
    node_level: bool


STEPS: tuple[Step, ...] = (
    Step("forward_var", r"\sigma^2 = \frac1m\sum_i (x_i-\mu)^2",
         step_forward_var, _truth_forward_var, False),
    Step("local_dxhat_dmu", r"\partial\hat x_i/\partial\mu = -(\sigma^2+\epsilon)^{-1/2}",
         step_local_dxhat_dmu, _truth_local_dxhat_dmu, True),
    Step("local_dxhat_dvar", r"\partial\hat x_i/\partial\sigma^2 = -\tfrac12(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}",
         step_local_dxhat_dvar, _truth_local_dxhat_dvar, True),
    Step("local_dvar_dmu", r"\partial\sigma^2/\partial\mu = -\frac2m\sum_i(x_i-\mu)",
         step_local_dvar_dmu, _truth_local_dvar_dmu, True),
    Step("local_dxhat_dx", r"\partial\hat x_i/\partial x_i = (\sigma^2+\epsilon)^{-1/2}",
         step_local_dxhat_dx, _truth_local_dxhat_dx, True),
    Step("local_dmu_dx", r"\partial\mu/\partial x_i = 1/m",
         step_local_dmu_dx, _truth_local_dmu_dx, True),
    Step("local_dvar_dx", r"\partial\sigma^2/\partial x_i = \frac2m(x_i-\mu)",
         step_local_dvar_dx, _truth_local_dvar_dx, True),
    Step("dxhat", r"\partial l/\partial\hat x_i = \text{dout}_i\,\gamma",
         step_dxhat, _truth_dxhat, True),
    Step("dvar", r"\partial l/\partial\sigma^2 = -\tfrac12\sum_i d\hat x_i(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}",
         step_dvar, _truth_dvar, True),
    Step("dmu", r"\partial l/\partial\mu = \sum_i d\hat x_i\frac{-1}{\sqrt{\sigma^2+\epsilon}} + d\sigma^2\cdot\frac{-2}{m}\sum_i(x_i-\mu)",
         step_dmu, _truth_dmu, False),
    Step("dmu_simplified", r"\partial l/\partial\mu = -\sum_i d\hat x_i/\sqrt{\sigma^2+\epsilon}",
         step_dmu_simplified, _truth_dmu, False),
    Step("dx", r"\partial l/\partial x_i = d\hat x_i\,\text{invstd} + d\sigma^2\frac{2(x_i-\mu)}{m} + \frac{d\mu}{m}",
         step_dx, _truth_dx, False),
    Step("dx_closed", r"\partial l/\partial x_i = \frac{\text{invstd}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j]",
         step_dx_closed, _truth_dx, False),
    Step("dgamma", r"\partial l/\partial\gamma = \sum_i \text{dout}_i\hat x_i",
         step_dgamma, _truth_dgamma, False),
    Step("dbeta", r"\partial l/\partial\beta = \sum_i \text{dout}_i",
         step_dbeta, _truth_dbeta, False),
    Step("inv_sum", r"\sum_i \partial l/\partial x_i = 0",
         step_inv_sum, _truth_inv_sum, False),
    Step("inv_xhat", r"\sum_i \partial l/\partial x_i\,\hat x_i = \frac{\epsilon}{\sigma^2+\epsilon}\text{invstd}\sum_i d\hat x_i\hat x_i",
         step_inv_xhat, _truth_inv_xhat, False),
)

_STEP_BY_NAME = {s.name: s for s in STEPS}


def step_names() -> tuple[str, ...]:
    """Names of all checked steps, in the order of docs/derivation.md."""
    return tuple(s.name for s in STEPS)


# ----------------------------------------------------------------------------- exact evaluation

def _random_rational(rng: random.Random, lo: int = -30, hi: int = 30, max_den: int = 9, *, nonzero=True):
    """A rational with a small numerator and denominator; nonzero unless asked otherwise."""
    sp = _sympy()
    while True:
        r = sp.Rational(rng.randint(lo, hi), rng.randint(1, max_den))
        if r != 0 or not nonzero:
            return r


def rational_point(G: Graph, seed: int, *, on_graph: bool = True) -> dict:
    """Exact values for every symbol of G, with sqrt(sigma2 + eps) rational.

    on_graph: mu and sigma2 are the batch mean and biased variance of x. Off
    the graph they are arbitrary (sigma2 > 0), which tests node-level
    identities where sum_i (x_i - mu) != 0.
    eps = q^2 - sigma2 for a rational q > sqrt(sigma2), q != 1, so eps > 0 and
    (sigma2 + eps)^(k/2) = q^k exactly.
    """
    sp = _sympy()
    # Seed from (seed, m, on_graph) so every point is reproducible on its own.
    rng = random.Random(f"{seed}-{G.m}-{on_graph}")
    while True:
        xs = [_random_rational(rng, nonzero=False) for _ in range(G.m)]
        # Constant x has sigma2 = 0, a degenerate batch; a zero mean would hide
        # every slip of xhat for x in a mu term (sum_i xhat_i = 0 = sum_i x_i then).
        if len(set(xs)) > 1 and sum(xs) != 0:
            break
    while True:
        # A random upstream gradient, never all equal (all ones would zero dx).
        gs = [_random_rational(rng) for _ in range(G.m)]
        if len(set(gs)) > 1:
            break
    gamma = _random_rational(rng)
    while abs(gamma) == 1:  # gamma = +-1 would hide a missing or dropped gamma factor
        gamma = _random_rational(rng)
    beta = _random_rational(rng)
    if on_graph:
        mu = sum(xs) / G.m
        sigma2 = sum((xi - mu) ** 2 for xi in xs) / G.m
    else:
        mu = _random_rational(rng)
        sigma2 = abs(_random_rational(rng))
    q = sp.Integer(math.isqrt(int(sigma2.p // sigma2.q)) + 1) + sp.Rational(rng.randint(1, 6), 7)
    eps = q**2 - sigma2
    values = {G.gamma: gamma, G.beta: beta, G.eps: eps, G.mu: mu, G.sigma2: sigma2}
    values.update(zip(G.x, xs))
    values.update(zip(G.g, gs))
    values.update(zip(G.xhat_node, [(xi - mu) / q for xi in xs]))
    return values


def _evaluate(exprs, values: dict) -> tuple:
    """Substitute exact values; every result must come out a Rational."""
    out = tuple(e.xreplace(values) if hasattr(e, "xreplace") else _sympy().sympify(e) for e in exprs)
    for v in out:
        if not v.is_Rational:  # a leftover symbol or an irrational root: the point is not exact
            raise RuntimeError(f"expected an exact rational, got {v!r}")
    return out


def _relative_gap(got: tuple, want: tuple) -> float:
    """Normwise relative difference of two rational tuples, as a float (for reporting only)."""
    if len(got) != len(want):
        want = want * len(got) if len(want) == 1 else want
    diff = max(abs(a - b) for a, b in zip(got, want))
    scale = max(max(abs(a) for a in got), max(abs(b) for b in want))
    return 0.0 if scale == 0 else float(diff / scale)


def _points(G: Graph, node_level: bool, n_on: int) -> list[tuple[str, dict]]:
    points = [(f"on-graph seed {s}", rational_point(G, s)) for s in range(n_on)]
    if node_level:
        points.append(("off-graph", rational_point(G, 0, on_graph=False)))
    return points


@functools.lru_cache(maxsize=None)
def _root_symbol():
    """q = sqrt(sigma2 + eps), positive, so that sqrt(q**2) simplifies to q."""
    return _sympy().Symbol("q", positive=True)


def is_identity(claim: tuple, truth: tuple, G: Graph, *, node_level: bool) -> bool:
    """Symbolic proof that claim == truth for all values, not just at sample points.

    Substitutes eps = q^2 - sigma2 (q > 0 a new symbol), which turns every
    expression into a rational function of x, g, gamma, beta, q (and the
    node symbols, if node_level); ``cancel`` then gives a canonical form that
    is 0 exactly when the two sides agree identically. Off node level, mu and
    sigma2 are first replaced by the batch mean and variance of x.
    """
    sp = _sympy()
    if len(claim) != len(truth):
        if len(truth) != 1:
            return False
        truth = truth * len(claim)
    if node_level:
        on_graph, sigma2 = {}, G.sigma2
    else:
        mean = G.mean()
        sigma2 = G.variance(mean)
        on_graph = {G.mu: mean, G.sigma2: sigma2}
    to_q = {G.eps: _root_symbol() ** 2 - sigma2}
    for a, b in zip(claim, truth):
        diff = (sp.sympify(a) - sp.sympify(b)).subs(on_graph).subs(to_q)
        if sp.cancel(sp.together(diff)) != 0:
            return False
    return True


def verify_step(name: str, m: int, *, points: int = POINTS_PER_SIZE) -> tuple[bool, float, str]:
    """Check one step at one batch size. Returns (passed, error, where it failed)."""
    step = _STEP_BY_NAME[name]
    G = forward_graph(m)
    formula, truth = step.formula(G), step.truth(G)
    # Exact rational points first: cheap, and a failure gives a concrete counterexample.
    for where, values in _points(G, step.node_level, points):
        got, want = _evaluate(formula, values), _evaluate(truth, values)
        if got != want:
            return False, _relative_gap(got, want), f"m={m}, {where}"
    if not is_identity(formula, truth, G, node_level=step.node_level):
        return False, float("nan"), f"m={m}, not a symbolic identity"
    return True, 0.0, ""


def check_step(name: str, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> CheckResult:
    """Check a step exactly for every batch size; error is 0.0 when all are exact."""
    if name not in _STEP_BY_NAME:
        raise KeyError(f"unknown step {name!r}; known steps: {', '.join(step_names())}")
    label = f"step {name} (m={batch_sizes[0]}..{batch_sizes[-1]})"
    for m in batch_sizes:
        ok, err, where = verify_step(name, m)
        if not ok:
            return CheckResult(label, False, err, f"differs from the symbolic derivative at {where}")
    npts = POINTS_PER_SIZE + (1 if _STEP_BY_NAME[name].node_level else 0)
    return CheckResult(label, True, 0.0, f"symbolic identity; exact at {npts} rational points per m")


# ----------------------------------------------------------------------------- errata

class Erratum(NamedTuple):
    """One wrong line of the seed derivation.

    seed: the line as written (LaTeX); correct: what it should say.
    kind: "formula" (a mathematical error) or "notation" (a transcription or
        typographical slip; its check tests the natural literal reading).
    target: the step whose ground truth decides between the two versions.
    wrong/right: Graph -> tuple of expressions, the seed's and the corrected claim.
    """

    id: str
    title: str
    seed: str
    correct: str
    kind: str
    target: str
    wrong: Callable[[Graph], tuple]
    right: Callable[[Graph], tuple]


def _xhat_minus_mu(G: Graph):
    """The seed's recurring slip: (xhat_i - mu) where (x_i - mu) belongs."""
    return tuple(xh - G.mu for xh in G.xhat())


def _wrong_var_xhat(G):
    return (sum(t**2 for t in _xhat_minus_mu(G)) / G.m,)


def _wrong_dvar_dmu_xhat(G):
    return (sum(-2 * t for t in _xhat_minus_mu(G)) / G.m,)


def _wrong_dvar_no_sum(G):
    # One term per i, no sum: as an equation "for each i" it fails if any i differs.
    return tuple(d * local for d, local in zip(step_dxhat(G), step_local_dxhat_dvar(G)))


def _wrong_local_dxhat_dvar(G):
    sp = _sympy()
    # Read literally: the repeated left-hand side, then (xhat_i - mu)(sigma2+eps)^(-3/2);
    # the -1/2 factor is missing and xhat stands where x belongs.
    return tuple(t * (G.sigma2 + G.eps) ** sp.Rational(-3, 2) for t in _xhat_minus_mu(G))


def _wrong_dvar_eq1(G):
    sp = _sympy()
    return (-_half() * sum(_xhat_minus_mu(G)) * (G.sigma2 + G.eps) ** sp.Rational(-3, 2),)


def _wrong_dmu_no_sum(G):
    (dvar,) = step_dvar(G)
    (dvar_dmu,) = step_local_dvar_dmu(G)
    return tuple(d * (-G.inverse()) + dvar * dvar_dmu for d in step_dxhat(G))


def _wrong_dmu_xhat(G):
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + dvar * _wrong_dvar_dmu_xhat(G)[0],)


def _wrong_dmu_sign(G):
    (dvar,) = step_dvar(G)
    positive = sum(d * G.inverse() for d in step_dxhat(G))  # the minus sign was dropped
    return (positive + (-2 * dvar * (G.mu - G.mu * G.m / G.m)),)


def _wrong_glyph_product(G):
    # Read literally (the glyph as a factor 1), the line multiplies the two facts.
    return tuple(G.inverse() * step_local_dmu_dx(G)[0] for _ in G.x)


def _wrong_dx_without_dvar(G):
    (dmu,) = step_dmu(G)
    return tuple(d * G.inverse() + dmu / G.m for d in step_dxhat(G))


def _wrong_dx_without_dmu(G):
    (dvar,) = step_dvar(G)
    return tuple(d * G.inverse() + dvar * 2 * c / G.m for d, c in zip(step_dxhat(G), G.centred()))


def _dx_expanded(G, exponent):
    """The expanded dx line, with the variance path's exponent as a parameter."""
    dxhat, centred = step_dxhat(G), G.centred()
    sum_d = sum(dxhat)
    weighted = sum(d * c for d, c in zip(dxhat, centred))
    root = G.sigma2 + G.eps
    return tuple(d * G.inverse() + sum_d * (-G.inverse()) / G.m
                 - _half() * weighted * root**exponent * 2 * c / G.m
                 for d, c in zip(dxhat, centred))


def _wrong_dx_exponent(G):
    return _dx_expanded(G, _sympy().Rational(-1, 2))


def _right_dx_exponent(G):
    return _dx_expanded(G, _sympy().Rational(-3, 2))


def _dx_regrouped(G, sign):
    """The regrouped dx line; sign is that of the xhat_i sum_j dxhat_j xhat_j term."""
    dxhat, xhat, m = step_dxhat(G), G.xhat(), G.m
    sum_d = sum(dxhat)
    sum_dx = sum(d * xh for d, xh in zip(dxhat, xhat))
    return tuple(d * G.inverse() - G.inverse() * sum_d / m + sign * G.inverse() / m * xh * sum_dx
                 for d, xh in zip(dxhat, xhat))


def _right_dvar_with_sum(G):
    return (sum(_wrong_dvar_no_sum(G)),)


def _dmu_bracket(G, xs):
    """The seed's third dmu line, with xs standing in the bracket's first mean."""
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + (-2 * dvar * (sum(xs) / G.m - G.m * G.mu / G.m)),)


def _right_dmu_sign(G):
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + (-2 * dvar * (G.mu - G.mu * G.m / G.m)),)


def _wrong_dmu_bracket_xhat(G):
    return _dmu_bracket(G, G.xhat())


def _right_dmu_bracket(G):
    return _dmu_bracket(G, G.x)


def _wrong_dx_adds_xhat_term(G):
    return _dx_regrouped(G, +1)


def _right_dx_subtracts_xhat_term(G):
    return _dx_regrouped(G, -1)


def _wrong_required_sign(G):
    """'required: -dl/dx_i' taken at its word: the negated gradient."""
    return tuple(-e for e in step_dx_closed(G))


def _wrong_dbeta_no_sum(G):
    """dl/dbeta = dl/dy_i * dy_i/dbeta for each i, i.e. a single dout_i."""
    return tuple(G.g)


def _wrong_dxhat_delta(G):
    """dl/dy_i * delta with the undefined delta read as 1 (a gamma-free reading)."""
    return tuple(G.g)


def _wrong_dgamma_no_sum(G):
    """dl/dgamma = dl/dy_i * dy_i/dgamma for each i, i.e. a single dout_i * xhat_i."""
    return tuple(gi * xh for gi, xh in zip(G.g, G.xhat()))


ERRATA: tuple[Erratum, ...] = (
    Erratum(
        "E1", "stray minus in 'required'",
        r"\text{required: } -\frac{\partial l}{\partial x_i}, \frac{\partial l}{\partial \gamma}, \frac{\partial l}{\partial \beta}",
        r"\text{required: } \frac{\partial l}{\partial x_i}, \frac{\partial l}{\partial \gamma}, \frac{\partial l}{\partial \beta}",
        "notation", "dx_closed", _wrong_required_sign, step_dx_closed),
    Erratum(
        "E2", "variance written with xhat",
        r"\sigma^2 = \text{variance} = \frac{1}{m} \sum_{i=1}^m (\hat{x}_i - \mu_B)^2",
        r"\sigma_B^2 = \frac{1}{m} \sum_{i=1}^m (x_i - \mu_B)^2",
        "formula", "forward_var", _wrong_var_xhat, step_forward_var),
    Erratum(
        "E3", "dvar/dmu written with xhat",
        r"\frac{\partial \sigma_B^2}{\partial \mu_B} = \frac{1}{m} \sum_{i=1}^m -2(\hat{x}_i - \mu_B)",
        r"\frac{\partial \sigma_B^2}{\partial \mu_B} = \frac{1}{m} \sum_{i=1}^m -2(x_i - \mu_B)",
        "formula", "local_dvar_dmu", _wrong_dvar_dmu_xhat, step_local_dvar_dmu),
    Erratum(
        "E4", "dvar chain rule missing sum",
        r"\frac{\partial l}{\partial \sigma_B^2} = \frac{\partial l}{\partial \hat{x}_i} \times \frac{\partial \hat{x}_i}{\partial \sigma_B^2}",
        r"\frac{\partial l}{\partial \sigma_B^2} = \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \sigma_B^2}",
        "formula", "dvar", _wrong_dvar_no_sum, _right_dvar_with_sum),
    Erratum(
        "E5", "dxhat/dvar garbled",
        r"\frac{\partial \hat{x}_i}{\partial \sigma_B^2} \Rightarrow \frac{\partial \hat{x}_i}{\partial \sigma_B^2} (\hat{x}_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        r"\frac{\partial \hat{x}_i}{\partial \sigma_B^2} = -\frac{1}{2} (x_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        "formula", "local_dxhat_dvar", _wrong_local_dxhat_dvar, step_local_dxhat_dvar),
    Erratum(
        "E6", "dvar (1) lacks dl/dxhat_i, uses xhat",
        r"-\frac{1}{2} \sum_{i=1}^m (\hat{x}_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        r"\frac{\partial l}{\partial \sigma_B^2} = -\frac{1}{2} \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} (x_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        "formula", "dvar", _wrong_dvar_eq1, step_dvar),
    Erratum(
        "E7", "dmu chain rule missing sum",
        r"\frac{\partial l}{\partial \mu_B} = \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \mu_B} + \frac{\partial l}{\partial \sigma_B^2} \cdot \frac{\partial \sigma_B^2}{\partial \mu_B}",
        r"\frac{\partial l}{\partial \mu_B} = \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \mu_B} + \frac{\partial l}{\partial \sigma_B^2} \cdot \frac{\partial \sigma_B^2}{\partial \mu_B}",
        "formula", "dmu", _wrong_dmu_no_sum, step_dmu),
    Erratum(
        "E8", "dmu expansion uses xhat",
        r"\left(\sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(\frac{\partial l}{\partial \sigma_B^2} \cdot \frac{1}{m} \sum_{i=1}^m -2(\hat{x}_i - \mu_B) \right)",
        r"\left(\sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(\frac{\partial l}{\partial \sigma_B^2} \cdot \frac{1}{m} \sum_{i=1}^m -2(x_i - \mu_B) \right)",
        "formula", "dmu", _wrong_dmu_xhat, step_dmu),
    Erratum(
        "E9", "dmu bracket uses xhat",
        r"\left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \left[\frac{1}{m} \sum_{i=1}^m \hat{x}_i - \frac{1}{m} \sum_{i=1}^m \mu_B \right] \right)",
        r"\left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \left[\frac{1}{m} \sum_{i=1}^m x_i - \frac{1}{m} \sum_{i=1}^m \mu_B \right] \right)",
        "formula", "dmu", _wrong_dmu_bracket_xhat, _right_dmu_bracket),
    Erratum(
        "E10", "dmu drops the minus sign",
        r"\left(\sum_{i=1}^m \frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \cdot \left(\mu_B - \frac{\mu_B \cdot m}{m} \right) \right)",
        r"\left(\sum_{i=1}^m \frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \cdot \left(\mu_B - \frac{\mu_B \cdot m}{m} \right) \right)",
        "formula", "dmu", _wrong_dmu_sign, _right_dmu_sign),
    Erratum(
        "E11", "stray glyph joins two facts",
        r"\frac{\partial \hat{x}_i}{\partial x_i} = (\sqrt{\sigma_B^2 + \epsilon})^{-1} \cdot \Delta \frac{\partial \mu_B}{\partial x_i} = \frac{1}{m}",
        r"\frac{\partial \hat{x}_i}{\partial x_i} = (\sqrt{\sigma_B^2 + \epsilon})^{-1}, \qquad \frac{\partial \mu_B}{\partial x_i} = \frac{1}{m}",
        "notation", "local_dxhat_dx", _wrong_glyph_product, step_local_dxhat_dx),
    Erratum(
        "E12", "dx with two terms: no dvar path",
        r"\frac{\partial \ell}{\partial x_i} = \left(\frac{\partial \ell}{\partial \hat{x}_i} \cdot (\sigma_B^2 + \epsilon)^{-1/2} \right) + \left(\frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m} \right)",
        r"\frac{\partial \ell}{\partial x_i} = \frac{\partial \ell}{\partial \hat{x}_i} (\sigma_B^2 + \epsilon)^{-1/2} + \frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) + \frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m}",
        "formula", "dx", _wrong_dx_without_dvar, step_dx),
    Erratum(
        "E13", "dx with two terms: no dmu path",
        r"\frac{\partial \ell}{\partial x_i} = \left(\frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{1}{(\sigma_B^2 + \epsilon)^{1/2}} \right) + \left(\frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        r"\frac{\partial \ell}{\partial x_i} = \frac{\partial \ell}{\partial \hat{x}_i} \frac{1}{(\sigma_B^2 + \epsilon)^{1/2}} + \frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) + \frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m}",
        "formula", "dx", _wrong_dx_without_dmu, step_dx),
    Erratum(
        "E14", "dx exponent -1/2 for -3/2",
        r"- \left(\frac{1}{2} \sum_{j=1}^m \frac{\partial \ell}{\partial \hat{x}_j} (x_j - \mu_B) (\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        r"- \left(\frac{1}{2} \sum_{j=1}^m \frac{\partial \ell}{\partial \hat{x}_j} (x_j - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        "formula", "dx", _wrong_dx_exponent, _right_dx_exponent),
    Erratum(
        "E15", "dx adds the xhat term",
        r"+ \left((\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{1}{m} \cdot \hat{x}_i \sum_{j=1}^m \frac{\partial l}{\partial \hat{x}_j} \cdot \hat{x}_j \right)",
        r"- \left((\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{1}{m} \cdot \hat{x}_i \sum_{j=1}^m \frac{\partial l}{\partial \hat{x}_j} \cdot \hat{x}_j \right)",
        "formula", "dx", _wrong_dx_adds_xhat_term, _right_dx_subtracts_xhat_term),
    Erratum(
        "E16", "dbeta chain rule missing sum",
        r"\frac{\partial l}{\partial \beta} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \beta}",
        r"\frac{\partial l}{\partial \beta} = \sum_{i=1}^m \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \beta}",
        "formula", "dbeta", _wrong_dbeta_no_sum, step_dbeta),
    Erratum(
        "E17", "delta where gamma belongs",
        r"\frac{\partial l}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \hat{x}_i} \Rightarrow \frac{\partial l}{\partial y_i} \cdot \delta",
        r"\frac{\partial l}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \gamma",
        "notation", "dxhat", _wrong_dxhat_delta, step_dxhat),
    Erratum(
        "E18", "dgamma chain rule missing sum",
        r"\frac{\partial l}{\partial \gamma} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \gamma}",
        r"\frac{\partial l}{\partial \gamma} = \sum_{i=1}^m \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \gamma}",
        "formula", "dgamma", _wrong_dgamma_no_sum, step_dgamma),
)

_ERRATUM_BY_ID = {e.id: e for e in ERRATA}


def erratum(erratum_id: str) -> Erratum:
    """The erratum record with this id (e.g. "E3")."""
    try:
        return _ERRATUM_BY_ID[erratum_id]
    except KeyError:
        raise KeyError(f"unknown erratum {erratum_id!r}; known: {', '.join(_ERRATUM_BY_ID)}") from None


def _matches(got: tuple, want: tuple) -> bool:
    """Equality of claims; a scalar truth is compared with every per-i term of a claim."""
    if len(got) != len(want):
        if len(want) != 1:
            return False
        want = want * len(got)
    return got == want


def verify_erratum(erratum_id: str, m: int = ERRATA_BATCH_SIZE) -> tuple[bool, bool, str]:
    """(right version holds, wrong version fails, detail) at m's rational points."""
    e = erratum(erratum_id)
    step = _STEP_BY_NAME[e.target]
    G = forward_graph(m)
    truth, right, wrong = step.truth(G), e.right(G), e.wrong(G)
    right_ok, wrong_fails, gaps = True, True, []
    for where, values in _points(G, step.node_level, POINTS_PER_SIZE):
        want = _evaluate(truth, values)
        right_ok &= _matches(_evaluate(right, values), want)
        got_wrong = _evaluate(wrong, values)
        # The wrong version must fail at *every* point, not just by luck at one.
        wrong_fails &= not _matches(got_wrong, want)
        gaps.append(_relative_gap(got_wrong, want))
    # The corrected line must hold for all values, not just at the sample points.
    right_ok = right_ok and is_identity(right, truth, G, node_level=step.node_level)
    detail = (f"right {'holds' if right_ok else 'FAILS'}, wrong "
              f"{'fails' if wrong_fails else 'HOLDS somewhere'} (m={m}, {len(gaps)} points, "
              f"wrong off by >= {min(gaps):.3g} relative)")
    return right_ok, wrong_fails, detail


def check_erratum(erratum_id: str) -> CheckResult:
    """Passed when the corrected line holds and the seed's line fails; error 1.0 records the failure shown."""
    e = erratum(erratum_id)
    right_ok, wrong_fails, detail = verify_erratum(erratum_id)
    label = f"erratum {e.id}: {e.title}"
    if e.kind == "notation":
        detail += "; notational slip, literal reading checked"
    return CheckResult(label, right_ok and wrong_fails, 1.0 if wrong_fails else 0.0, detail)


# ----------------------------------------------------------------------------- numerics

def closed_form_backward(dout, x, gamma, eps: float = 1e-5, axis: int | tuple[int, ...] = 0):
    """The boxed result in NumPy: (dx, dgamma, dbeta) of y = gamma * xhat + beta.

    Statistics reduce over ``axis`` (batch norm: 0 on (N, D); spatial batch
    norm: (0, 2, 3) on (N, C, H, W)); gamma has the shape of the kept axes.
    A direct transcription of the formula, float64 throughout; not tuned.
    """
    x = np.asarray(x, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    axes = tuple(a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis))
    kept = [1 if a in axes else n for a, n in enumerate(x.shape)]
    g = np.asarray(gamma, dtype=np.float64).reshape(kept)
    m = math.prod(x.shape[a] for a in axes)
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    var = (centred**2).mean(axis=axes, keepdims=True)  # biased, as in the forward pass
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = centred * invstd
    dxhat = dout * g
    dx = invstd / m * (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
                       - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))
    dgamma = (dout * xhat).sum(axis=axes).reshape(np.shape(gamma))
    dbeta = dout.sum(axis=axes).reshape(np.shape(gamma))
    return dx, dgamma, dbeta


def _rel_error(a, b) -> float:
    """Normwise relative error max|a - b| / max(max|a|, max|b|); 0.0 for two zero arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    return 0.0 if scale == 0.0 else float(np.max(np.abs(a - b), initial=0.0)) / scale


def check_numpy_formula(batch_sizes: tuple[int, ...] = BATCH_SIZES) -> CheckResult:
    """closed_form_backward in float64 against the exact symbolic dx, dgamma, dbeta.

    Ties the NumPy transcription used below to the symbolically verified truth.
    """
    worst = 0.0
    for m in batch_sizes:
        G = forward_graph(m)
        values = rational_point(G, 0)
        x = np.array([[float(values[s])] for s in G.x])  # (m, 1): one feature
        dout = np.array([[float(values[s])] for s in G.g])
        gamma, eps = np.array([float(values[G.gamma])]), float(values[G.eps])
        dx, dgamma, dbeta = closed_form_backward(dout, x, gamma, eps)
        exact = [np.array([float(v) for v in _evaluate(f(G), values)])
                 for f in (_truth_dx, _truth_dgamma, _truth_dbeta)]
        for got, want in zip((dx.ravel(), dgamma, dbeta), exact):
            worst = max(worst, _rel_error(got, want))
    passed = worst < 1e-12
    return CheckResult(f"numpy closed form vs exact (m={batch_sizes[0]}..{batch_sizes[-1]})",
                       passed, worst, "float64 transcription of the boxed formula")


def numerical_check(seed: int = 0, m: int = 16, d: int = 5, eps: float = 1e-5) -> CheckResult:
    """The derivation's closed form against normlab.batchnorm_backward, float64.

    Raises ImportError if normlab.batchnorm_forward/backward are not available.
    Also compares the cached statistics (mean, biased var, invstd).
    """
    import normlab  # lazily: derivation.py is imported by the package itself

    forward = getattr(normlab, "batchnorm_forward", None)
    backward = getattr(normlab, "batchnorm_backward", None)
    if forward is None or backward is None:
        raise ImportError("normlab.batchnorm_forward / batchnorm_backward are not available")
    rng = np.random.default_rng(seed)
    # An offset mean and non-unit scale, so that dropping mu or sigma2 would show.
    x = rng.normal(1.5, 3.0, size=(m, d))
    gamma, beta = rng.normal(size=d), rng.normal(size=d)
    dout = rng.normal(size=(m, d))  # random upstream gradient, never all ones
    _, cache = forward(x, gamma, beta, eps=eps)
    dx, dgamma, dbeta = backward(dout, cache)
    want_dx, want_dgamma, want_dbeta = closed_form_backward(dout, x, gamma, eps)
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    errors = {
        "dx": _rel_error(dx, want_dx),
        "dgamma": _rel_error(dgamma, want_dgamma),
        "dbeta": _rel_error(dbeta, want_dbeta),
        "mean": _rel_error(np.ravel(cache.mean), mean),
        "var": _rel_error(np.ravel(cache.var), var),
        "invstd": _rel_error(np.ravel(cache.invstd), 1.0 / np.sqrt(var + eps)),
    }
    worst_name = max(errors, key=errors.get)
    worst = errors[worst_name]
    return CheckResult(f"numeric vs batchnorm_backward ({m}x{d})", worst < NUMERIC_TOLERANCE, worst,
                       f"worst relative error in {worst_name}")


# ----------------------------------------------------------------------------- all checks

def run_checks(*, numeric: bool = True) -> list[CheckResult]:
    """Every step for m = 2..5, every erratum, the NumPy formula, and the implementation.

    numeric: include the comparison with normlab.batchnorm_backward. If the
    implementation cannot be imported, that check is reported as failed.
    Raises ImportError (with the pip command) when SymPy is missing.
    """
    _sympy()  # fail early and clearly without the optional dependency
    results = [check_step(name) for name in step_names()]
    results += [check_erratum(e.id) for e in ERRATA]
    results.append(check_numpy_formula())
    if numeric:
        try:
            results.append(numerical_check())
        except ImportError as exc:
            results.append(CheckResult("numeric vs batchnorm_backward", False, float("nan"), str(exc)))
    return results

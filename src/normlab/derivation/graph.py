"""The symbolic forward graph of batch norm and exact ways to compare expressions on it.

Exactness: checks evaluate at random *rational* points, choosing
``eps = q**2 - sigma2`` for a rational ``q`` so that ``sqrt(sigma2 + eps) = q``
and every quantity stays rational. Equality is then exact (``==`` on
``sympy.Rational``), with no tolerance that could hide a wrong factor.
``is_identity`` goes further and proves equality for all values.

Partial derivatives that treat ``mu`` and ``sigma2`` as independent nodes of
the graph are taken with separate node symbols; the values of those symbols
are substituted afterwards. Node-level identities are also evaluated at an
off-graph point, where e.g. ``sum_i (x_i - mu)`` is not zero.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any

#: Random on-graph points per batch size (plus one off-graph point for node-level claims).
POINTS_PER_SIZE = 2


def require_sympy():
    """Import SymPy on first use, with an actionable message when it is missing.

    SymPy is an optional dependency (``normlab[derive]``): importing
    ``normlab.derivation`` must work without it, so nothing imports it at module level.
    """
    try:
        import sympy as sp
    except ImportError as exc:  # exercised by monkeypatching sys.modules in the tests
        raise ImportError(
            "the derivation checks need SymPy, an optional dependency: "
            "pip install 'normlab[derive]' (or pip install sympy)"
        ) from exc
    return sp


def half():
    """The exact rational 1/2."""
    return require_sympy().Rational(1, 2)


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
        sigma2 = self.sigma2 if sigma2 is None else sigma2
        return require_sympy().sqrt(sigma2 + self.eps)

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

    def constants(self) -> tuple:
        """Further symbols the loss treats as constants (none for batch norm; batch renorm's r, d).

        ``rational_point`` gives each a random rational, positive where the symbol is.
        """
        return ()

    def on_graph(self) -> dict:
        """The forward values of the node symbols: mu and sigma2 as expressions in x."""
        mean = self.mean()
        return {self.mu: mean, self.sigma2: self.variance(mean)}


@functools.lru_cache(maxsize=None)
def forward_graph(m: int) -> Graph:
    """The symbolic forward graph for batch size m >= 2."""
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"batch size m must be an int >= 2, got {m!r}")
    sp = require_sympy()
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


@functools.lru_cache(maxsize=None)
def loss_gradient(graph_of, m: int) -> tuple:
    """dl/dx_i of the full loss of ``graph_of(m)``: every derivation's costliest truth, computed once."""
    sp = require_sympy()
    G = graph_of(m)
    l = G.full_loss()
    return tuple(sp.diff(l, xi) for xi in G.x)


# ----------------------------------------------------------------------------- exact points

def _random_rational(rng: random.Random, lo: int = -30, hi: int = 30, max_den: int = 9, *, nonzero=True):
    """A rational with a small numerator and denominator; nonzero unless asked otherwise."""
    sp = require_sympy()
    while True:
        r = sp.Rational(rng.randint(lo, hi), rng.randint(1, max_den))
        if r != 0 or not nonzero:
            return r


def _random_batch(rng: random.Random, m: int) -> tuple[list, list]:
    """x and g for one point: x neither constant nor of zero mean, g not constant."""
    while True:
        xs = [_random_rational(rng, nonzero=False) for _ in range(m)]
        # Constant x has sigma2 = 0, a degenerate batch; a zero mean would hide
        # every slip of xhat for x in a mu term (sum_i xhat_i = 0 = sum_i x_i then).
        if len(set(xs)) > 1 and sum(xs) != 0:
            break
    while True:
        # A random upstream gradient, never all equal (all ones would zero dx).
        gs = [_random_rational(rng) for _ in range(m)]
        if len(set(gs)) > 1:
            return xs, gs


def rational_point(G: Graph, seed: int, *, on_graph: bool = True) -> dict:
    """Exact values for every symbol of G, with sqrt(sigma2 + eps) rational.

    on_graph: mu and sigma2 are the batch mean and biased variance of x. Off
    the graph they are arbitrary (sigma2 > 0), which tests node-level
    identities where sum_i (x_i - mu) != 0.
    eps = q^2 - sigma2 for a rational q > sqrt(sigma2), q != 1, so eps > 0 and
    (sigma2 + eps)^(k/2) = q^k exactly.
    """
    sp = require_sympy()
    # Seed from (seed, m, on_graph) so every point is reproducible on its own.
    rng = random.Random(f"{seed}-{G.m}-{on_graph}")
    xs, gs = _random_batch(rng, G.m)
    gamma = _random_rational(rng)
    while abs(gamma) == 1:  # gamma = +-1 would hide a missing or dropped gamma factor
        gamma = _random_rational(rng)
    beta = _random_rational(rng)
    if on_graph:  # the graph's own forward values (batch norm: mean and biased variance of x)
        at_x = dict(zip(G.x, xs))
        mu, sigma2 = (sp.sympify(v).xreplace(at_x) for v in (G.on_graph()[G.mu], G.on_graph()[G.sigma2]))
    else:
        mu = _random_rational(rng)
        sigma2 = abs(_random_rational(rng))
    q = sp.Integer(math.isqrt(int(sigma2.p // sigma2.q)) + 1) + sp.Rational(rng.randint(1, 6), 7)
    eps = q**2 - sigma2
    values = {G.gamma: gamma, G.beta: beta, G.eps: eps, G.mu: mu, G.sigma2: sigma2}
    values.update(zip(G.x, xs))
    values.update(zip(G.g, gs))
    values.update(zip(G.xhat_node, [(xi - mu) / q for xi in xs]))
    for symbol in G.constants():  # drawn last, so a graph without constants gets the same points as before
        value = _random_rational(rng)
        while abs(value) == 1:  # +-1 would hide a missing factor
            value = _random_rational(rng)
        values[symbol] = abs(value) if symbol.is_positive else value
    return values


def sample_points(G: Graph, node_level: bool, n_on: int = POINTS_PER_SIZE) -> list[tuple[str, dict]]:
    """(where, values) for n_on on-graph points, plus one off-graph point if node_level."""
    points = [(f"on-graph seed {s}", rational_point(G, s)) for s in range(n_on)]
    if node_level:
        points.append(("off-graph", rational_point(G, 0, on_graph=False)))
    return points


# ----------------------------------------------------------------------------- comparing claims

def evaluate(exprs, values: dict) -> tuple:
    """Substitute exact values; every result must come out a Rational."""
    out = tuple(e.xreplace(values) if hasattr(e, "xreplace") else require_sympy().sympify(e) for e in exprs)
    for v in out:
        if not v.is_Rational:  # a leftover symbol or an irrational root: the point is not exact
            raise RuntimeError(f"expected an exact rational, got {v!r}")
    return out


def broadcast_truth(claim: tuple, truth: tuple) -> tuple | None:
    """truth aligned with claim: a scalar truth is compared with every per-i term.

    None when the lengths cannot be matched (the claim is then not the truth).
    """
    if len(claim) == len(truth):
        return truth
    return truth * len(claim) if len(truth) == 1 else None


def matches(got: tuple, want: tuple) -> bool:
    """Exact equality of evaluated claims, after broadcasting a scalar truth."""
    want = broadcast_truth(got, want)
    return want is not None and got == want


def relative_gap(got: tuple, want: tuple) -> float:
    """Normwise relative difference of two rational tuples, as a float (for reporting only)."""
    want = broadcast_truth(got, want) or want
    diff = max(abs(a - b) for a, b in zip(got, want))
    scale = max(max(abs(a) for a in got), max(abs(b) for b in want))
    return 0.0 if scale == 0 else float(diff / scale)


@functools.lru_cache(maxsize=None)
def _root_symbol():
    """q = sqrt(sigma2 + eps), positive, so that sqrt(q**2) simplifies to q."""
    return require_sympy().Symbol("q", positive=True)


def is_identity(claim: tuple, truth: tuple, G: Graph, *, node_level: bool) -> bool:
    """Symbolic proof that claim == truth for all values, not just at sample points.

    Substitutes eps = q^2 - sigma2 (q > 0 a new symbol), which turns every
    expression into a rational function of x, g, gamma, beta, q (and the
    node symbols, if node_level); ``cancel`` then gives a canonical form that
    is 0 exactly when the two sides agree identically. Off node level, mu and
    sigma2 are first replaced by their forward values (``Graph.on_graph``).
    """
    sp = require_sympy()
    truth = broadcast_truth(claim, truth)
    if truth is None:
        return False
    nodes = {} if node_level else G.on_graph()
    to_q = {G.eps: _root_symbol() ** 2 - nodes.get(G.sigma2, G.sigma2)}
    for a, b in zip(claim, truth):
        diff = (sp.sympify(a) - sp.sympify(b)).subs(nodes).subs(to_q)
        if sp.cancel(sp.together(diff)) != 0:
            return False
    return True

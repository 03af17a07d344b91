"""The derivation's result tied to the library, in float64.

The symbolic steps prove the closed form; these checks show that the
library computes it: its backward against the exact gradients at the steps'
rational points, and against the staged graph (``batchnorm_backward_graph``,
the derivation's starting point) on random data larger than SymPy can reach.
"""

from __future__ import annotations

import numpy as np

from .. import norms
from ..gradcheck import rel_error
from .graph import evaluate, rational_point
from .result import CheckResult
from .steps import BATCH_SIZES, Derivation

#: Relative tolerance of the float64 comparisons against the implementation.
NUMERIC_TOLERANCE = 1e-9
#: The library against exact values: only float64 rounding of a few operations separates them.
EXACT_TOLERANCE = 1e-12


def check_closed_form_exact(derivation: Derivation, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> CheckResult:
    """The library's closed form in float64 against the exact dx, dgamma, dbeta.

    Evaluated at the rational points the steps are proved at, so the chain
    runs unbroken from the symbolic derivative to the library's arithmetic.
    """
    worst = 0.0
    for m in batch_sizes:
        G = derivation.graph(m)
        values = rational_point(G, 0)
        floats = [np.array([float(values[s]) for s in symbols]) for symbols in (G.x, G.g)]
        scalars = [float(values[s]) for s in (G.gamma, G.beta, G.eps, *G.constants())]
        got = derivation.library(*floats, *scalars)
        exact = [np.array([float(v) for v in evaluate(e, values)]) for e in derivation.exact(G)]
        for a, b in zip(got, exact):
            worst = max(worst, rel_error(np.ravel(a), b))
    return CheckResult(f"{derivation.prefix}numpy closed form vs exact (m={batch_sizes[0]}..{batch_sizes[-1]})",
                       worst < EXACT_TOLERANCE, worst, f"{derivation.norm}'s backward against the exact gradients",
                       "numeric", EXACT_TOLERANCE)


def numerical_check(seed: int = 0, m: int = 16, d: int = 5, eps: float = 1e-5) -> CheckResult:
    """normlab.batchnorm_backward against the staged graph, float64, on an (m, d) batch.

    batchnorm_backward_graph applies the chain rule node by node (sections
    1-5 of docs/derivation.md); the closed form must agree with it. Also
    compares the cached statistics (mean, biased var, invstd) with NumPy's.
    """
    rng = np.random.default_rng(seed)
    # An offset mean and non-unit scale, so that dropping mu or sigma2 would show.
    x = rng.normal(1.5, 3.0, size=(m, d))
    gamma, beta = rng.normal(size=d), rng.normal(size=d)
    dout = rng.normal(size=(m, d))  # random upstream gradient, never all ones
    _, cache = norms.batchnorm_forward(x, gamma, beta, eps=eps)
    closed = norms.batchnorm_backward(dout, cache)
    staged = norms.batchnorm_backward_graph(dout, cache)
    var = x.var(axis=0)
    errors = {name: rel_error(a, b) for name, a, b in zip(("dx", "dgamma", "dbeta"), closed, staged)}
    errors.update(mean=rel_error(cache.mean, x.mean(axis=0)), var=rel_error(cache.var, var),
                  invstd=rel_error(cache.invstd, 1.0 / np.sqrt(var + eps)))
    worst_name = max(errors, key=errors.get)
    worst = errors[worst_name]
    return CheckResult(f"staged graph vs batchnorm_backward ({m}x{d})", worst < NUMERIC_TOLERANCE, worst,
                       f"worst relative error in {worst_name}", "numeric", NUMERIC_TOLERANCE)

"""The derivation's result in float64: the boxed formula in NumPy, against the exact values and the library."""

from __future__ import annotations

import math

import numpy as np

from .batchnorm import DERIVATION
from .graph import evaluate, rational_point
from .result import CheckResult
from .steps import BATCH_SIZES

#: Relative tolerance of the float64 comparison against the implementation.
NUMERIC_TOLERANCE = 1e-9


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
        G = DERIVATION.graph(m)
        values = rational_point(G, 0)
        x = np.array([[float(values[s])] for s in G.x])  # (m, 1): one feature
        dout = np.array([[float(values[s])] for s in G.g])
        gamma, eps = np.array([float(values[G.gamma])]), float(values[G.eps])
        dx, dgamma, dbeta = closed_form_backward(dout, x, gamma, eps)
        exact = [np.array([float(v) for v in evaluate(e, values)]) for e in DERIVATION.exact(G)]
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


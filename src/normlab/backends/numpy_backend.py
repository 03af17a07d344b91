"""The NumPy reference backend.

Written for clarity and accuracy first: everything is computed in float64
(float16/float32 inputs are upcast, so statistics are exact to float64
rounding however far the data sits from zero) and the variance is two-pass,
the mean of the squared centred values, which cannot cancel catastrophically
and is never negative. The cache keeps xhat (float64, the size of x); the
fused Numba backend keeps nothing and recomputes it.
"""

from __future__ import annotations

import numpy as np

from ..running_rule import blend_running_stats

NAME = "numpy"


def _stat_axes(batch_stats: bool) -> tuple[int, ...]:
    return (0, 2, 3) if batch_stats else (2, 3)


def _as_4d(stat: np.ndarray, batch_stats: bool) -> np.ndarray:
    """(G,) -> (1, G, 1, 1); (N, G) -> (N, G, 1, 1), for broadcasting against x4."""
    return stat.reshape((1, -1, 1, 1) if batch_stats else (*stat.shape, 1, 1))


def forward(x4, gamma, beta, eps, batch_stats, given=None, out=None, center=True):
    n, g, k, l = x4.shape
    axes = _stat_axes(batch_stats)
    xw = x4.astype(np.float64, copy=False)
    # inf - inf and overflow warnings are silenced: the core explains non-finite batch statistics.
    with np.errstate(invalid="ignore", over="ignore"):
        if given is None and center:
            mean = xw.mean(axis=axes, keepdims=True)
            xhat = xw - mean
            var = np.mean(np.square(xhat), axis=axes, keepdims=True)
        elif given is None:  # RMS: no mean subtracted, var is the mean square
            var = np.mean(np.square(xw), axis=axes, keepdims=True)
            mean = np.zeros_like(var)
            xhat = xw.copy()
        else:
            mean, var = (_as_4d(s, batch_stats) for s in given)
            xhat = xw - mean
        invstd = 1.0 / np.sqrt(var + eps)
        xhat *= invstd  # (x - mean) * invstd, not x*a + b: no cancellation near large means
    if gamma is None:
        y = xhat
    else:
        y = xhat * gamma.reshape(1, g, k, 1) + beta.reshape(1, g, k, 1)
    if out is None:
        out = y.astype(x4.dtype, copy=True)
    else:
        np.copyto(out, y, casting="unsafe")
    shape = (g,) if batch_stats else (n, g)
    return out, mean.reshape(shape), var.reshape(shape), invstd.reshape(shape), xhat


def backward(dout4, x4, gamma, mean, invstd, batch_stats, stats_given, saved, out=None, center=True, want_dx=True):
    n, g, k, l = x4.shape
    invstd4 = _as_4d(invstd, batch_stats)
    xhat = saved if saved is not None else (x4.astype(np.float64) - _as_4d(mean, batch_stats)) * invstd4
    dout = dout4.astype(np.float64, copy=False)
    gamma4 = None if gamma is None else gamma.astype(np.float64).reshape(1, g, k, 1)

    # Parameter gradients: sums over everything but the channel (g, k).
    dbeta = dout.sum(axis=(0, 3))
    dgamma = (dout * xhat).sum(axis=(0, 3))
    if not want_dx:  # (the caller needs the parameters' gradients only)
        return (None, None, None) if gamma is None else (None, dgamma.reshape(-1), dbeta.reshape(-1))

    if stats_given:
        # mean and var are constants: only the direct path xhat = (x - mean)*invstd remains.
        dx = dout * invstd4 if gamma4 is None else dout * (gamma4 * invstd4)
    elif batch_stats:
        # One statistic per channel (K == 1), so the two closed-form sums are
        # gamma*dbeta and gamma*dgamma: reuse them instead of two more passes.
        m = n * l
        dx = dout - (dbeta / m).reshape(1, g, k, 1) if center else dout.copy()
        dx -= xhat * (dgamma / m).reshape(1, g, k, 1)
        dx *= invstd4 if gamma4 is None else gamma4 * invstd4
    else:
        m = k * l
        dxhat = dout if gamma4 is None else dout * gamma4
        sum_dxhat_xhat = (dxhat * xhat).sum(axis=(2, 3), keepdims=True)
        # Without a mean (RMS) the -sum(dxhat)/m term is absent: nothing depends on a mean.
        dx = dxhat - dxhat.sum(axis=(2, 3), keepdims=True) / m if center else dxhat.copy()
        dx -= xhat * (sum_dxhat_xhat / m)
        dx *= invstd4
    if out is not None:
        np.copyto(out, dx, casting="unsafe")
        dx = out
    if gamma is None:
        return dx, None, None
    return dx, dgamma.reshape(-1), dbeta.reshape(-1)


# ----------------------------------------------------------------------------- pieces
# The synchronized path (normlab.distributed) needs the backward split at the
# point where sums from other ranks join: local sums, then dx from global sums.

def _require_batch_stats(batch_stats):
    if not batch_stats:
        raise ValueError("grad_sums/grad_apply are defined for batch statistics (one per channel, K == 1)")


def moments(x4, batch_stats):
    """Mean and biased var, float64 of shape (G,) or (N, G); two-pass in float64."""
    axes = _stat_axes(batch_stats)
    xw = x4.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = xw.mean(axis=axes, keepdims=True)
        var = np.mean(np.square(xw - mean), axis=axes, keepdims=True)
    shape = (x4.shape[1],) if batch_stats else x4.shape[:2]
    return mean.reshape(shape), var.reshape(shape)


def scaled_moments(x4, batch_stats, center=True):
    """Mean and biased var (or the mean square, ``center`` False) computed on x / max|x| per statistic.

    For finite x whose float64 sums overflow (|x| near 1e154 and beyond):
    the scaled values are at most 1 in magnitude, so nothing overflows until
    the result is scaled back; a var beyond float64's range comes back inf.
    """
    axes = _stat_axes(batch_stats)
    xw = x4.astype(np.float64, copy=False)
    scale = np.max(np.abs(xw), axis=axes, keepdims=True)
    scale[scale == 0] = 1.0  # an all-zero statistic: mean 0, var 0 either way
    y = xw / scale
    mean = y.mean(axis=axes, keepdims=True) if center else np.zeros_like(scale)
    var = np.mean(np.square(y - mean), axis=axes, keepdims=True)
    with np.errstate(over="ignore"):
        mean, var = mean * scale, (var * scale) * scale
    shape = (x4.shape[1],) if batch_stats else x4.shape[:2]
    return mean.reshape(shape), var.reshape(shape)


def grad_sums(dout4, x4, mean, invstd, batch_stats):
    """(sum dy, sum dy*xhat) per channel, float64 (G,): dbeta and dgamma of the batch layouts."""
    _require_batch_stats(batch_stats)
    xhat = (x4.astype(np.float64) - _as_4d(mean, True)) * _as_4d(invstd, True)
    dout = dout4.astype(np.float64, copy=False)
    return dout.sum(axis=(0, 2, 3)), (dout * xhat).sum(axis=(0, 2, 3))


def grad_apply(dout4, x4, gamma, mean, invstd, sum_dy, sum_dy_xhat, count, batch_stats, out=None):
    """dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count), (N, G, 1, L) in x's dtype."""
    _require_batch_stats(batch_stats)
    invstd4 = _as_4d(invstd, True)
    xhat = (x4.astype(np.float64) - _as_4d(mean, True)) * invstd4
    dx = dout4.astype(np.float64) - _as_4d(sum_dy / count, True)
    dx -= xhat * _as_4d(sum_dy_xhat / count, True)
    dx *= invstd4 if gamma is None else _as_4d(np.asarray(gamma, np.float64), True) * invstd4
    if out is None:
        return dx.astype(x4.dtype, copy=False)
    np.copyto(out, dx, casting="unsafe")
    return out


def update_running(running_mean, running_var, batch_mean, batch_var, count, factor):
    """Fold a batch's float64 (C,) statistics into running (C,) arrays in place, with
    ``normlab.running_rule.blend_running_stats`` computed in float64 and rounded once."""
    new_mean, new_var = blend_running_stats(running_mean.astype(np.float64), running_var.astype(np.float64),
                                            batch_mean, batch_var, count, factor)
    running_mean[...] = new_mean
    running_var[...] = new_var


def all_finite(mean, var) -> bool:
    """Whether every statistic (float64 arrays, any shape) is finite."""
    return bool(np.isfinite(mean).all()) and bool(np.isfinite(var).all())

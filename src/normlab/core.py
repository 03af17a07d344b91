"""The one normalization core.

Batch, spatial batch, layer and group norm are one operation: standardize x
over some axes, then apply a per-channel affine. Every norm views its input as
a 4-d array ``(N, G, K, L)``::

    norm                 x            view (N, G, K, L)        statistics per
    batch norm           (N, D)       (N, D, 1, 1)             G       (reduce N, L)
    spatial batch norm   (N, C, H, W) (N, C, 1, H*W)           G       (reduce N, L)
    layer norm           (N, D)       (N, 1, D, 1)             (N, G)  (reduce K, L)
    group norm           (N, C, H, W) (N, G, C/G, H*W)         (N, G)  (reduce K, L)

and gamma/beta live on the channel index ``c = g*K + k`` (length G*K),
broadcast over N and L. The view is a reshape, never a transpose, so it costs
nothing for contiguous inputs. Only one flag varies: ``batch_stats`` (reduce
over N as well) or not. A backend therefore needs to be good at just this one
shape family; see ``normlab.backends``.

The backward pass is the closed form derived in docs/derivation.md::

    dx = invstd/m * (m*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))

with sums over the reduced axes and m their size. It needs only two sums per
statistic. When the statistics were given (inference), mean and var are
constants and dx = dxhat*invstd. RMS norm (``Layout.center`` False) has no
mean, so its closed form lacks the sum(dxhat) term.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _checks
from .backends import get_backend, numpy_backend


class Layout(NamedTuple):
    """How a norm sees its input.

    view: (N, G, K, L), the 4-d reshape of x.
    batch_stats: True if statistics reduce over N, K, L (one per G; K is 1),
        False if they reduce over K, L (one per (n, g)).
    param_shape: shape of gamma/beta as the user passes them.
    stat_shape: shape of mean/var as the user sees them (cache, inference args).
    center: subtract the mean (every norm but RMS norm). False: the mean is
        taken as 0 and var is the mean square, x / sqrt(mean(x**2) + eps)
        (per-sample statistics only).
    """

    view: tuple[int, int, int, int]
    batch_stats: bool
    param_shape: tuple[int, ...]
    stat_shape: tuple[int, ...]
    center: bool = True

    @property
    def count(self) -> int:
        """m: how many values each statistic reduces over."""
        n, _, k, l = self.view
        return n * k * l if self.batch_stats else k * l

    @property
    def internal_stat_shape(self) -> tuple[int, ...]:
        """Statistics as backends hold them: (G,) or (N, G)."""
        n, g, _, _ = self.view
        return (g,) if self.batch_stats else (n, g)


class NormCache(NamedTuple):
    """What backward needs. Holds a reference to x, never a copy.

    mean, var (biased), invstd: float64 arrays of ``layout.stat_shape``.
    saved: backend-specific extras (the NumPy backend keeps xhat; the fused
    backend keeps nothing and recomputes xhat from x, mean and invstd).
    """

    x: np.ndarray
    layout: Layout
    gamma: np.ndarray | None
    mean: np.ndarray
    var: np.ndarray
    invstd: np.ndarray
    eps: float
    stats_given: bool
    backend: str
    saved: Any = None


def normalize_forward(x, gamma, beta, layout: Layout, eps: float, *, mean=None, var=None,
                      backend: str = "auto", out: np.ndarray | None = None):
    """Standardize x over the layout's reduced axes and apply gamma/beta.

    x: validated float array with ``x.size == prod(layout.view)``.
    gamma, beta: arrays of ``layout.param_shape``, or both None (no affine).
    mean, var: optional given statistics of ``layout.stat_shape`` (inference);
        backward then treats them as constants.
    Returns (out, NormCache); out has x's shape and dtype.
    """
    _checks.check_affine_pair(gamma, beta)
    # (the messages are built only when a check fails: formatting them costs more than the checks)
    per_channel = lambda: f"one per channel for input shape {x.shape}"  # noqa: E731
    gamma = _checks.check_param(gamma, "gamma", layout.param_shape, per_channel)
    beta = _checks.check_param(beta, "beta", layout.param_shape, per_channel)
    mean, var = _checks.check_stats(
        mean, var, layout.stat_shape,
        lambda: f"one per {'channel' if layout.batch_stats else 'statistic'} for input shape {x.shape}")
    stats_given = mean is not None
    eps = _checks.check_eps(eps, training=not stats_given)
    # RMS norm's statistic (a mean square) is meaningful over one value; a variance is not.
    if not stats_given and layout.center and layout.count < 2:
        raise ValueError(
            f"expected more than 1 value per statistic to compute batch statistics, got input shape "
            f"{x.shape} (each statistic reduces over {layout.count} value): normalizing a single value "
            f"always gives 0; use a larger batch, or given statistics (eval mode)"
        )
    if out is not None:
        out = _checks.check_out(out, x, {"gamma": gamma, "beta": beta})
    if stats_given and var is not None and eps == 0 and np.any(var == 0):
        raise ValueError("eps == 0 with a given var that is 0 somewhere would divide by zero")

    return run_forward(x, gamma, beta, layout, eps, mean, var, backend, out)


def run_forward(x, gamma, beta, layout: Layout, eps: float, mean, var, backend: str, out):
    """:func:`normalize_forward` after its checks: the arguments are trusted (the PyTorch bridge validates
    them once per input signature and calls this directly). mean/var: given statistics or both None."""
    impl = get_backend(backend)
    x4 = x.reshape(layout.view)
    stats_given = mean is not None
    given = None
    if stats_given:
        shape_int = layout.internal_stat_shape
        given = (np.asarray(mean, np.float64).reshape(shape_int), np.asarray(var, np.float64).reshape(shape_int))
    g, b = _flat(gamma), _flat(beta)
    out4 = None if out is None else out.reshape(layout.view)
    out4, stat_mean, stat_var, invstd, saved = impl.forward(
        x4, g, b, eps, layout.batch_stats, given=given, out=out4, center=layout.center)
    if not stats_given and not impl.all_finite(stat_mean, stat_var):
        # Statistics of finite x whose sums overflowed: computed again scaled, and the
        # output with them (backward still treats them as batch statistics).
        rescued = _rescaled_statistics(x, x4, layout, stat_mean, stat_var)
        out4, stat_mean, stat_var, invstd, saved = impl.forward(
            x4, g, b, eps, layout.batch_stats, given=rescued, out=out4, center=layout.center)
    shape = layout.stat_shape
    cache = NormCache(x, layout, gamma, _shaped(stat_mean, shape), _shaped(stat_var, shape),
                      _shaped(invstd, shape), eps, stats_given, impl.NAME, saved)
    y = _shaped(out4, x.shape)
    if out is not None and not out.flags.c_contiguous and not np.may_share_memory(y, out):
        # reshape copied a non-contiguous out: fill the caller's buffer.
        np.copyto(out, y)
        y = out
    return y, cache


def _shaped(a, shape):
    """a.reshape(shape), or a itself when it has that shape already (a reshape costs a call's fixed time)."""
    return a if a.shape == shape else a.reshape(shape)


def _as(a, dtype):
    """a in dtype, a itself when it is (astype(copy=False) costs a call's fixed time to find that out)."""
    return a if a.dtype == dtype else a.astype(dtype)


def _flat(param):
    """gamma or beta as backends take it, (G*K,) or None (a 1-d array as it is: a reshape costs a call's
    fixed time)."""
    return param if param is None or param.ndim == 1 else param.reshape(-1)


def _rescaled_statistics(x, x4, layout: Layout, mean, var):
    """Batch statistics that came out non-finite, explained or computed again on x / max|x|.

    NaN/inf in x poisons every statistic it touches: checking the O(C)
    statistics first means finite input pays no extra pass over x. Finite x
    whose float64 sums overflowed (|x| beyond about 1e154) gets statistics
    computed scaled; a variance beyond float64's range is an error that says so.
    """
    bad = int(np.sum(~(np.isfinite(mean) & np.isfinite(var))))
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x (shape {x.shape}) contains NaN or inf: {bad} of {mean.size} batch statistics "
                         f"are not finite")
    mean, var = numpy_backend.scaled_moments(x4, layout.batch_stats, layout.center)
    if not np.all(np.isfinite(var)):
        over = int(np.sum(~np.isfinite(var)))
        raise ValueError(
            f"the variance of x (shape {x.shape}, |x| up to {float(np.max(np.abs(x))):.3g}) overflows float64 in "
            f"{over} of {var.size} batch statistics (float64 holds up to {np.finfo(np.float64).max:.3g}): "
            f"scale x down; normalization does not depend on x's scale beyond eps")
    return mean, var


def normalize_backward(dout, cache: NormCache, *, out: np.ndarray | None = None):
    """Closed-form backward. Returns (dx, dgamma, dbeta); the last two are None without affine.

    out: optional buffer of x's shape and dtype that receives dx (a training
    loop can reuse it instead of faulting in a fresh array every step).
    """
    if not isinstance(cache, NormCache):
        raise TypeError(f"cache must be the NormCache returned by a forward, got {type(cache).__name__}")
    x, layout = cache.x, cache.layout
    dout = _checks.check_dout(dout, x.shape)
    # (gamma too: the kernels read it while they write dx)
    out = _checks.check_out(out, x, {"dout": dout, "gamma": cache.gamma})
    return run_backward(dout, cache, out)


def run_backward(dout, cache: NormCache, out, want_dx: bool = True):
    """:func:`normalize_backward` after its checks: dout and out are trusted. want_dx False: only the parameters'
    gradients are wanted (the PyTorch bridge, for an input that needs no gradient); dx is returned as None."""
    x, layout = cache.x, cache.layout
    impl = get_backend(cache.backend)
    shape_int = layout.internal_stat_shape
    g = _flat(cache.gamma)
    dx4, dgamma, dbeta = impl.backward(
        _shaped(dout, layout.view), _shaped(x, layout.view), g,
        _shaped(cache.mean, shape_int), _shaped(cache.invstd, shape_int),
        layout.batch_stats, cache.stats_given, cache.saved, center=layout.center,
        # passed only when given, so a backend without a dx buffer still works
        **({} if out is None or not want_dx else {"out": out.reshape(layout.view)}),
        **({} if want_dx else {"want_dx": False}),
    )
    dx = _as(_shaped(dx4, x.shape), x.dtype) if want_dx else None
    if dx is not None and out is not None and not out.flags.c_contiguous and not np.may_share_memory(dx, out):
        # reshape copied a non-contiguous out: fill the caller's buffer.
        np.copyto(out, dx)
        dx = out
    if cache.gamma is None:
        return dx, None, None
    pdtype = cache.gamma.dtype
    return dx, _as(_shaped(dgamma, layout.param_shape), pdtype), _as(_shaped(dbeta, layout.param_shape), pdtype)


# ----------------------------------------------------------------------------- pieces
# The backward split into its two passes, for callers whose sums span more
# than this x (synchronized batch norm adds them up over ranks in between).

def moments(x, layout: Layout, backend: str = "auto"):
    """Mean and biased var of x over the layout's reduced axes: float64 of ``layout.stat_shape``.

    x: float array with ``x.size == prod(layout.view)``, at least one value per statistic.
    Finite x whose sums overflow float64 gets statistics computed on x / max|x|
    (var inf only where the variance itself is beyond float64's range).
    """
    x4 = x.reshape(layout.view)
    impl = get_backend(backend)
    mean, var = impl.moments(x4, layout.batch_stats)
    if not impl.all_finite(mean, var) and np.all(np.isfinite(x)):  # finite x whose sums overflowed
        mean, var = numpy_backend.scaled_moments(x4, layout.batch_stats)
    return mean.reshape(layout.stat_shape), var.reshape(layout.stat_shape)


def _batch_pieces(dout, cache: NormCache):
    if not isinstance(cache, NormCache):
        raise TypeError(f"cache must be the NormCache returned by a forward, got {type(cache).__name__}")
    if not cache.layout.batch_stats:
        raise ValueError("gradient_sums/apply_gradient need batch statistics (batch or spatial batch norm)")
    dout = _checks.check_dout(dout, cache.x.shape)
    view = cache.layout.view
    return dout.reshape(view), cache.x.reshape(view), get_backend(cache.backend)


def gradient_sums(dout, cache: NormCache):
    """(sum dy, sum dy*xhat) per channel over this x: float64 (C,) each (dbeta, and dgamma without gamma)."""
    dout4, x4, impl = _batch_pieces(dout, cache)
    return impl.grad_sums(dout4, x4, cache.mean.reshape(-1), cache.invstd.reshape(-1), True)


def apply_gradient(dout, cache: NormCache, sums, count, *, out: np.ndarray | None = None):
    """dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count), x's shape and dtype.

    sums: (sum_dy, sum_dy_xhat), float64 (C,) each, over ``count`` values per
    channel (possibly more than this x holds: the global batch).
    """
    dout4, x4, impl = _batch_pieces(dout, cache)
    out = _checks.check_out(out, cache.x, {"dout": dout})
    g = None if cache.gamma is None else cache.gamma.reshape(-1)
    sum_dy, sum_dy_xhat = (np.asarray(s, np.float64).reshape(-1) for s in sums)
    dx4 = impl.grad_apply(dout4, x4, g, cache.mean.reshape(-1), cache.invstd.reshape(-1), sum_dy, sum_dy_xhat,
                          float(count), True, out=None if out is None else out.reshape(cache.layout.view))
    dx = dx4.reshape(cache.x.shape).astype(cache.x.dtype, copy=False)
    if out is None:
        return dx
    if not np.may_share_memory(dx, out):  # reshape copied a non-contiguous out: fill the caller's buffer
        np.copyto(out, dx)
    return out

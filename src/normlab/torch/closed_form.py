"""The normalization core in torch ops: the same layouts and closed form, for tensors on any device and for
torch.compile.

``normlab.core`` runs on NumPy views of CPU tensors. This module is its twin
in torch ops, on the same ``Layout`` (the 4-d view ``(N, G, K, L)``), so a
model moved to a GPU (or any device without NumPy views) keeps working,
``backend="torch"`` runs it on CPU where it can be tested against the core,
and under torch.compile inductor fuses it with its neighbours into generated
code (``normlab.torch.autograd``)::

    statistics d = x - p (p: the first value of each statistic's data), mean = p + sum(d)/m,
               var = max(sum(d*d)/m - (sum(d)/m)**2, 0): one pass, nothing cancels for data far from 0
    forward    out = (x - mean)*(invstd*gamma) + beta
    backward   dx = invstd*(dxhat - (x - mean)*invstd*sum(dxhat*xhat)/m - sum(dxhat)/m)
               (dxhat = gamma*dy; no sum(dxhat) term without a mean: RMS norm; dx = invstd*gamma*dy when
               the statistics were given)

Statistics and every per-element product run in float64 (float32 on MPS, which
has no float64, and for reduced-precision input after
``set_compute_dtype(torch.float32)``) and round once, to x's dtype, when an
output element is written: float32 x = 10**6 + N(0, 1) normalizes to within
the core's bound, [f32max, f32max, f32max, -f32max] to ±sqrt(3) patterns.
Unlike the core, a float64 x whose float64 sums overflow (|x| beyond about
1e154) is not rescaled, and NaN or inf in x propagate (README, "Numerics").
Everything is differentiable torch ops, which is what double backward uses:
autograd differentiates this backward, with the statistics recomputed from x
(``statistics``) so that their dependence on x is in the graph.

Each pass is written so that inductor fuses it into one loop over x: the
statistics' two sums in one reduction (spatial batch norm's per sample, then
over the batch, see ``_stat_sum``), the output in one pointwise pass, the
backward's sums in one more reduction and dx in one pointwise pass (batch
norm's parameter gradients come from the same sums). docs/benchmarks.md
("Compiled training steps") has what that costs against torch.nn's.
"""

from __future__ import annotations

import torch

from ..core import Layout


#: The arithmetic of reduced-precision inputs here (:func:`set_compute_dtype`). Read while dynamo traces, so a
#: compiled graph is guarded on it: changing it recompiles rather than reusing a graph of the other precision.
_COMPUTE_DTYPE = torch.float64


def set_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Set the arithmetic of the closed form in torch ops for float32/float16/bfloat16 input; returns the previous.

    torch.float64 (the default) keeps the README's numerics (float32 x at 10**6 offsets within its bound,
    [f32max, f32max, f32max, -f32max] to the ±sqrt(3) pattern). torch.float32 trades them for speed: statistics,
    sums and per-element products in float32, as torch.nn computes; a compiled batch norm's backward then runs
    on twice the vector lanes (docs/benchmarks.md, "Compiled training steps"). It serves every call in torch
    ops: graphs under torch.compile (which recompile when this changes), devices other than CPU,
    ``backend="torch"``, double backward, SyncBatchNorm's synchronized step. float64 input is always computed
    in float64, MPS always in float32 (it has no float64); the NumPy/Numba core and the native node do not
    read this.
    """
    global _COMPUTE_DTYPE
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    previous, _COMPUTE_DTYPE = _COMPUTE_DTYPE, dtype
    return previous


def compute_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """The arithmetic for input of ``dtype`` on ``device``: float32 on MPS (no float64), float64 for float64
    input, else :func:`set_compute_dtype`'s choice (float64 by default)."""
    if device.type == "mps":
        return torch.float32
    return torch.float64 if dtype == torch.float64 else _COMPUTE_DTYPE


def _reduced_dims(layout: Layout) -> tuple[int, ...]:
    return (0, 2, 3) if layout.batch_stats else (2, 3)


def _stat_sum(t: torch.Tensor, layout: Layout, dtype=None) -> torch.Tensor:
    """t (4-d view) summed over each statistic's values, keepdim.

    Batch statistics of (N, C, 1, L > 1) sum over L first, then over N. Inductor lays a convolution's output
    out channels-last, and for one sum over (N, L) it generated a loop per vector of channels, each reading
    all of x: x read C/8 times (float32). Summed per sample first, x is read once, with the channels
    innermost: the statistics' loop of a (64, 32, 32, 32) channels-last x 0.64 -> 0.25 ms, (64, 64, 32, 32)
    1.42 -> 0.67 ms, and no slower for contiguous x (docs/benchmarks.md, "Compiled training steps").
    """
    if layout.batch_stats and layout.view[3] > 1:
        return t.sum(dim=(2, 3), keepdim=True, dtype=dtype).sum(dim=0, keepdim=True)
    return t.sum(dim=_reduced_dims(layout), keepdim=True, dtype=dtype)


def _stat4(stat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Statistics of ``layout.stat_shape`` as a 4-d tensor broadcasting against the view."""
    n, g, _, _ = layout.view
    return stat.reshape(1, g, 1, 1) if layout.batch_stats else stat.reshape(n, g, 1, 1)


def _param4(param: torch.Tensor, layout: Layout, dtype: torch.dtype) -> torch.Tensor:
    _, g, k, _ = layout.view
    return param.to(dtype).reshape(1, g, k, 1)


def _pivot(x4: torch.Tensor, layout: Layout) -> torch.Tensor:
    """One value of each statistic's own data (its first), 4-d: subtracted before summing, so sums of
    x - p stay of the order of the spread, not of the offset."""
    n, g, _, _ = layout.view
    if x4.numel() == 0:  # (no value to take: the statistics come out NaN, as torch's do)
        return x4.new_zeros((1 if layout.batch_stats else n, g, 1, 1))
    first = x4[:, :, 0:1, 0:1]
    return first[0:1] if layout.batch_stats else first


def statistics(x: torch.Tensor, layout: Layout, eps: float, mean=None, var=None, dtype=None):
    """(mean, var, invstd) of ``layout.stat_shape`` in ``dtype`` (None: the compute dtype): from x, or the given
    mean/var.

    var is biased and clamped at 0; without a centre (RMS norm) mean is 0 and var the mean square.
    """
    dtype = dtype or compute_dtype(x.device, x.dtype)
    if mean is not None:  # copies (O(C)): returned statistics never alias the caller's buffers
        var = var.to(dtype, copy=True)
        return mean.to(dtype, copy=True), var, torch.rsqrt(var + eps)
    x4 = x.reshape(layout.view).to(dtype)
    m = layout.count
    if layout.center:
        pivot = _pivot(x4, layout)
        d = x4 - pivot
        shift = _stat_sum(d, layout) / m
        var4 = (_stat_sum(d * d, layout) / m - shift * shift).clamp_min(0)
        mean4 = pivot + shift
    else:
        var4 = _stat_sum(x4 * x4, layout) / m
        mean4 = torch.zeros_like(var4)
    shape = layout.stat_shape
    return mean4.reshape(shape), var4.reshape(shape), torch.rsqrt(var4 + eps).reshape(shape)


def forward(x, weight, bias, layout: Layout, eps: float, mean=None, var=None, dtype=None):
    """-> (out of x's shape and dtype, mean, var, invstd); mean/var given means inference statistics; dtype: the
    arithmetic (None: the compute dtype)."""
    mean, var, invstd = statistics(x, layout, eps, mean, var, dtype)
    dtype = mean.dtype
    scale = _stat4(invstd, layout)
    if weight is not None:
        scale = scale * _param4(weight, layout, dtype)  # O(C) (batch/instance norm) or O(N*K) (layer norm)
    out4 = (x.reshape(layout.view).to(dtype) - _stat4(mean, layout)) * scale
    if bias is not None:
        out4 = out4 + _param4(bias, layout, dtype)
    return out4.reshape(x.shape).to(x.dtype), mean, var, invstd


def grad_sums(dout, x, mean, invstd, layout: Layout):
    """(sum dy, sum dy*xhat) per statistic over this x, in the compute dtype (batch norm: per channel)."""
    d4 = dout.reshape(layout.view).to(invstd.dtype)
    xhat = (x.reshape(layout.view).to(invstd.dtype) - _stat4(mean, layout)) * _stat4(invstd, layout)
    return _stat_sum(d4, layout).reshape(layout.stat_shape), _stat_sum(d4 * xhat, layout).reshape(layout.stat_shape)


def _sums(dy, xc, s4, w4, layout: Layout):
    """(sum dxhat, sum dxhat*xhat) per statistic (4-d), and (dweight, dbias) of ``param_shape``.

    dy: the 4-d view of dout in its own dtype, widened by type promotion where it meets a compute-dtype
    factor (see ``backward``). One statistic per parameter (K == 1: batch and instance norm, group norm with
    one channel per group): two sums over x, and gamma factored out of them. Otherwise (layer, group, RMS
    norm) the statistics' sums and the parameters' sums run over different axes.
    """
    dtype = s4.dtype
    if layout.view[2] == 1:
        sum_dy = _stat_sum(dy, layout, dtype)
        # invstd applied to the sum, not to every product; an empty x (NaN statistics) has sums of 0, as torch's
        sum_dy_xhat = _stat_sum(dy * xc, layout) * s4 if layout.count else _stat_sum(dy * xc * s4, layout)
        per_param = (0, 2, 3) if layout.batch_stats else (0,)
        dweight, dbias = sum_dy_xhat.sum(dim=per_param), sum_dy.sum(dim=per_param)
        if w4 is not None:
            sum_dy, sum_dy_xhat = sum_dy * w4, sum_dy_xhat * w4
        return sum_dy, sum_dy_xhat, dweight.reshape(layout.param_shape), dbias.reshape(layout.param_shape)
    dbias = dy.sum(dim=(0, 3), dtype=dtype).reshape(layout.param_shape)
    dweight = (dy * xc * s4).sum(dim=(0, 3)).reshape(layout.param_shape)
    dxhat = dy if w4 is None else dy * w4
    sum_dxhat = _stat_sum(dxhat, layout, dtype)
    sum_dxhat_xhat = _stat_sum(dxhat * xc, layout) * s4
    return sum_dxhat, sum_dxhat_xhat, dweight, dbias


def backward(dout, x, weight, mean, invstd, layout: Layout, stats_given: bool, sums=None):
    """Closed-form -> (dx of x's dtype, dweight, dbias of ``layout.param_shape`` in the compute dtype).

    sums: optional ((sum dy, sum dy*xhat), count) of batch statistics over more
    values than this x holds (synchronized batch norm: the global batch);
    dweight/dbias stay this x's share.
    """
    dtype = invstd.dtype
    # dout stays in its dtype: type promotion widens it exactly inside each product with a compute-dtype
    # factor. An explicit conversion would be one node that the loops reading dout share, which inductor
    # stores as a float64 copy of twice dout's size where dout is itself computed (a ReLU's mask).
    dy = dout.reshape(layout.view)
    s4 = _stat4(invstd, layout)
    xc = x.reshape(layout.view).to(dtype) - _stat4(mean, layout)  # x - mean, formed before any scaling
    w4 = None if weight is None else _param4(weight, layout, dtype)
    sum_dxhat, sum_dxhat_xhat, dweight, dbias = _sums(dy, xc, s4, w4, layout)
    per_stat = layout.view[2] == 1  # one statistic per parameter: gamma*invstd is a factor per statistic
    scale = (s4 if w4 is None else s4 * w4) if per_stat else s4
    dxhat = dy if per_stat or w4 is None else dy * w4
    if stats_given and sums is None:
        return (dxhat * scale).reshape(x.shape).to(x.dtype), dweight, dbias
    m = layout.count
    if sums is not None:  # batch statistics (K == 1): the sums of dxhat are gamma times those of dy
        (sum_dy, sum_dy_xhat), m = sums
        sum_dxhat, sum_dxhat_xhat = (_stat4(t.to(dtype), layout) for t in (sum_dy, sum_dy_xhat))
        if w4 is not None:
            sum_dxhat, sum_dxhat_xhat = sum_dxhat * w4, sum_dxhat_xhat * w4
    # dx = invstd*(dxhat - xhat*sum(dxhat*xhat)/m - sum(dxhat)/m) = dxhat*scale - (x - mean)*a - b, the
    # factors per statistic made once, in one small tensor: inductor stores it rather than recomputing
    # them for every element (and 1/m taken once: no division in the loop over x). Not for batch norm on
    # (N, C), whose factors change along x's rows anyway: there recomputing them costs a few vector products
    # a row, and storing them four more buffers and views a norm in the compiled graph's Python (an MLP's
    # compiled step 11-51 us faster without, docs/benchmarks.md)
    inv_m = 1.0 / m if m else float("nan")  # (m = 0: an empty x, whose dx is empty too)
    factors = [s4 * s4 * sum_dxhat_xhat * inv_m] + ([s4 * sum_dxhat * inv_m] if layout.center else [])
    if per_stat:
        factors.append(scale)
    if not (per_stat and layout.view[3] == 1):
        factors = torch.stack(torch.broadcast_tensors(*factors)).unbind(0)
    if per_stat:
        scale = factors[-1]
    dx4 = dxhat * scale - xc * factors[0]
    if layout.center:  # RMS norm has no mean, so no -sum(dxhat)/m term
        dx4 = dx4 - factors[1]
    return dx4.reshape(x.shape).to(x.dtype), dweight, dbias


__all__ = ["backward", "compute_dtype", "forward", "grad_sums", "set_compute_dtype", "statistics"]

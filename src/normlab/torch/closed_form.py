"""The normalization core in torch ops: the same layouts and closed form, for tensors on any device.

``normlab.core`` runs on NumPy views of CPU tensors. This module is its twin
in torch ops, on the same ``Layout`` (the 4-d view ``(N, G, K, L)``), so a
model moved to a GPU (or any device without NumPy views) keeps working, and
``backend="torch"`` runs it on CPU where it can be tested against the core::

    forward    xhat = (x - mean)*invstd,  out = gamma*xhat + beta
    backward   dx = invstd/m * (m*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))
               (no sum(dxhat) term without a mean: RMS norm; dx = dxhat*invstd
               when the statistics were given)

Statistics and the arithmetic run in float64 (float32 on MPS, which has no
float64); the output takes x's dtype. Everything is differentiable torch ops,
which is what double backward uses: autograd differentiates this backward,
with the statistics recomputed from x (``statistics``) so that their
dependence on x is in the graph.
"""

from __future__ import annotations

import torch

from ..core import Layout


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it, else float32 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _reduced_dims(layout: Layout) -> tuple[int, ...]:
    return (0, 2, 3) if layout.batch_stats else (2, 3)


def _stat4(stat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Statistics of ``layout.stat_shape`` as a 4-d tensor broadcasting against the view."""
    n, g, _, _ = layout.view
    return stat.reshape(1, g, 1, 1) if layout.batch_stats else stat.reshape(n, g, 1, 1)


def _param4(param: torch.Tensor, layout: Layout, dtype: torch.dtype) -> torch.Tensor:
    _, g, k, _ = layout.view
    return param.to(dtype).reshape(1, g, k, 1)


def statistics(x: torch.Tensor, layout: Layout, eps: float, mean=None, var=None):
    """(mean, var, invstd) of ``layout.stat_shape`` in the compute dtype: from x, or the given mean/var.

    var is biased; without a centre (RMS norm) mean is 0 and var the mean square.
    """
    dtype = compute_dtype(x.device)
    if mean is not None:  # copies (O(C)): returned statistics never alias the caller's buffers
        var = var.to(dtype, copy=True)
        return mean.to(dtype, copy=True), var, torch.rsqrt(var + eps)
    x4 = x.reshape(layout.view).to(dtype)
    dims = _reduced_dims(layout)
    if layout.center:
        mean4 = x4.mean(dim=dims, keepdim=True)
        var4 = (x4 - mean4).square().mean(dim=dims, keepdim=True)  # two passes: exact for data far from 0
    else:
        var4 = x4.square().mean(dim=dims, keepdim=True)
        mean4 = torch.zeros_like(var4)
    shape = layout.stat_shape
    return mean4.reshape(shape), var4.reshape(shape), torch.rsqrt(var4 + eps).reshape(shape)


def forward(x, weight, bias, layout: Layout, eps: float, mean=None, var=None):
    """-> (out of x's shape and dtype, mean, var, invstd); mean/var given means inference statistics."""
    mean, var, invstd = statistics(x, layout, eps, mean, var)
    dtype = mean.dtype
    out4 = (x.reshape(layout.view).to(dtype) - _stat4(mean, layout)) * _stat4(invstd, layout)
    if weight is not None:
        out4 = out4 * _param4(weight, layout, dtype)
    if bias is not None:
        out4 = out4 + _param4(bias, layout, dtype)
    return out4.reshape(x.shape).to(x.dtype), mean, var, invstd


def grad_sums(dout, x, mean, invstd, layout: Layout):
    """(sum dy, sum dy*xhat) per statistic over this x, in the compute dtype (batch norm: per channel)."""
    d4 = dout.reshape(layout.view).to(invstd.dtype)
    xhat = (x.reshape(layout.view).to(invstd.dtype) - _stat4(mean, layout)) * _stat4(invstd, layout)
    dims = _reduced_dims(layout)
    return d4.sum(dim=dims).reshape(layout.stat_shape), (d4 * xhat).sum(dim=dims).reshape(layout.stat_shape)


def backward(dout, x, weight, mean, invstd, layout: Layout, stats_given: bool, sums=None):
    """Closed-form -> (dx of x's dtype, dweight, dbias of ``layout.param_shape`` in the compute dtype).

    sums: optional ((sum dy, sum dy*xhat), count) of batch statistics over more
    values than this x holds (synchronized batch norm: the global batch);
    dweight/dbias stay this x's share.
    """
    dtype = invstd.dtype
    d4 = dout.reshape(layout.view).to(dtype)
    invstd4 = _stat4(invstd, layout)
    xhat = (x.reshape(layout.view).to(dtype) - _stat4(mean, layout)) * invstd4
    dbias = d4.sum(dim=(0, 3)).reshape(layout.param_shape)
    dweight = (d4 * xhat).sum(dim=(0, 3)).reshape(layout.param_shape)
    w4 = None if weight is None else _param4(weight, layout, dtype)
    dxhat = d4 if w4 is None else d4 * w4
    if stats_given and sums is None:  # mean and var are constants: only xhat = (x - mean)*invstd remains
        return (dxhat * invstd4).reshape(x.shape).to(x.dtype), dweight, dbias
    dims = _reduced_dims(layout)
    if sums is None:
        m, sum_dxhat = layout.count, dxhat.sum(dim=dims, keepdim=True)
        sum_dxhat_xhat = (dxhat * xhat).sum(dim=dims, keepdim=True)
    else:  # batch statistics (K == 1): the sums of dxhat are gamma times those of dy
        (sum_dy, sum_dy_xhat), m = sums
        sum_dxhat, sum_dxhat_xhat = (_stat4(s.to(dtype), layout) for s in (sum_dy, sum_dy_xhat))
        if w4 is not None:
            sum_dxhat, sum_dxhat_xhat = sum_dxhat * w4, sum_dxhat_xhat * w4
    dx4 = dxhat - xhat * (sum_dxhat_xhat / m)
    if layout.center:  # RMS norm has no mean, so no -sum(dxhat)/m term
        dx4 = dx4 - sum_dxhat / m
    return (dx4 * invstd4).reshape(x.shape).to(x.dtype), dweight, dbias


__all__ = ["backward", "compute_dtype", "forward", "grad_sums", "statistics"]

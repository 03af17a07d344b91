"""Batch norm synchronized over torch.distributed, on CPU tensors (gloo) and on any other device.

torch.nn.SyncBatchNorm refuses CPU tensors; this one takes them and any
other: per step and layer ONE all_gather of per-rank (count, mean, M2) in
the forward, merged with Chan's formula in float64, and ONE all_reduce of
per-channel [sum dy, sum dy*xhat] in the backward. Ranks may hold different
batch sizes, also 0 or 1 samples. Nothing is communicated in eval mode, or
without an initialized process group, or with one rank.

CPU tensors go through ``normlab.distributed`` (the core's kernels on NumPy
views, collectives on CPU float64 buffers); tensors on other devices, and
``backend="torch"``, through the same two collectives on the device's
tensors with the closed form in torch ops (``closed_form``), so a CUDA model
synchronizes over NCCL without a trip through host memory.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed
from ..norms import batch_layout
from . import closed_form
from .checks import check_call, check_tensor
from .modules import _BATCH_NORM_STATE, BatchNorm, _own
from .route import update_batch_state

_DOUBLE_BACKWARD = ("normlab.torch.SyncBatchNorm: double backward (create_graph=True) across ranks is not "
                    "supported (nor is it by torch.nn.SyncBatchNorm)")


def _numpy(t):
    """A float32/64 NumPy view of a CPU tensor (float16/bfloat16 compute in float32)."""
    if t is None:
        return None
    t = t.detach()
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).contiguous().numpy()


class SyncBatchNormFunction(torch.autograd.Function):
    """out, mean, var, count = apply(x, weight, bias, eps, group, backend): the core's kernels on CPU.

    mean, var (biased) and count are the global batch statistics, identical
    on every rank (non-differentiable; for the running statistics).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, backend):
        gamma, beta = _numpy(weight), _numpy(bias)
        if gamma is None and beta is not None:
            gamma = beta * 0 + 1
        if gamma is not None and beta is None:
            beta = gamma * 0
        out, moments, cache = distributed.sync_batchnorm_forward(_numpy(x), gamma, beta, eps, group=group,
                                                                 backend=backend)
        ctx.cache = cache
        ctx.param_dtype = (weight if weight is not None else x).dtype
        ctx.save_for_backward(x)
        stats = torch.from_numpy(moments.mean), torch.from_numpy(moments.var), torch.tensor(cache.count)
        ctx.mark_non_differentiable(*stats)
        return (torch.from_numpy(out).to(x.dtype), *stats)

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar, _dcount):
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        (x,) = ctx.saved_tensors  # raises if x was modified in place since forward
        # Every rank runs this one all_reduce, whichever gradients it needs.
        dx, dgamma, dbeta = distributed.sync_batchnorm_backward(_numpy(dout), ctx.cache)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        pdtype = ctx.param_dtype
        return (torch.from_numpy(dx).to(x.dtype) if need_x else None,
                torch.from_numpy(dgamma).to(pdtype) if need_w and dgamma is not None else None,
                torch.from_numpy(dbeta).to(pdtype) if need_b and dbeta is not None else None,
                None, None, None)


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    try:
        dist.all_gather(parts, t, group=group)
    except RuntimeError as exc:
        raise distributed._collective_failed("synchronized batch norm: all_gather of per-rank batch statistics",
                                             group, exc) from exc
    return torch.stack(parts)


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as exc:
        raise distributed._collective_failed("synchronized batch norm: all_reduce of per-channel gradient sums",
                                             group, exc) from exc
    return t


def _global_moments(x, layout, group):
    """(count, mean, biased var) of the global batch: ``distributed.merge_moments`` in torch ops, on x's device."""
    c, dtype = x.shape[1], closed_form.compute_dtype(x.device, x.dtype)
    count = torch.full((c,), float(layout.count), dtype=dtype, device=x.device)
    if x.numel():
        mean, var, _ = closed_form.statistics(x, layout, 0.0)
    else:
        mean = var = torch.zeros(c, dtype=dtype, device=x.device)
    parts = _all_gather(torch.stack([count, mean, var * count]), group)  # (R, 3, C)
    counts, means, m2s = parts.unbind(1)
    total = counts.sum(0)
    weights = torch.where(total > 0, counts / total.clamp(min=1), 0.0)
    global_mean = (weights * means).sum(0)
    m2 = m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)
    return int(total[0]), global_mean, m2 / total.clamp(min=1)


class TorchSyncBatchNormFunction(torch.autograd.Function):
    """SyncBatchNormFunction's contract on any device: the closed form in torch ops, collectives on x's device."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        layout = batch_layout(tuple(x.shape))
        total, mean, var = _global_moments(x, layout, group)
        if total < 2:  # the same on every rank: all raise alike
            raise ValueError(f"expected more than 1 value per channel over all ranks to compute batch statistics, "
                             f"got {total} (this rank's x has shape {tuple(x.shape)})")
        out, _, _, invstd = closed_form.forward(x, weight, bias, layout, eps, mean, var)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.layout, ctx.total, ctx.group = layout, total, group
        stats = mean, var, torch.tensor(total)
        ctx.mark_non_differentiable(*stats)
        return (out, *stats)

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar, _dcount):
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        x, weight, mean, invstd = ctx.saved_tensors
        sums = torch.stack(closed_form.grad_sums(dout, x, mean, invstd, ctx.layout))
        sums = _all_reduce(sums, ctx.group)  # every rank, whichever gradients it needs
        dx, dw, db = closed_form.backward(dout, x, weight, mean, invstd, ctx.layout, True,
                                          sums=(sums.unbind(0), ctx.total))
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        pdtype = weight.dtype if weight is not None else x.dtype
        return dx if need_x else None, dw.to(pdtype) if need_w else None, db.to(pdtype) if need_b else None, None, None


@torch.compiler.disable  # collectives and NumPy: compiled models run this part eagerly
def _sync_batch_norm(x, weight, bias, eps, group, backend):
    if x.is_cpu and backend != "torch":
        return SyncBatchNormFunction.apply(x, weight, bias, eps, group, backend)
    return TorchSyncBatchNormFunction.apply(x, weight, bias, eps, group)


class SyncBatchNorm(BatchNorm):
    """Batch norm whose training statistics are those of the batch over all ranks of ``process_group``.

    torch.nn.SyncBatchNorm's constructor; parameters, buffers and state_dict
    as torch.nn.BatchNorm*d; input (N, C, *), N may be 0 on some ranks.
    Running statistics are updated from the global mean and the global
    unbiased variance (global count). Every rank of the group must call
    forward and backward for every batch, as with torch.nn.SyncBatchNorm.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, bias=True, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         backend=backend)
        self.process_group = process_group

    def _synchronizes(self) -> bool:
        """torch.nn.SyncBatchNorm's rule: synchronize only when training (with batch statistics) on more
        than one rank."""
        return self.training and distributed.world_size(self.process_group) > 1

    def forward(self, input):
        if not self._synchronizes():
            return super().forward(input)
        check_tensor(input, "input")
        self._check_input_dim(input)
        weight, bias, running_mean, running_var, num_batches_tracked = _own(self, _BATCH_NORM_STATE)
        if not self.track_running_stats:
            running_mean = running_var = None
        # The same checks as every route's, before anything is communicated or written (a rank may hold
        # fewer than 2 samples: the count that matters is the global one, checked after the all_gather).
        spec, _ = check_call("batch", (), self.eps, self.backend, input, weight, bias, running_mean, running_var,
                             True, torch.is_grad_enabled(), local_count=False)
        out, mean, var, count = _sync_batch_norm(input, weight, bias, spec.eps, self.process_group, self.backend)
        counts = self.track_running_stats and num_batches_tracked is not None
        update_batch_state("batch", int(count), running_mean, running_var, num_batches_tracked if counts else None,
                           self.momentum, mean, var)
        return out


def _copy_state(source: _BatchNorm, target: _BatchNorm) -> None:
    with torch.no_grad():
        if source.affine:
            target.weight = source.weight
            target.bias = source.bias
        target.running_mean = source.running_mean
        target.running_var = source.running_var
        target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig


def convert_sync_batchnorm(module: torch.nn.Module, process_group=None) -> torch.nn.Module:
    """Replace every batch norm in ``module`` (torch.nn.BatchNorm1d/2d/3d, torch.nn.SyncBatchNorm,
    normlab.torch.BatchNorm*) by a normlab.torch.SyncBatchNorm sharing its parameters and buffers.

    Works in place on containers, like torch.nn.SyncBatchNorm.convert_sync_batchnorm, and
    returns the converted module (a new one if ``module`` itself is a batch norm).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, process_group,
                                  backend=getattr(module, "backend", "auto"))
        _copy_state(module, converted)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module


__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "TorchSyncBatchNormFunction", "convert_sync_batchnorm"]

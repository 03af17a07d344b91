"""Batch norm synchronized over torch.distributed, on CPU tensors (gloo) and any backend.

torch.nn.SyncBatchNorm refuses CPU tensors; this one is built on
``normlab.distributed``: per step and layer ONE all_gather of per-rank
(count, mean, M2) in the forward, merged with Chan's formula in float64, and
ONE all_reduce of per-channel [sum dy, sum dy*xhat] in the backward. Ranks may
hold different batch sizes, also 0 or 1 samples. Nothing is communicated in
eval mode, or without an initialized process group, or with one rank.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed
from .functions import as_numpy, check_once_differentiable, check_tensor, update_running_stats
from .modules import BatchNorm


class SyncBatchNormFunction(torch.autograd.Function):
    """out, mean, var, count = apply(x, weight, bias, eps, group, backend).

    mean, var (biased) and count are the global batch statistics, identical
    on every rank (non-differentiable; for the running statistics).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, backend):
        gamma = None if weight is None else as_numpy(weight, "weight")
        beta = None if bias is None else as_numpy(bias, "bias")
        if gamma is not None and beta is None:
            beta = gamma * 0
        out, moments, cache = distributed.sync_batchnorm_forward(
            as_numpy(x, "input"), gamma, beta, eps, group=group, backend=backend)
        ctx.cache = cache
        ctx.save_for_backward(x)
        stats = torch.from_numpy(moments.mean), torch.from_numpy(moments.var), torch.tensor(cache.count)
        ctx.mark_non_differentiable(*stats)
        return (torch.from_numpy(out), *stats)

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar, _dcount):
        check_once_differentiable("batch_norm")
        ctx.saved_tensors  # noqa: B018 - raises if x was modified in place since forward
        # Every rank runs this one all_reduce, whichever gradients it needs.
        dx, dgamma, dbeta = distributed.sync_batchnorm_backward(as_numpy(dout, "grad_output"), ctx.cache)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (torch.from_numpy(dx) if need_x else None,
                torch.from_numpy(dgamma) if need_w and dgamma is not None else None,
                torch.from_numpy(dbeta) if need_b and dbeta is not None else None,
                None, None, None)


class SyncBatchNorm(BatchNorm):
    """Batch norm whose training statistics are those of the batch over all ranks of ``process_group``.

    Same parameters, buffers and state_dict as torch.nn.BatchNorm*d; input
    (N, C), (N, C, L) or (N, C, H, W), N may be 0 on some ranks. Running
    statistics are updated from the global mean and the global unbiased
    variance (global count). Every rank of the group must call forward and
    backward for every batch, as with torch.nn.SyncBatchNorm.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         backend=backend)
        self.process_group = process_group

    def _check_input_dim(self, input):
        check_tensor(input, "input")
        if input.dim() < 2:
            raise ValueError(f"expected at least a 2-d input (N, C, *), got shape {tuple(input.shape)}")
        self._check_channels(input)

    def forward(self, input):
        # torch.nn.SyncBatchNorm's rule: synchronize only when training (with batch statistics).
        if not (self.training and distributed.world_size(self.process_group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        out, mean, var, count = SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps,
                                                            self.process_group, self.backend)
        if self._counts_batch():
            update_running_stats(self.running_mean, self.running_var, mean, var, int(count),
                                 self._update_factor())
            self.num_batches_tracked.add_(1)
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
    normlab.torch.BatchNorm) by a normlab.torch.SyncBatchNorm sharing its parameters and buffers.

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


__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "convert_sync_batchnorm"]

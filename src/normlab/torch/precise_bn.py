"""Precise BN for torch models: running statistics replaced by the population statistics of data.

``update_bn_stats(model, batches)`` runs the model in training mode, without
gradients, on each batch; a forward pre-hook on every batch-norm module
(``torch.nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``normlab.torch.BatchNorm``:
any ``_BatchNorm`` with running statistics) records the per-channel moments
of its input in float64; they are pooled over all batches weighted by their
counts (``normlab.population``) and written into ``running_mean`` and
``running_var`` at the end. The result is exactly the mean and variance of
every value each layer saw, where ``torch.optim.swa_utils.update_bn`` and
fvcore's ``update_bn_stats`` average the batches' variances (which leaves
out the spread of the batch means). Like those, it uses the local data only
(no all-reduce across ranks).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from ..distributed import Moments
from ..population import PooledMoments, check_num_batches, run_batches


def _batch_norms(model: torch.nn.Module) -> list:
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _moments(x: torch.Tensor) -> Moments:
    """Per-channel (count, mean, M2) of x (N, C, *) over all but axis 1, in float64."""
    x = x.detach().to(torch.float64)
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    m2 = (x - mean.view(1, -1, *([1] * (x.dim() - 2)))).square().sum(dim=dims)
    count = np.full(x.shape[1], x.numel() / max(x.shape[1], 1))
    return Moments(count, mean.cpu().numpy(), m2.cpu().numpy())


def update_bn_stats(model: torch.nn.Module, batches: Iterable, num_batches: int | None = None,
                    progress: Callable[[int], None] | None = None) -> int:
    """Set every batch norm's ``running_mean``/``running_var`` to its input's population statistics over ``batches``.

    batches: an iterable of model inputs, or of (inputs, targets, ...) tuples
    or lists (a DataLoader's batches). num_batches: use at most this many
    (None: all). progress: called with the number of batches done after each.
    Returns the number of batches used. An empty iterable leaves the
    statistics as they were (with a RuntimeWarning, also for fewer than
    num_batches). Afterwards every module is back in its train/eval mode,
    every batch norm has its momentum and ``num_batches_tracked``, and
    parameters are untouched; if a batch raises, the buffers are restored.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; for normlab.lab nets use "
                        f"normlab.lab.precise_bn.update_bn_stats")
    num_batches = check_num_batches(num_batches)
    bns = _batch_norms(model)
    modes = {m: m.training for m in model.modules()}
    saved = {bn: (bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns}
    pool = PooledMoments()
    hooks = [bn.register_forward_pre_hook(lambda module, args: pool.add(module, _moments(args[0]))) for bn in bns]
    try:
        model.train()
        for bn in bns:
            bn.momentum = 0.0  # the running buffers stay put during the pass (momentum None would average)
        with torch.no_grad():
            used = run_batches(batches, num_batches, model, progress)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for bn, (momentum, mean, var, tracked) in saved.items():
                bn.momentum = momentum
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(tracked)
    with torch.no_grad():
        for bn in bns:
            if bn in pool:
                mean, var = pool.mean_var(bn)
                bn.running_mean.copy_(torch.from_numpy(mean))
                bn.running_var.copy_(torch.from_numpy(var))
    return used

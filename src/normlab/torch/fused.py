"""The eager route on CPU: tensor memory straight into one fused kernel launch per direction.

A training step calls every norm once forward and once backward, and on the
inputs of ordinary models (a BatchNorm1d on (128, 512), a ResNet block at
batch 8, a transformer's LayerNorm) the general route — ``ops.core_forward``
into ``core.run_forward``, the backend's dispatch, dtype conversions, the
cache — costs more than the kernels. For the cases that dominate real models
(float32/float64 C-contiguous input and parameters, the Numba backend) this
module looks up once per input signature which kernels serve it
(``numba_backend.fused_plan``: batch statistics below a size, given
statistics (inference) at every size, every per-sample norm) and then calls
them on NumPy views of the tensors' memory.
The kernels are the core's own, so results are bit for bit those of the
general route; anything else, and a batch whose statistics come out non-finite
(which the core rescales or reports), takes the general route.

Where the native autograd node (``fused_node``) was built, the plan carries the
kernels' C entry points (``Plan.native``, the node's ``Plan`` object) and
:func:`run_native` hands the whole call to it: it allocates, calls the kernels,
updates batch norm's running statistics and records its own graph node in C++.
Elsewhere the kernels are called from Python (:func:`forward`, :func:`backward`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from ..backends import get_backend, plan_record
from . import fused_node, memory, ops

_DTYPES = (torch.float32, torch.float64)


class Plan(NamedTuple):
    """The backend's kernels for one input signature, and the shapes the bridge needs around them."""

    kernels: object  # numba_backend.FusedPlan or RowsPlan: ``view``, ``run_forward``, ``run_backward``
    stat_shape: tuple  # the statistics as the user sees them ((C,) for batch norm, (N, ...) per sample)
    param_shape: tuple  # weight's and bias's shape
    count: int  # values per statistic
    #: the native node's ``Plan`` (``fused_node.cpp``: the norm and its plan record, ``plan_record``); None: the
    #: route stays in Python (the node could not be built)
    native: object = None
    #: given statistics above the fused sizes: only for calls that need no gradient (:func:`serves`)
    forward_only: bool = False

    @property
    def view(self) -> tuple:
        return self.kernels.view

    @property
    def channels(self) -> int:
        return math.prod(self.param_shape)


@functools.lru_cache(maxsize=256)
def plan_for(kind: str, shape: tuple, arg: tuple, dtype: torch.dtype, backend: str,
             given: bool = False) -> Plan | None:
    """The fused kernels for norm ``kind`` (a key of ``ops.LAYOUTS``) of an input of ``shape``, or None.

    shape and arg are already validated (``functions._check``); given: the statistics are given (batch norm
    in eval mode), which any size of batch norm serves in one launch (a ``forward_only`` plan above the
    fused sizes).
    """
    if dtype not in _DTYPES or backend == "torch" or math.prod(shape) == 0:
        return None
    try:
        planner = getattr(get_backend(backend), "fused_plan", None)
    except ImportError:
        return None
    layout = ops.layout_of_shape(kind, tuple(shape), arg)
    kernels = None if planner is None else planner(layout.view, layout.batch_stats, layout.center, given)
    if kernels is None:
        return None
    native, node = None, fused_node.load()
    if node is not None:
        fields = kernels.entry_points(np.float32 if dtype == torch.float32 else np.float64)
        native = node.Plan(kind, list(arg), plan_record.record(
            **fields, numel=math.prod(shape), stats=math.prod(layout.stat_shape),
            params=math.prod(layout.param_shape), huge_page_bytes=memory.HUGE_PAGE_MIN_BYTES))
    return Plan(kernels, layout.stat_shape, layout.param_shape, layout.count, native, kernels.forward_only)


def serves(plan: Plan, x: torch.Tensor, weight, bias) -> bool:
    """Whether ``plan`` serves this call: a ``forward_only`` plan only where autograd will not ask for a
    backward (no grad mode, or nothing requires grad)."""
    if not plan.forward_only or not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or (weight is not None and weight.requires_grad)
                or (bias is not None and bias.requires_grad))


def run_native(plan: Plan, x, weight, bias, mean, var, running_mean=None, running_var=None,
               num_batches_tracked=None, momentum=None, eps: float = 1e-5):
    """-> (out, stats) from the native node (``plan.native`` not None): stats a float64 (3, S) tensor, S the
    number of statistics; out None when the computed statistics are not finite, weight/bias differ from
    x's dtype, or an input carries a forward-mode tangent (nothing changed: the caller takes another
    route). Running buffers and num_batches_tracked, when given (batch norm), are updated (momentum None:
    cumulative average)."""
    return fused_node.load().fused_norm(x, weight, bias, mean, var, running_mean, running_var, num_batches_tracked,
                                        momentum, eps, plan.native)


def usable(x: torch.Tensor, *others) -> bool:
    """Whether x and the per-channel tensors (None allowed) can be handed to the kernels as they are."""
    if not x.is_contiguous():
        return False
    for t in others:  # a loop, not all(generator): this runs on every call
        if t is not None and (t.dtype not in _DTYPES or not t.is_contiguous()):
            return False
    return True


def _param(t, fill: float, channels: int) -> np.ndarray:
    """weight or bias as the flat (channels,) array the kernels take, or a constant one when None."""
    return np.full(channels, fill) if t is None else t.detach().numpy().reshape(-1)


def operands(plan: Plan, x: torch.Tensor, weight) -> tuple:
    """(x, weight) as NumPy views in the kernels' shapes: what :func:`forward` uses and :func:`backward` takes."""
    return x.detach().numpy().reshape(plan.view), _param(weight, 1.0, plan.channels)


def forward(plan: Plan, x: torch.Tensor, weight, bias, eps: float, mean=None, var=None):
    """-> (out, stats, operands): stats a float64 (3, *stat_shape) array of mean, biased var (RMS norm:
    mean 0 and the mean square), invstd; operands the NumPy views of x and weight :func:`backward` takes.

    mean/var: given statistics of stat_shape, or None (the input's). None instead of
    a result when the input's statistics are not finite: the general route decides.
    """
    out = memory.empty_like(x)
    stats = np.empty((3, *plan.stat_shape))
    flat = stats.reshape(3, -1)
    given = mean is not None
    if given:
        flat[0], flat[1] = mean.detach().numpy().reshape(-1), var.detach().numpy().reshape(-1)
    xv_gamma = operands(plan, x, weight)
    plan.kernels.run_forward(*xv_gamma, _param(bias, 0.0, plan.channels), eps, given, flat,
                             out.numpy().reshape(plan.view))
    if not given and not np.isfinite(flat[:2]).all():
        return None
    return out, stats, xv_gamma


def backward(plan: Plan, dout: torch.Tensor, x: torch.Tensor, xv_gamma, stats: np.ndarray, given: bool):
    """-> (dx, dweight, dbias): the closed form for :func:`forward`'s stats and operands; dweight and
    dbias float64 (channels,) arrays of their own (autograd takes tensors on separate arrays fastest)."""
    if dout.dtype != x.dtype or not dout.is_contiguous():
        dout = dout.to(x.dtype, memory_format=torch.contiguous_format)
    dx = memory.empty_like(x)
    xv, gam = xv_gamma
    dweight, dbias = plan.kernels.run_backward(xv, dout.numpy().reshape(plan.view), gam, stats.reshape(3, -1), given,
                                               dx.numpy().reshape(plan.view))
    return dx, dweight.reshape(plan.param_shape), dbias.reshape(plan.param_shape)


def update_running(plan: Plan, running_mean: torch.Tensor, running_var: torch.Tensor, stats: np.ndarray,
                   factor: float) -> None:
    """Fold :func:`forward`'s batch statistics into running buffers that :func:`usable` accepted, in place
    (the one rule, ``normlab.running_rule``, compiled)."""
    plan.kernels.update_running(running_mean.detach().numpy(), running_var.detach().numpy(), stats[0], stats[1],
                                plan.count, float(factor))

"""The eager route of batch norm on CPU: tensor memory straight into one fused kernel per direction.

A training step calls every BatchNorm once forward and once backward, and on
the inputs of ordinary models (a BatchNorm1d on (128, 512), a ResNet block at
batch 8) the general route — ``ops.core_forward`` into ``core.run_forward``,
the backend's dispatch, dtype conversions, the cache — costs more than the
kernels. For the case that dominates real models (float32/float64 C-contiguous
input and parameters, batch or given statistics, the Numba backend) this module
looks up once per input shape which kernels serve it
(``numba_backend.fused_plan``) and then calls them on NumPy views of the
tensors' memory. The kernels are the core's own, so results are bit for bit
those of the general route; anything else, and a batch whose statistics come
out non-finite (which the core rescales or reports), takes the general route.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..backends import get_backend
from . import memory

_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=256)
def plan_for(kind: str, shape: tuple, dtype: torch.dtype, backend: str):
    """The backend's ``FusedPlan`` for batch norm of an input (N, C, *) of ``shape``, or None."""
    if kind != "batch" or dtype not in _DTYPES or len(shape) < 2 or backend == "torch":
        return None
    try:
        impl = get_backend(backend)
    except ImportError:
        return None
    planner = getattr(impl, "fused_plan", None)
    n, c, l = shape[0], shape[1], math.prod(shape[2:])
    if planner is None or n * c * l == 0:
        return None
    return planner((n, c, 1, l))


def usable(x: torch.Tensor, *others) -> bool:
    """Whether x and the per-channel tensors (None allowed) can be handed to the kernels as they are."""
    if not x.is_contiguous():
        return False
    for t in others:  # a loop, not all(generator): this runs on every call
        if t is not None and (t.dtype not in _DTYPES or not t.is_contiguous()):
            return False
    return True


def param(t, fill: float, channels: int) -> np.ndarray:
    return np.full(channels, fill) if t is None else t.detach().numpy()


def forward(plan, x: torch.Tensor, weight, bias, eps: float, mean=None, var=None):
    """-> (out, stats, operands): stats a float64 (3, C) array of mean, biased var, invstd; operands the
    NumPy views of x and weight that :func:`backward` takes.

    mean/var: given statistics (C,) or None (the batch's). None instead of a
    result when the batch's statistics are not finite: the general route decides.
    """
    c = x.shape[1]
    out = memory.empty_like(x)
    stats = np.empty((3, c))
    given = mean is not None
    if given:
        stats[0], stats[1] = mean.detach().numpy(), var.detach().numpy()
    operands = (x.detach().numpy().reshape(plan.view), param(weight, 1.0, c))
    plan.forward(*operands, param(bias, 0.0, c), eps, given, stats[0], stats[1], stats[2],
                 out.numpy().reshape(plan.view), *plan.extra)
    if not given and not np.isfinite(stats[:2]).all():
        return None
    return out, stats, operands


def backward(plan, dout: torch.Tensor, x: torch.Tensor, operands, stats: np.ndarray, given: bool):
    """-> (dx, dweight, dbias): the closed form for :func:`forward`'s stats and operands; dweight and
    dbias float64 (C,) arrays of their own (autograd takes tensors on separate arrays fastest)."""
    if dout.dtype != x.dtype or not dout.is_contiguous():
        dout = dout.to(x.dtype, memory_format=torch.contiguous_format)
    dx = memory.empty_like(x)
    xv, gam = operands
    dweight, dbias = np.empty(x.shape[1]), np.empty(x.shape[1])
    plan.backward(xv, dout.numpy().reshape(plan.view), gam, stats[0], stats[2], given, dweight, dbias,
                  dx.numpy().reshape(plan.view), *plan.extra)
    return dx, dweight, dbias


def update_running(plan, running_mean: torch.Tensor, running_var: torch.Tensor, stats: np.ndarray,
                   factor: float) -> None:
    """Fold :func:`forward`'s batch statistics into running buffers that :func:`usable` accepted, in place
    (the one rule, ``normlab.running_rule``, compiled)."""
    plan.update_running(running_mean.detach().numpy(), running_var.detach().numpy(), stats[0], stats[1], plan.count,
                        float(factor))

"""The native route's plan: which fused kernels serve an input signature, and the native node's record of them.

A training step calls every norm once forward and once backward, and on the
inputs of ordinary models (a BatchNorm1d on (128, 512), a ResNet block at
batch 8, a transformer's LayerNorm) the core's general route — ``ops.core_forward``
into ``core.run_forward``, the backend's dispatch, dtype conversions, the
cache — costs more than the kernels. For the cases that dominate real models
(float32/float64 C-contiguous input and parameters, the Numba backend) the
native autograd node (``fused_node``) does the whole call in C++: it allocates,
calls the kernels through their C entry points, updates batch norm's running
statistics and records its own graph node. :func:`plan_for` says, once per
input signature, which kernels serve it (``numba_backend.fused_plan``: batch
statistics below a size, given statistics (inference) at every size, every
per-sample norm) and writes the node's plan record (``plan_record``) for them.
The kernels are the core's own, so results are bit for bit those of the core's
route; a batch whose statistics come out non-finite (which the core rescales or
reports) goes to the core's route.
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
    """The fused kernels for one input signature, and the shapes the bridge needs around them."""

    kernels: object  # numba_backend.FusedPlan or RowsPlan
    stat_shape: tuple  # the statistics as the user sees them ((C,) for batch norm, (N, ...) per sample)
    param_shape: tuple  # weight's and bias's shape
    count: int  # values per statistic
    #: the native node's ``Plan`` (``fused_node.cpp``: the norm and its plan record, ``plan_record``)
    native: object
    #: given statistics above the fused sizes: only for calls that need no gradient
    forward_only: bool = False


@functools.lru_cache(maxsize=256)
def plan_for(kind: str, shape: tuple, arg: tuple, dtype: torch.dtype, backend: str,
             given: bool = False) -> Plan | None:
    """The native node's plan for norm ``kind`` (a key of ``ops.LAYOUTS``) of an input of ``shape``, or None
    (no fused kernels serve it, or the node could not be built).

    shape and arg are already validated (``checks.check_call``); given: the statistics are given (batch norm
    in eval mode), which any size of batch norm serves in one launch (a ``forward_only`` plan above the
    fused sizes).
    """
    node = fused_node.load()
    if node is None or dtype not in _DTYPES or backend == "torch" or math.prod(shape) == 0:
        return None
    try:
        planner = getattr(get_backend(backend), "fused_plan", None)
    except ImportError:
        return None
    layout = ops.layout_of_shape(kind, tuple(shape), arg)
    kernels = None if planner is None else planner(layout.view, layout.batch_stats, layout.center, given)
    if kernels is None:
        return None
    fields = kernels.entry_points(np.float32 if dtype == torch.float32 else np.float64)
    native = node.Plan(kind, list(arg), plan_record.record(
        **fields, numel=math.prod(shape), stats=math.prod(layout.stat_shape), params=math.prod(layout.param_shape),
        huge_page_bytes=memory.HUGE_PAGE_MIN_BYTES))
    return Plan(kernels, layout.stat_shape, layout.param_shape, layout.count, native, kernels.forward_only)


__all__ = ["Plan", "plan_for"]

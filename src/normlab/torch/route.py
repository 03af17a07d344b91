"""One way into every norm: the call's signature, its checks once per signature, and the plan each route takes.

Every module and functional of normlab.torch calls :func:`normalize`. It keys
the call by its complete signature — input, weight, bias, running statistics
and num_batches_tracked (class, shape, dtype, device, layout, contiguity,
requires_grad), the norm and its argument, eps and its type, the backend — and
looks up the :class:`Plan` for it; a new signature is checked first
(``checks.check_call``: everything any kernel will touch), so bad input raises
before any route runs, on every route. Three routes remain, and one call under torch.compile::

    module / functional --> normalize --> Plan (cached per signature)
      eager CPU  |-- "native"  fused_node.fused_norm: the whole call in C++ (forward, batch norm's
                 |             running statistics, its graph node), where the node is built and the
                 |             fused kernels serve the signature
                 `-- "core"    EagerNormFunction: the core (NumPy/Numba) from Python: where the node is
                               not built (NORMLAB_NATIVE=0), float16/bfloat16, strided or channels_last
                               input, mixed dtypes, sizes the fused kernels do not serve, statistics
                               that come out non-finite (the core rescales or reports them)
      otherwise  `-- "ops"     NormFunction: other devices, backend="torch", empty input, torch.func or
                               tracing (custom operators on CPU, the closed form in torch ops elsewhere;
                               double backward everywhere)
      compiled   --> ``compiled.traced_norm``: the checks and NormFunction's closed form in torch ops as one
                     node to dynamo (no guards on what it reads), which inductor fuses

Batch norm's state (running statistics, num_batches_tracked) changes only after
the checks and the forward have passed: in the node on the native route, in
:func:`update_batch_state` on every other (SyncBatchNorm's too). What each route
costs per call is in docs/benchmarks.md ("Whole training steps").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..backends import get_backend
from ..running_rule import blend_running_stats
from . import closed_form, compiled, fused, fused_node
from .autograd import EagerNormFunction, NormFunction
from .checks import Spec, check_call, check_tensor

_STRIDED = torch.strided
_PLANS: dict = {}
_MAX_PLANS = 4096  # a program that makes more signatures than this starts over (the checks run again)


class Plan(NamedTuple):
    """What one call signature takes: its route, the checked spec and layout, and the state it changes."""

    route: str  # "native", "core" or "ops"
    spec: Spec
    layout: object  # the norm's core.Layout for the input's shape
    #: running statistics or num_batches_tracked change in :func:`update_batch_state` after the call
    python_state: bool = False
    node: object = None  # the native node's module (route "native")
    native: object = None  # the node's Plan for this signature (route "native")
    #: the node updates the running statistics and num_batches_tracked itself (batch norm in training)
    native_state: bool = False
    fallback: object = None  # the core's plan, for a call the node declines (statistics not finite)


def _signature(t):
    """One tensor's part of a call's key (None: absent), as ``fused_node.cpp``'s ``signature`` encodes it."""
    if t is None:
        return None
    if t.layout is not _STRIDED:
        return t.__class__, t.layout, t.dtype, t.device, t.requires_grad  # (checks.check_call refuses it)
    return t.__class__, t.shape, t.dtype, t.is_cpu or t.device, t.is_contiguous(), t.requires_grad


def signature(x, weight, bias, running_mean, running_var, num_batches_tracked):
    """The call's tensors as a key: the native node's encoding where it is built (cheaper per call), else
    a tuple of :func:`_signature`'s."""
    node = fused_node.load()
    if node is not None:
        key = node.signature(x, weight, bias, running_mean, running_var, num_batches_tracked)
        if key is not None:
            return key
    return (_signature(x), _signature(weight), _signature(bias), _signature(running_mean),
            _signature(running_var), _signature(num_batches_tracked))


def eager(x: torch.Tensor) -> bool:
    """Whether this call may take the native or core route: a CPU input, neither compiled, nor under a
    torch.func transform, nor traced by torch.jit (the tracer sees no torch op in either: a trace would keep
    the traced input's result as a constant)."""
    return (x.is_cpu and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
            and not torch.jit.is_tracing())


def normalize(kind: str, arg: tuple, eps, backend: str, x, weight, bias, running_mean=None, running_var=None,
              batch_stats: bool = True, num_batches_tracked=None, momentum=None, stats: bool = False):
    """Norm ``kind`` of x: the output, and with ``stats`` also (mean, var, invstd) tensors of the layout's
    stat_shape (float64; views of what the backward reads, so an in-place edit of them is refused there).

    arg: normalized_shape or (groups,), as ``checks.normalized_shape_arg``/``groups_arg`` return it.
    batch_stats: normalize with x's statistics and update running_mean/var when given (factor
    ``momentum``; None: cumulative over num_batches_tracked, as torch.nn); else normalize with them.
    num_batches_tracked: counted after a successful call (batch norm modules).
    """
    if isinstance(eps, torch.Tensor):
        eps = eps.item() if eps.dim() == 0 and not eps.requires_grad else eps  # torch takes a 0-d tensor
    if torch.compiler.is_compiling():  # (a constant to dynamo: only this branch is traced)
        return _compiled(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
                         num_batches_tracked, momentum, stats)
    try:
        plain = eager(x)
    except AttributeError:  # not a tensor
        check_tensor(x, "input")
        raise
    if not plain:
        plan = _make_plan(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
                          num_batches_tracked, momentum, cached=False)
    else:
        try:
            key = (kind, arg, eps, eps.__class__, backend, batch_stats, momentum is None, torch.is_grad_enabled(),
                   signature(x, weight, bias, running_mean, running_var, num_batches_tracked))
            plan = _PLANS.get(key)
        except (AttributeError, TypeError):  # not tensors, or unhashable arguments: the checks say which
            key = plan = None
        if plan is None:
            plan = _make_plan(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
                              num_batches_tracked, momentum, cached=key is not None)
            if key is not None:
                if len(_PLANS) >= _MAX_PLANS:
                    _PLANS.clear()
                _PLANS[key] = plan
    return _run(plan, x, weight, bias, running_mean, running_var, batch_stats, num_batches_tracked, momentum, stats)


def _compiled(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats, num_batches_tracked,
              momentum, with_stats):
    """:func:`normalize` under torch.compile: the call as one node (``compiled.traced_norm``), then the state."""
    if not isinstance(x, torch.Tensor):
        check_tensor(x, "input")
    four = (weight, bias, running_mean, running_var)
    float64 = closed_form.compute_dtype(x.device, x.dtype) == torch.float64  # (read here: dynamo guards it)
    out, mean, var, invstd = compiled.traced_norm(x, [t for t in four if t is not None],
                                                  tuple(t is not None for t in four), kind, tuple(arg), eps, backend,
                                                  batch_stats, torch.is_grad_enabled(), float64)
    if num_batches_tracked is not None or (batch_stats and running_mean is not None):
        # values per statistic: x's over the statistics' count (0 for an empty batch, which leaves them)
        count = x.numel() // mean.numel() if x.numel() else 0
        update_batch_state(kind, count, running_mean if batch_stats else None, running_var if batch_stats else None,
                           num_batches_tracked, momentum, mean, var)
    return (out, mean, var, invstd) if with_stats else out


def _make_plan(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
               num_batches_tracked, momentum, cached: bool) -> Plan:
    """The checks of a new signature, and the route it takes (cached: the call is eager)."""
    spec, layout = check_call(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
                              torch.is_grad_enabled())
    state = num_batches_tracked is not None or (batch_stats and running_mean is not None)
    if not cached or x.numel() == 0 or backend == "torch" or not x.is_cpu:
        return Plan("ops", spec, layout, state)
    core = Plan("core", spec, layout, state)
    native = fused.plan_for(kind, tuple(x.shape), spec.arg, x.dtype, backend, not batch_stats) \
        if _native_tensors(x, weight, bias) else None
    if native is None or (native.forward_only and _needs_grad(x, weight, bias)):
        return core
    native_state = kind == "batch" and state
    if native_state and not _native_state(running_mean, running_var, num_batches_tracked):
        return core
    return Plan("native", spec, layout, state and not native_state, fused_node.load(), native.native, native_state,
                core)


def _native_tensors(x, *others) -> bool:
    """x a plain contiguous float32/float64 tensor, the others (None allowed) contiguous and of x's dtype."""
    if x.__class__ not in (torch.Tensor, torch.nn.Parameter) or not x.is_contiguous() or \
            x.dtype not in (torch.float32, torch.float64):
        return False
    return all(t is None or (t.dtype == x.dtype and t.is_contiguous()) for t in others)


def _native_state(running_mean, running_var, num_batches_tracked) -> bool:
    """Buffers the node updates itself: contiguous float32/float64 statistics of one dtype, a one-element
    int64 CPU count."""
    if running_mean is not None and not (
            running_mean.dtype == running_var.dtype and running_mean.dtype in (torch.float32, torch.float64)
            and running_mean.is_contiguous() and running_var.is_contiguous()):
        return False
    nbt = num_batches_tracked
    return nbt is None or (nbt.dtype == torch.int64 and nbt.is_cpu and nbt.numel() == 1 and nbt.is_contiguous())


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _run(plan: Plan, x, weight, bias, running_mean, running_var, batch_stats, num_batches_tracked, momentum,
         with_stats: bool):
    """The call on its plan's route; running statistics and the count updated after it succeeded."""
    mean = var = None
    if not batch_stats:
        mean, var = running_mean, running_var
        if plan.spec.kind == "instance":  # one statistic per (sample, channel): the channel's, for every sample
            mean, var = mean.expand(plan.layout.stat_shape), var.expand(plan.layout.stat_shape)
    if plan.route == "native":
        if plan.native_state:  # (batch norm in training: the node folds in the statistics and counts the batch)
            out, stats = plan.node.fused_norm(x, weight, bias, None, None, running_mean, running_var,
                                              num_batches_tracked, momentum, plan.spec.eps, plan.native)
        else:
            out, stats = plan.node.fused_norm(x, weight, bias, mean, var, None, None, None, None, plan.spec.eps,
                                              plan.native)
        if out is not None:
            if not (with_stats or plan.python_state):
                return out
            stats = stats.view(3, *plan.layout.stat_shape)
        else:  # statistics not finite, or a forward-mode tangent: nothing changed, the core decides
            plan = plan.fallback
    if plan.route == "core":
        sink = []
        out = EagerNormFunction.apply(x, weight, bias, mean, var, plan.spec, sink)
        stats = sink[0]
    elif plan.route == "ops":
        out, *stats = NormFunction.apply(x, weight, bias, mean, var, plan.spec)
    if plan.python_state:
        update_batch_state(plan.spec.kind, plan.layout.count if x.numel() else 0, running_mean if batch_stats else None,
                           running_var if batch_stats else None, num_batches_tracked, momentum, stats[0], stats[1])
    return (out, stats[0], stats[1], stats[2]) if with_stats else out


# ----------------------------------------------------------------------------- state

def update_batch_state(kind: str, count: int, running_mean, running_var, num_batches_tracked, momentum,
                       batch_mean, batch_var) -> None:
    """The one place (outside the native node) where a call changes state, after its forward succeeded:
    fold the batch's statistics into running_mean/var (None: not tracked) and count the batch in
    num_batches_tracked (None: not counted), as torch.nn does.

    Everything that can refuse (an inference-mode count outside inference mode, a cumulative factor from a
    count that is not one number) is asked before anything is written. count: values per statistic (0: an
    empty batch, which leaves the running statistics as they are); batch_mean/var: the call's statistics
    (per sample for instance norm, whose running statistics take their mean over the batch). momentum
    None: the cumulative average 1 / (num_batches_tracked + 1).
    """
    nbt, compiling = num_batches_tracked, torch.compiler.is_compiling()
    if nbt is not None and not compiling and nbt.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("Inplace update to inference tensor outside InferenceMode is not allowed: "
                           "num_batches_tracked was made under torch.inference_mode, and a training forward "
                           "outside it would count the batch in place (clone the buffers, or run under "
                           "inference_mode)")
    if kind == "instance" and count and not compiling and not torch.is_inference_mode_enabled():
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and t.is_inference():  # (torch's instance norm copies into them in place)
                raise RuntimeError(f"Inplace update to inference tensor outside InferenceMode is not allowed: "
                                   f"{name} was made under torch.inference_mode (clone it, or run under "
                                   f"inference_mode)")
    factor = momentum
    if momentum is None and nbt is None:
        factor = 0.0
    elif momentum is None:  # (a tensor under torch.compile, which need not read the count back)
        factor = 1.0 / (nbt.double() + 1) if compiling else 1.0 / (float(nbt) + 1)
    if count and (running_mean is not None or running_var is not None):
        if kind == "instance":  # the batch's average instance statistics, per channel
            batch_mean, batch_var = batch_mean.mean(0), batch_var.mean(0)
        update_running_stats(running_mean, running_var, batch_mean, batch_var, count, factor)
    if nbt is not None:
        with torch.no_grad():
            nbt.add_(1)


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count: int, factor) -> None:
    """Update torch buffers in place with torch.nn.BatchNorm's rule (``normlab.running_rule.blend_running_stats``).

    batch_mean/batch_var: the batch's statistics (var biased over ``count``
    values per channel), tensors or float64 NumPy arrays; factor: a number or
    a 0-d tensor. In eager mode on CPU buffers the O(C) arithmetic runs on
    NumPy views in one compiled call (a handful of torch calls cost more than it).
    """
    if (running_mean is not None and running_var is not None and not torch.compiler.is_compiling()
            and _numpy_view_ok(running_mean) and _numpy_view_ok(running_var)
            and (isinstance(batch_mean, np.ndarray) or batch_mean.is_cpu)
            and (not isinstance(factor, torch.Tensor) or factor.is_cpu)):
        if not isinstance(batch_mean, np.ndarray):
            batch_mean, batch_var = batch_mean.numpy(), batch_var.numpy()
        get_backend().update_running(running_mean.numpy(), running_var.numpy(), batch_mean, batch_var, count,
                                     float(factor))
        return
    if isinstance(batch_mean, np.ndarray):
        batch_mean, batch_var = torch.from_numpy(batch_mean), torch.from_numpy(batch_var)
    # torch's batch norm writes its running statistics from its kernel, inference tensors too: so do we.
    inference = not torch.compiler.is_compiling() and any(t is not None and t.is_inference()
                                                          for t in (running_mean, running_var))
    with torch.inference_mode() if inference else torch.no_grad():
        old_mean = batch_mean if running_mean is None else running_mean.to(batch_mean.dtype)
        old_var = batch_var if running_var is None else running_var.to(batch_var.dtype)
        new_mean, new_var = blend_running_stats(old_mean, old_var, batch_mean, batch_var, count, factor)
        if running_mean is not None:
            running_mean.copy_(new_mean)
        if running_var is not None:
            running_var.copy_(new_var)


def _numpy_view_ok(t: torch.Tensor) -> bool:
    """A CPU float32/64 tensor outside autograd whose memory NumPy can read and write."""
    return (t.is_cpu and t.dtype in (torch.float32, torch.float64) and not t.requires_grad
            and t.is_contiguous() and t.__class__ in (torch.Tensor, torch.nn.Parameter))


def clear_plans() -> None:
    """Forget every cached plan (the next call of each signature is checked again)."""
    _PLANS.clear()
    fused.plan_for.cache_clear()


__all__ = ["Plan", "clear_plans", "eager", "normalize", "signature", "update_batch_state", "update_running_stats"]

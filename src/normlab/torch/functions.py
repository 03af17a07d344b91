"""torch.nn.functional's norms on normlab's core: one autograd Function for all of them.

CPU tensors run the core (NumPy/Numba) through the operators of
``normlab.torch.ops``; tensors on other devices, and ``backend="torch"``,
run the same closed form in torch ops (``normlab.torch.closed_form``).

Gradients: first-order backward is the closed form (the core's kernels on
CPU). Double backward (``create_graph=True``, and torch.func transforms,
which always build a graph) runs the closed form in torch ops with the
statistics recomputed from x, and autograd differentiates it: exact second
derivatives without a second hand-derived formula to keep in step.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import numpy as np
import torch

from ..backends import get_backend
from ..running_rule import blend_running_stats
from . import closed_form, fused, ops

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "numpy", "numba", "torch")


def check_backend(backend: str) -> str:
    """A backend name normlab.torch knows; "torch" is the closed form in torch ops (any device)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend != "torch":
        get_backend(backend)  # ImportError now, not at the first forward, if e.g. numba is missing
    return backend


def check_tensor(tensor: torch.Tensor, name: str) -> None:
    """TypeError unless ``tensor`` is a floating tensor normlab.torch computes with (any device)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype} "
                        f"with shape {tuple(tensor.shape)}")


class Spec(NamedTuple):
    """Which norm (a key of ``ops.LAYOUTS``), its argument (normalized_shape or (groups,)), eps, backend."""

    kind: str
    arg: tuple[int, ...]
    eps: float
    backend: str


def _uses_core(x: torch.Tensor, backend: str) -> bool:
    # An empty input has no statistics to compute: the torch-ops path returns its empty result.
    # (is_cpu, not device.type, on every call: the type's string took ~20 µs inside a model's step.)
    return x.is_cpu and backend != "torch" and x.numel() > 0


def _restore(t: torch.Tensor, x: torch.Tensor, rows: bool, kind: str) -> torch.Tensor:
    """A torch-ops result of the canonical view back in x's shape and the memory format torch.nn gives."""
    if rows:  # (N*spatial, C) -> (N, C, *spatial), channels-last in memory like x
        return t.reshape(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1)
    if x.is_contiguous() and t.is_contiguous():
        return t
    out = ops.empty_like_output(x, kind)
    return t if t.stride() == out.stride() else out.copy_(t)


def _closed_form_grads(dout, x, weight, mean, invstd, spec: Spec, stats_given: bool, given=None):
    rows = ops.channels_last_rows(x, spec.kind)
    xc = ops.canonical(x, rows)
    layout = ops.layout_of(spec.kind, x, spec.arg, rows)
    if given is not None:  # create_graph: statistics as functions of x, so autograd sees through them
        mean, _, invstd = closed_form.statistics(xc, layout, spec.eps, *given)
    dx, dw, db = closed_form.backward(ops.canonical(dout, rows), xc, weight, mean, invstd, layout, stats_given)
    return _restore(dx, x, rows, spec.kind), dw, db


def _grads(ctx, dout, x, weight, mean, invstd, given_mean, given_var, eager: bool = False, core_cache=None):
    """The backward both Functions share: the core's closed form, or torch ops when a graph is recorded."""
    spec, stats_given = ctx.spec, given_mean is not None
    if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
        dx, dw, db = _closed_form_grads(dout, x, weight, mean, invstd, spec, stats_given,
                                        given=(given_mean, given_var))
    elif core_cache is not None:
        dx, dw, db = ops.core_backward(dout, core_cache, x, spec.kind, weight, ctx.affine)
    elif eager:  # a second backward of the eager path: the operator's body, without its dispatch
        dx, dw, db = ops.backward_from_tensors(dout, x, weight, mean, invstd, spec.kind, spec.arg, stats_given,
                                               ctx.affine, spec.backend)
    elif _uses_core(x, spec.backend):
        dx, dw, db = ops.normalize_backward(dout, x, weight, mean, invstd, spec.kind, list(spec.arg),
                                            stats_given, ctx.affine, spec.backend)
    else:
        dx, dw, db = _closed_form_grads(dout, x, weight, mean, invstd, spec, stats_given)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    pdtype = weight.dtype if weight is not None else x.dtype
    return (dx if need_x else None, dw.to(pdtype) if need_w else None, db.to(pdtype) if need_b else None,
            None, None, None)


class NormFunction(torch.autograd.Function):
    """out, mean, var, invstd = NormFunction.apply(x, weight, bias, mean, var, spec).

    mean/var: given statistics (inference) or None (computed from x). The
    returned statistics (non-differentiable) are the ones used; var is biased.
    This form (forward without ctx, ``setup_context``, a vmap rule) is what
    torch.compile and torch.func need; plain eager calls take :class:`EagerNormFunction`.
    """

    generate_vmap_rule = True  # forward and backward are torch ops or operators with vmap rules

    @staticmethod
    def forward(x, weight, bias, mean, var, spec: Spec):
        if _uses_core(x, spec.backend):
            return ops.normalize(x, weight, bias, mean, var, spec.kind, list(spec.arg), spec.eps, spec.backend)
        rows = ops.channels_last_rows(x, spec.kind)
        layout = ops.layout_of(spec.kind, x, spec.arg, rows)
        out, *stats = closed_form.forward(ops.canonical(x, rows), weight, bias, layout, spec.eps, mean, var)
        return (_restore(out, x, rows, spec.kind), *stats)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mean, var, spec = inputs
        _, batch_mean, batch_var, invstd = output
        ctx.mark_non_differentiable(batch_mean, batch_var, invstd)
        ctx.save_for_backward(x, weight, batch_mean, invstd, mean, var)
        ctx.spec = spec
        ctx.affine = weight is not None or bias is not None

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar, _dinvstd):
        return _grads(ctx, dout, *ctx.saved_tensors)


class EagerNormFunction(torch.autograd.Function):
    """:class:`NormFunction` for plain eager CPU calls: the kernels directly, their statistics kept for backward.

    torch's ``Function.apply`` binds the arguments with ``inspect.signature`` on
    every call of a Function with ``setup_context`` (tens of microseconds), a
    custom operator adds its dispatch, and every output costs autograd
    bookkeeping; a training step calls a norm dozens of times. So the eager
    path uses the classic ``forward(ctx, ...)`` form and returns only the
    output: the statistics, a float64 (3, *stat_shape) stack of mean, var and
    invstd, go to ``sink``. ``plan``: the fused kernels for this input
    (``normlab.torch.fused``), or None for the core's general route.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, spec: Spec, plan, sink: list):
        fast = None if plan is None else fused.forward(plan, x, weight, bias, spec.eps, mean, var)
        if fast is None:
            out, cache = ops.core_forward(x, weight, bias, mean, var, spec.kind, spec.arg, spec.eps, spec.backend)
            stats, plan = np.stack((cache.mean, cache.var, cache.invstd)), None
        else:
            out, stats, cache = fast  # cache: the kernels' operands, NumPy views of x and weight
        sink.append(stats)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.spec, ctx.affine, ctx.plan, ctx.stats, ctx.core_cache = spec, weight is not None or bias is not None, \
            plan, stats, cache
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, mean, var = ctx.saved_tensors  # (unpacking checks that none was changed in place)
        # The core's cache (or the fused kernels' operands) serves the first backward and is dropped with
        # it: held on ctx it would keep x (and the NumPy backend's x-sized xhat) alive until the whole graph
        # dies, where autograd frees saved tensors as soon as this node is done. A second backward
        # (retain_graph) rebuilds it.
        cache, ctx.core_cache = ctx.core_cache, None
        if ctx.plan is not None and not torch.is_grad_enabled():
            if cache is None:
                cache = fused.operands(ctx.plan, x, weight)
            dx, dweight, dbias = fused.backward(ctx.plan, dout, x, cache, ctx.stats, mean is not None)
            need_x, need_w, need_b = ctx.needs_input_grad[:3]
            pdtype = np.float32 if (weight if weight is not None else x).dtype == torch.float32 else np.float64
            return (dx if need_x else None, torch.from_numpy(dweight.astype(pdtype, copy=False)) if need_w else None,
                    torch.from_numpy(dbias.astype(pdtype, copy=False)) if need_b else None,
                    None, None, None, None, None)
        if ctx.plan is not None:
            cache = None  # the operands of the fused kernels are no core cache
        stat_mean, stat_invstd = torch.from_numpy(ctx.stats[0]), torch.from_numpy(ctx.stats[2])
        return (*_grads(ctx, dout, x, weight, stat_mean, stat_invstd, mean, var, eager=True, core_cache=cache),
                None, None)


# The native node's backward under create_graph (double backward): fused_node.cpp calls this op through
# the dispatcher, and autograd differentiates the torch ops it runs.
_LIBRARY = torch.library.Library("normlab", "FRAGMENT")
_LIBRARY.define("closed_form_grads(Tensor dout, Tensor x, Tensor? weight, Tensor stats, Tensor? mean, "
                "Tensor? var, str kind, int[] arg, float eps) -> (Tensor, Tensor, Tensor)")


@torch.library.impl(_LIBRARY, "closed_form_grads", "CompositeImplicitAutograd")
def _closed_form_grads_op(dout, x, weight, stats, mean, var, kind, arg, eps):
    """(dx, dweight, dbias) in torch ops; stats the node's (3, S) mean, var, invstd."""
    spec = Spec(kind, tuple(arg), eps, "auto")
    dx, dw, db = _closed_form_grads(dout, x, weight, stats[0], stats[2], spec, mean is not None, given=(mean, var))
    pdtype = x.dtype if weight is None else weight.dtype
    return dx, dw.to(pdtype), db.to(pdtype)


def _eager_core(x: torch.Tensor, backend: str) -> bool:
    """Whether this call can take :class:`EagerNormFunction` or the native node: plain eager, neither
    compiled, nor under a torch.func transform, nor traced by torch.jit (the tracer sees no torch op in
    either: a trace would keep the traced input's result as a constant)."""
    return (_uses_core(x, backend) and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active() and not torch.jit.is_tracing())


def check_eps(eps, batch_stats: bool, what: str) -> float:
    """eps as a float: >= 0, and > 0 with batch statistics (the core's rule, ``normlab._checks.check_eps``).

    Plain Python comparisons on a float, so torch.compile folds them away
    (a symbolic eps, which dynamo may make of a module's attribute, becomes a constant).
    """
    if eps.__class__ is float and 0 < eps < math.inf:  # the common case, answered first (every forward asks)
        return eps
    if not isinstance(eps, (numbers.Real, torch.SymFloat, torch.SymInt)) or isinstance(eps, bool):
        raise TypeError(f"{what}: eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not 0 <= eps < math.inf or (batch_stats and eps == 0):  # comparisons only: also false for NaN
        bound = "positive (statistics come from the batch)" if batch_stats else "non-negative"
        raise ValueError(f"{what}: eps must be {bound} and finite, but got {eps}")
    return eps


def normalize(x, weight, bias, spec: Spec, mean=None, var=None):
    """-> (out, mean, var, invstd) through NormFunction, after the checks both paths share.

    eps: >= 0, and > 0 with batch statistics; batch statistics need more
    than one value each (except for RMS norm, whose statistic is a mean
    square): normlab raises where torch would return the bias or NaN.
    In eager mode the checks run once per input signature (cached).
    """
    out, stats = _normalize(x, weight, bias, spec, mean, var)
    if isinstance(stats, np.ndarray):
        return out, torch.from_numpy(stats[0]), torch.from_numpy(stats[1]), torch.from_numpy(stats[2])
    return (out, *stats)


def _normalize(x, weight, bias, spec: Spec, mean, var):
    """:func:`normalize` -> (out, stats): stats a float64 NumPy stack (mean, var, invstd) on the eager
    CPU path (whose callers mostly go on in NumPy), else a tuple of the three tensors."""
    check_tensor(x, "input")
    # (no generator: this runs on every call)
    shapes = (None if weight is None else weight.shape, None if bias is None else bias.shape,
              None if mean is None else mean.shape, None if var is None else var.shape)
    if _eager_core(x, spec.backend):
        spec, plan = _prepared(spec, x.shape, mean is None, shapes, x.dtype)  # cached per signature
        if plan is not None and not (fused.usable(x, weight, bias, mean, var) and fused.serves(plan, x, weight, bias)):
            plan = None
        if plan is not None and plan.native is not None:  # the whole call in C++
            out, stats = fused.run_native(plan, x, weight, bias, mean, var, eps=spec.eps)
            if out is not None:
                return out, stats.numpy().reshape(3, *plan.stat_shape)
            if stats is not None:  # the statistics are not finite: the same kernels from Python would say so too
                plan = None
        sink = []
        out = EagerNormFunction.apply(x, weight, bias, mean, var, spec, plan, sink)
        return out, sink[0]
    spec = _check(spec, tuple(x.shape), mean is None, shapes)
    out, *stats = NormFunction.apply(x, weight, bias, mean, var, spec)
    return out, stats


def _check(spec: Spec, shape: tuple, batch_stats: bool, shapes: tuple) -> Spec:
    """The checks of :func:`normalize` on shapes alone; returns spec with eps as a float."""
    if len(shape) < 2:
        raise ValueError(f"{spec.kind} norm expects an input (N, C, *) or (N, *normalized_shape) with at least "
                         f"2 dimensions, got shape {shape}")
    spec = spec._replace(eps=check_eps(spec.eps, batch_stats, f"{spec.kind} norm"))
    layout = ops.layout_of_shape(spec.kind, shape, spec.arg)  # also checks x's shape against the norm
    names = ("weight", "bias", "running_mean", "running_var")
    for name, got, want in zip(names, shapes, (layout.param_shape,) * 2 + (layout.stat_shape,) * 2):
        if got is not None and got != want:
            raise ValueError(f"{spec.kind} norm: {name} must have shape {want} for input shape "
                             f"{shape}, got {got}")
    if batch_stats and layout.center and 0 < math.prod(shape) and layout.count < 2:
        raise ValueError(
            f"expected more than 1 value per statistic to compute batch statistics, got input shape "
            f"{shape} (each statistic reduces over {layout.count} value): normalizing a single "
            f"value always gives 0"
        )
    return spec


@functools.lru_cache(maxsize=1024)
def _prepared(spec: Spec, shape: tuple, batch_stats: bool, shapes: tuple, dtype: torch.dtype):
    """The eager path's per-signature work: :func:`_check`, and the fused kernels' plan (or None)."""
    spec = _check(spec, tuple(shape), batch_stats, tuple(None if t is None else tuple(t) for t in shapes))
    return spec, fused.plan_for(spec.kind, tuple(shape), spec.arg, dtype, spec.backend, not batch_stats)


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
    with torch.no_grad():
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
            and t.is_contiguous())


def _constant_int(value, name: str) -> int:
    """An int argument as a Python int; torch.compile may pass a module's int as a symbol: int() fixes it."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
    return int(value)


def normalized_shape_tuple(normalized_shape) -> tuple[int, ...]:
    """torch's normalized_shape (an int or a sequence of ints, at least one) as a tuple."""
    if isinstance(normalized_shape, (numbers.Integral, torch.SymInt)):
        return (_constant_int(normalized_shape, "normalized_shape"),)
    if normalized_shape.__class__ is tuple:  # a module's: checked once per value (symbolic sizes are unhashable)
        try:
            hash(normalized_shape)
        except TypeError:
            pass
        else:
            return _checked_shape(normalized_shape)
    return _shape_of(normalized_shape)


def _shape_of(normalized_shape) -> tuple[int, ...]:
    shape = tuple(_constant_int(d, "normalized_shape") for d in normalized_shape)
    if not shape:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    return shape


_checked_shape = functools.lru_cache(maxsize=256)(_shape_of)


def _unbatched(input, normalized_shape):
    """torch accepts an input that is just normalized_shape (one sample): give it a leading axis."""
    return input.unsqueeze(0) if input.dim() == len(normalized_shape) else input


# ----------------------------------------------------------------------------- torch.nn.functional's API

def _no_channels(input, *per_channel):
    """torch's batch_norm on a 1-d input: there is no channel axis, so only an empty input (and stats) pass."""
    sizes = [t.numel() for t in per_channel if t is not None]
    if input.numel() or any(sizes):
        raise ValueError(f"batch_norm expects input (N, C, *); a 1-d input has no channel axis, got input shape "
                         f"{tuple(input.shape)} with {max(sizes, default=0)} per-channel values")
    return input.clone()


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, backend="auto"):
    """torch.nn.functional.batch_norm on normlab's core; input (N, C, *), the rest (C,).

    training: normalize with batch statistics and, if running_mean/var are
    given and the batch is not empty, update them in place (factor ``momentum``);
    otherwise normalize with running_mean/var. Returns the output, of
    input's shape and dtype (N = 0 gives an empty output).
    """
    check_tensor(input, "input")
    check_eps(eps, training, "batch_norm")
    if input.dim() == 1:
        return _no_channels(input, running_mean, running_var, weight, bias)
    spec = Spec("batch", (), eps, backend)
    if training:
        out, stats = _normalize(input, weight, bias, spec, None, None)
        if (running_mean is not None or running_var is not None) and input.numel():
            count = input.numel() // input.shape[1]
            update_running_stats(running_mean, running_var, stats[0], stats[1], count, momentum)
        return out
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm with training=False needs running_mean and running_var")
    return _normalize(input, weight, bias, spec, running_mean, running_var)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.instance_norm on normlab's core: input (N, C, *spatial), statistics per (n, c).

    use_input_stats: normalize each instance with its own statistics and, if
    running_mean/var are given, fold the batch's average instance mean and
    (unbiased) variance into them (factor ``momentum``); otherwise normalize
    every instance with running_mean/var.
    """
    spec = Spec("instance", (), eps, backend)
    if use_input_stats:
        out, mean, var, _ = normalize(input, weight, bias, spec)
        if (running_mean is not None or running_var is not None) and input.numel():
            update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0),
                                 math.prod(input.shape[2:]), momentum)
        return out
    if running_mean is None or running_var is None:
        raise ValueError("instance_norm with use_input_stats=False needs running_mean and running_var")
    shape = tuple(input.shape[:2])
    return _normalize(input, weight, bias, spec, running_mean.expand(shape), running_var.expand(shape))[0]


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.layer_norm on normlab's core: statistics over the trailing normalized_shape."""
    shape = normalized_shape_tuple(normalized_shape)
    x = _unbatched(input, shape)
    out = _normalize(x, weight, bias, Spec("layer", shape, eps, backend), None, None)[0]
    return out if x is input else out.squeeze(0)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.group_norm on normlab's core: input (N, C, *), statistics per (n, group)."""
    if input.dim() < 2:
        raise ValueError(f"group_norm expects input (N, C, *) with at least 2 dimensions, got shape "
                         f"{tuple(input.shape)}")
    groups = _constant_int(num_groups, "num_groups")
    return _normalize(input, weight, bias, Spec("group", (groups,), eps, backend), None, None)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend="auto"):
    """torch.nn.functional.rms_norm on normlab's core: x / sqrt(mean(x**2) + eps) * weight.

    eps None is the machine epsilon of the dtype the statistics are taken in
    (float32 for float16/bfloat16 input), as in torch.
    """
    shape = normalized_shape_tuple(normalized_shape)
    if eps is None:
        eps = torch.finfo(input.dtype if input.dtype == torch.float64 else torch.float32).eps
    x = _unbatched(input, shape)
    out = _normalize(x, weight, None, Spec("rms", shape, eps, backend), None, None)[0]
    return out if x is input else out.squeeze(0)


__all__ = ["BACKENDS", "NormFunction", "Spec", "batch_norm", "check_backend", "check_eps", "check_tensor", "group_norm",
           "instance_norm", "layer_norm", "normalize", "normalized_shape_tuple", "rms_norm",
           "update_running_stats"]

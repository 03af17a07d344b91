"""The bridge's autograd Functions: the core's route on CPU (eager) and the torch-ops route (everywhere else).

Both take a validated :class:`~normlab.torch.checks.Spec` (``normlab.torch.route``
made it) and the tensors that signature was checked for. Gradients: first-order
backward is the closed form (the core's kernels on CPU). Double backward
(``create_graph=True``, and torch.func transforms, which always build a graph)
runs the closed form in torch ops with the statistics recomputed from x, and
autograd differentiates it: exact second derivatives without a second
hand-derived formula to keep in step. The native node (``fused_node.cpp``)
calls that same torch-ops backward through ``torch.ops.normlab.closed_form_grads``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import closed_form, ops
from .checks import Spec


def _restore(t: torch.Tensor, x: torch.Tensor, rows: bool, kind: str) -> torch.Tensor:
    """A torch-ops result of the canonical view back in x's shape and the memory format torch.nn gives."""
    if rows:  # (N*spatial, C) -> (N, C, *spatial), channels-last in memory like x
        return t.reshape(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1)
    if x.is_contiguous() and t.is_contiguous():
        return t
    out = ops.empty_like_output(x, kind)
    return t if t.stride() == out.stride() else out.copy_(t)


def _core(x: torch.Tensor, spec: Spec) -> bool:
    """Whether the torch-ops route runs the core (as an operator): a CPU input with values, not backend "torch"
    (an empty input has no statistics: the closed form returns its empty results), and not compiled: under
    torch.compile the closed form in torch ops reaches inductor, which fuses it with its neighbours (an
    operator would be an opaque call between them)."""
    return x.is_cpu and spec.backend != "torch" and x.numel() > 0 and not torch.compiler.is_compiling()


def _closed_form_grads(dout, x, weight, mean, invstd, spec: Spec, stats_given: bool, given=None):
    rows = ops.channels_last_rows(x, spec.kind)
    xc = ops.canonical(x, rows)
    layout = ops.layout_of(spec.kind, x, spec.arg, rows)
    if given is not None:  # create_graph: statistics as functions of x, so autograd sees through them
        mean, _, invstd = closed_form.statistics(xc, layout, spec.eps, *given, spec.dtype)
    dx, dw, db = closed_form.backward(ops.canonical(dout, rows), xc, weight, mean, invstd, layout, stats_given)
    return _restore(dx, x, rows, spec.kind), dw, db


def _grads(ctx, dout, x, weight, mean, invstd, given_mean, given_var, core_cache=None):
    """The backward both Functions share: the core's closed form on CPU, torch ops elsewhere or when a graph
    is recorded (double backward)."""
    spec, stats_given = ctx.spec, given_mean is not None
    if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
        dx, dw, db = _closed_form_grads(dout, x, weight, mean, invstd, spec, stats_given,
                                        given=(given_mean, given_var))
    elif core_cache is not None:  # the core's route, first backward: the forward's cache (dx only if wanted)
        dx, dw, db = ops.core_backward(dout, core_cache, x, spec.kind, weight, ctx.affine, ctx.needs_input_grad[0])
    elif _core(x, spec):  # the core's route again (a retained graph), or transformed: the operator
        dx, dw, db = ops.normalize_backward(dout, x, weight, mean, invstd, spec.kind, list(spec.arg),
                                            stats_given, ctx.affine, spec.backend)
    else:
        dx, dw, db = _closed_form_grads(dout, x, weight, mean, invstd, spec, stats_given)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    pdtype = weight.dtype if weight is not None else x.dtype
    return (dx if need_x else None, dw.to(pdtype) if need_w else None, db.to(pdtype) if need_b else None,
            None, None, None)


class NormFunction(torch.autograd.Function):
    """out, mean, var, invstd = NormFunction.apply(x, weight, bias, mean, var, spec): the torch-ops route.

    mean/var: given statistics (inference) or None (computed from x). The
    returned statistics (non-differentiable) are the ones used; var is biased.
    Under torch.compile, off the CPU and with ``backend="torch"`` forward and
    backward are the closed form in torch ops (``closed_form``: dynamo traces
    both, inductor fuses them); otherwise, on CPU (torch.func transforms,
    tracing), the core's ``normlab::normalize`` operators. This form (forward
    without ctx, ``setup_context``, a vmap rule) is what torch.compile and
    torch.func need; plain eager CPU calls take :class:`EagerNormFunction` or
    the native node.
    """

    generate_vmap_rule = True  # forward and backward are torch ops or operators with vmap rules

    @staticmethod
    def forward(x, weight, bias, mean, var, spec: Spec):
        if _core(x, spec):
            return ops.normalize(x, weight, bias, mean, var, spec.kind, list(spec.arg), spec.eps, spec.backend)
        rows = ops.channels_last_rows(x, spec.kind)
        layout = ops.layout_of(spec.kind, x, spec.arg, rows)
        out, *stats = closed_form.forward(ops.canonical(x, rows), weight, bias, layout, spec.eps, mean, var,
                                          spec.dtype)
        out = _restore(out, x, rows, spec.kind)
        # A view of an intermediate (a reshape) as a Function's output could not be edited in place later.
        return (out.clone(memory_format=torch.preserve_format) if out._base is not None else out, *stats)

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
    """The core's route for plain eager CPU calls: ``ops.core_forward``, its cache kept for the first backward.

    torch's ``Function.apply`` binds the arguments with ``inspect.signature`` on
    every call of a Function with ``setup_context``, and every output costs
    autograd bookkeeping; a training step calls a norm dozens of times. So this
    route uses the classic ``forward(ctx, ...)`` form and returns only the
    output: the statistics, a float64 (3, *stat_shape) tensor of mean, var and
    invstd, go to ``sink``, saved for backward (an in-place edit of them is then
    refused as one of x is).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, spec: Spec, sink: list):
        out, cache = ops.core_forward(x, weight, bias, mean, var, spec.kind, spec.arg, spec.eps, spec.backend)
        stats = torch.from_numpy(np.stack((cache.mean, cache.var, cache.invstd)))
        sink.append(stats)
        ctx.save_for_backward(x, weight, mean, var, stats)
        ctx.spec, ctx.core_cache = spec, cache
        ctx.affine = weight is not None or bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, mean, var, stats = ctx.saved_tensors  # (unpacking checks that none was changed in place)
        # The core's cache serves the first backward and is dropped with it: held on ctx it would keep x (and
        # the NumPy backend's x-sized xhat) alive until the whole graph dies, where autograd frees saved
        # tensors as soon as this node is done. A second backward (retain_graph) rebuilds it.
        cache, ctx.core_cache = ctx.core_cache, None
        return (*_grads(ctx, dout, x, weight, stats[0], stats[2], mean, var, core_cache=cache), None)


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


__all__ = ["EagerNormFunction", "NormFunction"]

"""The norms under torch.compile: one opaque call to dynamo, the closed form in torch ops to inductor.

Dynamo guards every global a traced function reads (each function's code, each constant, each module reached
through another module) and checks those guards again on every call of the compiled model. Traced through
``route``'s checks, plan and ``NormFunction``, a norm brought about 200 guards with it; in an MLP with two
BatchNorm1d, compiled, they made the forward 55-99 us slower a step than torch.nn's, all of it gone with
dynamo's guards on globals dropped (docs/benchmarks.md, "Compiled training steps"). Under
``torch._dynamo.nonstrict_trace`` dynamo records :func:`traced_norm` as one node and guards only its arguments;
AOTAutograd then runs its body (the checks, ``NormFunction`` and its closed-form backward) on fake tensors and
hands what it recorded to inductor, which fuses it with its neighbours as before.

The checks run inside, while the graph is built, so bad input raises before anything runs or changes: without
``fullgraph`` dynamo then runs the frame eagerly, where the same check raises its error to the caller; with
``fullgraph=True`` dynamo raises its own error, whose cause is the check's (as torch.nn's compiled norms raise a
``TorchRuntimeError`` around theirs). The running statistics are updated by the caller, outside, after the
call: a nonstrict-traced function must not change its inputs.
"""

from __future__ import annotations

import torch

from .autograd import NormFunction
from .checks import check_call

# (torch 2.13, which normlab's torch extra pins, has it; without it dynamo traces the body itself: the same
# graph, with the guards)
_nonstrict_trace = getattr(torch._dynamo, "nonstrict_trace", lambda fn: fn)


@_nonstrict_trace
def traced_norm(x, tensors: list, present: tuple, kind: str, arg: tuple, eps, backend: str, batch_stats: bool,
                grad: bool, float64: bool):
    """(out, mean, var, invstd) of norm ``kind`` on x in torch ops, as ``route.normalize`` computes them.

    tensors: weight, bias, running_mean, running_var without the Nones (nonstrict tracing takes no None),
    present: which of the four are given. grad: whether autograd records (the checks ask). float64: the
    arithmetic, float64 or float32 (``closed_form.compute_dtype``, read by the caller where dynamo guards it).
    """
    given = iter(tensors)
    weight, bias, running_mean, running_var = (next(given) if p else None for p in present)
    spec, layout = check_call(kind, arg, eps, backend, x, weight, bias, running_mean, running_var, batch_stats,
                              grad)
    mean = var = None
    if not batch_stats:
        mean, var = running_mean, running_var
        if kind == "instance":  # one statistic per (sample, channel): the channel's, for every sample
            mean, var = mean.expand(layout.stat_shape), var.expand(layout.stat_shape)
    # backend "torch": the closed form in torch ops forward and backward, whatever is_compiling says when
    # AOTAutograd runs this
    spec = spec._replace(backend="torch", dtype=torch.float64 if float64 else torch.float32)
    return tuple(NormFunction.apply(x, weight, bias, mean, var, spec))


__all__ = ["traced_norm"]

"""normlab's core as PyTorch operators: ``torch.ops.normlab.normalize`` and ``normalize_backward``.

Registered with ``torch.library.custom_op``, so torch.compile puts each call
in its graph as one opaque node (with a fake implementation for shapes)
instead of tracing into NumPy and Numba, and torch.func.vmap finds a rule.
Both run the core on zero-copy NumPy views of CPU tensors:

- batch norm on a channels-last input (N, C, *spatial) is batch norm on the
  (N*spatial, C) matrix its memory already is: no copy either way;
- float16/bfloat16 compute in float32 (statistics in float64, as always) and
  the results take the input's dtype;
- the output has x's memory format where torch.nn keeps it (batch, group and
  RMS norm) and is contiguous where torch.nn makes it so (layer and instance norm).

A norm is named by ``kind`` (a key of ``LAYOUTS``) and ``arg`` (normalized_shape,
or [groups]); the layout follows from x's shape, so the fake implementations
need nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core import NormCache, normalize_backward as core_backward, normalize_forward as core_forward
from ..norms import batch_layout, group_layout, instance_layout, layer_layout, rms_layout

LAYOUTS = {
    "batch": lambda shape, arg: batch_layout(shape),
    "layer": lambda shape, arg: layer_layout(shape, tuple(arg)),
    "group": lambda shape, arg: group_layout(shape, arg[0]),
    "instance": lambda shape, arg: instance_layout(shape),
    "rms": lambda shape, arg: rms_layout(shape, tuple(arg)),
}
# Norms whose arg is normalized_shape (axis 1 may be a sequence); the others have channels on axis 1.
_NORMALIZED_SHAPE_KINDS = frozenset({"layer", "rms"})
# torch.nn's output memory format per norm (batch/group/RMS keep channels_last, the others do not).
_KEEPS_FORMAT = {"batch": True, "group": True, "rms": True, "layer": False, "instance": False}


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> the (N*spatial, C) matrix; a view when t is channels-last in memory."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def channels_last_rows(x: torch.Tensor, kind: str) -> bool:
    """Batch norm on a channels-last x runs on its (N*spatial, C) matrix view (same statistics)."""
    return kind == "batch" and x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def canonical(t: torch.Tensor, rows: bool) -> torch.Tensor:
    return _rows(t) if rows else t


def layout_of(kind: str, x: torch.Tensor, arg, rows: bool = False):
    """The norm's Layout for x (its (N*spatial, C) matrix when ``rows``).

    int(): under torch.compile(dynamic=True) sizes arrive as symbols; the layout
    fixes the channel count and a group count (what a module's parameters fix
    anyway) with a guard, while the batch, spatial and a layer norm's leading
    (e.g. sequence) sizes stay symbolic.
    """
    arg = [int(a) for a in arg]
    if rows:
        return LAYOUTS[kind]((x.shape[0] * math.prod(x.shape[2:]), int(x.shape[1])), arg)
    shape = list(x.shape)
    if kind not in _NORMALIZED_SHAPE_KINDS:
        shape[1] = int(shape[1])
    return LAYOUTS[kind](tuple(shape), arg)


def empty_like_output(x: torch.Tensor, kind: str) -> torch.Tensor:
    fmt = torch.preserve_format if _KEEPS_FORMAT[kind] else torch.contiguous_format
    return torch.empty_like(x, memory_format=fmt)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float64 if dtype == torch.float64 else np.float32)


def _numpy(t, dtype=None):
    """A NumPy view of a CPU tensor (a copy only when it must be made contiguous or cast)."""
    if t is None:
        return None
    return t.detach().to(dtype or _compute_dtype(t)).contiguous().numpy()


def _affine(weight, bias, shape, dtype: torch.dtype):
    """The core takes gamma and beta both or neither; torch takes either alone."""
    gamma, beta = _numpy(weight, dtype), _numpy(bias, dtype)
    if gamma is None and beta is not None:
        gamma = np.ones(shape, _np_dtype(dtype))
    if beta is None and gamma is not None:
        beta = np.zeros(shape, _np_dtype(dtype))
    return gamma, beta


def _into(target: torch.Tensor, rows: bool, compute):
    """Run compute(out_array or None) -> array and land the result in ``target`` (zero-copy when possible)."""
    view = canonical(target, rows)
    direct = view.is_contiguous() and view.dtype in (torch.float32, torch.float64)
    result = compute(view.numpy() if direct else None)
    if not direct:
        view.copy_(torch.from_numpy(result).reshape(view.shape))


@torch.library.custom_op("normlab::normalize", mutates_args=(), device_types="cpu")
def normalize(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              mean: torch.Tensor | None, var: torch.Tensor | None, kind: str, arg: list[int], eps: float,
              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (out, mean, var, invstd): the core's forward; mean/var given means inference statistics.

    The statistics are float64 of the layout's stat_shape; var is biased.
    """
    rows = channels_last_rows(x, kind)
    layout = layout_of(kind, x, arg, rows)
    dtype = _compute_dtype(x)
    x_np = _numpy(canonical(x, rows), dtype).reshape(layout.view)
    gamma, beta = _affine(weight, bias, layout.param_shape, dtype)
    given = {} if mean is None else {"mean": _numpy(mean, torch.float64), "var": _numpy(var, torch.float64)}
    out = empty_like_output(x, kind)
    caches = []

    def compute(out_np):
        buf = None if out_np is None else out_np.reshape(layout.view)
        y, cache = core_forward(x_np, gamma, beta, layout, eps, backend=backend, out=buf, **given)
        caches.append(cache)
        return y

    _into(out, rows, compute)
    cache = caches[0]
    # Given statistics come back as the caller's arrays: an operator's outputs must not alias its inputs.
    stat_mean, stat_var = (cache.mean.copy(), cache.var.copy()) if mean is not None else (cache.mean, cache.var)
    return out, torch.from_numpy(stat_mean), torch.from_numpy(stat_var), torch.from_numpy(cache.invstd)


@normalize.register_fake
def _(x, weight, bias, mean, var, kind, arg, eps, backend):
    layout = layout_of(kind, x, arg, channels_last_rows(x, kind))
    stat = x.new_empty(layout.stat_shape, dtype=torch.float64)
    return empty_like_output(x, kind), stat, torch.empty_like(stat), torch.empty_like(stat)


@torch.library.custom_op("normlab::normalize_backward", mutates_args=(), device_types="cpu")
def normalize_backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                       invstd: torch.Tensor, kind: str, arg: list[int], stats_given: bool, affine: bool,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx, dweight, dbias): the core's closed form; dweight/dbias are empty (0,) unless ``affine``."""
    rows = channels_last_rows(x, kind)
    layout = layout_of(kind, x, arg, rows)
    dtype = _compute_dtype(x)
    np_dtype = _np_dtype(dtype)
    x_np = _numpy(canonical(x, rows), dtype).reshape(layout.view)
    dout_np = _numpy(canonical(dout, rows), dtype).reshape(layout.view)
    gamma = _numpy(weight, dtype)
    if gamma is None and affine:
        gamma = np.ones(layout.param_shape, np_dtype)
    cache = NormCache(x=x_np, layout=layout, gamma=gamma, mean=_numpy(mean, torch.float64), var=None,
                      invstd=_numpy(invstd, torch.float64), eps=0.0, stats_given=stats_given,
                      backend=backend, saved=None)
    dx = empty_like_output(x, kind)
    grads = []

    def compute(out_np):
        grads.append(core_backward(dout_np, cache, out=None if out_np is None else out_np.reshape(layout.view)))
        return grads[0][0]

    _into(dx, rows, compute)
    _, dgamma, dbeta = grads[0]
    if not affine:
        return dx, x.new_empty(0), x.new_empty(0)
    pdtype = (weight if weight is not None else x).dtype
    return dx, torch.from_numpy(dgamma).to(pdtype), torch.from_numpy(dbeta).to(pdtype)


@normalize_backward.register_fake
def _(dout, x, weight, mean, invstd, kind, arg, stats_given, affine, backend):
    dx = empty_like_output(x, kind)
    if not affine:
        return dx, x.new_empty(0), x.new_empty(0)
    layout = layout_of(kind, x, arg, channels_last_rows(x, kind))
    pdtype = (weight if weight is not None else x).dtype
    param = x.new_empty(layout.param_shape, dtype=pdtype)
    return dx, param, torch.empty_like(param)


def _vmap_by_slices(op):
    """A vmap rule that runs ``op`` once per slice of the vmapped dimension and stacks the results.

    Correct for any of these operators (a norm's statistics never span the
    vmapped dimension). torch.func transforms that differentiate take the
    torch-ops path (``closed_form``) in backward, which vmaps natively.
    """
    def rule(info, in_dims, *args):
        size = info.batch_size
        results = []
        for b in range(size):
            sliced = [a.select(d, b) if isinstance(a, torch.Tensor) and d is not None else a
                      for a, d in zip(args, in_dims)]
            results.append(op(*sliced))
        return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])
    return rule


normalize.register_vmap(_vmap_by_slices(normalize))
normalize_backward.register_vmap(_vmap_by_slices(normalize_backward))

__all__ = ["LAYOUTS", "canonical", "channels_last_rows", "empty_like_output", "layout_of", "normalize",
           "normalize_backward"]

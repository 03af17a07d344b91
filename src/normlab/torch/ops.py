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

from ..core import NormCache, run_backward, run_forward
from ..norms import batch_layout, cached_layouts, group_layout, instance_layout, layer_layout, rms_layout
from . import memory

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
    (e.g. sequence) sizes stay symbolic. Layouts of int sizes are cached per
    shape: a training loop asks for the same few every step.
    """
    return _cached_layout(kind, tuple(x.shape), tuple(arg), rows)


def layout_of_shape(kind: str, shape: tuple, arg, rows: bool = False):
    """:func:`layout_of` for an input of ``shape``."""
    arg = [int(a) for a in arg]
    if rows:
        return LAYOUTS[kind]((shape[0] * math.prod(shape[2:]), int(shape[1])), arg)
    shape = list(shape)
    if kind not in _NORMALIZED_SHAPE_KINDS:
        shape[1] = int(shape[1])
    return LAYOUTS[kind](tuple(shape), arg)


_cached_layout = cached_layouts(1024)(layout_of_shape)  # (symbolic sizes: built each time)


def empty_like_output(x: torch.Tensor, kind: str) -> torch.Tensor:
    fmt = torch.preserve_format if _KEEPS_FORMAT[kind] else torch.contiguous_format
    return torch.empty_like(x, memory_format=fmt)


def _fresh_output(x: torch.Tensor, kind: str) -> torch.Tensor:
    """:func:`empty_like_output` for a kernel to fill: large ones on huge pages (``normlab.torch.memory``)."""
    out = empty_like_output(x, kind)
    memory.advise_huge_pages(out)
    return out


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float64 if dtype == torch.float64 else np.float32)


def _numpy(t, dtype=None):
    """A NumPy view of a CPU tensor (a copy only when it must be made contiguous or cast)."""
    if t is None:
        return None
    dtype = dtype or _compute_dtype(t)
    if t.dtype == dtype and t.is_contiguous():  # the common case: one call, no copy
        return t.detach().numpy()
    return t.detach().to(dtype).contiguous().numpy()


def _affine(weight, bias, shape, dtype: torch.dtype):
    """The core takes gamma and beta both or neither; torch takes either alone."""
    gamma, beta = _numpy(weight, dtype), _numpy(bias, dtype)
    if gamma is None and beta is not None:
        gamma = np.ones(shape, _np_dtype(dtype))
    if beta is None and gamma is not None:
        beta = np.zeros(shape, _np_dtype(dtype))
    return gamma, beta


def _result_view(target: torch.Tensor, rows: bool, dtype: torch.dtype):
    """(the canonical view of ``target``, its NumPy view, or None when the core must write elsewhere first)."""
    view = canonical(target, rows)
    return view, (view.numpy() if view.dtype == dtype and view.is_contiguous() else None)


def _land(view: torch.Tensor, direct, result: np.ndarray) -> None:
    """Copy the core's result into the output tensor's view unless the core wrote there itself."""
    if direct is None:
        view.copy_(torch.from_numpy(result).reshape(view.shape))


def core_forward(x: torch.Tensor, weight, bias, mean, var, kind: str, arg, eps: float, backend: str):
    """-> (out tensor, the core's NormCache): the core's forward on NumPy views of x (validated by the caller).

    The core's route (``normlab.torch.autograd.EagerNormFunction``) calls this directly and keeps the cache for backward;
    the ``normalize`` operator wraps it for torch.compile.
    """
    rows = channels_last_rows(x, kind)
    layout = layout_of(kind, x, arg, rows)
    dtype = _compute_dtype(x)
    x_np = _numpy(canonical(x, rows), dtype)
    gamma, beta = _affine(weight, bias, layout.param_shape, dtype)
    given_mean, given_var = (None, None) if mean is None else (_numpy(mean, torch.float64), _numpy(var, torch.float64))
    out = _fresh_output(x, kind)
    view, direct = _result_view(out, rows, dtype)
    y, cache = run_forward(x_np, gamma, beta, layout, eps, given_mean, given_var, backend, direct)
    _land(view, direct, y)
    return out, cache


def core_backward(dout: torch.Tensor, cache: NormCache, x: torch.Tensor, kind: str, weight, affine: bool,
                  want_dx: bool = True):
    """-> (dx tensor, dweight, dbias): the core's closed form for a cache of :func:`core_forward`
    (dweight/dbias empty (0,) tensors unless ``affine``; dx None unless ``want_dx``: the kernels then skip it)."""
    rows = channels_last_rows(x, kind)
    dtype = _compute_dtype(x)
    dout_np = _numpy(canonical(dout, rows), dtype)
    if want_dx:
        dx = _fresh_output(x, kind)
        view, direct = _result_view(dx, rows, dtype)
        dx_np, dgamma, dbeta = run_backward(dout_np, cache, direct)
        _land(view, direct, dx_np)
    else:
        dx = None
        _, dgamma, dbeta = run_backward(dout_np, cache, None, want_dx=False)
    if not affine:
        return dx, x.new_empty(0), x.new_empty(0)
    pdtype = (weight if weight is not None else x).dtype
    return dx, torch.from_numpy(dgamma).to(pdtype), torch.from_numpy(dbeta).to(pdtype)


@torch.library.custom_op("normlab::normalize", mutates_args=(), device_types="cpu")
def normalize(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              mean: torch.Tensor | None, var: torch.Tensor | None, kind: str, arg: list[int], eps: float,
              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (out, mean, var, invstd): the core's forward; mean/var given means inference statistics.

    The statistics are float64 of the layout's stat_shape; var is biased.
    """
    out, cache = core_forward(x, weight, bias, mean, var, kind, arg, eps, backend)
    # Given statistics come back as the caller's arrays: an operator's outputs must not alias its inputs.
    stat_mean, stat_var = (cache.mean.copy(), cache.var.copy()) if mean is not None else (cache.mean, cache.var)
    return out, torch.from_numpy(stat_mean), torch.from_numpy(stat_var), torch.from_numpy(cache.invstd)


@normalize.register_fake
def _(x, weight, bias, mean, var, kind, arg, eps, backend):
    layout = layout_of(kind, x, arg, channels_last_rows(x, kind))
    stat = x.new_empty(layout.stat_shape, dtype=torch.float64)
    return empty_like_output(x, kind), stat, torch.empty_like(stat), torch.empty_like(stat)


def backward_from_tensors(dout: torch.Tensor, x: torch.Tensor, weight, mean: torch.Tensor, invstd: torch.Tensor,
                          kind: str, arg, stats_given: bool, affine: bool, backend: str):
    """-> (dx, dweight, dbias): the core's closed form from the saved tensors (x, float64 mean and invstd)."""
    rows = channels_last_rows(x, kind)
    layout = layout_of(kind, x, arg, rows)
    dtype = _compute_dtype(x)
    gamma = _numpy(weight, dtype)
    if gamma is None and affine:
        gamma = np.ones(layout.param_shape, _np_dtype(dtype))
    cache = NormCache(x=_numpy(canonical(x, rows), dtype).reshape(layout.view), layout=layout, gamma=gamma,
                      mean=_numpy(mean, torch.float64), var=None, invstd=_numpy(invstd, torch.float64), eps=0.0,
                      stats_given=stats_given, backend=backend, saved=None)
    return core_backward(dout, cache, x, kind, weight, affine)


@torch.library.custom_op("normlab::normalize_backward", mutates_args=(), device_types="cpu")
def normalize_backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                       invstd: torch.Tensor, kind: str, arg: list[int], stats_given: bool, affine: bool,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx, dweight, dbias): the core's closed form; dweight/dbias are empty (0,) unless ``affine``."""
    return backward_from_tensors(dout, x, weight, mean, invstd, kind, arg, stats_given, affine, backend)


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

__all__ = ["LAYOUTS", "backward_from_tensors", "canonical", "channels_last_rows", "core_backward", "core_forward",
           "empty_like_output",
           "layout_of", "normalize", "normalize_backward"]

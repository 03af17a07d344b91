"""What normlab.torch accepts: torch.nn's rules for every argument, refused with errors that name it.

:func:`check_call` validates everything a kernel of any route will touch — the
input, weight, bias and the running statistics: type, dtype, device, layout and
shape — and returns the call's :class:`Spec` and layout. It runs once per call
signature (``normlab.torch.route`` caches its result), so it can afford to be
thorough. It raises where torch.nn raises, in the order torch checks (argument
types first), with a ValueError/TypeError naming the argument and shapes where
torch's C++ checks raise a RuntimeError in their own words, and a RuntimeError
where torch's is one users may catch (devices, dtypes, inference tensors).
The differences normlab makes on purpose are tests/test_torch_conformance.py's
DELIBERATE list.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from ..backends import get_backend
from . import ops

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCED_DTYPES = (torch.float16, torch.bfloat16)
BACKENDS = ("auto", "numpy", "numba", "torch")
NAMES = ("weight", "bias", "running_mean", "running_var")


class Spec(NamedTuple):
    """Which norm (a key of ``ops.LAYOUTS``), its argument (normalized_shape or (groups,)), eps, backend; dtype:
    the closed form's arithmetic in torch ops (None: ``closed_form.compute_dtype``'s choice when it runs)."""

    kind: str
    arg: tuple[int, ...]
    eps: float
    backend: str
    dtype: torch.dtype | None = None


def check_backend(backend: str) -> str:
    """A backend name normlab.torch knows; "torch" is the closed form in torch ops (any device)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend != "torch":
        get_backend(backend)  # ImportError now, not at the first forward, if e.g. numba is missing
    return backend


def check_tensor(tensor, name: str) -> None:
    """TypeError unless ``tensor`` is a dense floating tensor normlab.torch computes with (any device)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype} "
                        f"with shape {tuple(tensor.shape)}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")


def check_eps(eps, batch_stats: bool, what: str) -> float:
    """eps as a float: a real number (a bool is one, as torch takes it), >= 0, and > 0 with batch statistics.

    Plain Python comparisons on a float, so torch.compile folds them away
    (a symbolic eps, which dynamo may make of a module's attribute, becomes a constant).
    """
    if eps.__class__ is float and 0 < eps < math.inf:  # the common case, answered first
        return eps
    if isinstance(eps, torch.Tensor) and eps.dim() == 0 and not eps.is_complex():
        eps = eps.item()  # torch takes a 0-d tensor for a float argument
    if not isinstance(eps, (numbers.Real, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"{what}: eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not 0 <= eps < math.inf or (batch_stats and eps == 0):  # comparisons only: also false for NaN
        bound = "positive (statistics come from the batch)" if batch_stats else "non-negative"
        raise ValueError(f"{what}: eps must be {bound} and finite, but got {eps}")
    return eps


def _int_arg(value, name: str, what: str) -> int:
    """An int argument as torch's parser takes one (Python and NumPy integers and SymInts, not bools)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{what}: {name} must be an int or a tuple of ints, got {value!r} "
                        f"({type(value).__name__})")
    return int(value)


def normalized_shape_arg(value, what: str) -> tuple[int, ...]:
    """normalized_shape as torch.nn.functional takes it: a tuple, list or torch.Size of ints (not an int)."""
    if value.__class__ is tuple:
        for d in value:  # (a loop: the common case is a module's tuple of ints, on every call)
            if d.__class__ is not int:
                break
        else:
            if value:
                return value
    if not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(f"{what}: normalized_shape must be a tuple or list of ints, got {type(value).__name__} "
                        f"{value!r}")
    shape = tuple(_int_arg(d, "normalized_shape", what) for d in value)
    if not shape:
        raise ValueError(f"{what}: normalized_shape must have at least one dimension, got ()")
    return shape


def groups_arg(value, what: str) -> tuple[int]:
    """num_groups as an int: torch's parser refuses bools and floats."""
    return (value,) if value.__class__ is int else (_int_arg(value, "num_groups", what),)


# ----------------------------------------------------------------------------- one call

def check_call(kind: str, arg: tuple, eps, backend: str, x, weight, bias, running_mean, running_var,
               batch_stats: bool, grad: bool, local_count: bool = True) -> tuple[Spec, object]:
    """-> (spec with eps a float, the norm's Layout for x): every check of one call, raising as torch.nn does.

    running_mean/var: the statistics normalized with (batch_stats False) or updated (batch_stats True);
    grad: whether autograd records (torch refuses running statistics that require grad then);
    local_count False: batch statistics span more than x (synchronized batch norm counts them globally).
    """
    what = f"{kind} norm"
    if not isinstance(x, torch.Tensor):
        check_tensor(x, "input")
    for name, t in zip(NAMES, (weight, bias, running_mean, running_var)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    shape = tuple(x.shape)
    if len(shape) < 2:
        raise ValueError(f"{what} expects an input (N, C, *) or (N, *normalized_shape) with at least 2 dimensions, "
                         f"got shape {shape}")
    spec = Spec(kind, arg, check_eps(eps, batch_stats, what), backend)
    # Sizes first, as torch.nn.functional checks them before its operators see a dtype.
    layout = ops.layout_of_shape(kind, shape, arg)  # also checks x's shape against the norm
    _check_count(what, kind, shape, layout, batch_stats and local_count)
    if kind in ("batch", "instance") and (running_mean is None or running_var is None):
        if not batch_stats:
            raise ValueError(f"{what} without batch statistics needs running_mean and running_var")
        if running_mean is not running_var:  # one of them given
            raise ValueError("running_mean and running_var must either both be None or neither be None")
    check_tensor(x, "input")
    _check_shapes(what, kind, shape, layout, weight, bias, running_mean, running_var)
    _check_placement(what, x, weight, bias, running_mean, running_var)
    _check_dtypes(what, kind, x, weight, bias, running_mean, running_var)
    if grad:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and t.requires_grad:
                raise RuntimeError(f"{what}: {name} requires grad, but running statistics are not differentiable "
                                   f"(as torch's native_batch_norm says: this input cannot have requires_grad True)")
    return spec, layout


def _check_count(what, kind, shape, layout, batch_stats: bool) -> None:
    """Batch statistics of more than one value each (torch: instance norm's spatial size counts even for an
    empty batch); RMS norm's mean square of one value is fine."""
    if batch_stats and kind == "instance" and math.prod(shape[2:]) == 1:
        raise ValueError(f"expected more than 1 spatial element per instance to compute instance statistics, got "
                         f"input shape {shape}: normalizing a single value always gives 0 ({what})")
    if batch_stats and layout.center and 0 < math.prod(shape) and layout.count < 2:
        raise ValueError(
            f"expected more than 1 value per statistic to compute batch statistics, got input shape "
            f"{shape} (each statistic reduces over {layout.count} value): normalizing a single "
            f"value always gives 0 ({what})"
        )


def _check_shapes(what, kind, shape, layout, weight, bias, running_mean, running_var) -> None:
    """Parameters of the layout's param_shape, running statistics of (C,) (the user's, before expansion)."""
    running_shape = (shape[1],) if kind in ("batch", "instance") else None
    for name, t, want in (("weight", weight, layout.param_shape), ("bias", bias, layout.param_shape),
                          ("running_mean", running_mean, running_shape), ("running_var", running_var, running_shape)):
        if t is not None and tuple(t.shape) != want:
            channels = f" ({shape[1]} channels on axis 1)" if kind in ("batch", "instance", "group") else ""
            raise ValueError(f"{what}: {name} must have shape {want} for input shape {shape}{channels}, got "
                             f"{tuple(t.shape)}")


def _check_placement(what, x, *others) -> None:
    """Every tensor on x's device, dense (torch: "Tensor on device meta is not on the expected device cpu!")."""
    for name, t in zip(NAMES, others):
        if t is None:
            continue
        if t.layout != torch.strided:
            raise TypeError(f"{what}: {name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.device != x.device:
            raise RuntimeError(f"{what}: {name} is on device {t.device}, the input on {x.device}: tensors must be "
                               f"on the same device")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{what}: {name} must be a floating tensor, got {t.dtype}")


def _check_dtypes(what, kind, x, weight, bias, running_mean, running_var) -> None:
    """torch's CPU rule: parameters (and batch norm's running statistics) of x's dtype, or all float32 for a
    float16/bfloat16 x ("mixed dtype (CPU)"); RMS norm, a composite of torch ops, promotes any floating weight,
    and instance norm's running statistics, averaged separately, may be of any floating dtype."""
    if kind == "rms" or not x.is_cpu:
        return
    checked = (("weight", weight), ("bias", bias))
    if kind == "batch":
        checked += (("running_mean", running_mean), ("running_var", running_var))
    present = [(name, t.dtype) for name, t in checked if t is not None]
    if all(dtype == x.dtype for _, dtype in present):
        return
    if x.dtype in REDUCED_DTYPES and all(dtype == torch.float32 for _, dtype in present):
        return  # torch's mixed type on CPU: float16/bfloat16 input, float32 parameters
    found = ", ".join(f"{name} {dtype}" for name, dtype in present)
    rule = (f"of the input's dtype {x.dtype}" + (" or all float32" if x.dtype in REDUCED_DTYPES else ""))
    raise RuntimeError(f"{what}: mixed dtype (CPU): parameters and running statistics must be {rule}, got {found}")


__all__ = ["BACKENDS", "FLOAT_DTYPES", "Spec", "check_backend", "check_call", "check_eps", "check_tensor",
           "groups_arg", "normalized_shape_arg"]

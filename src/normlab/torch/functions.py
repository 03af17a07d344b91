"""Autograd Functions whose forward and backward are normlab's core.

CPU tensors enter the core as zero-copy NumPy views (non-contiguous ones are
made contiguous first), so the same kernels, and whichever backend "auto"
picks, serve NumPy and PyTorch users, forward and backward alike
(docs/benchmarks.md measures them against torch.nn).

Double backward is not supported: the backward runs outside autograd, so
``create_graph=True`` through these functions raises a RuntimeError that says
so. Use torch.nn.functional's norms where second derivatives are needed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import Layout, normalize_backward, normalize_forward
from ..layers import blend_running_stats
from ..norms import batch_layout, group_layout, layer_layout

_FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)

DOUBLE_BACKWARD_MESSAGE = (
    "normlab.torch: double backward (create_graph=True) through {name} is not supported; its closed-form "
    "backward runs in normlab's core outside autograd. Use torch.nn.functional.{name} where second "
    "derivatives are needed."
)


def check_tensor(tensor: torch.Tensor, name: str) -> None:
    """TypeError/ValueError unless ``tensor`` is a float16/32/64 CPU tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for normlab.torch, got device {tensor.device} "
                         f"(shape {tuple(tensor.shape)})")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, float32 or float64, got {tensor.dtype} "
                        f"with shape {tuple(tensor.shape)}")


def as_numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of a CPU float tensor (zero-copy when contiguous)."""
    check_tensor(tensor, name)
    return tensor.detach().contiguous().numpy()


def _optional_numpy(tensor, name):
    return None if tensor is None else as_numpy(tensor, name)


def check_once_differentiable(name: str) -> None:
    """Raise if autograd is recording the backward itself (create_graph=True)."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(name=name))


class NormFunction(torch.autograd.Function):
    """out, mean, var = NormFunction.apply(x, weight, bias, layout, eps, mean, var, backend, name).

    One Function for all three norms, as the core is one: ``layout`` says
    which. mean/var are the given statistics (NumPy, inference) or None; the
    returned mean/var (float64, non-differentiable) are the ones used.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layout: Layout, eps, mean, var, backend, name):
        x_np = as_numpy(x, "input")
        gamma = _optional_numpy(weight, "weight")
        beta = _optional_numpy(bias, "bias")
        if gamma is not None and beta is None:  # torch allows weight without bias (LayerNorm(bias=False))
            beta = np.zeros_like(gamma)
        out, cache = normalize_forward(x_np, gamma, beta, layout, eps, mean=mean, var=var, backend=backend)
        ctx.cache = cache
        ctx.name = name
        ctx.save_for_backward(x)  # lets autograd detect in-place changes of x before backward
        stats = torch.from_numpy(np.ascontiguousarray(cache.mean)), torch.from_numpy(np.ascontiguousarray(cache.var))
        ctx.mark_non_differentiable(*stats)
        return (torch.from_numpy(out), *stats)

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        check_once_differentiable(ctx.name)
        ctx.saved_tensors  # noqa: B018 - raises if x was modified in place since forward
        dx, dgamma, dbeta = normalize_backward(as_numpy(dout, "grad_output"), ctx.cache)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (torch.from_numpy(dx) if need_x else None,
                torch.from_numpy(dgamma) if need_w else None,
                torch.from_numpy(dbeta) if need_b else None,
                None, None, None, None, None, None)


def _apply(x, weight, bias, layout, eps, mean=None, var=None, backend="auto", name="batch_norm"):
    return NormFunction.apply(x, weight, bias, layout, eps, mean, var, backend, name)


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count: int, factor: float) -> None:
    """Update torch buffers in place with torch.nn.BatchNorm's rule (``normlab.layers.blend_running_stats``)."""
    with torch.no_grad():
        batch_mean, batch_var = np.asarray(batch_mean, np.float64), np.asarray(batch_var, np.float64)
        old_mean = batch_mean if running_mean is None else running_mean.double().numpy()
        old_var = batch_var if running_var is None else running_var.double().numpy()
        new_mean, new_var = blend_running_stats(old_mean, old_var, batch_mean, batch_var, count, factor)
        if running_mean is not None:
            running_mean.copy_(torch.from_numpy(new_mean))
        if running_var is not None:
            running_var.copy_(torch.from_numpy(new_var))


def _input_dims(x, name, min_ndim=2):
    check_tensor(x, name)
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, backend="auto"):
    """torch.nn.functional.batch_norm on normlab's core; input (N, C, *), the rest (C,).

    training: normalize with batch statistics and, if running_mean/var are
    given, update them in place (factor ``momentum``); otherwise normalize
    with running_mean/var. Returns the output, of input's shape and dtype.
    """
    _input_dims(input, "input")
    layout = batch_layout(tuple(input.shape))
    if training:
        out, mean, var = _apply(input, weight, bias, layout, eps, backend=backend, name="batch_norm")
        if running_mean is not None or running_var is not None:
            update_running_stats(running_mean, running_var, mean, var, layout.count, float(momentum))
        return out
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm with training=False needs running_mean and running_var")
    out, _, _ = _apply(input, weight, bias, layout, eps, as_numpy(running_mean, "running_mean"),
                       as_numpy(running_var, "running_var"), backend, "batch_norm")
    return out


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.layer_norm on normlab's core: statistics over the trailing normalized_shape."""
    _input_dims(input, "input", 1)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(int(d) for d in normalized_shape)
    shape = tuple(input.shape)
    if len(shape) == len(normalized_shape):  # torch accepts an unbatched input: one sample
        shape = (1, *shape)
    layout = layer_layout(shape, normalized_shape)
    return _apply(input, weight, bias, layout, eps, backend=backend, name="layer_norm")[0]


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.group_norm on normlab's core: input (N, C, *), statistics per (n, group)."""
    _input_dims(input, "input")
    layout = group_layout(tuple(input.shape), num_groups)
    return _apply(input, weight, bias, layout, eps, backend=backend, name="group_norm")[0]


__all__ = ["NormFunction", "as_numpy", "check_tensor", "batch_norm", "group_norm", "layer_norm", "update_running_stats"]

"""torch.nn.functional's norms on normlab's core: each a thin shell over ``normlab.torch.route.normalize``.

They take torch's arguments in torch's forms (checked as torch's parser checks
them), and the route checks the tensors once per signature and runs the call
on the native node, the core (NumPy/Numba) or torch ops (``route`` draws them).
"""

from __future__ import annotations

import numbers

import torch

from . import route
from .checks import (BACKENDS, Spec, check_backend, check_eps, check_tensor, groups_arg,
                     normalized_shape_arg)
from .route import update_running_stats


def normalize(x, weight, bias, spec: Spec, mean=None, var=None):
    """-> (out, mean, var, invstd) of norm ``spec.kind`` on x; mean/var: given statistics of batch or instance
    norm, one per channel (C,), or None (x's). The statistics are float64 tensors of the layout's
    stat_shape, views of what the backward reads (an in-place edit of them is refused there, as torch
    refuses one of its saved statistics).

    eps: >= 0, and > 0 with batch statistics; batch statistics need more
    than one value each (except for RMS norm, whose statistic is a mean
    square): normlab raises where torch would return the bias or NaN.
    """
    return route.normalize(spec.kind, spec.arg, spec.eps, spec.backend, x, weight, bias, mean, var,
                           batch_stats=mean is None and var is None, stats=True)


def _unbatched(input, normalized_shape):
    """torch accepts an input that is just normalized_shape (one sample): give it a leading axis."""
    return input.unsqueeze(0) if isinstance(input, torch.Tensor) and input.dim() == len(normalized_shape) else input


def _no_channels(input, *per_channel):
    """torch's batch_norm on a 1-d input: there is no channel axis, so only an empty input (and stats) pass."""
    sizes = [t.numel() for t in per_channel if t is not None]
    if input.numel() or any(sizes):
        raise ValueError(f"batch_norm expects input (N, C, *); a 1-d input has no channel axis, got input shape "
                         f"{tuple(input.shape)} with {max(sizes, default=0)} per-channel values")
    return input.clone()


def _check_momentum(momentum, what: str):
    if momentum.__class__ is not float and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)):
        raise TypeError(f"{what}: momentum must be a float, not {type(momentum).__name__}")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, backend="auto"):
    """torch.nn.functional.batch_norm on normlab's core; input (N, C, *), the rest (C,).

    training: normalize with batch statistics and, if running_mean/var are
    given and the batch is not empty, update them in place (factor ``momentum``);
    otherwise normalize with running_mean/var. Returns the output, of
    input's shape and dtype (N = 0 gives an empty output).
    """
    check_tensor(input, "input")
    _check_momentum(momentum, "batch_norm")
    if input.dim() == 1:
        check_eps(eps, training, "batch_norm")
        return _no_channels(input, running_mean, running_var, weight, bias)
    return route.normalize("batch", (), eps, backend, input, weight, bias, running_mean, running_var,
                           batch_stats=bool(training), momentum=momentum)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.instance_norm on normlab's core: input (N, C, *spatial), statistics per (n, c).

    use_input_stats: normalize each instance with its own statistics and, if
    running_mean/var are given, fold the batch's average instance mean and
    (unbiased) variance into them (factor ``momentum``); otherwise normalize
    every instance with running_mean/var.
    """
    _check_momentum(momentum, "instance_norm")
    return route.normalize("instance", (), eps, backend, input, weight, bias, running_mean, running_var,
                           batch_stats=bool(use_input_stats), momentum=momentum)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.layer_norm on normlab's core: statistics over the trailing normalized_shape."""
    shape = normalized_shape_arg(normalized_shape, "layer_norm")
    x = _unbatched(input, shape)
    out = route.normalize("layer", shape, eps, backend, x, weight, bias)
    return out if x is input else out.squeeze(0)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.group_norm on normlab's core: input (N, C, *), statistics per (n, group)."""
    return route.normalize("group", groups_arg(num_groups, "group_norm"), eps, backend, input, weight, bias)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, backend="auto"):
    """torch.nn.functional.rms_norm on normlab's core: x / sqrt(mean(x**2) + eps) * weight.

    eps None is the machine epsilon of the dtype the statistics are taken in
    (float32 for float16/bfloat16 input), as in torch.
    """
    shape = normalized_shape_arg(normalized_shape, "rms_norm")
    if eps is None:
        check_tensor(input, "input")
        eps = torch.finfo(input.dtype if input.dtype == torch.float64 else torch.float32).eps
    x = _unbatched(input, shape)
    out = route.normalize("rms", shape, eps, backend, x, weight, None)
    return out if x is input else out.squeeze(0)


__all__ = ["BACKENDS", "Spec", "batch_norm", "check_backend", "check_eps", "check_tensor", "group_norm",
           "instance_norm", "layer_norm", "normalize", "normalized_shape_arg", "rms_norm", "update_running_stats"]

"""torch.nn's normalization modules on normlab's core.

Each subclasses its torch.nn counterpart and replaces only the call into
torch.nn.functional by one into ``normlab.torch.route`` (which checks the call
and picks its route), so parameters (weight, bias), buffers (running_mean,
running_var, num_batches_tracked), state_dict keys, ``reset_parameters``,
loading of old checkpoints and the constructor arguments (keyword-only
``bias``, ``device``, ``dtype``) are torch.nn's own: a state dict moves
between the two in both directions. Each takes one more keyword,
``backend`` ("auto", "numpy", "numba", or "torch": the closed form in torch
ops, which tensors off the CPU always use).
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from . import route
from .checks import check_backend, check_tensor, normalized_shape_arg
from .functions import group_norm, instance_norm, rms_norm

_BATCH_NORM_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_AFFINE = ("weight", "bias")


def _own(module, names: tuple) -> tuple:
    """The module's parameters or buffers ``names``, read from its own dicts: torch's ``Module.__getattr__``
    costs about a microsecond per read, and a model calls its norms dozens of times per step. Where one is
    served otherwise (a parametrization's property) all are read as attributes."""
    params, buffers = module._parameters, module._buffers
    found = []
    for name in names:
        if name in params:
            found.append(params[name])
        elif name in buffers:
            found.append(buffers[name])
        else:
            return tuple(getattr(module, n) for n in names)
    return tuple(found)


class BatchNorm(_BatchNorm):
    """Batch norm over channel axis 1 of any (N, C, *), like torch.nn.BatchNorm1d/2d/3d.

    Training mode normalizes with batch statistics and updates the running
    ones (momentum None: cumulative average over ``num_batches_tracked``);
    eval mode uses the running statistics, or batch statistics when
    ``track_running_stats`` is False (then the buffers are None). A batch
    with N = 0 gives an empty output and counts in num_batches_tracked,
    leaving the running statistics as they are (as torch does). A refused
    call changes no state.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.backend = check_backend(backend)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an input (N, C, *) with at least 2 dimensions, got shape "
                             f"{tuple(input.shape)}")

    def forward(self, input):
        if not isinstance(input, torch.Tensor):
            check_tensor(input, "input")
        self._check_input_dim(input)
        weight, bias, running_mean, running_var, num_batches_tracked = _own(self, _BATCH_NORM_STATE)
        # torch.nn's rules: batch statistics in training or without running ones; running statistics passed
        # (to be updated, or used) unless training without tracking; the batch counted when tracking.
        training, track = self.training, self.track_running_stats
        if training and not track:
            running_mean = running_var = None
        counts = training and track and num_batches_tracked is not None
        return route.normalize("batch", (), self.eps, self.backend, input, weight, bias, running_mean, running_var,
                               training or (running_mean is None and running_var is None),
                               num_batches_tracked if counts else None, self.momentum)


class BatchNorm1d(BatchNorm, torch.nn.BatchNorm1d):
    """normlab's BatchNorm for (N, C) or (N, C, L), an instance of torch.nn.BatchNorm1d as well."""

    _check_input_dim = torch.nn.BatchNorm1d._check_input_dim


class BatchNorm2d(BatchNorm, torch.nn.BatchNorm2d):
    """normlab's BatchNorm for (N, C, H, W), an instance of torch.nn.BatchNorm2d as well."""

    _check_input_dim = torch.nn.BatchNorm2d._check_input_dim


class BatchNorm3d(BatchNorm, torch.nn.BatchNorm3d):
    """normlab's BatchNorm for (N, C, D, H, W), an instance of torch.nn.BatchNorm3d as well."""

    _check_input_dim = torch.nn.BatchNorm3d._check_input_dim


class LayerNorm(torch.nn.LayerNorm):
    """Layer norm over the trailing ``normalized_shape``, like torch.nn.LayerNorm."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
                 dtype=None, *, backend="auto"):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.backend = check_backend(backend)

    def forward(self, input):
        weight, bias = _own(self, _AFFINE)
        shape = normalized_shape_arg(self.normalized_shape, "LayerNorm")
        if isinstance(input, torch.Tensor) and input.dim() == len(shape):  # one sample, as torch takes it
            return route.normalize("layer", shape, self.eps, self.backend, input.unsqueeze(0), weight,
                                   bias).squeeze(0)
        return route.normalize("layer", shape, self.eps, self.backend, input, weight, bias)


class GroupNorm(torch.nn.GroupNorm):
    """Group norm over (N, C, *) with ``num_groups`` groups of channels, like torch.nn.GroupNorm."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *,
                 bias=True, backend="auto"):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)
        self.backend = check_backend(backend)

    def forward(self, input):
        weight, bias = _own(self, _AFFINE)
        return group_norm(input, self.num_groups, weight, bias, self.eps, backend=self.backend)


class RMSNorm(torch.nn.RMSNorm):
    """RMS norm over the trailing ``normalized_shape``, like torch.nn.RMSNorm (eps None: the dtype's epsilon)."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)
        self.backend = check_backend(backend)

    def forward(self, x):
        return rms_norm(x, self.normalized_shape, _own(self, ("weight",))[0], self.eps, backend=self.backend)


class _InstanceNorm:
    """torch.nn.InstanceNorm*d's forward (dims, unbatched input, num_features) with normlab's instance norm."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 device=None, dtype=None, *, bias=True, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.backend = check_backend(backend)

    def _apply_instance_norm(self, input):
        # torch's rule: batch statistics in training or without running ones; momentum None leaves them.
        return instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training or not self.track_running_stats,
                             self.momentum if self.momentum is not None else 0.0, self.eps, backend=self.backend)


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    """Instance norm of (N, C, L) or unbatched (C, L), like torch.nn.InstanceNorm1d."""


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    """Instance norm of (N, C, H, W) or unbatched (C, H, W), like torch.nn.InstanceNorm2d."""


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    """Instance norm of (N, C, D, H, W) or unbatched (C, D, H, W), like torch.nn.InstanceNorm3d."""


__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm"]

"""BatchNorm, LayerNorm and GroupNorm modules on normlab's core.

Each subclasses its torch.nn counterpart and overrides only ``forward``, so
parameters (weight, bias), buffers (running_mean, running_var,
num_batches_tracked), state_dict keys, ``reset_parameters``, loading of old
checkpoints and the constructor arguments are torch.nn's own: a state dict
moves between the two in both directions.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .functions import batch_norm, check_tensor, group_norm, layer_norm


class BatchNorm(_BatchNorm):
    """Batch norm over channel axis 1 of (N, C), (N, C, L) or (N, C, H, W), like torch.nn.BatchNorm1d/2d.

    Training mode normalizes with batch statistics and updates the running
    ones (momentum None: cumulative average over ``num_batches_tracked``);
    eval mode uses the running statistics, or batch statistics when
    ``track_running_stats`` is False (then the buffers are None).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.backend = backend

    def _check_input_dim(self, input):
        check_tensor(input, "input")
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-, 3- or 4-d input (N, C), (N, C, L) or (N, C, H, W), "
                             f"got shape {tuple(input.shape)}")
        self._check_channels(input)

    def _check_channels(self, input):
        if input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}(num_features={self.num_features}) expects "
                             f"{self.num_features} channels on axis 1, got input shape {tuple(input.shape)}")

    def _counts_batch(self) -> bool:
        """Does this forward count a batch in num_batches_tracked (and update the running stats)?"""
        return self.training and self.track_running_stats and self.num_batches_tracked is not None

    def _update_factor(self) -> float:
        """torch.nn.BatchNorm's running-stat factor: momentum, or 1/num_batches for momentum None."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(self.num_batches_tracked + 1) if self._counts_batch() else 0.0

    def forward(self, input):
        self._check_input_dim(input)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        out = batch_norm(input, self.running_mean if tracked else None, self.running_var if tracked else None,
                         self.weight, self.bias, use_batch_stats, self._update_factor(), self.eps,
                         backend=self.backend)
        # Counted after a successful forward, so a rejected input changes no state.
        if self._counts_batch():
            self.num_batches_tracked.add_(1)
        return out


class LayerNorm(torch.nn.LayerNorm):
    """Layer norm over the trailing ``normalized_shape``, like torch.nn.LayerNorm."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
                 dtype=None, *, backend="auto"):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.backend = backend

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend)


class GroupNorm(torch.nn.GroupNorm):
    """Group norm over (N, C, *) with ``num_groups`` groups of channels, like torch.nn.GroupNorm."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.backend = backend

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, backend=self.backend)

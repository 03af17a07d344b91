"""torch.nn's normalization modules on normlab's core.

Each subclasses its torch.nn counterpart and replaces only the call into
torch.nn.functional, so parameters (weight, bias), buffers (running_mean,
running_var, num_batches_tracked), state_dict keys, ``reset_parameters``,
loading of old checkpoints and the constructor arguments (keyword-only
``bias``, ``device``, ``dtype``) are torch.nn's own: a state dict moves
between the two in both directions. Each takes one more keyword,
``backend`` ("auto", "numpy", "numba", or "torch": the closed form in torch
ops, which tensors off the CPU always use).
"""

from __future__ import annotations

import math

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from . import fused
from .functions import (EagerNormFunction, Spec, _eager_core, batch_norm, check_backend, check_tensor, group_norm,
                        instance_norm, layer_norm, rms_norm)


_BATCH_NORM_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_AFFINE = ("weight", "bias")


def _own(module, names: tuple) -> tuple:
    """The module's parameters or buffers ``names``, read from its own dicts: torch's ``Module.__getattr__``
    takes ~1.5 µs per read, and a model calls its norms dozens of times per step. Where one is served
    otherwise (a parametrization's property) all are read as attributes."""
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


def _plain_eager(x, backend: str) -> bool:
    """Whether a module's call may take the fused route straight from its forward: a plain contiguous tensor
    on the eager core's path (functions._eager_core: CPU, neither compiled, nor transformed, nor traced)."""
    return x.__class__ is torch.Tensor and x.is_contiguous() and _eager_core(x, backend)


def _check_countable(num_batches_tracked: torch.Tensor) -> None:
    """torch.nn's refusal, raised before any buffer changes: num_batches_tracked made under
    torch.inference_mode cannot be counted outside it (the native node checks the same in C++). Skipped under
    torch.compile, which cannot trace ``is_inference()`` (a graph break)."""
    if torch.compiler.is_compiling():
        return
    if num_batches_tracked.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("BatchNorm: num_batches_tracked is an inference tensor (made under torch.inference_mode) "
                           "and a training forward outside inference mode would update it in place; as in "
                           "torch.nn this is not allowed (clone the buffers, or run under inference_mode)")


class BatchNorm(_BatchNorm):
    """Batch norm over channel axis 1 of any (N, C, *), like torch.nn.BatchNorm1d/2d/3d.

    Training mode normalizes with batch statistics and updates the running
    ones (momentum None: cumulative average over ``num_batches_tracked``);
    eval mode uses the running statistics, or batch statistics when
    ``track_running_stats`` is False (then the buffers are None). A batch
    with N = 0 gives an empty output and counts in num_batches_tracked,
    leaving the running statistics as they are (as torch does).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True, backend="auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.backend = check_backend(backend)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an input (N, C, *) with at least 2 dimensions, got shape "
                             f"{tuple(input.shape)}")

    def _check_channels(self, input, weight, running_mean):
        # Only where torch would fail too: without weight or buffers any C normalizes.
        if (weight is not None or running_mean is not None) and input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}(num_features={self.num_features}) expects "
                             f"{self.num_features} channels on axis 1, got input shape {tuple(input.shape)}")

    def _counts_batch(self) -> bool:
        """Does this forward count a batch in num_batches_tracked (and update the running stats)?"""
        return self.training and self.track_running_stats and self.num_batches_tracked is not None

    def _update_factor(self, counts: bool):
        """torch.nn.BatchNorm's running-stat factor: momentum, or 1/num_batches for momentum None.

        counts: :meth:`_counts_batch`. The latter stays a (float64) tensor: torch.compile need not read
        num_batches_tracked back.
        """
        if self.momentum is not None:
            return self.momentum
        return 1.0 / (self.num_batches_tracked.double() + 1) if counts else 0.0

    def forward(self, input):
        check_tensor(input, "input")
        self._check_input_dim(input)
        out = self._fused_forward(input)
        return self._general_forward(input) if out is None else out

    def _fused_forward(self, x):
        """:meth:`_general_forward`'s result by the shortest route, or None (before any state changes).

        A model calls its norms dozens of times per step, and between its matrix
        products every Python operation is slower than on its own (torch's
        OpenMP workers spin on the other core): for the common case (eager,
        contiguous float32/float64 CPU input of ``num_features`` channels, a
        float eps > 0, the Numba backend) this goes straight to the fused
        kernels (``normlab.torch.fused``), through the native autograd node where
        it was built (``fused_node``: the whole call in C++). Anything else,
        including every error, is the general route's.
        """
        if not _plain_eager(x, self.backend):
            return None
        weight, bias, running_mean, running_var, num_batches_tracked = _own(self, _BATCH_NORM_STATE)
        training = self.training
        batch_stats = training or (running_mean is None and running_var is None)
        plan, eps = fused.plan_for("batch", x.shape, (), x.dtype, self.backend, not batch_stats), self.eps
        if plan is None or x.shape[1] != self.num_features or eps.__class__ is not float or not 0 < eps < math.inf:
            return None
        given = (None, None) if batch_stats else (running_mean, running_var)
        update = training and self.track_running_stats and (running_mean is not None or running_var is not None)
        if ((batch_stats and plan.count < 2) or ((update or not batch_stats)
                                                 and (running_mean is None or running_var is None))
                or not fused.usable(x, weight, bias, running_mean, running_var)
                or not fused.serves(plan, x, weight, bias)):
            return None
        counts = training and self.track_running_stats and num_batches_tracked is not None  # _counts_batch
        if plan.native is not None:  # the whole call in C++; None: non-finite statistics, nothing changed
            return fused.run_native(plan, x, weight, bias, *given, running_mean if update else None,
                                    running_var if update else None, num_batches_tracked if counts else None,
                                    self.momentum, eps)[0]
        if counts:
            _check_countable(num_batches_tracked)
        sink = []
        out = EagerNormFunction.apply(x, weight, bias, *given, Spec("batch", (), eps, self.backend), plan, sink)
        if update:
            fused.update_running(plan, running_mean, running_var, sink[0], self._update_factor(counts))
        if counts:  # counted after a successful forward, so a rejected input changes no state
            num_batches_tracked.add_(1)
        return out

    def _general_forward(self, input):
        # Each parameter and buffer read once: a module attribute lookup costs about a microsecond.
        weight, running_mean, running_var = self.weight, self.running_mean, self.running_var
        self._check_channels(input, weight, running_mean)
        counts = self._counts_batch()
        if counts:
            _check_countable(self.num_batches_tracked)
        use_batch_stats = self.training or (running_mean is None and running_var is None)
        tracked = not self.training or self.track_running_stats
        out = batch_norm(input, running_mean if tracked else None, running_var if tracked else None, weight,
                         self.bias, use_batch_stats, self._update_factor(counts), self.eps, backend=self.backend)
        # Counted after a successful forward, so a rejected input changes no state.
        if counts:
            self.num_batches_tracked.add_(1)
        return out


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
        out = self._fused_forward(input)
        if out is not None:
            return out
        weight, bias = _own(self, _AFFINE)
        return layer_norm(input, self.normalized_shape, weight, bias, self.eps, backend=self.backend)

    def _fused_forward(self, x):
        """The native node's result for the common case, or None (the general route, which also raises every
        error). A transformer calls its LayerNorms right after matrix products, while torch's OpenMP worker
        spins on the other core, and there each Python operation costs several times what it does alone:
        layer_norm's general checks took ~0.2 ms per call in such a step against ~0.3 ms for the kernels
        (docs/benchmarks.md)."""
        shape, eps = self.normalized_shape, self.eps
        if (not _plain_eager(x, self.backend) or eps.__class__ is not float or not 0 < eps < math.inf
                or x.dim() <= len(shape) or x.shape[x.dim() - len(shape):] != shape):
            return None  # (unbatched input, or a shape the general route will refuse)
        plan = fused.plan_for("layer", x.shape, shape, x.dtype, self.backend)
        if plan is None or plan.native is None or plan.count < 2:
            return None
        weight, bias = _own(self, _AFFINE)
        if ((weight is not None and weight.shape != plan.param_shape)
                or (bias is not None and bias.shape != plan.param_shape)
                or not fused.usable(x, weight, bias) or not fused.serves(plan, x, weight, bias)):
            return None
        return fused.run_native(plan, x, weight, bias, None, None, eps=eps)[0]  # None: not finite, general route


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

"""A convolutional net for 1-d (C, L) and 2-d (C, H, W) inputs, with a normalization after every convolution.

Architecture, for ``conv_channels = [F1, ..., FK]`` and ``hidden_dims = [H1, ..., HM]``::

    {conv - [norm] - relu - [pool]} x K  ->  [global average pool]  ->  {affine - relu} x M  ->  affine  ->  softmax

Convolutions pad by kernel_size // 2 (the output keeps its size at stride 1).
Parameters: ``W{i}, b{i}, gamma{i}, beta{i}`` for conv layer i (W of shape
(F, C_in, *kernel); gamma/beta only with a normalization; no ``b`` before a
norm that subtracts a mean per channel, which would cancel it), then
``W, b`` of the affine layers, numbered on. Running statistics per conv
layer (``"layer{i}"``) for the norms that keep them. The training step,
state, commit and data parallelism are the lab's :class:`~normlab.lab.net.Net`'s.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from .. import _checks
from ..ghost import GhostBatchNorm
from ..layers import BatchNorm, GroupNorm, InstanceNorm, RunningStats
from ..renorm import BatchRenorm
from . import conv_ops, ops
from .conv_ops import per_axis
from .model import lookup
from .net import Net, check_net_args


class ConvNormalization(NamedTuple):
    """How a conv layer normalizes its (N, F, *spatial) output.

    make: ``make(channels, net)`` -> a normlab layer without parameters or
        state of its own (the net passes them to ``apply``), or None.
    running_stats: the net keeps running statistics for it (eval uses them).
    conv_bias: whether the conv before it has a bias: not before a norm that subtracts a per-channel mean
        (batch statistics, instance norm), which cancels the bias exactly (its gradient is 0) and beta takes its role.
    """

    make: Callable | None
    running_stats: bool
    conv_bias: bool


def _settings(net):
    return {"eps": net.eps, "affine": False, "backend": net.backend}


CONV_NORMALIZATIONS: dict[str, ConvNormalization] = {
    "none": ConvNormalization(None, running_stats=False, conv_bias=True),
    "batchnorm": ConvNormalization(
        lambda c, net: BatchNorm(c, track_running_stats=False, **_settings(net)), True, False),
    "groupnorm": ConvNormalization(lambda c, net: GroupNorm(net.groups, c, **_settings(net)), False, True),
    # Layer norm over (C, *spatial) with gamma/beta per channel: group norm with one group, as in the GN paper.
    "layernorm": ConvNormalization(lambda c, net: GroupNorm(1, c, **_settings(net)), False, True),
    # Instance norm subtracts each (sample, channel) mean over the positions: a conv bias cancels there too.
    "instancenorm": ConvNormalization(lambda c, net: InstanceNorm(c, **_settings(net)), False, False),
    "batchrenorm": ConvNormalization(
        lambda c, net: BatchRenorm(c, track_running_stats=False, rmax=net.rmax, dmax=net.dmax, warmup=net.warmup,
                                   **_settings(net)), True, False),
    "ghostbatchnorm": ConvNormalization(
        lambda c, net: GhostBatchNorm(c, net.virtual_batch_size, track_running_stats=False, **_settings(net)),
        True, False),
}


class ConvNet(Net):
    """Convolutional classifier with optional normalization and L2 regularization.

    input_shape: one sample's shape, (C, L) or (C, H, W); X may come flattened as (N, C*L) or (N, C*H*W).
    num_classes: number of classes.
    conv_channels: output channels of the conv layers, e.g. ``[16, 32]``.
    kernel_size, stride: an int for every conv layer or one per layer (square kernels and strides).
    pool: "max", "avg" or None: pooling after every conv block, windows of ``pool_size``.
    global_pool: average over the remaining positions before the affine layers (else they are flattened).
    hidden_dims: sizes of affine-ReLU layers between the conv stack and the output layer.
    normalization: None or a name in ``CONV_NORMALIZATIONS``: "batchnorm", "groupnorm" (``groups``
        groups), "layernorm", "instancenorm", "batchrenorm" (``rmax``, ``dmax``, ``warmup``,
        see ``normlab.BatchRenorm``), "ghostbatchnorm" (``virtual_batch_size``).
    weight_scale: std of the normal weight init, or None for He init, sqrt(2/fan_in) per layer.
    reg, dtype, seed, momentum, eps, backend: as for FullyConnectedNet.
    """

    def __init__(self, input_shape, num_classes: int, conv_channels=(16, 32), hidden_dims=(), *,
                 kernel_size=3, stride=1, pool: str | None = "max", pool_size: int = 2, global_pool: bool = False,
                 normalization: str | None = None, groups: int = 4, virtual_batch_size: int | None = None,
                 rmax: float = 3.0, dmax: float = 5.0, warmup: tuple[int, int] | None = None,
                 weight_scale: float | None = None, reg: float = 0.0, dtype=np.float64, seed: int | None = None,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str = "auto"):
        self.input_shape = tuple(_checks.check_positive_int(s, "input_shape entries") for s in input_shape)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(f"input_shape must be (C, L) or (C, H, W), got {tuple(input_shape)}")
        self.num_classes = _checks.check_positive_int(num_classes, "num_classes")
        self.conv_channels = [_checks.check_positive_int(c, "conv_channels entries") for c in conv_channels]
        self.hidden_dims = [_checks.check_positive_int(h, "hidden_dims entries") for h in hidden_dims]
        k = len(self.conv_channels)
        self.kernel_size = list(per_axis(kernel_size, k, "kernel_size"))
        self.stride = list(per_axis(stride, k, "stride"))
        if pool not in (None, *conv_ops.POOL_KINDS):
            raise ValueError(f"pool must be None or one of {conv_ops.POOL_KINDS}, got {pool!r}")
        self.pool, self.global_pool = pool, bool(global_pool)
        self.pool_size = _checks.check_positive_int(pool_size, "pool_size")
        self.norm = lookup(CONV_NORMALIZATIONS, normalization)
        self.normalization = None if normalization in (None, "none") else normalization
        self.groups = _checks.check_positive_int(groups, "groups")
        self.virtual_batch_size = None if virtual_batch_size is None else _checks.check_positive_int(
            virtual_batch_size, "virtual_batch_size")
        if self.normalization == "ghostbatchnorm" and self.virtual_batch_size is None:
            raise ValueError("normalization 'ghostbatchnorm' needs a virtual_batch_size")
        self.rmax, self.dmax, self.warmup = rmax, dmax, None if warmup is None else list(warmup)
        self.dtype, self.seed = check_net_args(reg, weight_scale, dtype, momentum, eps, seed,
                                               weight_scale_optional=True)
        self.reg, self.weight_scale = float(reg), None if weight_scale is None else float(weight_scale)
        self.momentum, self.eps, self.backend = momentum, float(eps), backend
        self.shapes = self._block_shapes()
        self._init_state()

    def _block_shapes(self) -> list[tuple[int, ...]]:
        """The (F, *spatial) output of every conv block; ValueError naming the layer where a window does not fit."""
        shape, shapes = self.input_shape, []
        d = len(shape) - 1
        for i, (f, k, s) in enumerate(zip(self.conv_channels, self.kernel_size, self.stride), start=1):
            try:
                spatial = conv_ops.output_shape(shape[1:], (k,) * d, (s,) * d, (k // 2,) * d)
                if self.pool is not None:
                    spatial = conv_ops.output_shape(spatial, (self.pool_size,) * d, (self.pool_size,) * d, (0,) * d)
            except ValueError as exc:
                raise ValueError(f"conv layer {i} of input shape {self.input_shape}: {exc}") from None
            shape = (f, *spatial)
            shapes.append(shape)
        return shapes

    def _init_state(self) -> None:
        """params (weights from the seed), the norms used as functions, running statistics."""
        init_rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(2)[0])
        d = len(self.input_shape) - 1
        self.params = {}
        self.norms, self.batch_stats = {}, {}
        channels = self.input_shape[0]
        for i, (f, k) in enumerate(zip(self.conv_channels, self.kernel_size), start=1):
            self.params[f"W{i}"] = self._weights(init_rng, (f, channels, *(k,) * d), channels * k ** d)
            if self.norm.conv_bias:
                self.params[f"b{i}"] = np.zeros(f, dtype=self.dtype)
            if self.norm.make is not None:
                self.params[f"gamma{i}"] = np.ones(f, dtype=self.dtype)
                self.params[f"beta{i}"] = np.zeros(f, dtype=self.dtype)
                self.norms[f"layer{i}"] = self.norm.make(f, self)
                if self.norm.running_stats:
                    self.batch_stats[f"layer{i}"] = RunningStats(f, self.momentum, self.dtype)
            channels = f
        last = self.shapes[-1] if self.shapes else self.input_shape
        fan_in = last[0] if self.global_pool else math.prod(last)
        for i, h in enumerate([*self.hidden_dims, self.num_classes], start=len(self.conv_channels) + 1):
            self.params[f"W{i}"] = self._weights(init_rng, (fan_in, h), fan_in)
            self.params[f"b{i}"] = np.zeros(h, dtype=self.dtype)
            fan_in = h
        self.num_layers = len(self.conv_channels) + len(self.hidden_dims) + 1

    def _weights(self, rng, shape, fan_in: int) -> np.ndarray:
        scale = math.sqrt(2.0 / fan_in) if self.weight_scale is None else self.weight_scale
        return (scale * rng.standard_normal(shape)).astype(self.dtype)

    def config(self) -> dict:
        return {
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "conv_channels": list(self.conv_channels), "hidden_dims": list(self.hidden_dims),
            "kernel_size": self.kernel_size, "stride": self.stride, "pool": self.pool, "pool_size": self.pool_size,
            "global_pool": self.global_pool, "normalization": self.normalization, "groups": self.groups,
            "virtual_batch_size": self.virtual_batch_size, "rmax": self.rmax, "dmax": self.dmax,
            "warmup": self.warmup, "weight_scale": self.weight_scale, "reg": self.reg, "dtype": self.dtype.name,
            "seed": self.seed, "momentum": self.momentum, "eps": self.eps,
        }

    def _forward(self, X, training: bool, placement, rng):
        p, caches, new_stats = self.params, [], {}
        h = X
        pool = None if self.pool is None else (self.pool, self.pool_size)
        for i, k in enumerate(self.kernel_size, start=1):
            name = f"layer{i}"
            norm = self._norm_layer(name, training, placement) if self.norms else None
            h, cache, stats = conv_ops.conv_block_forward(
                h, p[f"W{i}"], p.get(f"b{i}"), p.get(f"gamma{i}"), p.get(f"beta{i}"), norm,
                self.batch_stats.get(name), stride=self.stride[i - 1], pad=k // 2, pool=pool, training=training)
            if stats is not None:
                new_stats[name] = stats
            caches.append(cache)
        if self.global_pool:
            h, cache = conv_ops.global_avg_pool_forward(h)
            caches.append(cache)
        first_affine = len(self.conv_channels) + 1
        for i in range(first_affine, self.num_layers):
            h, cache = ops.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
            caches.append(cache)
        scores, cache = ops.affine_forward(h, p[f"W{self.num_layers}"], p[f"b{self.num_layers}"])
        caches.append(cache)
        return scores, caches, new_stats

    def _backward_layers(self, dscores, caches) -> dict:
        grads, L, K = {}, self.num_layers, len(self.conv_channels)
        caches = list(caches)
        dh, grads[f"W{L}"], grads[f"b{L}"] = ops.affine_backward(dscores, caches.pop())
        for i in range(L - 1, K, -1):
            dh, grads[f"W{i}"], grads[f"b{i}"], _, _ = ops.sandwich_backward(dh, caches.pop())
        if self.global_pool:
            dh = conv_ops.global_avg_pool_backward(dh, caches.pop())
        for i in range(K, 0, -1):
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = conv_ops.conv_block_backward(dh, caches.pop())
            if dgamma is not None:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
        return grads

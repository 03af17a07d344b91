"""Normalization layers with state: BatchNorm, LayerNorm, GroupNorm.

A layer keeps three kinds of state apart (as Flax keeps ``params`` and
``batch_stats`` in separate collections): ``params`` (gamma, beta) that an
optimizer updates, ``grads`` filled by ``backward``, and buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``) that only
forward in training mode touches. Running statistics follow PyTorch's
contract exactly, so a state dict means the same thing in both.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .core import NormCache, normalize_backward, normalize_forward
from .norms import batch_layout, group_layout, layer_layout


def blend_running_stats(old_mean, old_var, batch_mean, batch_var, count: int, factor: float):
    """torch.nn.BatchNorm's update: new = f*batch + (1 - f)*old, in the order ATen computes it.

    batch_var is the biased variance over ``count`` values; the running
    variance takes the unbiased one, batch_var * count/(count - 1).
    Returns (new_mean, new_var) as new arrays.
    """
    unbiased = batch_var * (count / (count - 1))
    return factor * batch_mean + (1.0 - factor) * old_mean, factor * unbiased + (1.0 - factor) * old_var


class RunningStats:
    """Running mean and variance with torch.nn.BatchNorm's update rule.

    new = (1 - f)*old + f*batch, with f = momentum, or f = 1/num_batches_tracked
    for momentum=None (a cumulative average). The running variance is the
    unbiased batch variance (times m/(m-1)) while normalization uses the biased one.
    """

    def __init__(self, num_features: int, momentum: float | None = 0.1, dtype=np.float64):
        self.momentum = _checks.check_momentum(momentum)
        self.mean = np.zeros(num_features, dtype=dtype)
        self.var = np.ones(num_features, dtype=dtype)
        self.num_batches_tracked = 0

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> None:
        """Fold in one batch's statistics (biased var over ``count`` values each)."""
        tracked = self.num_batches_tracked + 1
        factor = 1.0 / tracked if self.momentum is None else self.momentum
        # Compute both before assigning either.
        new_mean, new_var = blend_running_stats(self.mean, self.var, batch_mean, batch_var, count, factor)
        self.mean = new_mean.astype(self.mean.dtype)
        self.var = new_var.astype(self.var.dtype)
        self.num_batches_tracked = tracked

    def reset(self) -> None:
        self.mean[...] = 0
        self.var[...] = 1
        self.num_batches_tracked = 0


def _channels_first_input(x, layer: str, channels: int) -> np.ndarray:
    """x (N, C, *) with C == channels, or a ValueError naming the layer and x's shape."""
    x = _checks.as_float_array(x, "x", min_ndim=2)
    if x.shape[1] != channels:
        raise ValueError(f"{layer}={channels}) expects x with {channels} channels on axis 1, got x shape {x.shape}")
    return x


class _NormLayer:
    """forward/backward/train/eval shared by the three layers."""

    def __init__(self, param_shape, affine: bool, eps: float, dtype, backend: str):
        _checks.check_eps(eps, training=False)
        self.eps = float(eps)
        self.backend = backend
        self.training = True
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        if affine:
            self.params = {"gamma": np.ones(param_shape, dtype=dtype), "beta": np.zeros(param_shape, dtype=dtype)}
        self._cache: NormCache | None = None

    # -- modes
    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def gamma(self):
        return self.params.get("gamma")

    @property
    def beta(self):
        return self.params.get("beta")

    def __call__(self, x):
        return self.forward(x)

    def backward(self, dout):
        """dout (shape of the last forward's output) -> dx; fills ``self.grads``."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dgamma, dbeta = normalize_backward(dout, self._cache)
        if self.params:
            self.grads = {"gamma": dgamma, "beta": dbeta}
        return dx

    def _forward(self, x, layout, mean=None, var=None):
        out, cache = normalize_forward(x, self.gamma, self.beta, layout, self.eps,
                                       mean=mean, var=var, backend=self.backend)
        self._cache = cache
        return out, cache

    # -- state
    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Load params (and buffers); checks every entry before changing any."""
        own = self.state_dict()
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ValueError(f"state dict keys differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        arrays = {}
        for key, ref in own.items():
            value = np.asarray(state[key])
            if value.shape != ref.shape:
                raise ValueError(f"state dict entry {key!r} has shape {value.shape}, expected {ref.shape}")
            arrays[key] = value.astype(ref.dtype)
        self._assign_state(arrays)

    def _assign_state(self, arrays: dict) -> None:
        for key in self.params:
            self.params[key] = arrays[key]

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class BatchNorm(_NormLayer):
    """Batch norm for x of shape (N, C), (N, C, L) or (N, C, H, W), channels on axis 1.

    Training mode normalizes with batch statistics and updates the running
    ones; eval mode uses the running statistics (batch statistics when
    ``track_running_stats`` is False). gamma/beta and the buffers are (C,).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, dtype=np.float64,
                 backend: str = "auto"):
        self.num_features = _checks.check_positive_int(num_features, "num_features")
        super().__init__((self.num_features,), affine, eps, dtype, backend)
        self.momentum = _checks.check_momentum(momentum)
        self.track_running_stats = bool(track_running_stats)
        self._running = RunningStats(self.num_features, self.momentum, dtype) if track_running_stats else None

    @property
    def running_mean(self):
        return None if self._running is None else self._running.mean

    @property
    def running_var(self):
        return None if self._running is None else self._running.var

    @property
    def num_batches_tracked(self):
        return None if self._running is None else self._running.num_batches_tracked

    def forward(self, x):
        """x (N, C, *) -> out of the same shape."""
        x = _channels_first_input(x, "BatchNorm(num_features", self.num_features)
        layout = batch_layout(x.shape)
        if self.training or self._running is None:
            out, cache = self._forward(x, layout)
            if self.training and self._running is not None:
                self._running.update(cache.mean, cache.var, layout.count)
            return out
        out, _ = self._forward(x, layout, mean=self._running.mean, var=self._running.var)
        return out

    def state_dict(self):
        state = super().state_dict()
        if self._running is not None:
            state.update(running_mean=self._running.mean.copy(), running_var=self._running.var.copy(),
                         num_batches_tracked=np.asarray(self._running.num_batches_tracked, dtype=np.int64))
        return state

    def _assign_state(self, arrays):
        super()._assign_state(arrays)
        if self._running is not None:
            self._running.mean = arrays["running_mean"]
            self._running.var = arrays["running_var"]
            self._running.num_batches_tracked = int(arrays["num_batches_tracked"])

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={bool(self.params)}, "
                f"track_running_stats={self.track_running_stats}")


class LayerNorm(_NormLayer):
    """Layer norm over the trailing ``normalized_shape`` of x; gamma/beta elementwise."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, *,
                 dtype=np.float64, backend: str = "auto"):
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(_checks.check_positive_int(d, "normalized_shape") for d in normalized_shape)
        super().__init__(self.normalized_shape, elementwise_affine, eps, dtype, backend)

    def forward(self, x):
        """x (*, *normalized_shape) -> out of the same shape."""
        x = _checks.as_float_array(x, "x", min_ndim=len(self.normalized_shape) + 1)
        out, _ = self._forward(x, layer_layout(x.shape, self.normalized_shape))
        return out

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={bool(self.params)}"


class GroupNorm(_NormLayer):
    """Group norm for x (N, C, *): statistics per sample and group of C/num_groups channels."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 dtype=np.float64, backend: str = "auto"):
        self.num_groups = _checks.check_positive_int(num_groups, "num_groups")
        self.num_channels = _checks.check_positive_int(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide num_channels ({num_channels})")
        super().__init__((self.num_channels,), affine, eps, dtype, backend)

    def forward(self, x):
        """x (N, C, *) -> out of the same shape."""
        x = _channels_first_input(x, "GroupNorm(num_channels", self.num_channels)
        out, _ = self._forward(x, group_layout(x.shape, self.num_groups))
        return out

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={bool(self.params)}"

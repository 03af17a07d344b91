"""Normalization layers with state: BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm.

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
from .core import Layout, normalize_backward, normalize_forward
from .norms import batch_layout, group_layout, instance_layout, layer_layout, rms_layout
from .running_rule import blend_running_stats


class RunningStats:
    """Running mean and variance with torch.nn.BatchNorm's update rule.

    new = (1 - f)*old + f*batch, with f = momentum, or f = 1/num_batches_tracked
    for momentum=None (a cumulative average). The running variance is the
    unbiased batch variance (times m/(m-1)) while normalization uses the biased one.
    mean, var: (C,) arrays of ``dtype``; state_dict keys are torch's.
    """

    def __init__(self, num_features: int, momentum: float | None = 0.1, dtype=np.float64):
        self.momentum = _checks.check_momentum(momentum)
        self.mean = np.zeros(num_features, dtype=dtype)
        self.var = np.ones(num_features, dtype=dtype)
        self.num_batches_tracked = 0

    def updated(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> RunningStats:
        """A new RunningStats with one batch folded in (biased var over ``count`` values each); self is unchanged."""
        tracked = self.num_batches_tracked + 1
        factor = 1.0 / tracked if self.momentum is None else self.momentum
        new_mean, new_var = blend_running_stats(self.mean, self.var, batch_mean, batch_var, count, factor)
        new = self.copy()
        new.mean, new.var = new_mean.astype(self.mean.dtype), new_var.astype(self.var.dtype)
        new.num_batches_tracked = tracked
        return new

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> None:
        """Fold in one batch's statistics, in place (see :meth:`updated`)."""
        self.assign(self.updated(batch_mean, batch_var, count))

    def assign(self, other: RunningStats) -> None:
        """Take other's statistics (not its momentum): commits an :meth:`updated` result in place."""
        self.mean, self.var, self.num_batches_tracked = other.mean, other.var, other.num_batches_tracked

    def copy(self) -> RunningStats:
        new = RunningStats.__new__(RunningStats)
        new.momentum = self.momentum
        new.mean, new.var, new.num_batches_tracked = self.mean.copy(), self.var.copy(), self.num_batches_tracked
        return new

    def reset(self) -> None:
        self.mean = np.zeros_like(self.mean)
        self.var = np.ones_like(self.var)
        self.num_batches_tracked = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies under torch's buffer names: running_mean, running_var, num_batches_tracked (int64 scalar)."""
        return {"running_mean": self.mean.copy(), "running_var": self.var.copy(),
                "num_batches_tracked": np.asarray(self.num_batches_tracked, dtype=np.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Load the three buffers; checks every entry before changing any.

        Refused with a ValueError/TypeError naming the key: a missing entry, a
        wrong shape, a non-float dtype, a non-finite value (after the cast to
        the statistics' dtype), a negative running_var, a num_batches_tracked
        that is not an integer >= 0. Eval with such statistics would return
        NaN or garbage for every input without a word.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
        mean = _checked_entry(state, "running_mean", self.mean)
        var = _checked_entry(state, "running_var", self.var)
        if np.any(var < 0):
            raise ValueError(f"state dict entry 'running_var' must be >= 0, got minimum {float(np.min(var))}")
        tracked = np.asarray(state["num_batches_tracked"]) if "num_batches_tracked" in state else None
        if tracked is None or tracked.shape != () or not np.issubdtype(tracked.dtype, np.integer) or tracked < 0:
            raise ValueError(f"state dict entry 'num_batches_tracked' must be an integer >= 0, "
                             f"got {state.get('num_batches_tracked')!r}")
        self.mean, self.var, self.num_batches_tracked = mean, var, int(tracked)


def _checked_entry(state: dict, key: str, like: np.ndarray) -> np.ndarray:
    """state[key] as a finite float array of like's shape and dtype (a copy), or an error naming the key."""
    if key not in state:
        raise ValueError(f"state dict has no entry {key!r}")
    value = _checks.as_float_array(state[key], f"state dict entry {key!r}")
    if value.shape != like.shape:
        raise ValueError(f"state dict entry {key!r} has shape {value.shape}, expected {like.shape}")
    with np.errstate(over="ignore"):
        value = value.astype(like.dtype)  # always a copy: the layer never aliases the caller's arrays
    if not np.all(np.isfinite(value)):
        raise ValueError(f"state dict entry {key!r} holds {int(np.sum(~np.isfinite(value)))} NaN or inf value(s)"
                         + (f" in {like.dtype}" if value.dtype != np.asarray(state[key]).dtype else ""))
    return value


def _channels_first_input(x, layer: str, channels: int) -> np.ndarray:
    """x (N, C, *) with C == channels, or a ValueError naming the layer and x's shape."""
    x = _checks.as_float_array(x, "x", min_ndim=2)
    if x.shape[1] != channels:
        raise ValueError(f"{layer}={channels}) expects x with {channels} channels on axis 1, got x shape {x.shape}")
    return x


class _NormLayer:
    """The shared shell of the layers.

    ``apply(x, gamma, beta, running, training=...) -> (out, cache, new_running)``
    is the layer as a function: it changes nothing, takes parameters and
    running statistics as arguments and returns the updated statistics (None
    when they do not change), as Flax and Equinox pass state in and out. A
    model that keeps its own parameters and statistics (``normlab.lab``) calls
    it directly; ``forward``/``backward`` are the stateful shell over it.
    ``stats_over_batch``: whether statistics reduce over the batch axis (then
    data-parallel training must synchronize them, see ``normlab.distributed``).
    """

    stats_over_batch = False

    def __init__(self, param_shape, affine: bool, eps: float, dtype, backend: str):
        _checks.check_eps(eps, training=False)
        self.eps = float(eps)
        self.backend = backend
        self.training = True
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        if affine:
            self.params = {"gamma": np.ones(param_shape, dtype=dtype), "beta": np.zeros(param_shape, dtype=dtype)}
        self._running: RunningStats | None = None
        self._cache = None

    # -- the layer as a function
    def layout(self, x: np.ndarray) -> Layout:
        """How this layer views the float array x, after checking x fits the layer: see ``normlab.core``."""
        raise NotImplementedError

    def apply(self, x, gamma, beta, running: RunningStats | None = None, *, training: bool = True):
        """(out, cache, new_running): normalize x with gamma/beta (or both None); self is unchanged.

        Per-sample norms keep no running statistics: new_running is None.
        """
        x = _checks.as_float_array(x, "x", min_ndim=2)
        out, cache = normalize_forward(x, gamma, beta, self.layout(x), self.eps, backend=self.backend)
        return out, cache, None

    def apply_backward(self, dout, cache):
        """(dx, dgamma, dbeta) for a cache of :meth:`apply`; dgamma/dbeta None without affine."""
        return normalize_backward(dout, cache)

    # -- the stateful shell
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

    def forward(self, x):
        """x -> out of the same shape; in training, batch norm also updates its running statistics."""
        out, cache, running = self.apply(x, self.gamma, self.beta, self._running, training=self.training)
        self._cache = cache
        if running is not None:
            self._running = running
        return out

    def backward(self, dout):
        """dout (shape of the last forward's output) -> dx; fills ``self.grads``."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dgamma, dbeta = self.apply_backward(dout, self._cache)
        if self.params:
            self.grads = {"gamma": dgamma, "beta": dbeta}
        return dx

    # -- state
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {k: v.copy() for k, v in self.params.items()}
        if self._running is not None:
            state.update(self._running.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load params (and buffers); checks every entry before changing any."""
        own = self.state_dict()
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ValueError(f"state dict keys differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        params = {key: _checked_entry(state, key, ref) for key, ref in self.params.items()}
        running = None
        if self._running is not None:
            running = self._running.copy()
            running.load_state_dict(state)
        self.params = params
        if running is not None:
            self._running = running

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class _ChannelStats(_NormLayer):
    """A norm with parameters per channel (axis 1) and optional running statistics per channel."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, dtype, backend):
        self.num_features = _checks.check_positive_int(num_features, "num_features")
        super().__init__((self.num_features,), affine, eps, dtype, backend)
        self.momentum = _checks.check_momentum(momentum)
        self.track_running_stats = bool(track_running_stats)
        if track_running_stats:
            self._running = RunningStats(self.num_features, self.momentum, dtype)

    @property
    def running_mean(self):
        return None if self._running is None else self._running.mean

    @property
    def running_var(self):
        return None if self._running is None else self._running.var

    @property
    def num_batches_tracked(self):
        return None if self._running is None else self._running.num_batches_tracked

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={bool(self.params)}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm(_ChannelStats):
    """Batch norm for x of shape (N, C), (N, C, L) or (N, C, H, W), channels on axis 1.

    Training mode normalizes with batch statistics and updates the running
    ones; eval mode uses the running statistics (batch statistics when
    ``track_running_stats`` is False). gamma/beta and the buffers are (C,).
    """

    stats_over_batch = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, dtype=np.float64,
                 backend: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, backend)

    def layout(self, x):
        return batch_layout(_channels_first_input(x, "BatchNorm(num_features", self.num_features).shape)

    def apply(self, x, gamma, beta, running=None, *, training=True):
        """Training (or no running statistics): batch statistics, and ``running`` with this batch
        folded in; eval: normalize with ``running``, which stays as it is (new_running None)."""
        x = _checks.as_float_array(x, "x", min_ndim=2)
        layout = self.layout(x)
        if training or running is None:
            out, cache = normalize_forward(x, gamma, beta, layout, self.eps, backend=self.backend)
            new = None if running is None or not training else running.updated(cache.mean, cache.var, layout.count)
            return out, cache, new
        out, cache = normalize_forward(x, gamma, beta, layout, self.eps, mean=running.mean, var=running.var,
                                       backend=self.backend)
        return out, cache, None


class LayerNorm(_NormLayer):
    """Layer norm over the trailing ``normalized_shape`` of x; gamma/beta elementwise."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, *,
                 dtype=np.float64, backend: str = "auto"):
        self.normalized_shape = _checks.check_normalized_shape(normalized_shape)
        super().__init__(self.normalized_shape, elementwise_affine, eps, dtype, backend)

    def layout(self, x):
        x = _checks.as_float_array(x, "x", min_ndim=len(self.normalized_shape) + 1)
        return layer_layout(x.shape, self.normalized_shape)

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

    def layout(self, x):
        x = _channels_first_input(x, "GroupNorm(num_channels", self.num_channels)
        return group_layout(x.shape, self.num_groups)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={bool(self.params)}"


class InstanceNorm(_ChannelStats):
    """Instance norm for x (N, C, *spatial): statistics per sample and channel, like torch.nn.InstanceNorm1d/2d/3d.

    Group norm with one channel per group. Defaults follow torch: no affine,
    no running statistics. With ``track_running_stats``, training folds the
    batch's average per-instance mean and (unbiased) variance into the running
    statistics (factor ``momentum``; None leaves them as they are, as in torch),
    and eval normalizes every instance with them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, *, dtype=np.float64, backend: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, backend)

    def layout(self, x):
        x = _channels_first_input(x, "InstanceNorm(num_features", self.num_features)
        if x.ndim < 3:
            raise ValueError(f"InstanceNorm expects x (N, C, *spatial) with at least one spatial axis, "
                             f"got x shape {x.shape}")
        return instance_layout(x.shape)

    def apply(self, x, gamma, beta, running=None, *, training=True):
        x = _checks.as_float_array(x, "x", min_ndim=2)
        layout = self.layout(x)
        if training or running is None:
            out, cache = normalize_forward(x, gamma, beta, layout, self.eps, backend=self.backend)
            new = None
            if training and running is not None and self.momentum is not None:
                # The batch's average instance statistics per channel; like torch.nn.InstanceNorm,
                # no batch is counted, and momentum None means a factor of 0 (statistics stay put).
                new = running.updated(cache.mean.mean(axis=0), cache.var.mean(axis=0), layout.count)
                new.num_batches_tracked = running.num_batches_tracked
            return out, cache, new
        n = x.shape[0]
        out, cache = normalize_forward(x, gamma, beta, layout, self.eps, backend=self.backend,
                                       mean=np.broadcast_to(running.mean, (n, self.num_features)),
                                       var=np.broadcast_to(running.var, (n, self.num_features)))
        return out, cache, None


class RMSNorm(_NormLayer):
    """RMS norm over the trailing ``normalized_shape``: x / sqrt(mean(x**2) + eps) * gamma (no mean, no beta).

    eps None takes the machine epsilon of x's dtype, as torch.nn.RMSNorm does.
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, *,
                 dtype=np.float64, backend: str = "auto"):
        self.normalized_shape = _checks.check_normalized_shape(normalized_shape)
        super().__init__(self.normalized_shape, False, 0.0 if eps is None else eps, dtype, backend)
        self.eps = None if eps is None else float(eps)
        if elementwise_affine:
            self.params = {"gamma": np.ones(self.normalized_shape, dtype=dtype)}

    def layout(self, x):
        x = _checks.as_float_array(x, "x", min_ndim=len(self.normalized_shape) + 1)
        return rms_layout(x.shape, self.normalized_shape)

    def apply(self, x, gamma, beta=None, running=None, *, training=True):
        x = _checks.as_float_array(x, "x", min_ndim=2)
        eps = float(np.finfo(x.dtype).eps) if self.eps is None else self.eps
        if gamma is not None and beta is None:
            beta = np.zeros_like(gamma)
        out, cache = normalize_forward(x, gamma, beta, self.layout(x), eps, backend=self.backend)
        return out, cache, None

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads.pop("beta", None)  # RMS norm has no beta
        return dx

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={bool(self.params)}"

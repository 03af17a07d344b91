"""Synchronized batch norm over torch.distributed, on NumPy arrays.

Data-parallel batch norm needs statistics of the global batch, which is
spread over ranks. With the closed-form backward that costs two small
collectives per layer and step, each of O(C) numbers:

forward
    every rank computes per-channel (count, mean, M2) of its shard in float64
    (a rank with no samples contributes count 0); ONE all_gather; every rank
    merges them with Chan's formula (``merge_moments``), so all ranks hold the
    same global mean and biased variance and normalize with them.
backward
    every rank computes per-channel [sum dy, sum dy*xhat] over its shard; ONE
    all_reduce; then the closed form with the global count M::

        dx = gamma*invstd * (dy - sum(dy)/M - xhat*sum(dy*xhat)/M)

    dgamma, dbeta stay local (the shard's share), as for any parameter under
    data parallelism: the usual gradient all-reduce sums them.

The shard's moments, sums and dx are the backend's own passes
(``normlab.core.moments``, ``gradient_sums``, ``apply_gradient``), the
same kernels and closed form as the local batch norm: synchronizing adds
only the two collectives.

Everything here works on NumPy arrays (channels on axis 1) and reuses the
normalization core: ``normlab.torch.SyncBatchNorm`` calls it on zero-copy
views of CPU tensors, and a NumPy data-parallel trainer can call it directly.
torch is imported only when a collective actually runs. Without an
initialized process group, or with one rank, nothing is communicated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks
from . import core
from .core import NormCache, apply_gradient, gradient_sums, normalize_forward
from .layers import BatchNorm
from .norms import batch_layout


class Moments(NamedTuple):
    """Per-channel count, mean and M2 (sum of squared deviations), float64 (C,)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """Biased variance M2/count (0 where count is 0)."""
        return np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0)


class SyncCache(NamedTuple):
    """What ``sync_batchnorm_backward`` needs: the core's cache (given global stats) and the global count."""

    norm: NormCache | None  # None on a rank with no samples
    count: int
    num_channels: int
    gamma: np.ndarray | None
    group: object


# ----------------------------------------------------------------------------- moments

def local_moments(x, *, backend="auto") -> Moments:
    """Per-channel moments of x (N, C, *) over N and the spatial axes; works for N = 0 or 1.

    The backend's statistics pass (the one the forward uses), float64 and
    robust for data far from zero; M2 = var*count.
    """
    x = _checks.as_float_array(x, "x", min_ndim=2)
    c = x.shape[1]
    if x.size == 0:
        zeros = np.zeros(c)
        return Moments(zeros.copy(), zeros.copy(), zeros)
    layout = batch_layout(x.shape)
    mean, var = core.moments(x, layout, backend)
    count = float(layout.count)
    return Moments(np.full(c, count), mean, var * count)


def merge_moments(count, mean, m2) -> Moments:
    """Chan's parallel formula: merge per-part moments (R, C) into global (C,), in float64.

    M = sum n_r,  mean = sum n_r*mean_r / M,  M2 = sum M2_r + sum n_r*(mean_r - mean)^2.
    The deviation form, rather than sums of squares, keeps the precision of
    each part's two-pass M2. Parts with n_r = 0 contribute nothing; a channel
    with M = 0 gets mean 0 and M2 0.
    """
    count, mean, m2 = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (count, mean, m2))
    if not (count.shape == mean.shape == m2.shape):
        raise ValueError(f"count, mean and m2 must have one shape (parts, C), got {count.shape}, "
                         f"{mean.shape}, {m2.shape}")
    total = count.sum(axis=0)
    weights = np.divide(count, total, out=np.zeros_like(count), where=total > 0)
    global_mean = (weights * mean).sum(axis=0)
    global_m2 = m2.sum(axis=0) + (count * np.square(mean - global_mean)).sum(axis=0)
    return Moments(total, global_mean, global_m2)


# ----------------------------------------------------------------------------- collectives

def world_size(group=None) -> int:
    """Ranks in ``group`` (the default group for None); 1 when torch.distributed is not initialized."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 1
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_initialized() -> bool:
    """Whether a torch.distributed default process group exists (False without torch)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    """This process's rank in ``group`` (the default group for None); 0 when torch.distributed is not initialized."""
    if world_size(group) == 1:
        return 0
    import torch.distributed as dist

    return dist.get_rank(group)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop) of rank's contiguous share of n rows, as ``np.array_split(range(n), world_size)[rank]``.

    The first ``n % world_size`` ranks get one row more; shards may be empty when n < world_size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _collective_failed(what: str, group, exc: Exception) -> RuntimeError:
    import torch.distributed as dist

    return RuntimeError(
        f"{what} failed on rank {dist.get_rank()} of {dist.get_world_size(group)} "
        f"(a peer rank may have crashed, raised before reaching this layer, or timed out): {exc}"
    )


def _float64_tensor(array, *, copy: bool):
    """A contiguous float64 CPU tensor holding a NumPy array's or a tensor's values."""
    import torch

    if isinstance(array, torch.Tensor):
        out = array.detach().to(device="cpu", dtype=torch.float64).contiguous()
        return out.clone() if copy and out.data_ptr() == array.data_ptr() else out
    array = np.array(array, dtype=np.float64, order="C") if copy else np.ascontiguousarray(array, np.float64)
    return torch.from_numpy(array)


def all_gather_rows(array, group=None, *,
                    what="synchronized batch norm: all_gather of per-rank batch statistics") -> np.ndarray:
    """All-gather a NumPy array or tensor from every rank: (*shape) -> float64 (R, *shape). ONE collective.

    A failed collective raises a RuntimeError that starts with ``what`` and names this rank.
    """
    import torch
    import torch.distributed as dist

    local = _float64_tensor(array, copy=False)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    try:
        dist.all_gather(parts, local, group=group)
    except RuntimeError as exc:
        raise _collective_failed(what, group, exc) from exc
    return torch.stack(parts).numpy()


def all_reduce_sum(array, group=None, *,
                   what="synchronized batch norm: all_reduce of per-channel gradient sums") -> np.ndarray:
    """Sum a NumPy array or tensor over all ranks, in float64. ONE collective; returns a new array."""
    import torch.distributed as dist

    buffer = _float64_tensor(array, copy=True)
    try:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as exc:
        raise _collective_failed(what, group, exc) from exc
    return buffer.numpy()


def all_reduce_arrays(arrays, group=None, *,
                      what="data-parallel training: all_reduce of the packed gradients") -> list[np.ndarray]:
    """Sum each of several arrays over all ranks with ONE all_reduce of one flat float64 buffer.

    arrays: a sequence of arrays of any shapes (the same on every rank).
    Returns float64 arrays of the same shapes, new ones (no collective for one rank).
    """
    arrays = [np.asarray(a) for a in arrays]
    flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64) if arrays else np.zeros(0)
    total = flat if world_size(group) == 1 else all_reduce_sum(flat, group, what=what)
    out, start = [], 0
    for a in arrays:
        out.append(total[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


def global_moments(x, group=None, *, backend="auto") -> Moments:
    """Moments of the global batch, x (N, C, *) being this rank's shard. ONE all_gather (none for one rank)."""
    local = local_moments(x, backend=backend)
    if world_size(group) == 1:
        return local
    packed = all_gather_rows(np.stack(local), group)  # (R, 3, C)
    return merge_moments(packed[:, 0], packed[:, 1], packed[:, 2])


# ----------------------------------------------------------------------------- batch norm

def sync_batchnorm_forward(x, gamma, beta, eps=1e-5, *, group=None, backend="auto"):
    """Batch norm of x (N, C, *) with statistics of the batch over all ranks.

    gamma, beta: (C,) or both None. N may be 0 on some ranks.
    Returns (out, moments, cache): out has x's shape and dtype; moments are the
    global Moments (identical on every rank, for running statistics); cache
    is for ``sync_batchnorm_backward``.
    """
    x = _checks.as_float_array(x, "x", min_ndim=2)
    _checks.check_affine_pair(gamma, beta)
    layout = batch_layout(x.shape)
    num_channels = x.shape[1]
    # Validate before the collective: a rank that fails here makes its peers
    # fail in theirs (with a message), instead of sending mismatched buffers.
    gamma = _checks.check_param(gamma, "gamma", layout.param_shape, f"one per channel for input shape {x.shape}")
    beta = _checks.check_param(beta, "beta", layout.param_shape, f"one per channel for input shape {x.shape}")
    eps = _checks.check_eps(eps, training=True)

    moments = global_moments(x, group, backend=backend)
    # Checked after the collective, on statistics every rank shares, so all ranks raise alike.
    total = int(moments.count[0])
    if total < 2:
        raise ValueError(
            f"expected more than 1 value per channel over all ranks to compute batch statistics, got {total} "
            f"(this rank's x has shape {x.shape})"
        )
    if not (np.all(np.isfinite(moments.mean)) and np.all(np.isfinite(moments.m2))):
        raise ValueError(f"the global batch contains NaN or inf, or its variance overflows float64 "
                         f"(this rank's x has shape {x.shape})")
    if x.size == 0:
        return np.empty_like(x), moments, SyncCache(None, total, num_channels, gamma, group)
    out, norm = normalize_forward(x, gamma, beta, layout, eps, mean=moments.mean, var=moments.var, backend=backend)
    return out, moments, SyncCache(norm, total, num_channels, gamma, group)


def sync_batchnorm_backward(dout, cache: SyncCache):
    """Backward of ``sync_batchnorm_forward``: (dout, cache) -> (dx, dgamma, dbeta). ONE all_reduce.

    dgamma/dbeta are this rank's share (sum them over ranks for the global
    gradient); None without affine. Every rank must call it, also with N = 0.
    """
    if not isinstance(cache, SyncCache):
        raise TypeError(f"cache must be the SyncCache of sync_batchnorm_forward, got {type(cache).__name__}")
    norm = cache.norm
    if norm is None:
        dout = _checks.as_float_array(dout, "dout")
        dx, local = np.empty(dout.shape, dout.dtype), np.zeros((2, cache.num_channels))
    else:
        local = np.stack(gradient_sums(dout, norm))  # this shard's [sum dy, sum dy*xhat]
    sums = local if world_size(cache.group) == 1 else all_reduce_sum(local, cache.group)
    if norm is not None:
        dx = apply_gradient(dout, norm, sums, cache.count)  # with the GLOBAL sums and count
    if cache.gamma is None:
        return dx, None, None
    dtype = cache.gamma.dtype
    return dx, local[1].astype(dtype), local[0].astype(dtype)


# ----------------------------------------------------------------------------- layers

class SyncBatchNorm(BatchNorm):
    """``normlab.BatchNorm`` whose training statistics are those of the batch over all ranks of ``group``.

    Same arguments, parameters and state as BatchNorm; in training, forward
    costs one all_gather and backward one all_reduce (none with one rank),
    and the running statistics take the global mean and unbiased variance.
    Eval mode is local. Every rank of the group must call forward and
    backward for every batch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, group=None, dtype=np.float64, backend: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype, backend=backend)
        self.group = group

    @classmethod
    def like(cls, layer: BatchNorm, group=None) -> SyncBatchNorm:
        """A synchronized copy of ``layer``'s settings, parameters and running statistics."""
        new = cls(layer.num_features, layer.eps, layer.momentum, bool(layer.params), layer.track_running_stats,
                  group=group, backend=layer.backend)
        new.params = {k: v.copy() for k, v in layer.params.items()}
        new._running = None if layer._running is None else layer._running.copy()
        new.training = layer.training
        return new

    def apply(self, x, gamma, beta, running=None, *, training=True):
        if not training:
            return super().apply(x, gamma, beta, running, training=False)
        self.layout(_checks.as_float_array(x, "x", min_ndim=2))  # checked before the collective, as in the core
        out, moments, cache = sync_batchnorm_forward(x, gamma, beta, self.eps, group=self.group, backend=self.backend)
        new = None if running is None else running.updated(moments.mean, moments.var, cache.count)
        return out, cache, new

    def apply_backward(self, dout, cache):
        if isinstance(cache, NormCache):  # an eval-mode cache: nothing to synchronize
            return super().apply_backward(dout, cache)
        return sync_batchnorm_backward(dout, cache)


def synchronized(layer, group=None):
    """``layer`` as data-parallel training needs it: a SyncBatchNorm for a norm whose statistics
    reduce over the batch, the layer itself for per-sample norms (layer and group norm).

    Other norms with batch statistics (batch renorm, ghost batch norm) have no synchronized form: a
    ValueError, rather than a SyncBatchNorm that would silently train a different norm."""
    if not layer.stats_over_batch:
        return layer
    if isinstance(layer, SyncBatchNorm) and layer.group is group:
        return layer
    if type(layer) not in (BatchNorm, SyncBatchNorm):
        raise ValueError(f"{type(layer).__name__} has no synchronized form for data-parallel training; "
                         f"train it in one process")
    return SyncBatchNorm.like(layer, group)

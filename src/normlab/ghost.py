"""Ghost batch norm (Hoffer et al., 2017): batch norm with statistics per chunk of the batch.

A batch of N = k·v samples is normalized as k "virtual" batches of v
consecutive samples, each with its own mean and variance, as if it had been
split over k devices that do not synchronize. That makes the statistics'
noise a setting (``virtual_batch_size``) apart from the batch the optimizer
sees.

On the one core: per-chunk statistics are group-norm-like statistics (one
per (chunk, channel), none over the batch), so x (k·v, C, *S) is regrouped
as (k, C, v·S) and normalized with the layout ``(k, C, 1, v·S)`` without
batch statistics: one core call, forward and closed-form backward, for all
chunks at once. gamma/beta stay per channel and their gradients sum over
every chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _checks
from .core import Layout, NormCache, normalize_backward, normalize_forward
from .layers import BatchNorm, RunningStats


class GhostCache(NamedTuple):
    """The core's cache of the regrouped x, x's shape and the number of chunks."""

    norm: NormCache
    shape: tuple[int, ...]
    chunks: int


def ghost_layout(shape: tuple[int, ...], chunks: int) -> Layout:
    """Statistics per (chunk, channel) of the regrouped x (chunks, C, v*S): reduce over each chunk's v*S values."""
    n, c = shape[0], shape[1]
    per_chunk = (n // chunks) * math.prod(shape[2:])
    return Layout((chunks, c, 1, per_chunk), False, (c,), (chunks, c))


def _regroup(x: np.ndarray, chunks: int) -> np.ndarray:
    """(k*v, C, *S) -> (k, C, v, S) contiguous: each chunk's values of one channel side by side."""
    n, c = x.shape[:2]
    return np.ascontiguousarray(x.reshape(chunks, n // chunks, c, -1).transpose(0, 2, 1, 3))


def _ungroup(y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``_regroup``: (k, C, v, S) -> x's shape (k*v, C, *S)."""
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(shape)


class GhostBatchNorm(BatchNorm):
    """Batch norm whose training statistics are those of each chunk of ``virtual_batch_size`` samples.

    x: (N, C), (N, C, L) or (N, C, H, W). A batch of N <= virtual_batch_size
    is one chunk (plain batch norm); a larger N must be a multiple of it.
    The running statistics fold in, once per batch, the mean of the chunks'
    means and of their unbiased variances. Eval mode is batch norm's.
    Parameters and buffers are batch norm's.
    """

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True, *,
                 dtype=np.float64, backend: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype, backend=backend)
        self.virtual_batch_size = _checks.check_positive_int(virtual_batch_size, "virtual_batch_size")

    def chunks(self, n: int) -> int:
        """How many virtual batches a batch of n samples splits into; ValueError if they would be unequal."""
        v = self.virtual_batch_size
        if n > v and n % v:
            raise ValueError(f"GhostBatchNorm(virtual_batch_size={v}) needs a batch of at most {v} samples or a "
                             f"multiple of {v}, got {n}")
        return max(n // v, 1)

    def apply(self, x, gamma, beta, running: RunningStats | None = None, *, training=True):
        """Training: (out, GhostCache, running with this batch folded in), statistics per chunk; eval: batch norm's."""
        x = _checks.as_float_array(x, "x", min_ndim=2)
        self.layout(x)  # checks the channels
        chunks = self.chunks(x.shape[0]) if training else 1
        if chunks == 1:
            return super().apply(x, gamma, beta, running, training=training)
        layout = ghost_layout(x.shape, chunks)
        y, cache = normalize_forward(_regroup(x, chunks), gamma, beta, layout, self.eps, backend=self.backend)
        new = None
        if running is not None:
            # The chunks' average statistics; with equal chunks their mean is the batch mean, and the
            # average of unbiased chunk variances estimates the population variance without bias.
            new = running.updated(cache.mean.mean(axis=0), cache.var.mean(axis=0), layout.count)
        return _ungroup(y, x.shape), GhostCache(cache, x.shape, chunks), new

    def apply_backward(self, dout, cache):
        """(dx, dgamma, dbeta); dgamma/dbeta sum over every chunk."""
        if isinstance(cache, NormCache):  # one chunk, or eval mode
            return super().apply_backward(dout, cache)
        if not isinstance(cache, GhostCache):
            raise TypeError(f"cache must be the cache returned by GhostBatchNorm.apply, got {type(cache).__name__}")
        dout = _checks.check_dout(dout, cache.shape)
        dx, dgamma, dbeta = normalize_backward(_regroup(dout, cache.chunks), cache.norm)
        return _ungroup(dx, cache.shape), dgamma, dbeta

    def extra_repr(self):
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

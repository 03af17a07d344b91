"""Batch renormalization (Ioffe, 2017): batch norm corrected towards its running statistics.

Training normalizes with the batch's statistics and then corrects towards
the running ones, with the correction treated as a constant in backward::

    r = clip(σ_B/σ, 1/rmax, rmax),   d = clip((μ_B − μ)/σ, −dmax, dmax)
    y = γ·(r·x̂ + d) + β = (γ·r)·x̂ + (γ·d + β),       x̂ = (x − μ_B)/σ_B

with σ_B = sqrt(var_B + eps) and σ = sqrt(running_var + eps). The second
form is the core's batch norm with the affine (γ·r, γ·d + β): the forward is
one core call, the backward the core's closed form with γ·r, and only dγ
changes, dγ = r·Σ dout·x̂ + d·Σ dout (docs/derivation.md, "Batch
renormalization", checked with SymPy). With rmax = 1 and dmax = 0, r = 1
and d = 0 exactly, and the layer is batch norm bit for bit.

Running statistics follow the paper: μ ← μ + α(μ_B − μ) and σ ← σ + α(σ_B − σ),
a moving average of the standard deviation σ_B (eps included), not of the
variance. They are stored as ``running_var = σ² − eps``, so the buffers keep
batch norm's names and meaning: eval mode, (x − μ)/sqrt(running_var + eps),
is the paper's (x − μ)/σ, and a checkpoint or precise-BN update treats them
like batch norm's.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from . import _checks
from .core import NormCache, moments, normalize_backward, normalize_forward
from .layers import BatchNorm, RunningStats


class RenormCache(NamedTuple):
    """The core's cache (effective affine γ·r, γ·d + β) and the constants r, d (float64 (C,))."""

    norm: NormCache
    r: np.ndarray
    d: np.ndarray
    affine: bool


def renorm_limits(step: int, rmax: float, dmax: float, warmup: tuple[int, int] | None) -> tuple[float, float]:
    """The clipping limits in force at training ``step`` (batches seen before this one).

    warmup None: (rmax, dmax) throughout. warmup (hold, ramp): batch norm
    (1, 0) for the first ``hold`` steps, then both limits rise linearly to
    (rmax, dmax) over ``ramp`` steps, the paper's schedule with one ramp.
    """
    if warmup is None:
        return rmax, dmax
    hold, ramp = warmup
    t = min(max(step - hold, 0) / ramp, 1.0) if ramp else float(step >= hold)
    return 1.0 + t * (rmax - 1.0), t * dmax


def _check_limit(value, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (minimum <= value < np.inf):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def _check_warmup(warmup) -> tuple[int, int] | None:
    if warmup is None:
        return None
    try:
        hold, ramp = warmup
    except (TypeError, ValueError):
        raise ValueError(f"warmup must be None or (hold_steps, ramp_steps), got {warmup!r}") from None
    for name, value in (("hold_steps", hold), ("ramp_steps", ramp)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"warmup's {name} must be an integer >= 0, got {warmup!r}")
    return int(hold), int(ramp)


class BatchRenorm(BatchNorm):
    """Batch renormalization for x of shape (N, C), (N, C, L) or (N, C, H, W), channels on axis 1.

    rmax >= 1, dmax >= 0: the clipping limits of r and d. warmup: None, or
    (hold_steps, ramp_steps) for the usual schedule (see :func:`renorm_limits`),
    counted by the running statistics' ``num_batches_tracked``, so a resumed
    run continues the schedule. Training needs running statistics (r and d
    compare the batch with them): pass them to :meth:`apply`, or keep
    ``track_running_stats=True`` for :meth:`forward`. Eval mode is batch
    norm's. Parameters and buffers are batch norm's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, rmax: float = 3.0, dmax: float = 5.0,
                 warmup: tuple[int, int] | None = None, dtype=np.float64, backend: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype, backend=backend)
        self.rmax = _check_limit(rmax, "rmax", 1.0)
        self.dmax = _check_limit(dmax, "dmax", 0.0)
        self.warmup = _check_warmup(warmup)

    def apply(self, x, gamma, beta, running: RunningStats | None = None, *, training=True):
        """Training: (out, RenormCache, running with this batch folded in); eval: batch norm's apply."""
        if not training:
            return super().apply(x, gamma, beta, running, training=False)
        x = _checks.as_float_array(x, "x", min_ndim=2)
        layout = self.layout(x)
        if running is None:
            raise ValueError("BatchRenorm needs running statistics in training (r and d compare the batch's "
                             "statistics with them): pass them to apply(), or use track_running_stats=True")
        _checks.check_affine_pair(gamma, beta)
        if layout.count < 2:  # the core says the same, but r and d are computed first
            raise ValueError(f"expected more than 1 value per channel to compute batch statistics, got input "
                             f"shape {x.shape}")
        batch_mean, batch_var = moments(x, layout, self.backend)
        batch_std = np.sqrt(batch_var + self.eps)
        std = np.sqrt(running.var.astype(np.float64) + self.eps)
        rmax, dmax = renorm_limits(running.num_batches_tracked, self.rmax, self.dmax, self.warmup)
        r = np.clip(batch_std / std, 1.0 / rmax, rmax)
        d = np.clip((batch_mean - running.mean) / std, -dmax, dmax)
        dtype = x.dtype if gamma is None else np.result_type(gamma)
        # y = gamma*(r*xhat + d) + beta is the core's batch norm with this affine; r, d are constants.
        g_eff = (r if gamma is None else gamma * r).astype(dtype)
        b_eff = (d if gamma is None else gamma * d + beta).astype(dtype)
        out, cache = normalize_forward(x, g_eff, b_eff, layout, self.eps, backend=self.backend)
        return out, RenormCache(cache, r, d, gamma is not None), self._updated(running, cache, batch_std)

    def _updated(self, running: RunningStats, cache: NormCache, batch_std: np.ndarray) -> RunningStats:
        """The paper's moving averages of the mean and of the standard deviation (stored as var = σ² − eps)."""
        tracked = running.num_batches_tracked + 1
        # The statistics' own momentum, as RunningStats.updated takes it (the lab's nets hold their own).
        alpha = 1.0 / tracked if running.momentum is None else running.momentum
        std = np.sqrt(running.var.astype(np.float64) + self.eps)
        new_std = alpha * batch_std + (1.0 - alpha) * std
        new = running.copy()
        new.mean = (alpha * cache.mean + (1.0 - alpha) * running.mean).astype(running.mean.dtype)
        new.var = np.maximum(new_std * new_std - self.eps, 0.0).astype(running.var.dtype)
        new.num_batches_tracked = tracked
        return new

    def apply_backward(self, dout, cache):
        """(dx, dgamma, dbeta): the core's closed form with γ·r; dγ = r·Σ dout·x̂ + d·Σ dout."""
        if isinstance(cache, NormCache):  # eval mode
            return super().apply_backward(dout, cache)
        if not isinstance(cache, RenormCache):
            raise TypeError(f"cache must be the cache returned by BatchRenorm.apply, got {type(cache).__name__}")
        dx, sum_dout_xhat, sum_dout = normalize_backward(dout, cache.norm)
        if not cache.affine:
            return dx, None, None
        dgamma = (cache.r * sum_dout_xhat + cache.d * sum_dout).astype(sum_dout.dtype)
        return dx, dgamma, sum_dout

    def extra_repr(self):
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup={self.warmup}"

"""Population statistics from a stream of batches: what precise BN puts in place of running averages.

Running statistics are a moving average of noisy batch statistics, taken
while the weights still change; with small batches they can sit far from
the statistics a trained layer sees on the data. Precise BN (Wu & Johnson,
2021, "Rethinking 'Batch' in BatchNorm") recomputes them after training from
a pass over data: here each normalized layer's input moments per batch,
pooled with weights by their counts (Chan's formula,
``normlab.distributed.merge_moments``), so the result is exactly the mean and
variance of every value the layer saw, not an average of batch variances.

``normlab.lab.precise_bn`` (the lab's nets) and ``normlab.torch.precise_bn``
(torch modules) use these pieces; both are named ``update_bn_stats``.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, Hashable, Iterable

import numpy as np

from . import _checks
from .distributed import Moments, merge_moments


class PooledMoments:
    """Per-key running pool of per-channel Moments (count, mean, M2), merged exactly as batches arrive."""

    def __init__(self):
        self._pools: dict[Hashable, Moments] = {}

    def add(self, key: Hashable, part: Moments) -> None:
        """Fold one batch's moments of ``key`` into its pool."""
        old = self._pools.get(key)
        if old is None:
            self._pools[key] = Moments(*(np.array(a, dtype=np.float64) for a in part))
        else:
            self._pools[key] = merge_moments(*(np.stack([a, b]) for a, b in zip(old, part)))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._pools

    def mean_var(self, key: Hashable) -> tuple[np.ndarray, np.ndarray]:
        """The population mean and variance (M2/count, divided by the count) of every value seen for ``key``."""
        pool = self._pools[key]
        return pool.mean, pool.var


def check_num_batches(num_batches) -> int | None:
    return None if num_batches is None else _checks.check_positive_int(num_batches, "num_batches")


def run_batches(batches: Iterable, num_batches: int | None, step: Callable[[object], None],
                progress: Callable[[int], None] | None = None) -> int:
    """Call ``step(inputs)`` for each batch (the first ``num_batches``, or all); returns how many ran.

    A batch is the model's input, or a (inputs, targets, ...) tuple or list
    whose first entry is the input. ``progress(done)`` is called after each
    batch. Warns (RuntimeWarning) when the iterable is empty, or holds fewer
    than ``num_batches`` batches (those that are there are used).
    """
    done = 0
    for batch in itertools.islice(batches, num_batches):
        step(batch[0] if isinstance(batch, (tuple, list)) else batch)
        done += 1
        if progress is not None:
            progress(done)
    if done == 0:
        warnings.warn("update_bn_stats got no batches: the running statistics are left as they were",
                      RuntimeWarning, stacklevel=3)
    elif num_batches is not None and done < num_batches:
        warnings.warn(f"update_bn_stats was asked for {num_batches} batches but the data ended after {done}; "
                      f"the statistics are those of the {done}", RuntimeWarning, stacklevel=3)
    return done

"""Where a training batch lives: in this process (``LOCAL``), or split over ranks (``Shard``).

``FullyConnectedNet.loss`` is written once, for one process; the few places
where data parallelism differs are asked of the batch's placement:

``norm(layer)``
    the normalization layer to train with: batch norm's statistics must be
    those of the global batch (``normlab.distributed.synchronized``);
``dropout(h, p, rng)``
    this shard's rows of the masks a single process would draw for the global batch;
``weight(n)``
    this shard's share of the global batch's mean loss;
``reduce(arrays)``
    the sum over ranks of the loss and gradients (ONE all_reduce);
``agree(counts)``
    the input checks' counts of bad values summed over ranks (one small
    all_reduce before any other collective), so that every rank raises the
    same error instead of one rank leaving its peers waiting in a collective.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .. import distributed
from . import ops


class Local:
    """The whole batch is in this process: nothing to synchronize."""

    def check(self, n: int, y) -> None:
        pass

    def agree(self, counts: np.ndarray) -> np.ndarray:
        return counts

    def norm(self, layer):
        return layer

    def dropout(self, h, p: float, rng: np.random.Generator):
        return ops.dropout_forward(h, p, rng, True)

    def weight(self, n: int) -> float:
        return 1.0

    def reduce(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return arrays


LOCAL = Local()


class Shard(NamedTuple):
    """Where one rank's rows sit in a global batch that is split over the ranks of a process group.

    start: index of this rank's first row in the global batch; total: rows of
    the global batch (B); group: the torch.distributed process group (None:
    the default group).
    """

    start: int
    total: int
    group: object = None

    def check(self, n: int, y) -> None:
        """This rank's n rows must lie inside the global batch; labels are required."""
        if y is None:
            raise ValueError("shard needs labels y: a sharded call returns the global batch's loss and gradients")
        if not (isinstance(self.start, numbers.Integral) and isinstance(self.total, numbers.Integral)
                and 0 <= self.start and self.start + n <= self.total and n > 0):
            raise ValueError(f"shard must place this rank's {n} rows (at least 1) inside the global batch, "
                             f"got start {self.start!r}, total {self.total!r}")

    def agree(self, counts: np.ndarray) -> np.ndarray:
        return distributed.all_reduce_arrays([counts], self.group,
                                             what="data-parallel training: all_reduce of the input checks")[0]

    def norm(self, layer):
        return distributed.synchronized(layer, self.group)

    def dropout(self, h, p: float, rng: np.random.Generator):
        """Every rank draws the whole global batch's mask (all ranks' generators start equal and stay
        in step) and keeps its own rows, so the masks equal a single process's."""
        _, full = ops.dropout_forward(np.ones((self.total, h.shape[1]), h.dtype), p, rng, True)
        mask = full.mask[self.start:self.start + h.shape[0]]
        return h * mask, ops.DropoutCache(mask)

    def weight(self, n: int) -> float:
        return n / self.total

    def reduce(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return distributed.all_reduce_arrays(arrays, self.group)

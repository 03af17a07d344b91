"""Precise BN for the lab's nets: running statistics replaced by the population statistics of data.

``update_bn_stats(model, batches)`` runs the net's training-mode forward on
each batch (no state changes), records the per-channel moments of the input
of every norm that keeps running statistics, pools them over all batches
weighted by their counts (``normlab.population``), and then sets those
running statistics to the pooled mean and variance, all at once. So the
running mean and variance become exactly the mean and variance of every
value the layer saw, instead of a moving average of noisy batch statistics.

During the pass those norms normalize with the statistics of the whole
batch, as plain batch norm (batch renorm without its correction, ghost
batch norm without chunks): with batches larger than the training batches,
the features reaching later layers are then close to what they are at
inference, where every layer uses population statistics. (Per-sample norms
run as in training.)
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..distributed import local_moments
from ..layers import BatchNorm
from ..population import PooledMoments, check_num_batches, run_batches
from .net import Net
from .sharding import Local


class _Recording:
    """A batch-statistics norm that records its input's per-channel moments and normalizes it as plain batch
    norm with the batch's statistics (nothing else changes)."""

    stats_over_batch = True

    def __init__(self, layer: BatchNorm, name: str, pool: PooledMoments):
        self.layer, self.name, self.pool = layer, name, pool

    def apply(self, x, gamma, beta, running=None, *, training=True):
        self.pool.add(self.name, local_moments(x, backend=self.layer.backend))
        return BatchNorm.apply(self.layer, x, gamma, beta, None, training=True)


class _Recorder(Local):
    """The one-process placement, with every norm that keeps running statistics recording what it sees."""

    def __init__(self, model: Net, pool: PooledMoments):
        self.names = {id(layer): name for name, layer in model.norms.items() if name in model.batch_stats}
        self.pool = pool

    def norm(self, layer):
        name = self.names.get(id(layer))
        return layer if name is None else _Recording(layer, name, self.pool)


def update_bn_stats(model: Net, batches: Iterable, num_batches: int | None = None,
                    progress: Callable[[int], None] | None = None) -> int:
    """Set ``model.batch_stats`` to the population statistics of each layer's input over ``batches``.

    model: a normlab.lab net (FullyConnectedNet, ConvNet). batches: an
    iterable of inputs X (N, ...), or of (X, y) pairs; num_batches: use at
    most this many (None: all). progress: called with the number of batches
    done after each one. Returns the number of batches used; with none (an
    empty iterable) the statistics stay as they were, with a RuntimeWarning,
    as for fewer than num_batches. The statistics' momentum and
    ``num_batches_tracked`` are kept (batch renorm's warm-up counts on the
    latter); params and the dropout generator are not touched. If a batch
    raises, nothing changes.
    """
    if not isinstance(model, Net):
        raise TypeError(f"model must be a normlab.lab net (FullyConnectedNet, ConvNet), got {type(model).__name__}; "
                        f"for torch models use normlab.torch.update_bn_stats")
    num_batches = check_num_batches(num_batches)
    pool = PooledMoments()
    recorder = _Recorder(model, pool)
    used = run_batches(batches, num_batches, lambda X: model.training_forward(X, recorder), progress)
    updated = {}
    for name, stats in model.batch_stats.items():
        if name in pool:
            mean, var = pool.mean_var(name)
            updated[name] = stats.copy()
            updated[name].mean, updated[name].var = mean.astype(stats.mean.dtype), var.astype(stats.var.dtype)
    for name, stats in updated.items():  # commit only once every batch went through
        model.batch_stats[name].assign(stats)
    return used

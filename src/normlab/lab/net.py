"""What the lab's nets share: one training step written for one process, state kept apart, commit on success.

:class:`Net` is the base of :class:`~normlab.lab.model.FullyConnectedNet`
and :class:`~normlab.lab.convnet.ConvNet`. A net keeps three kinds of state
apart, as Flax keeps its collections apart:

``params``
    the learnable arrays an optimizer updates (``W1, b1, gamma1, beta1, ...``);
    ``grads`` from :meth:`Net.loss` use the same keys.
``batch_stats``
    running statistics, one :class:`normlab.RunningStats` per normalized
    layer that keeps them (``"layer1"``, ...); an optimizer never sees them.
``dropout_rng``
    the net's own ``np.random.Generator`` for dropout masks (None without dropout).

The normalization of a layer is a normlab layer used as a function
(``layer.apply``, in ``norms`` by layer name): the net passes it the
parameters and running statistics, the library's layer does the arithmetic.

:meth:`Net.loss` is the whole step: check the batch, forward, backward,
reduce, and only then commit the running statistics and the dropout
generator, so a call that raises anywhere leaves the net bit-identical. The
batch's placement (``normlab.lab.sharding``) decides what data parallelism
changes. A subclass supplies the layers: ``_forward`` and ``_backward_layers``.
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np

from .. import _checks
from ..layers import RunningStats
from . import ops
from .sharding import LOCAL, Local, Shard


def check_net_args(reg, weight_scale, dtype, momentum, eps, seed, *, weight_scale_optional: bool = False):
    """The arguments every net takes, checked; returns (dtype, seed) normalized (np.dtype, plain int or None)."""
    if not isinstance(reg, numbers.Real) or not 0 <= reg < np.inf:
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
    if not (weight_scale is None and weight_scale_optional) and (
            not isinstance(weight_scale, numbers.Real) or not 0 < weight_scale < np.inf):
        raise ValueError(f"weight_scale must be a finite number > 0{' or None' if weight_scale_optional else ''}, "
                         f"got {weight_scale!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    _checks.check_momentum(momentum)
    _checks.check_eps(eps, training=True)
    return dtype, _checks.check_seed(seed)


#: Copies of the parameters training holds: parameters, gradients, the best epoch's, two optimizer buffers.
TRAINING_COPIES = 5


def check_size(count: int, dtype: np.dtype, what: str) -> None:
    """Refuse a net of ``count`` parameters whose training state does not fit in the memory available,
    before allocating any."""
    _checks.check_allocation(TRAINING_COPIES * count * dtype.itemsize,
                             f"{what} ({count:.3g} {dtype.name} parameters, held {TRAINING_COPIES} times in training)")


def check_label_array(y, n: int, x_shape) -> np.ndarray:
    """y as an integer array of shape (n,), one label per row of X; the range is checked by the caller."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), one label per row of X (shape {x_shape}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype} with shape {y.shape}")
    return y


class Net:
    """The shared machinery of the lab's classifiers; see the module docstring.

    A subclass sets ``params``, ``batch_stats``, ``norms``, ``dropout_rng``,
    ``input_shape`` (one sample's shape), ``num_classes``, ``reg`` and
    ``dtype``, and implements ``_forward``, ``_backward_layers`` and ``config``.
    """

    params: dict[str, np.ndarray]
    batch_stats: dict[str, RunningStats]
    norms: dict
    dropout_rng: np.random.Generator | None = None
    input_shape: tuple[int, ...]
    num_classes: int
    reg: float
    dtype: np.dtype

    def config(self) -> dict:
        """Constructor arguments as JSON-able values (checkpoints compare these)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ the step

    def loss(self, X, y=None, *, training: bool | None = None, shard: Shard | None = None):
        """Forward (and backward when y is given).

        X: (N, *input_shape), or (N, D) with the same number of features per sample.
        y: (N,) int labels, or None.
        training: None means training mode when y is given, test mode when it
            is not. Training mode uses batch statistics and updates the running
            ones and applies dropout; test mode uses the running statistics and
            no dropout. Pass ``training=False`` with y for a validation loss
            that leaves all state alone.
        shard: data parallelism: X, y are rows ``start:start+N`` of a global
            batch of ``total`` rows split over the ranks of ``group``, and
            every rank calls this together. Batch statistics are those of the
            global batch, dropout masks are this shard's rows of the global
            batch's masks, and every rank gets the loss and grads of the
            global batch (see ``normlab.lab.sharding``).
        Returns scores (N, C) when y is None, else (loss, grads) with grads
        keyed like ``params``.

        State changes only once the whole call has succeeded: the running
        statistics and the dropout generator are committed at the end, so a
        call that raises anywhere leaves the net bit-identical.
        """
        training = (y is not None) if training is None else bool(training)
        if shard is not None and not isinstance(shard, Shard):
            raise TypeError(f"shard must be a normlab.lab.sharding.Shard, got {type(shard).__name__}")
        placement = LOCAL if shard is None else shard
        placement.check(np.shape(X)[0] if np.ndim(X) else 0, y)
        X = self._check_inputs(X, y, training=training, placement=placement)
        rng = self._step_rng(training)
        scores, caches, new_stats = self._forward(X, training, placement, rng)
        if y is None:
            self._commit(new_stats, rng)
            return scores
        loss, grads = self._backward(scores, y, caches, placement)
        self._commit(new_stats, rng)
        return loss, grads

    def training_forward(self, X, placement: Local = LOCAL) -> np.ndarray:
        """Scores of X in training mode (batch statistics, dropout) through ``placement``; changes nothing.

        Precise BN (``normlab.lab.precise_bn``) passes a placement that records what each norm sees.
        """
        X = self._check_inputs(X, None, training=True, placement=LOCAL)
        return self._forward(X, True, placement, self._step_rng(True))[0]

    def _step_rng(self, training: bool):
        """The dropout generator a step draws from: a copy, committed only when the step succeeds."""
        if training and self.dropout_rng is not None and getattr(self, "dropout", 0.0):
            return copy.deepcopy(self.dropout_rng)
        return self.dropout_rng

    def _forward(self, X, training: bool, placement, rng):
        """(scores (N, C), caches, {layer name: running statistics to commit})."""
        raise NotImplementedError

    def _backward_layers(self, dscores, caches) -> dict:
        """Gradients of every parameter (this shard's share), from dscores and the forward's caches."""
        raise NotImplementedError

    def _norm_layer(self, name: str, training: bool, placement):
        """Layer ``name``'s norm as this step needs it: in training, what the placement makes of it
        (synchronized over ranks for a shard)."""
        return placement.norm(self.norms[name]) if training else self.norms[name]

    def _backward(self, scores, y, caches, placement):
        """(loss, grads) of the batch (the global batch's, for a shard) from the forward's caches."""
        data_loss, dscores = ops.softmax_loss(scores, y)
        weight = placement.weight(scores.shape[0])  # this shard's share of the global batch's mean
        grads = self._backward_layers(dscores * weight, caches)
        keys = list(self.params)  # drops db of bias-free layers
        # One reduction for the whole step: every gradient and the loss together.
        *summed, total = placement.reduce([grads[k] for k in keys] + [np.array([data_loss * weight])])
        grads = {k: g.astype(self.dtype, copy=False) for k, g in zip(keys, summed)}
        weights = [k for k in keys if k.startswith("W")]
        reg_loss = 0.5 * self.reg * sum(float(np.sum(self.params[k] * self.params[k])) for k in weights)
        if self.reg:  # added after the reduction, once
            for k in weights:
                grads[k] = grads[k] + self.reg * self.params[k]
        return float(total[0]) + reg_loss, grads

    def _check_inputs(self, X, y, *, training: bool, placement) -> np.ndarray:
        """X as (N, *input_shape) in the net's dtype, after checking X and y; raises before any state changes.

        Non-finite X (in training) and labels out of range are counted and the counts agreed over the
        placement's ranks before any other collective, so a data-parallel call raises the same error on
        every rank (a rank that raised alone would leave its peers waiting in a collective).
        """
        X = _checks.as_float_array(X, "X", min_ndim=2)
        features = math.prod(X.shape[1:])
        expected = math.prod(self.input_shape)
        if features != expected:
            shape = "" if len(self.input_shape) == 1 else f" (input shape {self.input_shape})"
            raise ValueError(f"X must have {expected} features per sample{shape}, got shape {X.shape} "
                             f"({features} features)")
        if y is not None:
            y = check_label_array(y, X.shape[0], X.shape)
        nonfinite = int(np.sum(~np.isfinite(X))) if training else 0
        outside = 0 if y is None else int(np.sum((y < 0) | (y >= self.num_classes)))
        nonfinite, outside = (int(c) for c in placement.agree(np.array([nonfinite, outside], dtype=np.float64)))
        where = "" if placement is LOCAL else " over all ranks of the global batch"
        if nonfinite:
            raise ValueError(f"X (shape {X.shape}) contains NaN or inf: {nonfinite} non-finite values{where}")
        if outside:
            span = f", got range [{y.min()}, {y.max()}] (y shape {y.shape})" if placement is LOCAL else ""
            raise ValueError(f"labels y must lie in [0, {self.num_classes}){span}: {outside} labels outside "
                             f"it{where}")
        return X.reshape(X.shape[0], *self.input_shape).astype(self.dtype, copy=False)

    def _commit(self, new_stats: dict, rng: np.random.Generator | None) -> None:
        """Take the running statistics with this batch folded in, and advance the dropout generator."""
        for name, stats in new_stats.items():
            self.batch_stats[name].assign(stats)
        if rng is not self.dropout_rng:
            # Set the state rather than swap the object: callers holding model.dropout_rng see it advance.
            self.dropout_rng.bit_generator.state = rng.bit_generator.state

    def predict(self, X, batch_size: int = 1000) -> np.ndarray:
        """Class predictions (N,) in test mode, in chunks of ``batch_size`` rows."""
        X = np.asarray(X)
        preds = [np.argmax(self.loss(X[i:i + batch_size]), axis=1) for i in range(0, X.shape[0], batch_size)]
        return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)

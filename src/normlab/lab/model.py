"""A fully-connected net with optional batch or layer normalization.

Architecture, for ``hidden_dims = [H1, ..., HL]``::

    {affine - [norm] - relu - [dropout]} x L  ->  affine  ->  softmax

Three kinds of state are kept apart, as Flax keeps its collections apart:

``params``
    the learnable arrays an optimizer updates: ``W1, b1, gamma1, beta1, ...,
    W{L+1}, b{L+1}`` (gamma/beta only with a normalization, the output
    layer has none; with batch norm the hidden layers have no ``b``, see
    :class:`Normalization`). ``grads`` from :meth:`FullyConnectedNet.loss` use the
    same keys.
``batch_stats``
    running statistics, one :class:`normlab.RunningStats` per hidden layer
    (``"layer1"``, ...), only for batch norm; an optimizer never sees them.
``dropout_rng``
    the model's own ``np.random.Generator`` for dropout masks.

The normalization of a hidden layer is a normlab layer used as a function
(``normlab.BatchNorm(...).apply``): the model keeps the parameters and the
running statistics, the library's layer does the arithmetic.

Data parallelism: :meth:`FullyConnectedNet.loss` with a
:class:`~normlab.lab.sharding.Shard` takes one rank's rows of a global batch
and returns the loss and gradients of the whole global batch, identical on
every rank; the placement decides what differs (``normlab.lab.sharding``).
"""

from __future__ import annotations

import copy
import numbers
from typing import Callable, NamedTuple

import numpy as np

from .. import _checks
from ..layers import BatchNorm, LayerNorm, RunningStats
from . import ops
from .sharding import LOCAL, Shard


class Normalization(NamedTuple):
    """How a hidden layer normalizes.

    make: ``make(num_features, eps, backend)`` -> a normlab layer without
        parameters or state of its own (the model passes gamma/beta and the
        running statistics to its ``apply``), or None for no normalization.
    running_stats: keep running statistics in training and use them at test
        time (batch norm); otherwise the forward is the same in both modes.
    affine_bias: whether the affine layer before the norm has a bias. Batch
        norm subtracts each feature's batch mean, so a bias there cancels
        exactly (its gradient is identically zero) and beta takes its role;
        layer norm subtracts a per-sample mean, which a per-feature bias does
        not cancel.
    """

    make: Callable | None
    running_stats: bool
    affine_bias: bool


NORMALIZATIONS: dict[str, Normalization] = {
    "none": Normalization(None, running_stats=False, affine_bias=True),
    "batchnorm": Normalization(
        lambda h, eps, backend: BatchNorm(h, eps, affine=False, track_running_stats=False, backend=backend),
        running_stats=True, affine_bias=False),
    "layernorm": Normalization(
        lambda h, eps, backend: LayerNorm(h, eps, elementwise_affine=False, backend=backend),
        running_stats=False, affine_bias=True),
}


def get_normalization(name: str | None) -> Normalization:
    """Look up a normalization by name (None means "none"); unknown names list the known ones."""
    key = "none" if name is None else name
    if not isinstance(key, str) or key not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; known: None, {', '.join(map(repr, NORMALIZATIONS))}")
    return NORMALIZATIONS[key]


class FullyConnectedNet:
    """Fully-connected classifier with optional normalization, dropout and L2 regularization.

    hidden_dims: sizes of the hidden layers, e.g. ``[100, 100, 100]``.
    input_dim: D, features per sample (inputs of shape (N, D), or (N, ...) flattened).
    num_classes: C.
    normalization: None, "batchnorm" or "layernorm".
    dropout: probability of zeroing a hidden unit in training (0 disables dropout).
    reg: L2 strength; the loss adds ``0.5 * reg * sum(W**2)`` over weight matrices.
    weight_scale: standard deviation of the normal weight init (biases 0, gamma 1, beta 0).
    dtype: float64 (gradient checks) or float32 (speed).
    seed: seeds weight init and the dropout generator; None draws fresh entropy.
    momentum, eps: running-statistics momentum (PyTorch convention) and norm eps.
    backend: core backend for the norm ("auto" picks the fastest).
    """

    def __init__(self, hidden_dims, input_dim: int, num_classes: int, normalization: str | None = None,
                 dropout: float = 0.0, reg: float = 0.0, weight_scale: float = 1e-2, dtype=np.float64,
                 seed: int | None = None, *, momentum: float = 0.1, eps: float = 1e-5, backend: str = "auto"):
        hidden_dims = [_checks.check_positive_int(h, "hidden_dims entries") for h in hidden_dims]
        input_dim = _checks.check_positive_int(input_dim, "input_dim")
        num_classes = _checks.check_positive_int(num_classes, "num_classes")
        self.norm = get_normalization(normalization)
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if not isinstance(reg, numbers.Real) or not 0 <= reg < np.inf:
            raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
        if not isinstance(weight_scale, numbers.Real) or not 0 < weight_scale < np.inf:
            raise ValueError(f"weight_scale must be a finite number > 0, got {weight_scale!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        _checks.check_momentum(momentum)
        _checks.check_eps(eps, training=True)
        seed = _checks.check_seed(seed)
        _check_size(input_dim, hidden_dims, num_classes, dtype)

        self.hidden_dims = hidden_dims
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.normalization = None if normalization in (None, "none") else normalization
        self.dropout = float(dropout)
        self.reg = float(reg)
        self.weight_scale = float(weight_scale)
        self.dtype = dtype
        self.seed = seed
        self.momentum = momentum
        self.eps = float(eps)
        self.backend = backend
        self.num_layers = len(hidden_dims) + 1

        # Independent streams for init and dropout, both derived from the one seed.
        init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        self.dropout_rng = np.random.default_rng(dropout_seq)

        dims = [input_dim, *hidden_dims, num_classes]
        self.params: dict[str, np.ndarray] = {}
        for i in range(1, self.num_layers + 1):
            fan_in, fan_out = dims[i - 1], dims[i]
            self.params[f"W{i}"] = (weight_scale * init_rng.standard_normal((fan_in, fan_out))).astype(dtype)
            hidden_norm = self.norm.make is not None and i < self.num_layers
            if self.norm.affine_bias or not hidden_norm:
                self.params[f"b{i}"] = np.zeros(fan_out, dtype=dtype)
            if hidden_norm:
                self.params[f"gamma{i}"] = np.ones(fan_out, dtype=dtype)
                self.params[f"beta{i}"] = np.zeros(fan_out, dtype=dtype)
        # The library's layers, used as functions: settings only, no parameters or state of their own.
        self.norms = {} if self.norm.make is None else {
            f"layer{i}": self.norm.make(h, self.eps, backend) for i, h in enumerate(hidden_dims, start=1)}
        self.batch_stats: dict[str, RunningStats] = {}
        if self.norm.running_stats:
            self.batch_stats = {f"layer{i}": RunningStats(h, momentum, dtype)
                                for i, h in enumerate(hidden_dims, start=1)}

    def config(self) -> dict:
        """Constructor arguments as JSON-able values (checkpoints compare these)."""
        return {
            "hidden_dims": list(self.hidden_dims), "input_dim": self.input_dim, "num_classes": self.num_classes,
            "normalization": self.normalization, "dropout": self.dropout, "reg": self.reg,
            "weight_scale": self.weight_scale, "dtype": self.dtype.name, "seed": self.seed,
            "momentum": self.momentum, "eps": self.eps,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"FullyConnectedNet({args})"

    def loss(self, X, y=None, *, training: bool | None = None, shard: Shard | None = None):
        """Forward (and backward when y is given).

        X: (N, D) (or (N, ...) with D features). y: (N,) int labels, or None.
        training: None means training mode when y is given, test mode when it
            is not. Training mode uses batch statistics and updates the running
            ones (batch norm) and applies dropout; test mode uses the running
            statistics and no dropout. Pass ``training=False`` with y for a
            validation loss that leaves all state alone.
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
        call that raises anywhere leaves the model bit-identical.
        """
        training = (y is not None) if training is None else bool(training)
        if shard is not None and not isinstance(shard, Shard):
            raise TypeError(f"shard must be a normlab.lab.sharding.Shard, got {type(shard).__name__}")
        placement = LOCAL if shard is None else shard
        placement.check(np.shape(X)[0] if np.ndim(X) else 0, y)
        X = self._check_inputs(X, y, training=training, placement=placement)
        rng = copy.deepcopy(self.dropout_rng) if training and self.dropout else self.dropout_rng
        scores, caches, new_stats = self._forward(X, training, placement, rng)
        if y is None:
            self._commit(new_stats, rng)
            return scores
        loss, grads = self._backward(scores, y, caches, placement)
        self._commit(new_stats, rng)
        return loss, grads

    def _forward(self, X, training: bool, placement, rng):
        """Scores (N, C), the caches of every layer, and the running statistics to commit."""
        p, caches, new_stats = self.params, [], {}
        h = X
        for i in range(1, self.num_layers):
            name = f"layer{i}"
            if not self.norms:
                h, cache = ops.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
            else:
                norm = placement.norm(self.norms[name]) if training else self.norms[name]
                h, cache, stats = ops.affine_norm_relu_forward(
                    h, p[f"W{i}"], p.get(f"b{i}"), p[f"gamma{i}"], p[f"beta{i}"], norm,
                    self.batch_stats.get(name), training=training)
                if stats is not None:
                    new_stats[name] = stats
            drop_cache = ops.DropoutCache(None)
            if training and self.dropout:
                h, drop_cache = placement.dropout(h, self.dropout, rng)
            caches.append((cache, drop_cache))
        L = self.num_layers
        scores, out_cache = ops.affine_forward(h, p[f"W{L}"], p[f"b{L}"])
        caches.append(out_cache)
        return scores, caches, new_stats

    def _backward(self, scores, y, caches, placement):
        """(loss, grads) of the batch (the global batch's, for a shard) from the forward's caches."""
        p, L = self.params, self.num_layers
        data_loss, dscores = ops.softmax_loss(scores, y)
        weight = placement.weight(scores.shape[0])  # this shard's share of the global batch's mean
        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = ops.affine_backward(dscores * weight, caches[-1])
        for i in range(L - 1, 0, -1):
            cache, drop_cache = caches[i - 1]
            dh = ops.dropout_backward(dh, drop_cache)
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = ops.sandwich_backward(dh, cache)
            if dgamma is not None:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
        keys = list(p)  # drops db of bias-free layers
        # One reduction for the whole step: every gradient and the loss together.
        *summed, total = placement.reduce([grads[k] for k in keys] + [np.array([data_loss * weight])])
        grads = {k: g.astype(self.dtype, copy=False) for k, g in zip(keys, summed)}
        weights = [p[f"W{i}"] for i in range(1, L + 1)]
        reg_loss = 0.5 * self.reg * sum(float(np.sum(w * w)) for w in weights)
        if self.reg:  # added after the reduction, once
            for i, w in enumerate(weights, start=1):
                grads[f"W{i}"] = grads[f"W{i}"] + self.reg * w
        return float(total[0]) + reg_loss, grads

    def _check_inputs(self, X, y, *, training: bool, placement) -> np.ndarray:
        """X as (N, D) in the model's dtype, after checking X and y; raises before any state changes.

        Non-finite X (in training) and labels out of range are counted and the counts agreed over the
        placement's ranks before any other collective, so a data-parallel call raises the same error on
        every rank (a rank that raised alone would leave its peers waiting in a collective).
        """
        X = _checks.as_float_array(X, "X", min_ndim=2)
        X2 = X.reshape(X.shape[0], -1)
        if X2.shape[1] != self.input_dim:
            raise ValueError(f"X must have {self.input_dim} features per sample, got shape {X.shape} "
                             f"({X2.shape[1]} features)")
        if y is not None:
            y = _check_label_array(y, X2.shape[0], X.shape)
        nonfinite = int(np.sum(~np.isfinite(X2))) if training else 0
        outside = 0 if y is None else int(np.sum((y < 0) | (y >= self.num_classes)))
        nonfinite, outside = (int(c) for c in placement.agree(np.array([nonfinite, outside], dtype=np.float64)))
        where = "" if placement is LOCAL else " over all ranks of the global batch"
        if nonfinite:
            raise ValueError(f"X (shape {X.shape}) contains NaN or inf: {nonfinite} non-finite values{where}")
        if outside:
            span = f", got range [{y.min()}, {y.max()}] (y shape {y.shape})" if placement is LOCAL else ""
            raise ValueError(f"labels y must lie in [0, {self.num_classes}){span}: {outside} labels outside "
                             f"it{where}")
        return X2.astype(self.dtype, copy=False)

    def _commit(self, new_stats: dict, rng: np.random.Generator) -> None:
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


#: Copies of the parameters training holds: parameters, gradients, the best epoch's, two optimizer buffers.
TRAINING_COPIES = 5


def _check_size(input_dim: int, hidden_dims: list[int], num_classes: int, dtype: np.dtype) -> None:
    """Refuse a net whose training state does not fit in the memory available, before allocating any."""
    dims = [input_dim, *hidden_dims, num_classes]
    count = sum(a * b + 3 * b for a, b in zip(dims[:-1], dims[1:]))  # weights, bias or gamma and beta
    _checks.check_allocation(TRAINING_COPIES * count * dtype.itemsize,
                             f"a net with hidden_dims {hidden_dims} ({count:.3g} {dtype.name} parameters, held "
                             f"{TRAINING_COPIES} times in training)")


def _check_label_array(y, n: int, x_shape) -> np.ndarray:
    """y as an integer array of shape (n,), one label per row of X; the range is checked by the caller."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), one label per row of X (shape {x_shape}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype} with shape {y.shape}")
    return y

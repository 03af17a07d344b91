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

Data parallelism: :meth:`FullyConnectedNet.loss` with a :class:`Shard` takes
one rank's rows of a global batch and returns the loss and gradients of the
whole global batch, identical on every rank (see ``normlab.lab.parallel``).
"""

from __future__ import annotations

import copy
import functools
import numbers
from typing import Callable, NamedTuple

import numpy as np

from .. import _checks, distributed
from ..layers import RunningStats
from ..norms import batchnorm_forward, layernorm_forward
from . import ops


class Normalization(NamedTuple):
    """How a hidden layer normalizes.

    forward: a core forward ``(h, gamma, beta, eps, *, mean, var, backend)``,
        or None for no normalization.
    running_stats: keep running statistics in training and use them at test
        time (batch norm); otherwise the forward is the same in both modes.
    affine_bias: whether the affine layer before the norm has a bias. Batch
        norm subtracts each feature's batch mean, so a bias there cancels
        exactly (its gradient is identically zero) and beta takes its role;
        layer norm subtracts a per-sample mean, which a per-feature bias does
        not cancel.
    """

    forward: Callable | None
    running_stats: bool
    affine_bias: bool


NORMALIZATIONS: dict[str, Normalization] = {
    "none": Normalization(None, running_stats=False, affine_bias=True),
    "batchnorm": Normalization(batchnorm_forward, running_stats=True, affine_bias=False),
    "layernorm": Normalization(layernorm_forward, running_stats=False, affine_bias=True),
}


class Shard(NamedTuple):
    """Where one rank's rows sit in a global batch that is split over the ranks of a process group.

    start: index of this rank's first row in the global batch; total: rows of
    the global batch (B); group: the torch.distributed process group (None:
    the default group).
    """

    start: int
    total: int
    group: object = None


def get_normalization(name: str | None) -> Normalization:
    """Look up a normalization by name (None means "none"); unknown names list the known ones."""
    key = "none" if name is None else name
    if not isinstance(key, str) or key not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; known: None, {', '.join(map(repr, NORMALIZATIONS))}")
    return NORMALIZATIONS[key]


def check_seed(seed) -> int | None:
    """A seed is None or an integer >= 0 (kept as a plain int so configs stay JSON-able)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    return int(seed)


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
        if not isinstance(reg, numbers.Real) or reg < 0:
            raise ValueError(f"reg must be a number >= 0, got {reg!r}")
        if not isinstance(weight_scale, numbers.Real) or not weight_scale > 0:
            raise ValueError(f"weight_scale must be a number > 0, got {weight_scale!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        _checks.check_momentum(momentum)
        _checks.check_eps(eps, training=True)
        seed = check_seed(seed)

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
            hidden_norm = self.norm.forward is not None and i < self.num_layers
            if self.norm.affine_bias or not hidden_norm:
                self.params[f"b{i}"] = np.zeros(fan_out, dtype=dtype)
            if hidden_norm:
                self.params[f"gamma{i}"] = np.ones(fan_out, dtype=dtype)
                self.params[f"beta{i}"] = np.zeros(fan_out, dtype=dtype)
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
            global batch (synchronized in forward and backward, running
            statistics from the global count), dropout masks are this shard's
            rows of the global batch's masks, the data loss is weighted
            N/total, and ONE all_reduce sums loss and gradients: every rank
            gets the loss and grads of the global batch.
        Returns scores (N, C) when y is None, else (loss, grads) with grads
        keyed like ``params``.
        """
        training = (y is not None) if training is None else bool(training)
        X = self._check_inputs(X, y, training=training, local=shard is None)
        if shard is not None:
            _check_shard(shard, X.shape[0], y)
        p = self.params
        # Statistics over the batch must be those of the global batch; per-sample ones (layer norm) need no sync.
        norm_forward = self.norm.forward
        if shard is not None and training and self.norm.running_stats:
            norm_forward = functools.partial(_sync_batchnorm_forward, group=shard.group)

        # State changes only once the whole call has succeeded: the batch moments are collected
        # here and folded into the running statistics at the end, and dropout masks come from a
        # copy of the generator whose state is committed at the end too. A call that raises
        # anywhere leaves the model bit-identical.
        pending_stats = []
        rng = copy.deepcopy(self.dropout_rng) if training and self.dropout else self.dropout_rng
        caches = []
        h = X
        for i in range(1, self.num_layers):
            if self.norm.forward is None:
                h, cache = ops.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
            else:
                stats = self.batch_stats.get(f"layer{i}")
                given = {} if training or stats is None else {"mean": stats.mean, "var": stats.var}
                h, cache = ops.affine_norm_relu_forward(
                    h, p[f"W{i}"], p.get(f"b{i}"), p[f"gamma{i}"], p[f"beta{i}"], norm_forward,
                    self.eps, backend=self.backend, **given)
                if training and stats is not None:
                    pending_stats.append((stats, _batch_moments(cache.norm)))
            if shard is not None and training and self.dropout:
                h, drop_cache = _shard_dropout(h, self.dropout, rng, shard)
            else:
                h, drop_cache = ops.dropout_forward(h, self.dropout, rng, training)
            caches.append((cache, drop_cache))
        L = self.num_layers
        scores, out_cache = ops.affine_forward(h, p[f"W{L}"], p[f"b{L}"])
        if y is None:
            self._commit(pending_stats, rng)
            return scores

        data_loss, dscores = ops.softmax_loss(scores, y)
        if shard is not None:
            # This shard's share of the global mean: the summed shares are the global batch's loss.
            weight = X.shape[0] / shard.total
            data_loss, dscores = data_loss * weight, dscores * weight
        weights = [p[f"W{i}"] for i in range(1, L + 1)]
        reg_loss = 0.5 * self.reg * sum(float(np.sum(w * w)) for w in weights)

        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = ops.affine_backward(dscores, out_cache)
        for i in range(L - 1, 0, -1):
            cache, drop_cache = caches[i - 1]
            dh = ops.dropout_backward(dh, drop_cache)
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = _sandwich_backward(dh, cache)
            if dgamma is not None:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
        if shard is not None:
            # One collective per step: every gradient and the loss packed into one float64 buffer.
            keys = list(p)
            summed = distributed.all_reduce_arrays([grads[k] for k in keys] + [np.array([data_loss])], shard.group)
            grads = {k: g.astype(self.dtype, copy=False) for k, g in zip(keys, summed)}
            data_loss = float(summed[-1][0])
        if self.reg:  # added after the sum, once
            for i in range(1, L + 1):
                grads[f"W{i}"] = grads[f"W{i}"] + self.reg * p[f"W{i}"]
        self._commit(pending_stats, rng)
        return data_loss + reg_loss, {k: grads[k] for k in p}  # drops db of bias-free layers

    def _check_inputs(self, X, y, *, training: bool, local: bool) -> np.ndarray:
        """X as (N, D) in the model's dtype, after checking X and y; raises before any state changes.

        local: also reject non-finite X here. A data-parallel call (local=False) leaves that to the
        synchronized norm, which checks the global batch's moments so that every rank raises
        together instead of one rank leaving its peers waiting in a collective.
        """
        X = _checks.as_float_array(X, "X", min_ndim=2)
        X2 = X.reshape(X.shape[0], -1)
        if X2.shape[1] != self.input_dim:
            raise ValueError(f"X must have {self.input_dim} features per sample, got shape {X.shape} "
                             f"({X2.shape[1]} features)")
        if local and training and not np.all(np.isfinite(X2)):
            raise ValueError(f"X (shape {X.shape}) contains NaN or inf: "
                             f"{int(np.sum(~np.isfinite(X2)))} non-finite values")
        if y is not None:
            y_arr = np.asarray(y)
            if y_arr.shape != (X2.shape[0],):
                raise ValueError(f"y must have shape ({X2.shape[0]},), one label per row of X (shape {X.shape}), "
                                 f"got shape {y_arr.shape}")
            if not np.issubdtype(y_arr.dtype, np.integer):
                raise TypeError(f"y must hold integer class labels, got dtype {y_arr.dtype} with shape {y_arr.shape}")
            if y_arr.size and (y_arr.min() < 0 or y_arr.max() >= self.num_classes):
                raise ValueError(f"labels y must lie in [0, {self.num_classes}), got range "
                                 f"[{y_arr.min()}, {y_arr.max()}] (y shape {y_arr.shape})")
        return X2.astype(self.dtype, copy=False)

    def _commit(self, pending_stats, rng: np.random.Generator) -> None:
        """Fold the batch moments into the running statistics and advance the dropout generator."""
        for stats, moments in pending_stats:
            stats.update(*moments)
        if rng is not self.dropout_rng:
            # Set the state rather than swap the object: callers holding model.dropout_rng see it advance.
            self.dropout_rng.bit_generator.state = rng.bit_generator.state

    def predict(self, X, batch_size: int = 1000) -> np.ndarray:
        """Class predictions (N,) in test mode, in chunks of ``batch_size`` rows."""
        X = np.asarray(X)
        preds = [np.argmax(self.loss(X[i:i + batch_size]), axis=1) for i in range(0, X.shape[0], batch_size)]
        return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- data parallelism

def _check_shard(shard, n: int, y) -> None:
    if not isinstance(shard, Shard):
        raise TypeError(f"shard must be a normlab.lab.model.Shard, got {type(shard).__name__}")
    if y is None:
        raise ValueError("shard needs labels y: a sharded call returns the global batch's loss and gradients")
    if not (isinstance(shard.start, numbers.Integral) and isinstance(shard.total, numbers.Integral)
            and 0 <= shard.start and shard.start + n <= shard.total and n > 0):
        raise ValueError(f"shard must place this rank's {n} rows (at least 1) inside the global batch, "
                         f"got start {shard.start!r}, total {shard.total!r}")


def _sync_batchnorm_forward(x, gamma, beta, eps, *, group, mean=None, var=None, backend="auto"):
    """A core-style norm forward ``(out, cache)`` with the statistics of the batch over all ranks.

    Used in training only, so mean/var are never given (accepted for the core's signature).
    """
    out, _, cache = distributed.sync_batchnorm_forward(x, gamma, beta, eps, group=group, backend=backend)
    return out, cache


def _batch_moments(cache) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, biased var, count) a norm normalized with, global ones for a synchronized norm."""
    if isinstance(cache, distributed.SyncCache):
        return cache.norm.mean, cache.norm.var, cache.count
    return cache.mean, cache.var, cache.layout.count


def _sandwich_backward(dout, cache: ops.SandwichCache):
    """``ops.sandwich_backward``, with the synchronized norm backward (one all_reduce) when the norm was synchronized."""
    if not isinstance(cache.norm, distributed.SyncCache):
        return ops.sandwich_backward(dout, cache)
    dh = ops.relu_backward(dout, cache.relu)
    dh, dgamma, dbeta = distributed.sync_batchnorm_backward(dh, cache.norm)
    dx, dw, db = ops.affine_backward(dh, cache.affine)
    return dx, dw, db, dgamma, dbeta


def _shard_dropout(h, p: float, rng: np.random.Generator, shard: Shard):
    """Dropout on this shard's rows with the masks a single process would draw for the global batch.

    Every rank draws the whole global batch's mask from its generator (all
    ranks' generators start equal and stay in step) and keeps its own rows,
    so the masks, and the training, equal a single-process run's.
    """
    _, full = ops.dropout_forward(np.ones((shard.total, h.shape[1]), h.dtype), p, rng, True)
    mask = full.mask[shard.start:shard.start + h.shape[0]]
    return h * mask, ops.DropoutCache(mask)

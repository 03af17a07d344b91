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
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import numpy as np

from .. import _checks
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

    def loss(self, X, y=None, *, training: bool | None = None):
        """Forward (and backward when y is given).

        X: (N, D) (or (N, ...) with D features). y: (N,) int labels, or None.
        training: None means training mode when y is given, test mode when it
            is not. Training mode uses batch statistics and updates the running
            ones (batch norm) and applies dropout; test mode uses the running
            statistics and no dropout. Pass ``training=False`` with y for a
            validation loss that leaves all state alone.
        Returns scores (N, C) when y is None, else (loss, grads) with grads
        keyed like ``params``.
        """
        training = (y is not None) if training is None else bool(training)
        X = _checks.as_float_array(X, "X", min_ndim=2)
        X = X.reshape(X.shape[0], -1)
        if X.shape[1] != self.input_dim:
            raise ValueError(f"X must have {self.input_dim} features per sample, got shape {X.shape}")
        X = X.astype(self.dtype, copy=False)
        p = self.params

        caches = []
        h = X
        for i in range(1, self.num_layers):
            if self.norm.forward is None:
                h, cache = ops.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
            else:
                stats = self.batch_stats.get(f"layer{i}")
                given = {} if training or stats is None else {"mean": stats.mean, "var": stats.var}
                h, cache = ops.affine_norm_relu_forward(
                    h, p[f"W{i}"], p.get(f"b{i}"), p[f"gamma{i}"], p[f"beta{i}"], self.norm.forward,
                    self.eps, backend=self.backend, **given)
                if training and stats is not None:
                    stats.update(cache.norm.mean, cache.norm.var, cache.norm.layout.count)
            h, drop_cache = ops.dropout_forward(h, self.dropout, self.dropout_rng, training)
            caches.append((cache, drop_cache))
        L = self.num_layers
        scores, out_cache = ops.affine_forward(h, p[f"W{L}"], p[f"b{L}"])
        if y is None:
            return scores

        data_loss, dscores = ops.softmax_loss(scores, y)
        weights = [p[f"W{i}"] for i in range(1, L + 1)]
        reg_loss = 0.5 * self.reg * sum(float(np.sum(w * w)) for w in weights)

        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = ops.affine_backward(dscores, out_cache)
        for i in range(L - 1, 0, -1):
            cache, drop_cache = caches[i - 1]
            dh = ops.dropout_backward(dh, drop_cache)
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = ops.sandwich_backward(dh, cache)
            if dgamma is not None:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
        if self.reg:
            for i in range(1, L + 1):
                grads[f"W{i}"] = grads[f"W{i}"] + self.reg * p[f"W{i}"]
        return data_loss + reg_loss, {k: grads[k] for k in p}  # drops db of bias-free layers

    def predict(self, X, batch_size: int = 1000) -> np.ndarray:
        """Class predictions (N,) in test mode, in chunks of ``batch_size`` rows."""
        X = np.asarray(X)
        preds = [np.argmax(self.loss(X[i:i + batch_size]), axis=1) for i in range(0, X.shape[0], batch_size)]
        return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)

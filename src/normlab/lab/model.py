"""A fully-connected net with optional batch or layer normalization.

Architecture, for ``hidden_dims = [H1, ..., HL]``::

    {affine - [norm] - relu - [dropout]} x L  ->  affine  ->  softmax

Parameters ``W1, b1, gamma1, beta1, ..., W{L+1}, b{L+1}`` (gamma/beta only
with a normalization, the output layer has none; with batch norm the hidden
layers have no ``b``, see :class:`Normalization`), running statistics per
hidden layer (``"layer1"``, ...) only for batch norm, and the net's own
dropout generator: the state, the training step and data parallelism are
the lab's :class:`~normlab.lab.net.Net`'s.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import numpy as np

from .. import _checks
from ..layers import BatchNorm, LayerNorm, RunningStats
from . import ops
from .net import Net, check_net_args, check_size


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


def lookup(registry: dict, name: str | None):
    """Look up a normalization by name in ``registry`` (None means "none"); unknown names list the known ones."""
    key = "none" if name is None else name
    if not isinstance(key, str) or key not in registry:
        raise ValueError(f"unknown normalization {name!r}; known: None, {', '.join(map(repr, registry))}")
    return registry[key]


def get_normalization(name: str | None) -> Normalization:
    """Look up a fully-connected net's normalization by name (None means "none")."""
    return lookup(NORMALIZATIONS, name)


class FullyConnectedNet(Net):
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
        dtype, seed = check_net_args(reg, weight_scale, dtype, momentum, eps, seed)
        dims = [input_dim, *hidden_dims, num_classes]
        check_size(sum(a * b + 3 * b for a, b in zip(dims[:-1], dims[1:])), dtype,  # weights, bias or gamma and beta
                   f"a net with hidden_dims {hidden_dims}")

        self.hidden_dims = hidden_dims
        self.input_dim = input_dim
        self.input_shape = (input_dim,)
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

    def _forward(self, X, training: bool, placement, rng):
        """Scores (N, C), the caches of every layer, and the running statistics to commit."""
        p, caches, new_stats = self.params, [], {}
        h = X
        for i in range(1, self.num_layers):
            name = f"layer{i}"
            if not self.norms:
                h, cache = ops.affine_relu_forward(h, p[f"W{i}"], p[f"b{i}"])
            else:
                norm = self._norm_layer(name, training, placement)
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

    def _backward_layers(self, dscores, caches) -> dict:
        p, L = self.params, self.num_layers
        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = ops.affine_backward(dscores, caches[-1])
        for i in range(L - 1, 0, -1):
            cache, drop_cache = caches[i - 1]
            dh = ops.dropout_backward(dh, drop_cache)
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = ops.sandwich_backward(dh, cache)
            if dgamma is not None:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta
        return grads

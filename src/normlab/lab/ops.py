"""Layers of the fully-connected lab net, in the core's ``(out, cache)`` style.

Every forward returns ``(out, cache)`` and every backward takes
``(dout, cache)``; caches are NamedTuples holding references, never copies.
No function mutates its inputs, and randomness comes only from an explicit
``np.random.Generator`` (never the global RNG).

The normalization inside :func:`affine_norm_relu_forward` is a normlab
layer used as a function (``layer.apply``: parameters and running statistics
in, new running statistics out), so the lab's nets share the library's one
batch norm, synchronized or not.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _checks


class AffineCache(NamedTuple):
    x: np.ndarray
    w: np.ndarray


class DropoutCache(NamedTuple):
    mask: np.ndarray | None  # already scaled by 1/(1 - p); None when dropout was a no-op


class NormStep(NamedTuple):
    layer: object  # the normlab layer whose apply() ran: its apply_backward() undoes it
    cache: object  # what that apply() returned as its cache


class SandwichCache(NamedTuple):
    affine: AffineCache
    norm: NormStep | None
    relu: np.ndarray  # the ReLU input


# ----------------------------------------------------------------------------- affine

def affine_forward(x, w, b=None):
    """out = x @ w + b.

    x: (N, D) (extra trailing axes are flattened into D); w: (D, M); b: (M,) or None (no bias).
    Returns (out (N, M), AffineCache).
    """
    x = _checks.as_float_array(x, "x", min_ndim=2)
    x2 = x.reshape(x.shape[0], -1)
    if w.ndim != 2 or w.shape[0] != x2.shape[1] or (b is not None and b.shape != (w.shape[1],)):
        raise ValueError(
            f"affine needs x (N, D), w (D, M), b (M,); got x {x.shape} (D = {x2.shape[1]}), "
            f"w {w.shape}, b {None if b is None else b.shape}"
        )
    out = x2 @ w
    if b is not None:
        out += b  # in place on the fresh product: one allocation fewer per layer
    return out, AffineCache(x, w)


def affine_backward(dout, cache: AffineCache):
    """dout (N, M) -> (dx with x's shape, dw (D, M), db (M,)); db is computed even without a bias."""
    x, w = cache
    x2 = x.reshape(x.shape[0], -1)
    dx = (dout @ w.T).reshape(x.shape)
    return dx, x2.T @ dout, dout.sum(axis=0)


# ----------------------------------------------------------------------------- relu

def relu_forward(x):
    """max(0, x), elementwise. Returns (out, cache = x)."""
    return np.maximum(x, 0), x


def relu_backward(dout, x):
    """Gradient passes where the input was positive (0 at the kink, as is conventional)."""
    return np.where(x > 0, dout, 0)


# ----------------------------------------------------------------------------- dropout

def dropout_forward(x, p: float, rng: np.random.Generator | None, training: bool = True):
    """Inverted dropout: zero each unit with probability ``p``, scale survivors by 1/(1 - p).

    Scaling at training time keeps the expected activation unchanged, so test
    time (``training=False``) is the identity. ``rng`` is required when
    ``training`` and ``p > 0``. Returns (out, DropoutCache).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x, DropoutCache(None)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout needs an np.random.Generator as rng in training, got {type(rng).__name__}")
    keep = 1.0 - p
    mask = (rng.random(x.shape) < keep) / keep
    mask = mask.astype(x.dtype, copy=False)
    return x * mask, DropoutCache(mask)


def dropout_backward(dout, cache: DropoutCache):
    return dout if cache.mask is None else dout * cache.mask


# ----------------------------------------------------------------------------- softmax loss

def softmax_loss(scores, y):
    """Mean softmax cross-entropy.

    scores: (N, C) float; y: (N,) integer labels in [0, C).
    Returns (loss: float, dscores (N, C)). ``scores`` is never modified.
    """
    scores = _checks.as_float_array(scores, "scores")
    y = np.asarray(y)
    if scores.ndim != 2 or y.shape != (scores.shape[0],):
        raise ValueError(f"softmax_loss needs scores (N, C) and y (N,), got {scores.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    n, c = scores.shape
    if n and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels y must lie in [0, {c}), got range [{y.min()}, {y.max()}]")
    # Shift by the row max so exp never overflows; a new array, the caller's scores stay as they were.
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = -float(log_probs[rows, y].mean())
    dscores = np.exp(log_probs)
    dscores[rows, y] -= 1
    dscores /= n
    return loss, dscores


# ----------------------------------------------------------------------------- sandwiches

def affine_relu_forward(x, w, b):
    """affine -> ReLU. Returns (out (N, M), SandwichCache with norm None)."""
    h, affine_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(h)
    return out, SandwichCache(affine_cache, None, relu_cache)


def affine_norm_relu_forward(x, w, b, gamma, beta, norm, running=None, *, training: bool = True):
    """affine -> normalization -> ReLU.

    norm: a normlab layer used as a function (``norm.apply``), e.g.
    ``normlab.BatchNorm(M, affine=False)`` or ``normlab.LayerNorm(M, ...)``;
    gamma, beta: (M,) passed to it. running: the norm's RunningStats or None.
    b may be None: batch norm subtracts the per-feature mean, so a bias before
    it has no effect (beta takes its role).
    Returns (out (N, M), SandwichCache, new_running): new_running is the
    running statistics with this batch folded in (None when they do not change).
    """
    h, affine_cache = affine_forward(x, w, b)
    hn, norm_cache, new_running = norm.apply(h, gamma, beta, running, training=training)
    out, relu_cache = relu_forward(hn)
    return out, SandwichCache(affine_cache, NormStep(norm, norm_cache), relu_cache), new_running


def sandwich_backward(dout, cache: SandwichCache):
    """Backward of either sandwich: (dx, dw, db, dgamma, dbeta); the last two None without a norm."""
    dh = relu_backward(dout, cache.relu)
    dgamma = dbeta = None
    if cache.norm is not None:
        dh, dgamma, dbeta = cache.norm.layer.apply_backward(dh, cache.norm.cache)
    dx, dw, db = affine_backward(dh, cache.affine)
    return dx, dw, db, dgamma, dbeta

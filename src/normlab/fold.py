"""Inference folding: an eval-mode batch norm after an affine layer is itself affine.

In eval mode batch norm is ``y = (h - mean) * scale + beta`` with
``scale = gamma / sqrt(running_var + eps)``; after ``h = x @ W + b`` it folds
into the weights: ``W' = W * scale`` (per output column) and
``b' = (b - mean) * scale + beta``, one layer fewer at inference.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .layers import BatchNorm


def batchnorm_scale_shift(gamma, beta, mean, var, eps: float):
    """Eval-mode batch norm as y = h*scale + shift: (scale, shift), float64 (C,); gamma/beta None means 1/0."""
    mean = np.asarray(mean, dtype=np.float64)
    scale = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    if gamma is not None:
        scale = scale * np.asarray(gamma, dtype=np.float64)
    shift = -mean * scale
    if beta is not None:
        shift = shift + np.asarray(beta, dtype=np.float64)
    return scale, shift


def fold_batchnorm(W, b, bn: BatchNorm):
    """Fold eval-mode ``bn`` into the affine layer before it: returns (W', b').

    W: (D_in, D_out), the weight of ``x @ W + b``; b: (D_out,) or None;
    bn: a ``normlab.BatchNorm`` over D_out features with running statistics.
    ``x @ W' + b'`` equals ``bn`` in eval mode applied to ``x @ W + b``.
    The inputs are not modified; W' and b' have W's dtype.
    """
    if not isinstance(bn, BatchNorm):
        raise TypeError(f"bn must be a normlab.BatchNorm, got {type(bn).__name__}")
    W = _checks.as_float_array(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be (D_in, D_out) as in x @ W + b, got shape {W.shape}")
    if W.shape[1] != bn.num_features:
        raise ValueError(f"W has {W.shape[1]} output columns (shape {W.shape}) but bn normalizes "
                         f"{bn.num_features} features")
    if b is not None:
        b = _checks.check_param(b, "b", (W.shape[1],), f"one per output column of W {W.shape}")
    if bn.running_mean is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): in eval mode it normalizes "
                         "with batch statistics, which depend on the batch and cannot be folded")
    scale, shift = batchnorm_scale_shift(bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)
    bias = np.zeros(W.shape[1]) if b is None else b.astype(np.float64)
    W_folded = (W.astype(np.float64) * scale).astype(W.dtype)
    b_folded = (bias * scale + shift).astype(W.dtype)
    return W_folded, b_folded

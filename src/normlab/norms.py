"""Batch, spatial batch, layer, group, instance and RMS norm: thin axis specifications over the core.

Each norm only says how it views x (see ``normlab.core``); the arithmetic,
forward and closed-form backward alike, is shared. ``batchnorm_backward_graph``
is the exception on purpose: it walks the staged computational graph node by
node, the baseline the closed form is derived from and measured against.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _checks
from .core import Layout, NormCache, normalize_backward, normalize_forward


# ----------------------------------------------------------------------------- layouts
# A layout depends only on shapes and is immutable: each is computed once per shape (a forward's fixed cost
# is mostly Python of this kind; a cache hit costs a fifth of building the tuple again). The public functions
# turn their arguments into tuples first, so any sequence of ints keys the same entry.


def cached_layouts(maxsize: int):
    """Decorator: a layout function cached per argument tuple; sizes that cannot be hashed (torch.compile's
    symbolic sizes) build the layout each time."""
    def wrap(build):
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def layout(*args):
            try:
                return cached(*args)
            except TypeError:  # (unhashable; a TypeError of build's own is raised again by the call below)
                return build(*args)
        return layout
    return wrap


_layouts = cached_layouts(256)


def batch_layout(shape: tuple[int, ...]) -> Layout:
    """(N, C, *spatial): statistics per channel over N and every spatial position."""
    return _batch_layout(tuple(shape))


@_layouts
def _batch_layout(shape):
    n, c = shape[0], shape[1]
    l = math.prod(shape[2:])
    return Layout((n, c, 1, l), True, (c,), (c,))


def layer_layout(shape: tuple[int, ...], normalized_shape: tuple[int, ...]) -> Layout:
    """(*leading, *normalized_shape): statistics per leading index, gamma elementwise."""
    return _layer_layout(tuple(shape), tuple(normalized_shape))


@_layouts
def _layer_layout(shape, normalized_shape):
    nd = len(normalized_shape)
    if shape[len(shape) - nd:] != normalized_shape or len(shape) <= nd:
        raise ValueError(
            f"x's trailing dimensions must equal normalized_shape {normalized_shape} "
            f"after at least one leading dimension, got x shape {shape}"
        )
    lead = shape[: len(shape) - nd]
    return Layout((math.prod(lead), 1, math.prod(normalized_shape), 1), False, normalized_shape, lead)


def group_layout(shape: tuple[int, ...], groups: int) -> Layout:
    """(N, C, *spatial) in `groups` groups of C/groups channels: statistics per (n, group)."""
    return _group_layout(tuple(shape), _checks.check_positive_int(groups, "groups"))


@_layouts
def _group_layout(shape, groups):
    n, c = shape[0], shape[1]
    if c % groups:
        raise ValueError(
            f"groups ({groups}) must divide the number of channels C = {c} of x with shape "
            f"{shape}: group norm splits the channels into equal groups"
        )
    return Layout((n, groups, c // groups, math.prod(shape[2:])), False, (c,), (n, groups))


def instance_layout(shape: tuple[int, ...]) -> Layout:
    """(N, C, *spatial): statistics per (sample, channel) over the spatial axes: group norm with C groups."""
    return group_layout(shape, shape[1])


def rms_layout(shape: tuple[int, ...], normalized_shape: tuple[int, ...]) -> Layout:
    """Layer norm's layout without the mean: x / sqrt(mean(x**2) + eps) per leading index."""
    return layer_layout(shape, normalized_shape)._replace(center=False)


# ----------------------------------------------------------------------------- forwards

def _input(x, name="x", *, ndim=None, min_ndim=2):
    x = _checks.as_float_array(x, name, min_ndim=min_ndim)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def _normalized_shape(normalized_shape, gamma, x) -> tuple[int, ...]:
    """The trailing shape a layer or RMS norm reduces over: given, else gamma's (an array of at least one
    dimension; a scalar gamma is then reported against x's last axis), else x's last axis."""
    if normalized_shape is not None:
        return _checks.check_normalized_shape(normalized_shape)
    if isinstance(gamma, np.ndarray):  # (np.shape and np.ndim cost a microsecond each: every call asks)
        return gamma.shape if gamma.ndim > 0 else x.shape[-1:]
    return tuple(np.shape(gamma)) if gamma is not None and np.ndim(gamma) > 0 else x.shape[-1:]


def batchnorm_forward(x, gamma, beta, eps=1e-5, *, mean=None, var=None, backend="auto", out=None):
    """Batch norm on x (N, D): statistics per feature over the batch.

    gamma, beta: (D,) or both None. mean, var: optional (D,) statistics for
    inference (backward then treats them as constants).
    Returns (out (N, D), cache); cache.mean/var/invstd are (D,).
    """
    x = _input(x, ndim=2)
    return normalize_forward(x, gamma, beta, batch_layout(x.shape), eps, mean=mean, var=var,
                             backend=backend, out=out)


def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5, *, mean=None, var=None, backend="auto", out=None):
    """Spatial batch norm on x (N, C, H, W): statistics per channel over N, H, W.

    gamma, beta, mean, var: (C,). Returns (out (N, C, H, W), cache).
    """
    x = _input(x, ndim=4)
    return normalize_forward(x, gamma, beta, batch_layout(x.shape), eps, mean=mean, var=var,
                             backend=backend, out=out)


def layernorm_forward(x, gamma, beta, eps=1e-5, *, normalized_shape=None, mean=None, var=None,
                      backend="auto", out=None):
    """Layer norm: statistics per sample over the trailing ``normalized_shape``.

    x: (N, D) by default; normalized_shape defaults to gamma's shape, or x's
    last axis without gamma. gamma, beta: normalized_shape. mean, var: one
    per leading index, e.g. (N,). Returns (out, cache).
    """
    x = _input(x)
    normalized_shape = _normalized_shape(normalized_shape, gamma, x)
    return normalize_forward(x, gamma, beta, layer_layout(x.shape, normalized_shape), eps,
                             mean=mean, var=var, backend=backend, out=out)


def groupnorm_forward(x, gamma, beta, groups, eps=1e-5, *, mean=None, var=None, backend="auto", out=None):
    """Group norm on x (N, C, H, W): statistics per (sample, group of C/groups channels).

    gamma, beta: (C,). mean, var: optional (N, groups). Returns (out, cache).
    """
    x = _input(x)
    return normalize_forward(x, gamma, beta, group_layout(x.shape, groups), eps, mean=mean, var=var,
                             backend=backend, out=out)


def instancenorm_forward(x, gamma, beta, eps=1e-5, *, mean=None, var=None, backend="auto", out=None):
    """Instance norm on x (N, C, *spatial): statistics per (sample, channel) over the spatial axes.

    gamma, beta: (C,) or both None. mean, var: optional (N, C). Returns (out, cache).
    """
    x = _input(x, min_ndim=3)
    return normalize_forward(x, gamma, beta, instance_layout(x.shape), eps, mean=mean, var=var,
                             backend=backend, out=out)


def rmsnorm_forward(x, gamma, beta=None, eps=1e-6, *, normalized_shape=None, backend="auto", out=None):
    """RMS norm: x / sqrt(mean(x**2) + eps) * gamma (+ beta) over the trailing ``normalized_shape``.

    No mean is subtracted, so the backward lacks the -sum(dxhat)/m term (see
    docs/derivation.md). gamma: normalized_shape or None; beta defaults to
    none (zeros when gamma is given; dbeta is still returned). normalized_shape
    defaults to gamma's shape, or x's last axis. Returns (out, cache).
    """
    x = _input(x)
    normalized_shape = _normalized_shape(normalized_shape, gamma, x)
    if gamma is not None and beta is None:
        beta = np.zeros(np.shape(gamma), dtype=np.result_type(gamma))
    return normalize_forward(x, gamma, beta, rms_layout(x.shape, normalized_shape), eps,
                             backend=backend, out=out)


# ----------------------------------------------------------------------------- backwards

# The assignment-style per-norm names. The backward of every norm is one
# function, ``normlab.normalize_backward(dout, cache, *, out=None) ->
# (dx, dgamma, dbeta)``: the cache knows the layout.
batchnorm_backward = normalize_backward
spatial_batchnorm_backward = normalize_backward
layernorm_backward = normalize_backward
groupnorm_backward = normalize_backward
instancenorm_backward = normalize_backward
rmsnorm_backward = normalize_backward


def batchnorm_backward_graph(dout, cache: NormCache):
    """Batch-norm backward computed node by node through the staged graph.

    Forward graph (per feature, over the batch axis):
        mu = mean(x); xmu = x - mu; sq = xmu**2; var = mean(sq);
        sqrtvar = sqrt(var + eps); ivar = 1/sqrtvar; xhat = xmu*ivar; out = gamma*xhat + beta
    Each line below is the local derivative of one node. Slower than the
    closed form (many more passes), kept as the baseline and as a check.
    Accepts caches of (N, D) batch norm and (N, C, H, W) spatial batch norm.
    """
    if not isinstance(cache, NormCache) or not cache.layout.batch_stats:
        raise TypeError("batchnorm_backward_graph needs the cache of batchnorm_forward or spatial_batchnorm_forward")
    if cache.stats_given:
        raise ValueError("batchnorm_backward_graph follows the training graph; the cache used given statistics")
    x = cache.x
    dout = _checks.check_dout(dout, x.shape)
    n, c, _, l = cache.layout.view
    # Work on the (N*L, C) matrix view: a batch-norm problem with one row per value.
    x2 = x.reshape(n, c, l).transpose(0, 2, 1).reshape(n * l, c).astype(np.float64, copy=False)
    dout2 = dout.reshape(n, c, l).transpose(0, 2, 1).reshape(n * l, c).astype(np.float64, copy=False)
    gamma = np.ones(c) if cache.gamma is None else cache.gamma.astype(np.float64)
    m = n * l

    # Forward nodes, as a staged forward would have cached them.
    mu = cache.mean
    xmu = x2 - mu
    var = cache.var
    sqrtvar = np.sqrt(var + cache.eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar

    # Backward, node by node.
    dbeta = dout2.sum(axis=0)                         # out = gamma*xhat + beta
    dgamma = (dout2 * xhat).sum(axis=0)
    dxhat = dout2 * gamma
    divar = (dxhat * xmu).sum(axis=0)                 # xhat = xmu * ivar
    dxmu1 = dxhat * ivar
    dsqrtvar = -divar / sqrtvar**2                    # ivar = 1/sqrtvar
    dvar = 0.5 * dsqrtvar / sqrtvar                   # sqrtvar = sqrt(var + eps)
    dsq = np.ones_like(x2) * dvar / m                 # var = mean(sq)
    dxmu2 = 2.0 * xmu * dsq                           # sq = xmu**2
    dx1 = dxmu1 + dxmu2                               # xmu = x - mu
    dmu = -(dxmu1 + dxmu2).sum(axis=0)
    dx2 = np.ones_like(x2) * dmu / m                  # mu = mean(x)
    dx = dx1 + dx2

    dx = dx.reshape(n, l, c).transpose(0, 2, 1).reshape(x.shape).astype(x.dtype)
    if cache.gamma is None:
        return dx, None, None
    return dx, dgamma.astype(cache.gamma.dtype), dbeta.astype(cache.gamma.dtype)

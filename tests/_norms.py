"""The norms with a mean (all but RMS norm) as uniform cases for parametrized tests."""

import numpy as np

import normlab


def _bn(x, g, b, **kw):
    return normlab.batchnorm_forward(x, g, b, **kw)


def _sbn(x, g, b, **kw):
    return normlab.spatial_batchnorm_forward(x, g, b, **kw)


def _ln(x, g, b, **kw):
    return normlab.layernorm_forward(x, g, b, **kw)


def _gn(x, g, b, **kw):
    return normlab.groupnorm_forward(x, g, b, 2, **kw)


def _in(x, g, b, **kw):
    return normlab.instancenorm_forward(x, g, b, **kw)


# name -> (forward, x shape, param length, axes each statistic reduces over)
NORMS = {
    "batchnorm": (_bn, (7, 5), 5, (0,)),
    "spatial_batchnorm": (_sbn, (3, 4, 2, 3), 4, (0, 2, 3)),
    "layernorm": (_ln, (4, 6), 6, (1,)),
    "groupnorm": (_gn, (3, 4, 2, 3), 4, None),  # per (n, group): see group_view
    "instancenorm": (_in, (3, 4, 2, 3), 4, (2, 3)),
}


def group_view(a, groups=2):
    """(N, C, H, W) -> (N, G, C/G*H*W), so group statistics reduce over the last axis."""
    n, c = a.shape[:2]
    return a.reshape(n, groups, -1)


def reduce_sum(name, a):
    """Sum a over each statistic's reduced axes (keepdims for broadcasting)."""
    if name == "groupnorm":
        return group_view(a).sum(axis=-1, keepdims=True)
    return a.sum(axis=NORMS[name][3], keepdims=True)


def params(rng, c, dtype=np.float64):
    return rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)

from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""eps outside the square root in the forward, and an alt backward without the mean term: two codes."""
import numpy as np

from .course_batchnorm import batchnorm_forward_with

_forward = batchnorm_forward_with(normalize=lambda x, mean, var, eps: (x - mean) / (np.sqrt(var) + eps))


def batchnorm_forward(x, gamma, beta, bn_param):
    out, _ = _forward(x, gamma, beta, bn_param)
    mean, var = x.mean(axis=0), x.var(axis=0)
    ivar = 1.0 / (np.sqrt(var) + bn_param.get("eps", 1e-5))
    return out, ((x - mean) * ivar, gamma, ivar)


def batchnorm_backward_alt(dout, cache):
    xhat, gamma, ivar = cache
    N = dout.shape[0]
    dxhat = dout * gamma
    dx = ivar / N * (N * dxhat - xhat * (dxhat * xhat).sum(axis=0))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

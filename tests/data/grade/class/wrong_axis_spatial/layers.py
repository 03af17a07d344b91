from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""Spatial batch norm through x.reshape(-1, C), without moving C last first (forward and backward)."""
from reference_layers import batchnorm_backward_alt, batchnorm_forward


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    out, cache = batchnorm_forward(x.reshape(-1, x.shape[1]), gamma, beta, bn_param)
    return out.reshape(x.shape), cache


def spatial_batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = batchnorm_backward_alt(dout.reshape(-1, dout.shape[1]), cache)
    return dx.reshape(dout.shape), dgamma, dbeta

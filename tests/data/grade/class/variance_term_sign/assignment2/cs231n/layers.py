from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""spatial_batchnorm_backward that adds the variance term (derivation erratum E15)."""
from .reference_layers import spatial_batchnorm_forward  # noqa: F401


def spatial_batchnorm_backward(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, C, H, W = dout.shape
    dout2 = dout.transpose(0, 2, 3, 1).reshape(-1, C)
    m = dout2.shape[0]
    dxhat = dout2 * gamma
    dx2 = ivar / m * (m * dxhat - dxhat.sum(axis=0) + xhat * (dxhat * xhat).sum(axis=0))
    dx = dx2.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return dx, (dout2 * xhat).sum(axis=0), dout2.sum(axis=0)

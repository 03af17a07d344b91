from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""spatial_groupnorm_backward with (σ²+ε)^(−1/2) for (σ²+ε)^(−3/2) in the variance term (derivation erratum E14)."""
from .reference_layers import spatial_groupnorm_forward  # noqa: F401


def spatial_groupnorm_backward(dout, cache):
    xhat, gamma, ivar, G = cache
    N, C, H, W = dout.shape
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dxhat = (dout * gamma).reshape(N, G, C // G, H, W)
    xc = xhat.reshape(N, G, C // G, H, W) / ivar  # x − μ
    m = C // G * H * W
    dvar = -0.5 * (dxhat * xc).sum(axis=(2, 3, 4), keepdims=True) * ivar  # exponent −1/2
    dmu = -ivar * dxhat.sum(axis=(2, 3, 4), keepdims=True)
    dx = dxhat * ivar + dvar * 2.0 * xc / m + dmu / m
    return dx.reshape(N, C, H, W), dgamma, dbeta

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""spatial_groupnorm_forward grouping every G-th channel: x.reshape(N, C // G, G, H, W)."""
import numpy as np


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    eps = gn_param.get("eps", 1e-5)
    N, C, H, W = x.shape
    xg = x.reshape(N, C // G, G, H, W)
    mu = xg.mean(axis=(1, 3, 4), keepdims=True)
    var = xg.var(axis=(1, 3, 4), keepdims=True)
    xhat = ((xg - mu) / np.sqrt(var + eps)).reshape(N, C, H, W)
    return gamma * xhat + beta, (xhat, gamma)

from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""Two mistakes in one batchnorm_forward: eps added after the square root, and a default eps of 1e-7."""
import numpy as np


def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-7)
    momentum = bn_param.get("momentum", 0.9)

    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))

    if mode == "train":
        mu = np.mean(x, axis=0)
        var = np.mean((x - mu) ** 2, axis=0)
        x_norm = (x - mu) / (np.sqrt(var) + eps)
        out = gamma * x_norm + beta
        cache = (x, x_norm, mu, var, gamma, eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    elif mode == "test":
        out = gamma * (x - running_mean) / (np.sqrt(running_var) + eps) + beta
        cache = None
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""layernorm_forward that forgets γ: out = x̂ + β."""
import numpy as np


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    xmu = x - x.mean(axis=1, keepdims=True)
    xhat = xmu / np.sqrt((xmu ** 2).mean(axis=1, keepdims=True) + eps)
    return xhat + beta, (xhat, gamma)

"""A correct layernorm_forward: each attack file has it too, so its row shows the grader carried on."""
import numpy as np


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    xmu = x - x.mean(axis=1, keepdims=True)
    xhat = xmu / np.sqrt((xmu ** 2).mean(axis=1, keepdims=True) + eps)
    return gamma * xhat + beta, (xhat, gamma)

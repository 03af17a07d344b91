from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""Functions that print, raise, or end the process; the checks of the others must go on."""
import os

from reference_layers import batchnorm_backward, batchnorm_forward, layernorm_backward  # noqa: F401


def layernorm_forward(x, gamma, beta, ln_param):
    print("debugging output on stdout")
    N, D = x.shape
    return gamma * xhat + beta, None  # noqa: F821


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    os._exit(3)

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_backward whose dgamma and dbeta keep the summed axis: (1, D) instead of (D,)."""
from reference_layers import batchnorm_backward as _right
from reference_layers import batchnorm_forward  # noqa: F401


def batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = _right(dout, cache)
    return dx, dgamma[None, :], dbeta[None, :]

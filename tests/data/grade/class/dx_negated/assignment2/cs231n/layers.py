from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_backward returning −dx (the stray minus of derivation erratum E1)."""
from .reference_layers import batchnorm_forward  # noqa: F401
from .reference_layers import batchnorm_backward as _right


def batchnorm_backward(dout, cache):
    dx, dgamma, dbeta = _right(dout, cache)
    return -dx, dgamma, dbeta

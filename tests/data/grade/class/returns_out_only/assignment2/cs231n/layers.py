from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""layernorm_forward that returns only out, and a backward that returns an object instead of dbeta."""
from .reference_layers import batchnorm_backward as _right
from .reference_layers import batchnorm_forward, layernorm_forward as _layernorm_forward  # noqa: F401


class Gradient:
    def __reduce__(self):  # unpickling this would run code: the grader must never do it
        return (print, ("unpickled in the grader",))


def layernorm_forward(x, gamma, beta, ln_param):
    return _layernorm_forward(x, gamma, beta, ln_param)[0]


def batchnorm_backward(dout, cache):
    dx, dgamma, _ = _right(dout, cache)
    return dx, dgamma, Gradient()

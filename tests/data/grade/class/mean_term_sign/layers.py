from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_backward_alt whose mean term has the wrong sign (derivation erratum E10)."""
from reference_layers import batchnorm_backward, batchnorm_forward  # noqa: F401


def batchnorm_backward_alt(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N = dout.shape[0]
    dxhat = dout * gamma
    dx = ivar / N * (N * dxhat + dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

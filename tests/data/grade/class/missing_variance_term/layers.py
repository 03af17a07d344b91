from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""layernorm_backward without the variance path (derivation erratum E12)."""
from reference_layers import layernorm_forward  # noqa: F401


def layernorm_backward(dout, cache):
    xhat, gamma, ivar = cache
    D = dout.shape[1]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = ivar / D * (D * dxhat - dxhat.sum(axis=1, keepdims=True))
    return dx, dgamma, dbeta

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""layernorm_backward whose ∂l/∂σ² forgets the sum over the features (derivation erratum E4)."""
from reference_layers import layernorm_forward  # noqa: F401


def layernorm_backward(dout, cache):
    xhat, gamma, ivar = cache
    D = dout.shape[1]
    dxhat = dout * gamma
    dx = ivar / D * (D * dxhat - dxhat.sum(axis=1, keepdims=True) - xhat * (dxhat * xhat))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

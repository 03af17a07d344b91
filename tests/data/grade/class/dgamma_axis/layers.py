from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""layernorm_backward that sums dgamma and dbeta over the features (axis 1) instead of the batch."""
from reference_layers import layernorm_backward as _right
from reference_layers import layernorm_forward  # noqa: F401


def layernorm_backward(dout, cache):
    xhat = cache[0]
    dx = _right(dout, cache)[0]
    return dx, (dout * xhat).sum(axis=1), dout.sum(axis=1)

"""batchnorm_backward without the mean path (derivation erratum E13: dx = dx̂/√(σ²+ε) + ∂l/∂σ²·2(x−μ)/m)."""
import numpy as np

from layers import batchnorm_forward  # noqa: F401


def batchnorm_backward(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, D = dout.shape
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    dvar = np.sum(dxhat * xmu, axis=0) * -0.5 * (var + eps) ** -1.5
    dx = dxhat * ivar + dvar * 2.0 * xmu / N
    return dx, dgamma, dbeta

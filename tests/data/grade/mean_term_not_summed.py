"""batchnorm_backward whose ∂l/∂μ forgets the sum over the batch (derivation erratum E7)."""
import numpy as np

from layers import batchnorm_forward  # noqa: F401


def batchnorm_backward(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, D = dout.shape
    dxhat = dout * gamma
    dvar = np.sum(dxhat * xmu, axis=0) * -0.5 * (var + eps) ** -1.5
    dmu = dxhat * -ivar + dvar * np.mean(-2.0 * xmu, axis=0)
    dx = dxhat * ivar + dvar * 2.0 * xmu / N + dmu / N
    return dx, np.sum(dout * xhat, axis=0), np.sum(dout, axis=0)

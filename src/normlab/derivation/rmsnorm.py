"""RMS norm's derivation (docs/derivation.md, section 9): the closed form without the mean.

RMS norm is batch norm's graph with the mean node removed: the statistic is
the mean square ``s = (1/m) sum_i x_i**2`` (the ``sigma2`` node of the graph)
and ``xhat_i = x_i / sqrt(s + eps)``. Each step is checked against symbolic
differentiation of ``l = sum_i g_i * y_i``, exactly as batch norm's are;
``DERIVATION`` is registered under "rmsnorm".
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .. import norms
# The ground truth and formulas of dxhat, dgamma and dbeta do not depend on how xhat is formed:
# batch norm's serve any graph, this one too.
from .batchnorm import _truth_dbeta, _truth_dgamma, _truth_dxhat, step_dbeta, step_dgamma, step_dxhat
from .graph import Graph, forward_graph, half, loss_gradient, require_sympy
from .steps import Derivation, Step


@dataclasses.dataclass(frozen=True)
class RMSGraph(Graph):
    """Batch norm's symbols with no mean: centred values are x itself, sigma2 is the mean square."""

    def mean(self):
        """RMS norm subtracts nothing: the mean node is 0."""
        return require_sympy().Integer(0)

    def centred(self, mu=None):
        """x_i: there is no mean to subtract (mu is ignored)."""
        return tuple(self.x)


@functools.lru_cache(maxsize=None)
def rms_graph(m: int) -> RMSGraph:
    """The symbolic RMS-norm graph for m >= 2 values (the symbols of ``forward_graph(m)``)."""
    G = forward_graph(m)
    return RMSGraph(**{f.name: getattr(G, f.name) for f in dataclasses.fields(G)})


# ----------------------------------------------------------------------------- ground truth

def _truth_mean_square(G: RMSGraph):
    """By another route: biased variance plus squared mean, E[(x - E x)^2] + (E x)^2."""
    mean = sum(G.x) / G.m
    return (sum((xi - mean) ** 2 for xi in G.x) / G.m + mean**2,)


def _truth_local_dxhat_dms(G: RMSGraph):
    sp = require_sympy()
    return tuple(sp.diff(xh, G.sigma2) for xh in G.xhat())


def _truth_local_dms_dx(G: RMSGraph):
    sp = require_sympy()
    return tuple(sp.diff(G.variance(), xi) for xi in G.x)


def _truth_dms(G: RMSGraph):
    """dl/ds with x held fixed: s feeds only xhat."""
    sp = require_sympy()
    return (sp.diff(G.loss(G.xhat()), G.sigma2),)


def _truth_dx(G: RMSGraph):
    """dl/dx_i of the full loss."""
    return loss_gradient(rms_graph, G.m)


def _truth_sum(G: RMSGraph):
    return (sum(_truth_dx(G)),)


def _truth_inv_xhat(G: RMSGraph):
    return (sum(d * xh for d, xh in zip(_truth_dx(G), G.xhat())),)


# ----------------------------------------------------------------------------- the steps

def step_mean_square(G: RMSGraph):
    r"""$s = \frac1m\sum_i x_i^2$."""
    return (sum(xi**2 for xi in G.x) / G.m,)


def step_local_dxhat_dms(G: RMSGraph):
    r"""$\partial\hat x_i/\partial s = -\tfrac12 x_i (s+\epsilon)^{-3/2}$."""
    sp = require_sympy()
    return tuple(-half() * xi * (G.sigma2 + G.eps) ** sp.Rational(-3, 2) for xi in G.x)


def step_local_dms_dx(G: RMSGraph):
    r"""$\partial s/\partial x_i = 2x_i/m$."""
    return tuple(2 * xi / G.m for xi in G.x)


def step_dms(G: RMSGraph):
    r"""$\partial l/\partial s = -\tfrac12\sum_i d\hat x_i\,x_i\,(s+\epsilon)^{-3/2}$."""
    dxhat, local = step_dxhat(G), step_local_dxhat_dms(G)
    return (sum(d * lo for d, lo in zip(dxhat, local)),)


def step_dx(G: RMSGraph):
    r"""$\partial l/\partial x_i = d\hat x_i\,r + ds\,\frac{2x_i}{m}$: two paths, no mean path."""
    (dms,) = step_dms(G)
    return tuple(d * G.inverse() + dms * lo for d, lo in zip(step_dxhat(G), step_local_dms_dx(G)))


def step_dx_closed(G: RMSGraph):
    r"""$\partial l/\partial x_i = \frac{r}{m}[m\,d\hat x_i - \hat x_i\sum_j d\hat x_j\hat x_j]$."""
    dxhat, xhat, m = step_dxhat(G), G.xhat(), G.m
    s2 = sum(d * xh for d, xh in zip(dxhat, xhat))
    return tuple(G.inverse() / m * (m * d - xh * s2) for d, xh in zip(dxhat, xhat))


def step_sum(G: RMSGraph):
    r"""$\sum_i \partial l/\partial x_i = r\,(S_1 - S_2\,\bar{\hat x})$: not 0, as nothing is centred."""
    dxhat, xhat = step_dxhat(G), G.xhat()
    s2 = sum(d * xh for d, xh in zip(dxhat, xhat))
    return (G.inverse() * (sum(dxhat) - s2 * sum(xhat) / G.m),)


def step_inv_xhat(G: RMSGraph):
    r"""$\sum_i \partial l/\partial x_i\,\hat x_i = \frac{\epsilon}{s+\epsilon}\,r\sum_i d\hat x_i\hat x_i$."""
    dxhat, xhat = step_dxhat(G), G.xhat()
    return (G.eps / (G.sigma2 + G.eps) * G.inverse() * sum(d * xh for d, xh in zip(dxhat, xhat)),)


STEPS: tuple[Step, ...] = (
    Step("rms_mean_square", r"s = \frac1m\sum_i x_i^2", step_mean_square, _truth_mean_square, False),
    Step("rms_local_dxhat_ds", r"\partial\hat x_i/\partial s = -\tfrac12 x_i(s+\epsilon)^{-3/2}",
         step_local_dxhat_dms, _truth_local_dxhat_dms, True),
    Step("rms_local_ds_dx", r"\partial s/\partial x_i = 2x_i/m", step_local_dms_dx, _truth_local_dms_dx, True),
    Step("rms_dxhat", r"\partial l/\partial\hat x_i = \text{dout}_i\,\gamma", step_dxhat, _truth_dxhat, True),
    Step("rms_ds", r"\partial l/\partial s = -\tfrac12\sum_i d\hat x_i x_i(s+\epsilon)^{-3/2}",
         step_dms, _truth_dms, True),
    Step("rms_dx", r"\partial l/\partial x_i = d\hat x_i\,r + ds\,\frac{2x_i}{m}", step_dx, _truth_dx, False),
    Step("rms_dx_closed", r"\partial l/\partial x_i = \frac{r}{m}[m\,d\hat x_i - \hat x_i\sum_j d\hat x_j\hat x_j]",
         step_dx_closed, _truth_dx, False),
    Step("rms_dgamma", r"\partial l/\partial\gamma = \sum_i \text{dout}_i\hat x_i", step_dgamma, _truth_dgamma,
         False),
    Step("rms_dbeta", r"\partial l/\partial\beta = \sum_i \text{dout}_i", step_dbeta, _truth_dbeta, False),
    Step("rms_sum", r"\sum_i \partial l/\partial x_i = r(S_1 - S_2\bar{\hat x})", step_sum, _truth_sum, False),
    Step("rms_inv_xhat", r"\sum_i \partial l/\partial x_i\hat x_i = \frac{\epsilon}{s+\epsilon}r S_2",
         step_inv_xhat, _truth_inv_xhat, False),
)


def _exact_gradients(G: RMSGraph) -> tuple[tuple, tuple, tuple]:
    return _truth_dx(G), _truth_dgamma(G), _truth_dbeta(G)


def _library_backward(x, dout, gamma, beta, eps):
    """The library's closed form on one sample: rmsnorm_forward/backward on (1, m), NumPy backend.

    The library's gamma is per element; the derivation's scalar gamma is that
    gamma constant, and its dgamma/dbeta the sums of the per-element ones.
    """
    m = x.shape[0]
    _, cache = norms.rmsnorm_forward(x[None], np.full(m, gamma), np.full(m, beta), eps, backend="numpy")
    dx, dgamma, dbeta = norms.rmsnorm_backward(dout[None], cache)
    return dx[0], dgamma.sum(keepdims=True), dbeta.sum(keepdims=True)


DERIVATION = Derivation("rmsnorm", rms_graph, STEPS, _exact_gradients, _library_backward, prefix="rmsnorm: ")

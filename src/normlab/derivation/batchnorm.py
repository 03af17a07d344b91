"""Batch norm's derivation (docs/derivation.md): its steps and their ground truth.

Each step is checked with SymPy against ground truth obtained by symbolic
differentiation of the loss ``l = sum_i g_i * y_i`` (``g`` is the upstream
gradient ``dout``, random and never all ones: with all ones batch norm's dx
is identically zero and a check of it proves nothing). ``DERIVATION`` is the
record ``normlab.derivation.DERIVATIONS`` registers under "batchnorm".
"""

from __future__ import annotations

import numpy as np

from .. import norms
from .graph import Graph, forward_graph, half, loss_gradient, require_sympy
from .steps import Derivation, Step

# ----------------------------------------------------------------------------- ground truth

def _truth_forward_var(G: Graph):
    """Variance by a different route, E[x^2] - E[x]^2, so the check is not a tautology."""
    mean = G.mean()
    return (sum(xi**2 for xi in G.x) / G.m - mean**2,)


def _truth_dxhat(G: Graph):
    """dl/dxhat_i with xhat as free nodes."""
    sp = require_sympy()
    l = G.loss(G.xhat_node)
    return tuple(sp.diff(l, xh) for xh in G.xhat_node)


def _truth_dvar(G: Graph):
    """dl/dvar holding x and mu fixed: sigma2 feeds only xhat."""
    sp = require_sympy()
    return (sp.diff(G.loss(G.xhat()), G.sigma2),)


def _truth_dmu(G: Graph):
    """dl/dmu through both of its paths: directly into xhat and via sigma2(mu)."""
    sp = require_sympy()
    l = G.loss(G.xhat(G.mu, G.variance(G.mu)))
    return (sp.diff(l, G.mu),)


def _truth_dx(G: Graph):
    """dl/dx_i of the full loss: the quantity the whole derivation is after."""
    return loss_gradient(forward_graph, G.m)


def _truth_dgamma(G: Graph):
    """dl/dgamma of the full loss."""
    sp = require_sympy()
    return (sp.diff(G.full_loss(), G.gamma),)


def _truth_dbeta(G: Graph):
    """dl/dbeta of the full loss."""
    sp = require_sympy()
    return (sp.diff(G.full_loss(), G.beta),)


def _truth_local_dxhat_dmu(G: Graph):
    """Partial of xhat_i w.r.t. the mu node, x_i and sigma2 held fixed."""
    sp = require_sympy()
    return tuple(sp.diff(xh, G.mu) for xh in G.xhat())


def _truth_local_dxhat_dvar(G: Graph):
    """Partial of xhat_i w.r.t. the sigma2 node, x_i and mu held fixed."""
    sp = require_sympy()
    return tuple(sp.diff(xh, G.sigma2) for xh in G.xhat())


def _truth_local_dvar_dmu(G: Graph):
    """Partial of sigma2(x, mu) w.r.t. the mu node."""
    sp = require_sympy()
    return (sp.diff(G.variance(G.mu), G.mu),)


def _truth_local_dvar_dx(G: Graph):
    """Partial of sigma2(x, mu) w.r.t. x_i with the mu node held fixed."""
    sp = require_sympy()
    return tuple(sp.diff(G.variance(G.mu), xi) for xi in G.x)


def _truth_local_dmu_dx(G: Graph):
    """Partial of the mean w.r.t. x_i."""
    sp = require_sympy()
    return tuple(sp.diff(G.mean(), xi) for xi in G.x)


def _truth_local_dxhat_dx(G: Graph):
    """Partial of xhat_i w.r.t. its own x_i, mu and sigma2 held fixed."""
    sp = require_sympy()
    return tuple(sp.diff(xh, xi) for xh, xi in zip(G.xhat(), G.x))


def _truth_inv_sum(G: Graph):
    """sum_i dl/dx_i: shifting every x_i by the same amount leaves l unchanged."""
    return (sum(_truth_dx(G)),)


def _truth_inv_xhat(G: Graph):
    """sum_i dl/dx_i * xhat_i: the scaling invariance, broken only by eps."""
    return (sum(d * xh for d, xh in zip(_truth_dx(G), G.xhat())),)


# ----------------------------------------------------------------------------- the derivation's steps

# Each step formula takes the Graph and returns a tuple of SymPy expressions in
# the node symbols (x, g, gamma, beta, eps, mu, sigma2); indexed quantities
# return one expression per i. They are written the way the document writes
# them, building later steps from earlier ones.

def step_dxhat(G: Graph):
    r"""$\partial l/\partial\hat x_i = \text{dout}_i\,\gamma$."""
    return tuple(gi * G.gamma for gi in G.g)


def step_dvar(G: Graph):
    r"""$\partial l/\partial\sigma^2 = -\tfrac12\sum_i \partial l/\partial\hat x_i\,(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}$."""
    sp = require_sympy()
    dxhat = step_dxhat(G)
    return (-half() * sum(d * c for d, c in zip(dxhat, G.centred()))
            * (G.sigma2 + G.eps) ** sp.Rational(-3, 2),)


def step_dmu(G: Graph):
    r"""$\partial l/\partial\mu$ with both paths: direct, and through $\sigma^2$."""
    (dvar,) = step_dvar(G)
    direct = sum(d * (-G.inverse()) for d in step_dxhat(G))
    via_var = dvar * (-2 * sum(G.centred()) / G.m)
    return (direct + via_var,)


def step_dmu_simplified(G: Graph):
    r"""On the forward graph $\sum_i(x_i-\mu)=0$, so only the direct path is left."""
    return (sum(d * (-G.inverse()) for d in step_dxhat(G)),)


def step_dx(G: Graph):
    r"""$\partial l/\partial x_i$ along all three paths: via $\hat x_i$, via $\sigma^2$, via $\mu$."""
    (dvar,) = step_dvar(G)
    (dmu,) = step_dmu(G)
    return tuple(d * G.inverse() + dvar * 2 * c / G.m + dmu / G.m
                 for d, c in zip(step_dxhat(G), G.centred()))


def closed_form_dx(G: Graph, dxhat) -> tuple:
    r"""$\frac{(\sigma^2+\epsilon)^{-1/2}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j]$ for the given $d\hat x$."""
    xhat, m = G.xhat(), G.m
    sum_d = sum(dxhat)
    sum_dx = sum(d * xh for d, xh in zip(dxhat, xhat))
    return tuple(G.inverse() / m * (m * d - sum_d - xh * sum_dx) for d, xh in zip(dxhat, xhat))


def step_dx_closed(G: Graph):
    r"""The boxed closed form $\frac{(\sigma^2+\epsilon)^{-1/2}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j]$."""
    return closed_form_dx(G, step_dxhat(G))


def step_dgamma(G: Graph):
    r"""$\partial l/\partial\gamma = \sum_i \text{dout}_i\hat x_i$."""
    return (sum(gi * xh for gi, xh in zip(G.g, G.xhat())),)


def step_dbeta(G: Graph):
    r"""$\partial l/\partial\beta = \sum_i \text{dout}_i$."""
    return (sum(G.g),)


def step_local_dxhat_dmu(G: Graph):
    r"""$\partial\hat x_i/\partial\mu = -(\sigma^2+\epsilon)^{-1/2}$."""
    return tuple(-G.inverse() for _ in G.x)


def step_local_dxhat_dvar(G: Graph):
    r"""$\partial\hat x_i/\partial\sigma^2 = -\tfrac12(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}$."""
    sp = require_sympy()
    return tuple(-half() * c * (G.sigma2 + G.eps) ** sp.Rational(-3, 2) for c in G.centred())


def step_local_dvar_dmu(G: Graph):
    r"""$\partial\sigma^2/\partial\mu = \frac1m\sum_i -2(x_i-\mu)$."""
    return (sum(-2 * c for c in G.centred()) / G.m,)


def step_local_dvar_dx(G: Graph):
    r"""$\partial\sigma^2/\partial x_i = \frac2m(x_i-\mu)$, mu held fixed."""
    return tuple(2 * c / G.m for c in G.centred())


def step_local_dmu_dx(G: Graph):
    r"""$\partial\mu/\partial x_i = 1/m$."""
    return tuple(1 / require_sympy().Integer(G.m) for _ in G.x)


def step_local_dxhat_dx(G: Graph):
    r"""$\partial\hat x_i/\partial x_i = (\sigma^2+\epsilon)^{-1/2}$, mu and sigma2 held fixed."""
    return tuple(G.inverse() for _ in G.x)


def step_forward_var(G: Graph):
    r"""$\sigma^2 = \frac1m\sum_i(x_i-\mu)^2$, written with x (not xhat)."""
    return (G.variance(),)


def step_inv_sum(G: Graph):
    r"""$\sum_i \partial l/\partial x_i = 0$."""
    return (require_sympy().Integer(0),)


def step_inv_xhat(G: Graph):
    r"""$\sum_i \partial l/\partial x_i\,\hat x_i = \frac{\epsilon}{\sigma^2+\epsilon}\,\text{invstd}\sum_i d\hat x_i\hat x_i$."""
    dxhat, xhat = step_dxhat(G), G.xhat()
    return (G.eps / (G.sigma2 + G.eps) * G.inverse() * sum(d * xh for d, xh in zip(dxhat, xhat)),)


STEPS: tuple[Step, ...] = (
    Step("forward_var", r"\sigma^2 = \frac1m\sum_i (x_i-\mu)^2",
         step_forward_var, _truth_forward_var, False),
    Step("local_dxhat_dmu", r"\partial\hat x_i/\partial\mu = -(\sigma^2+\epsilon)^{-1/2}",
         step_local_dxhat_dmu, _truth_local_dxhat_dmu, True),
    Step("local_dxhat_dvar", r"\partial\hat x_i/\partial\sigma^2 = -\tfrac12(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}",
         step_local_dxhat_dvar, _truth_local_dxhat_dvar, True),
    Step("local_dvar_dmu", r"\partial\sigma^2/\partial\mu = -\frac2m\sum_i(x_i-\mu)",
         step_local_dvar_dmu, _truth_local_dvar_dmu, True),
    Step("local_dxhat_dx", r"\partial\hat x_i/\partial x_i = (\sigma^2+\epsilon)^{-1/2}",
         step_local_dxhat_dx, _truth_local_dxhat_dx, True),
    Step("local_dmu_dx", r"\partial\mu/\partial x_i = 1/m",
         step_local_dmu_dx, _truth_local_dmu_dx, True),
    Step("local_dvar_dx", r"\partial\sigma^2/\partial x_i = \frac2m(x_i-\mu)",
         step_local_dvar_dx, _truth_local_dvar_dx, True),
    Step("dxhat", r"\partial l/\partial\hat x_i = \text{dout}_i\,\gamma",
         step_dxhat, _truth_dxhat, True),
    Step("dvar", r"\partial l/\partial\sigma^2 = -\tfrac12\sum_i d\hat x_i(x_i-\mu)(\sigma^2+\epsilon)^{-3/2}",
         step_dvar, _truth_dvar, True),
    Step("dmu", r"\partial l/\partial\mu = \sum_i d\hat x_i\frac{-1}{\sqrt{\sigma^2+\epsilon}} + d\sigma^2\cdot\frac{-2}{m}\sum_i(x_i-\mu)",
         step_dmu, _truth_dmu, False),
    Step("dmu_simplified", r"\partial l/\partial\mu = -\sum_i d\hat x_i/\sqrt{\sigma^2+\epsilon}",
         step_dmu_simplified, _truth_dmu, False),
    Step("dx", r"\partial l/\partial x_i = d\hat x_i\,\text{invstd} + d\sigma^2\frac{2(x_i-\mu)}{m} + \frac{d\mu}{m}",
         step_dx, _truth_dx, False),
    Step("dx_closed", r"\partial l/\partial x_i = \frac{\text{invstd}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j]",
         step_dx_closed, _truth_dx, False),
    Step("dgamma", r"\partial l/\partial\gamma = \sum_i \text{dout}_i\hat x_i",
         step_dgamma, _truth_dgamma, False),
    Step("dbeta", r"\partial l/\partial\beta = \sum_i \text{dout}_i",
         step_dbeta, _truth_dbeta, False),
    Step("inv_sum", r"\sum_i \partial l/\partial x_i = 0",
         step_inv_sum, _truth_inv_sum, False),
    Step("inv_xhat", r"\sum_i \partial l/\partial x_i\,\hat x_i = \frac{\epsilon}{\sigma^2+\epsilon}\text{invstd}\sum_i d\hat x_i\hat x_i",
         step_inv_xhat, _truth_inv_xhat, False),
)


def _exact_gradients(G: Graph) -> tuple[tuple, tuple, tuple]:
    """(dx, dgamma, dbeta) of the full loss: what the library must compute."""
    return _truth_dx(G), _truth_dgamma(G), _truth_dbeta(G)


def _library_backward(x, dout, gamma, beta, eps):
    """The library's closed form on one feature: batchnorm_forward/backward on (m, 1), NumPy backend."""
    _, cache = norms.batchnorm_forward(x[:, None], np.array([gamma]), np.array([beta]), eps, backend="numpy")
    dx, dgamma, dbeta = norms.batchnorm_backward(dout[:, None], cache)
    return dx[:, 0], dgamma, dbeta


DERIVATION = Derivation("batchnorm", forward_graph, STEPS, _exact_gradients, _library_backward)

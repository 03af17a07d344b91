"""Batch renormalization's derivation (docs/derivation.md, "Batch renormalization").

The forward graph is batch norm's with the affine node replaced by
``y_i = gamma*(r*xhat_i + d) + beta``, where r and d are constants of the
backward (stop-gradient): symbols of their own that do not depend on x.
The steps show that this is batch norm with the affine (gamma*r,
gamma*d + beta), so that the closed form carries over with gamma*r, and
what dgamma becomes; the last step shows what the stop-gradient is for.
Ground truth is again SymPy's derivative of ``l = sum_i g_i * y_i``.
``DERIVATION`` is registered under "batchrenorm".
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from ..layers import RunningStats
from ..renorm import BatchRenorm
from .batchnorm import closed_form_dx
from .graph import Graph, forward_graph, require_sympy
from .steps import Derivation, Step


@dataclasses.dataclass(frozen=True)
class RenormGraph(Graph):
    """Batch norm's graph with the renorm affine; r, d are the stop-gradient constants.

    mu_run, sigma_run: the running statistics, used only by the step that
    lets r and d depend on x (``renorm_no_stop_gradient``).
    """

    r: Any = None
    d: Any = None
    mu_run: Any = None
    sigma_run: Any = None

    def affine(self, xhat):
        """y_i = gamma*(r*xhat_i + d) + beta."""
        return tuple(self.gamma * (self.r * xh + self.d) + self.beta for xh in xhat)

    def constants(self) -> tuple:
        return (self.r, self.d, self.mu_run, self.sigma_run)


@functools.lru_cache(maxsize=None)
def renorm_graph(m: int) -> RenormGraph:
    """The symbolic batch-renorm graph for batch size m >= 2."""
    sp = require_sympy()
    base = forward_graph(m)
    return RenormGraph(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                       r=sp.Symbol("r", positive=True), d=sp.Symbol("d", real=True),
                       mu_run=sp.Symbol("mu_run", real=True), sigma_run=sp.Symbol("sigma_run", positive=True))


# ----------------------------------------------------------------------------- ground truth

def _diff_full_loss(G: RenormGraph, wrt) -> tuple:
    sp = require_sympy()
    l = G.full_loss()
    return tuple(sp.diff(l, v) for v in wrt)


def _truth_output(G: RenormGraph):
    """The renorm node as the graph defines it, on the normalized node symbols."""
    return G.affine(G.xhat_node)


def _truth_dxhat(G: RenormGraph):
    sp = require_sympy()
    l = G.loss(G.xhat_node)
    return tuple(sp.diff(l, xh) for xh in G.xhat_node)


def _truth_dx(G: RenormGraph):
    """dl/dx_i with r and d held constant: the gradient batch renorm's backward computes."""
    return _diff_full_loss(G, G.x)


def _truth_dgamma(G: RenormGraph):
    return _diff_full_loss(G, (G.gamma,))


def _truth_dbeta(G: RenormGraph):
    return _diff_full_loss(G, (G.beta,))


def _truth_dx_through_r_d(G: RenormGraph):
    """dl/dx_i when r = sigma_B/sigma and d = (mu_B - mu)/sigma are functions of x (no clipping, no stop-gradient)."""
    sp = require_sympy()
    mean = G.mean()
    var = G.variance(mean)
    sigma_b = G.sqrt(var)
    through = {G.r: sigma_b / G.sigma_run, G.d: (mean - G.mu_run) / G.sigma_run}
    l = sum(gi * yi.subs(through, simultaneous=True) for gi, yi in zip(G.g, G.affine(G.xhat(mean, var))))
    return tuple(sp.diff(l, xi) for xi in G.x)


# ----------------------------------------------------------------------------- the steps

def step_affine(G: RenormGraph):
    r"""$y_i = (\gamma r)\,\hat x_i + (\gamma d + \beta)$: batch norm with an effective affine."""
    return tuple((G.gamma * G.r) * xh + (G.gamma * G.d + G.beta) for xh in G.xhat_node)


def step_dxhat(G: RenormGraph):
    r"""$\partial l/\partial\hat x_i = \text{dout}_i\,\gamma r$."""
    return tuple(gi * G.gamma * G.r for gi in G.g)


def step_dx_closed(G: RenormGraph):
    r"""Batch norm's closed form with $d\hat x_i = \text{dout}_i\,\gamma r$."""
    return closed_form_dx(G, step_dxhat(G))


def step_dgamma(G: RenormGraph):
    r"""$\partial l/\partial\gamma = r\sum_i \text{dout}_i\hat x_i + d\sum_i \text{dout}_i$."""
    return (G.r * sum(gi * xh for gi, xh in zip(G.g, G.xhat())) + G.d * sum(G.g),)


def step_dbeta(G: RenormGraph):
    r"""$\partial l/\partial\beta = \sum_i \text{dout}_i$."""
    return (sum(G.g),)


def step_no_stop_gradient(G: RenormGraph):
    r"""Without the stop-gradient: $\partial l/\partial x_i = \text{dout}_i\,\gamma/\sigma$, the inference form's gradient."""
    return tuple(gi * G.gamma / G.sigma_run for gi in G.g)


STEPS: tuple[Step, ...] = (
    Step("renorm_affine", r"y_i = (\gamma r)\hat x_i + (\gamma d + \beta)", step_affine, _truth_output, True),
    Step("renorm_dxhat", r"\partial l/\partial\hat x_i = \text{dout}_i\,\gamma r", step_dxhat, _truth_dxhat, True),
    Step("renorm_dx_closed",
         r"\partial l/\partial x_i = \frac{\text{invstd}}{m}[m\,d\hat x_i - \sum_j d\hat x_j - \hat x_i\sum_j d\hat x_j\hat x_j],"
         r"\ d\hat x_i = \text{dout}_i\gamma r", step_dx_closed, _truth_dx, False),
    Step("renorm_dgamma", r"\partial l/\partial\gamma = r\sum_i \text{dout}_i\hat x_i + d\sum_i \text{dout}_i",
         step_dgamma, _truth_dgamma, False),
    Step("renorm_dbeta", r"\partial l/\partial\beta = \sum_i \text{dout}_i", step_dbeta, _truth_dbeta, False),
    Step("renorm_no_stop_gradient", r"\partial l/\partial x_i = \text{dout}_i\,\gamma/\sigma",
         step_no_stop_gradient, _truth_dx_through_r_d, False),
)


def _exact_gradients(G: RenormGraph):
    """(dx, dgamma, dbeta) of the renorm loss with r, d constant: what BatchRenorm's backward must compute."""
    return _truth_dx(G), _truth_dgamma(G), _truth_dbeta(G)


def _library_backward(x, dout, gamma, beta, eps, r, d, *_running):
    """BatchRenorm.apply/apply_backward on one feature (NumPy backend), with running statistics chosen so that
    the layer's r and d are the given ones (limits far outside, so nothing is clipped)."""
    layer = BatchRenorm(1, eps, rmax=1e6, dmax=1e6, affine=True, backend="numpy")
    batch_std = np.sqrt(x.var() + eps)
    running = RunningStats(1)
    std = batch_std / r                          # r = batch_std / std
    running.mean = np.array([x.mean() - d * std])  # d = (mean - running_mean) / std
    running.var = np.array([std * std - eps])
    _, cache, _ = layer.apply(x[:, None], np.array([gamma]), np.array([beta]), running, training=True)
    dx, dgamma, dbeta = layer.apply_backward(dout[:, None], cache)
    return dx[:, 0], dgamma, dbeta


DERIVATION = Derivation("batchrenorm", renorm_graph, STEPS, _exact_gradients, _library_backward,
                        prefix="batchrenorm: ")

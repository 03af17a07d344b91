"""Invariants of the closed form and identities between the norms."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import normlab
from normlab.gradcheck import rel_error

from _norms import NORMS, group_view, params, reduce_sum


def _xhat_and_stats(name, x, cache):
    """x̂ and per-statistic invstd/var broadcastable against x."""
    if name == "groupnorm":
        n = x.shape[0]
        mean = cache.mean.reshape(n, -1, 1)
        invstd = cache.invstd.reshape(n, -1, 1)
        var = cache.var.reshape(n, -1, 1)
        xhat = (group_view(x) - mean) * invstd
        return xhat, invstd, var, group_view
    axes = NORMS[name][3]
    keep = [1] * x.ndim
    for a in range(x.ndim):
        if a not in axes:
            keep[a] = x.shape[a]
    mean, invstd, var = (v.reshape(keep) for v in (cache.mean, cache.invstd, cache.var))
    return (x - mean) * invstd, invstd, var, lambda a: a


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_sum_dx_is_zero_and_sum_dx_xhat_is_eps_term(name, eps, backend, rng):
    forward, shape, c, _ = NORMS[name]
    x = rng.normal(2.0, 1.5, shape)
    gamma, beta = params(rng, c)
    out, cache = forward(x, gamma, beta, eps=eps, backend=backend)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = normlab.normalize_backward(dout, cache)
    xhat, invstd, var, view = _xhat_and_stats(name, x, cache)
    dxhat = dout * (gamma.reshape(1, -1, *([1] * (x.ndim - 2))) if x.ndim > 2 or name == "batchnorm"
                    else gamma.reshape(1, -1))
    scale = np.abs(dx).max()
    # Σ dx = 0 per statistic
    assert np.abs(reduce_sum(name, dx)).max() < 1e-13 * scale * dx.size
    # Σ dx·x̂ = ε/(σ²+ε) · invstd · Σ dx̂·x̂ per statistic
    lhs = view(dx) * xhat
    rhs = view(dxhat) * xhat
    axis = -1 if name == "groupnorm" else NORMS[name][3]
    lhs = lhs.sum(axis=axis, keepdims=True)
    rhs = (eps / (var + eps)) * invstd * rhs.sum(axis=axis, keepdims=True)
    assert np.allclose(lhs, rhs, rtol=1e-9, atol=1e-12 * scale * dx.size)
    assert np.abs(rhs).max() > 1e-6 * scale  # the eps term is not trivially zero here


def test_sum_dx_xhat_is_zero_when_eps_is_zero(rng):
    x = rng.normal(size=(9, 4))
    gamma, beta = params(rng, 4)
    out, cache = normlab.batchnorm_forward(x, gamma, beta, mean=None, var=None, eps=1e-300)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = normlab.normalize_backward(dout, cache)
    xhat = (x - cache.mean) * cache.invstd
    assert np.abs((dx * xhat).sum(axis=0)).max() < 1e-12 * np.abs(dx).max() * x.shape[0]


def test_group_norm_with_one_group_is_layer_norm_over_chw(backend, rng):
    x = rng.normal(1.0, 2.0, (3, 4, 2, 5))
    gamma, beta = params(rng, 4)
    out_g, cache_g = normlab.groupnorm_forward(x, gamma, beta, 1, backend=backend)
    gamma_l = np.broadcast_to(gamma[:, None, None], (4, 2, 5)).copy()
    beta_l = np.broadcast_to(beta[:, None, None], (4, 2, 5)).copy()
    out_l, cache_l = normlab.layernorm_forward(x, gamma_l, beta_l, backend=backend)
    assert rel_error(out_g, out_l) < 1e-13
    dout = rng.standard_normal(x.shape)
    dx_g, dg_g, db_g = normlab.groupnorm_backward(dout, cache_g)
    dx_l, dg_l, db_l = normlab.layernorm_backward(dout, cache_l)
    assert rel_error(dx_g, dx_l) < 1e-13
    assert rel_error(dg_g, dg_l.sum(axis=(1, 2))) < 1e-13
    assert rel_error(db_g, db_l.sum(axis=(1, 2))) < 1e-13


def test_spatial_batchnorm_is_batchnorm_on_the_nhw_by_c_view(backend, rng):
    x = rng.normal(-1.0, 3.0, (4, 3, 2, 5))
    gamma, beta = params(rng, 3)
    out_s, cache_s = normlab.spatial_batchnorm_forward(x, gamma, beta, backend=backend)
    flat = x.transpose(0, 2, 3, 1).reshape(-1, 3)
    out_b, cache_b = normlab.batchnorm_forward(flat, gamma, beta, backend=backend)
    assert rel_error(out_s.transpose(0, 2, 3, 1).reshape(-1, 3), out_b) < 1e-13
    dout = rng.standard_normal(x.shape)
    dx_s, dg_s, db_s = normlab.spatial_batchnorm_backward(dout, cache_s)
    dx_b, dg_b, db_b = normlab.normalize_backward(dout.transpose(0, 2, 3, 1).reshape(-1, 3), cache_b)
    assert rel_error(dx_s.transpose(0, 2, 3, 1).reshape(-1, 3), dx_b) < 1e-13
    assert rel_error(dg_s, dg_b) < 1e-13 and rel_error(db_s, db_b) < 1e-13


shapes_2d = st.tuples(st.integers(2, 12), st.integers(1, 7))
shapes_4d = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))


@pytest.mark.parametrize("backend", normlab.available_backends())
@settings(max_examples=40, deadline=None)
@given(shape=shapes_2d, scale=st.floats(1e-3, 1e3), offset=st.floats(-1e4, 1e4), seed=st.integers(0, 2**32 - 1))
@example(shape=(2, 2), scale=0.001, offset=8192.0, seed=1)  # |x|/σ ~ 1e7: tolerances must scale with it
def test_property_batchnorm_standardizes_and_closed_form_equals_graph(backend, shape, scale, offset, seed):
    rng = np.random.default_rng(seed)
    x = offset + scale * rng.standard_normal(shape)
    out, cache = normlab.batchnorm_forward(x, None, None, eps=1e-12 * scale**2, backend=backend)
    # The conditioning |x|/σ: rounding x - μ costs eps·|x| before scaling by invstd.
    kappa = 1.0 + np.abs(x).max() * cache.invstd.max()
    atol = 64 * np.finfo(np.float64).eps * kappa
    assert np.allclose(out.mean(axis=0), 0, atol=atol)
    assert np.allclose(out.var(axis=0), 1, atol=max(1e-5, 4 * atol))
    dout = rng.standard_normal(shape)
    dx, _, _ = normlab.normalize_backward(dout, cache)
    dx_graph, _, _ = normlab.batchnorm_backward_graph(dout, cache)
    # Measured against invstd·|dout|, the size of each term (at m = 2 dx itself is ~0).
    scale_dx = np.abs(dout).max() * cache.invstd.max()
    tol = atol * scale_dx * shape[0]
    assert np.abs(dx - dx_graph).max() < tol
    assert np.abs(dx.sum(axis=0)).max() <= tol


@pytest.mark.parametrize("backend", normlab.available_backends())
@settings(max_examples=40, deadline=None)
@given(shape=shapes_4d, groups=st.sampled_from([1, 2]), scale=st.floats(1e-2, 1e2),
       offset=st.floats(-1e3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_property_all_norms_standardize_and_sum_dx_is_zero(backend, shape, groups, scale, offset, seed):
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    c = c * groups
    x = offset + scale * rng.standard_normal((n, c, h, w))
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    cases = []
    if n * h * w > 1:
        cases.append((normlab.spatial_batchnorm_forward(x, gamma, beta, eps=1e-10, backend=backend),
                      lambda a: a.transpose(1, 0, 2, 3).reshape(c, -1)))
    if (c // groups) * h * w > 1:
        cases.append((normlab.groupnorm_forward(x, gamma, beta, groups, eps=1e-10, backend=backend),
                      lambda a: a.reshape(n, groups, -1).reshape(n * groups, -1)))
    for (out, cache), rows in cases:
        dout = rng.standard_normal(x.shape)
        dx, dgamma, dbeta = normlab.normalize_backward(dout, cache)
        mean, var, invstd = (v.reshape(-1, 1) for v in (cache.mean, cache.var, cache.invstd))
        xhat = (rows(x) - mean) * invstd
        # Rounding x - μ costs eps·|x|, magnified by invstd: the conditioning |x|/σ.
        kappa = 1.0 + np.abs(x).max() * invstd.max()
        tol = 64 * np.finfo(np.float64).eps * kappa
        assert np.abs(xhat.mean(axis=1)).max() <= tol
        assert np.allclose(xhat.var(axis=1), (var / (var + 1e-10)).ravel(), rtol=0, atol=tol)
        assert np.abs(rows(dx).sum(axis=1)).max() <= tol * np.abs(dout).max() * invstd.max() * x.size
        assert rel_error(dbeta, dout.sum(axis=(0, 2, 3))) < 1e-12
        # The forward output itself: out = gamma*xhat + beta, channel by channel.
        g_rows = rows(np.broadcast_to(gamma[None, :, None, None], x.shape))
        b_rows = rows(np.broadcast_to(beta[None, :, None, None], x.shape))
        assert np.allclose(rows(out), g_rows * xhat + b_rows, rtol=0,
                           atol=tol * (np.abs(gamma).max() + np.abs(beta).max()))

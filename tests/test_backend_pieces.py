"""The backward split into its passes (moments, grad_sums, grad_apply): each backend
agrees with the NumPy reference, and composing them gives the fused backward."""

import numpy as np
import pytest

import normlab
from normlab import core
from normlab.backends import get_backend, numpy_backend
from normlab.norms import batch_layout

# Odd shapes for each loop shape of the fused backend, and the smallest batch (N*L = 2).
SHAPES = [(37, 11), (2, 3), (1, 3, 2), (5, 3, 3, 5), (3, 4, 7, 9), (2, 3, 40)]


def _forward(x, gamma, beta, backend, **stats):
    """Batch-statistics forward of x (N, C, *) through the core (batch norm for 2-d, spatial beyond)."""
    return core.normalize_forward(x, gamma, beta, batch_layout(x.shape), 1e-5, backend=backend, **stats)


def _assert_dx_close(a, b, dout, cache, tol=1e-12):
    """|a - b| small against the size of the direct term gamma*invstd*dy: with N*L = 2 the true dx
    is 0 and both are rounding noise, so a relative error of the two would mean nothing."""
    gamma = 1.0 if cache.gamma is None else cache.gamma
    shape = (1, -1) + (1,) * (dout.ndim - 2)
    scale = np.abs(dout * (np.reshape(gamma, shape) * cache.invstd.reshape(shape))).max()
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * scale


def _data(rng, shape, offset=0.0):
    x = rng.standard_normal(shape) * 3.0 + offset
    dout = rng.standard_normal(shape)
    gamma = rng.standard_normal(shape[1])
    beta = rng.standard_normal(shape[1])
    return x, dout, gamma, beta


@pytest.mark.parametrize("shape", SHAPES)
def test_moments_match_the_reference_and_the_forward(backend, rng, shape):
    x, _, gamma, beta = _data(rng, shape, offset=1e3)  # far from zero: no cancellation allowed
    layout = batch_layout(x.shape)
    mean, var = core.moments(x, layout, backend)
    ref_mean, ref_var = numpy_backend.moments(x.reshape(layout.view), True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-13, atol=0)
    np.testing.assert_allclose(var, ref_var, rtol=1e-10, atol=0)
    np.testing.assert_allclose(var, x.swapaxes(0, 1).reshape(shape[1], -1).var(axis=1), rtol=1e-10)
    _, cache = _forward(x, gamma, beta, backend)
    np.testing.assert_allclose(mean, cache.mean, rtol=1e-13)
    np.testing.assert_allclose(var, cache.var, rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_pieces_compose_to_the_fused_backward(backend, rng, shape):
    x, dout, gamma, beta = _data(rng, shape)
    _, cache = _forward(x, gamma, beta, backend)
    x3, dout3 = cache.x, dout.reshape(cache.x.shape)
    dx, dgamma, dbeta = core.normalize_backward(dout3, cache)

    sum_dy, sum_dy_xhat = core.gradient_sums(dout3, cache)
    impl, layout = get_backend(backend), cache.layout
    ref = numpy_backend.grad_sums(dout3.reshape(layout.view), x3.reshape(layout.view), cache.mean, cache.invstd, True)
    np.testing.assert_allclose(sum_dy, ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sum_dy_xhat, ref[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sum_dy, dbeta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sum_dy_xhat, dgamma, rtol=1e-12, atol=1e-12)

    composed = core.apply_gradient(dout3, cache, (sum_dy, sum_dy_xhat), layout.count)
    assert composed.shape == x3.shape and composed.dtype == x3.dtype
    _assert_dx_close(composed, dx, dout3, cache)
    direct = impl.grad_apply(dout3.reshape(layout.view), x3.reshape(layout.view), gamma, cache.mean, cache.invstd,
                             sum_dy, sum_dy_xhat, layout.count, True)
    reference = numpy_backend.grad_apply(dout3.reshape(layout.view), x3.reshape(layout.view), gamma, cache.mean,
                                         cache.invstd, ref[0], ref[1], layout.count, True)
    _assert_dx_close(direct.reshape(x3.shape), reference.reshape(x3.shape), dout3, cache)


def test_apply_uses_the_count_and_sums_it_is_given(backend, rng):
    """Sums over a larger (global) batch with its count: dx of each part equals dx of the whole."""
    x, dout, gamma, beta = _data(rng, (9, 4, 6))
    _, whole = _forward(x, gamma, beta, backend)
    dx_whole, _, _ = core.normalize_backward(dout, whole)
    sums = core.gradient_sums(dout, whole)
    for part in (slice(0, 4), slice(4, 9)):
        _, cache = _forward(x[part], gamma, beta, backend, mean=whole.mean, var=whole.var)
        local = core.gradient_sums(dout[part], cache)
        np.testing.assert_array_less(0, np.abs(np.asarray(sums) - np.asarray(local)).max())
        dx = core.apply_gradient(dout[part], cache, sums, whole.layout.count)
        _assert_dx_close(dx, dx_whole[part], dout[part], cache)


def test_apply_without_gamma_and_into_out(backend, rng):
    x, dout, _, _ = _data(rng, (6, 5, 4))
    _, cache = _forward(x, None, None, backend)
    dx, _, _ = core.normalize_backward(dout, cache)
    out = np.empty_like(x)
    got = core.apply_gradient(dout, cache, core.gradient_sums(dout, cache), cache.layout.count, out=out)
    assert got is out
    _assert_dx_close(out, dx, dout, cache)


def test_float32_pieces_return_float64_sums_and_float32_dx(backend, rng):
    x, dout, gamma, beta = (a.astype(np.float32) for a in _data(rng, (8, 3, 5, 5)))
    _, cache = normlab.spatial_batchnorm_forward(x, gamma, beta, backend=backend)
    sums = core.gradient_sums(dout, cache)
    assert all(s.dtype == np.float64 and s.shape == (3,) for s in sums)
    dx = core.apply_gradient(dout, cache, sums, cache.layout.count)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, core.normalize_backward(dout, cache)[0], rtol=1e-4, atol=1e-5)


def test_pieces_reject_per_sample_statistics_and_bad_dout(backend, rng):
    x = rng.standard_normal((4, 6))
    _, cache = normlab.layernorm_forward(x, np.ones(6), np.zeros(6), backend=backend)
    with pytest.raises(ValueError, match="batch statistics"):
        core.gradient_sums(x, cache)
    _, cache = normlab.batchnorm_forward(x, np.ones(6), np.zeros(6), backend=backend)
    with pytest.raises(ValueError, match="dout"):
        core.gradient_sums(np.ones((4, 5)), cache)
    with pytest.raises(TypeError, match="cache"):
        core.apply_gradient(x, object(), (np.zeros(6), np.zeros(6)), 4)

"""Statistics stay accurate far from zero; dtypes follow the input."""

import numpy as np
import pytest

import normlab

from _norms import NORMS, params

CASES = {
    "batchnorm (4096, 16)": (lambda x, **kw: normlab.batchnorm_forward(x, None, None, **kw), (4096, 16)),
    "spatial (16, 8, 16, 16)": (lambda x, **kw: normlab.spatial_batchnorm_forward(x, None, None, **kw),
                                (16, 8, 16, 16)),
    "layernorm (16, 2048)": (lambda x, **kw: normlab.layernorm_forward(x, None, None, **kw), (16, 2048)),
    "groupnorm (16, 8, 16, 16)": (lambda x, **kw: normlab.groupnorm_forward(x, None, None, 4, **kw),
                                  (16, 8, 16, 16)),
}


@pytest.mark.parametrize("case", CASES)
def test_float32_far_from_zero(case, backend):
    """x = 1e6 + N(0, 1) in float32: the spacing of float32 at 1e6 is 0.0625, so a
    naive E[x²] - E[x]² in float32 is useless; the bar is 0.05 against float64."""
    forward, shape = CASES[case]
    x = (1e6 + np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    out, _ = forward(x, backend=backend)
    reference, _ = forward(x.astype(np.float64), backend="numpy")
    assert out.dtype == np.float32
    assert np.abs(out - reference).max() <= 0.05


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", NORMS)
def test_output_and_gradient_dtypes_follow_the_input(name, dtype, backend, rng):
    forward, shape, c, _ = NORMS[name]
    x = rng.normal(size=shape).astype(dtype)
    gamma, beta = params(rng, c, dtype)
    out, cache = forward(x, gamma, beta, backend=backend)
    dx, dgamma, dbeta = normlab.normalize_backward(rng.normal(size=shape).astype(dtype), cache)
    assert out.dtype == dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    reference, _ = forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), backend="numpy")
    assert np.abs(out - reference).max() <= 4 * np.finfo(dtype).eps * (np.abs(reference).max() + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_feature_gives_beta_not_nan(dtype, backend):
    x = np.full((8, 3), 7.25, dtype=dtype)
    x[:, 1] = np.arange(8)
    gamma, beta = np.array([2.0, 1.0, 3.0], dtype), np.array([0.5, 0.0, -1.0], dtype)
    out, cache = normlab.batchnorm_forward(x, gamma, beta, backend=backend)
    assert np.all(cache.var >= 0) and cache.var[0] == 0 and cache.var[2] == 0
    assert np.all(out[:, 0] == dtype(0.5)) and np.all(out[:, 2] == dtype(-1.0))
    dx, _, _ = normlab.normalize_backward(np.random.default_rng(0).normal(size=x.shape).astype(dtype), cache)
    assert np.all(np.isfinite(dx))


def test_statistics_are_float64_for_float32_input(backend):
    x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    _, cache = normlab.batchnorm_forward(x, None, None, backend=backend)
    assert cache.mean.dtype == cache.var.dtype == cache.invstd.dtype == np.float64
    assert np.allclose(cache.mean, x.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(cache.var, x.astype(np.float64).var(axis=0), rtol=1e-12)


def test_naive_float32_statistics_would_fail_the_bar():
    """The 1e6-offset bar is a real bar: one-pass E[x²] - E[x]² in float32 misses it."""
    x = (1e6 + np.random.default_rng(0).standard_normal((4096, 16))).astype(np.float32)
    mean = x.mean(axis=0, dtype=np.float32)
    var = np.maximum((x * x).mean(axis=0, dtype=np.float32) - mean * mean, 0)
    naive = (x - mean) / np.sqrt(var + np.float32(1e-5))
    reference, _ = normlab.batchnorm_forward(x.astype(np.float64), None, None, backend="numpy")
    assert np.abs(naive - reference).max() > 0.05

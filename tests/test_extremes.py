"""Extreme values against a long-double reference: finite answers come out finite and right, on every backend.

Values at ±float32 max, 1e±300, subnormals, zeros and constant statistics,
mixed with ordinary ones, through every norm, forward and backward. The
reference computes in np.longdouble (80-bit on x86: range to 1e4932, so
the squares of 1e300 fit); where the true variance lies beyond float64's
range the library must raise an error that says overflow.
"""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import normlab
from normlab import core

F32MAX = float(np.finfo(np.float32).max)
F64MAX = float(np.finfo(np.float64).max)
LONG = np.longdouble
pytestmark = pytest.mark.skipif(np.finfo(LONG).maxexp <= 1024, reason="needs an 80-bit or wider long double")

# name -> (forward(x, gamma, beta, backend) -> (out, cache), shape, parameter length)
NORMS = {
    "batch": (lambda x, g, b, be: normlab.batchnorm_forward(x, g, b, backend=be), (5, 3), 3),
    "spatial": (lambda x, g, b, be: normlab.spatial_batchnorm_forward(x, g, b, backend=be), (2, 2, 2, 3), 2),
    "layer": (lambda x, g, b, be: normlab.layernorm_forward(x, g, b, backend=be), (3, 5), 5),
    "group": (lambda x, g, b, be: normlab.groupnorm_forward(x, g, b, 2, backend=be), (2, 4, 3), 4),
    "instance": (lambda x, g, b, be: normlab.instancenorm_forward(x, g, b, backend=be), (2, 3, 4), 3),
    "rms": (lambda x, g, b, be: normlab.rmsnorm_forward(x, g, b, backend=be), (3, 5), 5),
}
EXTREMES = {
    np.float32: [F32MAX, -F32MAX, 1e38, -3e37, 1e-38, 1e-45, -1e-45, 1e-40, 0.0],
    np.float64: [F64MAX, -F64MAX, 1e300, -1e300, 1e154, -1e154, 1e-300, 5e-324, -5e-324, 1e-310, 0.0],
}
ORDINARY = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


def reference(x, gamma, beta, cache, dout, stats=None):
    """(out, dx, var) in long double, from x's layout (only the view; the arithmetic is independent).

    stats: (mean, var) to use instead of x's exact ones (a backend's float64 statistics: the exact result of
    forming every output from them, which is what "float64 arithmetic, rounded once" rounds)."""
    layout = cache.layout
    x4 = x.astype(LONG).reshape(layout.view)
    axes = (0, 2, 3) if layout.batch_stats else (2, 3)
    mean = x4.mean(axis=axes, keepdims=True) if layout.center else np.zeros_like(x4[:1, :1, :1, :1])
    var = np.square(x4 - mean).mean(axis=axes, keepdims=True)
    if stats is not None:
        mean, var = (np.asarray(s, LONG).reshape(var.shape) for s in stats)
    invstd = 1 / np.sqrt(var + LONG(cache.eps))
    xhat = (x4 - mean) * invstd
    g4 = gamma.astype(LONG).reshape(1, layout.view[1], layout.view[2], 1)
    out = xhat * g4 + beta.astype(LONG).reshape(g4.shape)
    dxhat = dout.astype(LONG).reshape(layout.view) * g4
    m = layout.count
    centred = dxhat - dxhat.mean(axis=axes, keepdims=True) if layout.center else dxhat
    dx = invstd * (centred - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    bound = invstd * np.abs(dxhat).max(axis=axes, keepdims=True) * (1 + np.square(xhat).max(axis=axes, keepdims=True))
    return (out.reshape(x.shape), dx.reshape(x.shape), var, np.broadcast_to(bound, x4.shape).reshape(x.shape), m)


@st.composite
def extreme_case(draw):
    name = draw(st.sampled_from(sorted(NORMS)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    _, shape, c = NORMS[name]
    size = int(np.prod(shape))
    value = st.one_of(st.sampled_from(EXTREMES[dtype]), ORDINARY)
    if draw(st.booleans()):
        values = draw(st.lists(value, min_size=size, max_size=size))
    else:  # a constant input, or one extreme value in ordinary ones
        values = [draw(value)] * size
        values[draw(st.integers(0, size - 1))] = draw(value)
    x = np.array(values, dtype=dtype).reshape(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gamma, beta = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    return name, x, gamma, beta, rng.normal(size=shape).astype(dtype)


def _check(backend, name, x, gamma, beta, dout):
    forward = NORMS[name][0]
    _, ref_cache = forward(np.ones(x.shape, x.dtype), gamma, beta, "numpy")  # the layout and eps only
    out_ref, dx_ref, var_ref, bound, m = reference(x, gamma, beta, ref_cache, dout)
    if np.any(var_ref > F64MAX):
        with pytest.raises(ValueError, match="overflows float64"):
            forward(x, gamma, beta, backend)
        return
    out, cache = forward(x, gamma, beta, backend)
    dx, _, _ = normlab.normalize_backward(dout, cache)
    assert out.dtype == dx.dtype == x.dtype
    rounding = np.finfo(x.dtype).eps  # one rounding of the float64 result to x's dtype
    tiny = 2 * np.finfo(x.dtype).smallest_subnormal
    out_err = np.abs(out.astype(LONG) - out_ref)
    assert np.all(out_err <= rounding * np.abs(out_ref) + 1e-12 * (1 + np.abs(out_ref)) + tiny), (out, out_ref)
    dx_err = np.abs(dx.astype(LONG) - dx_ref)
    assert np.all(dx_err <= rounding * np.abs(dx_ref) + 1e-12 * m * bound + tiny), (dx, dx_ref)


@pytest.mark.parametrize("backend", normlab.available_backends())
@settings(max_examples=250, deadline=None)
@given(extreme_case())
@example(("batch", np.array([[F32MAX]] * 3 + [[-F32MAX]], np.float32), np.ones(1, np.float32),
          np.zeros(1, np.float32), np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)))
def test_extremes_against_long_double(backend, case):
    _check(backend, *case)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_float32_max_gives_the_finite_answer(backend, name):
    """The issue's example on every norm: [f32max, f32max, f32max, -f32max] per statistic -> ±√3 pattern."""
    forward, shape, c = NORMS[name]
    size = int(np.prod(shape))
    x = np.full(shape, F32MAX, np.float32)
    flat = x.reshape(-1)
    flat[::4] = -F32MAX
    out, _ = forward(x, np.ones(c, np.float32), np.zeros(c, np.float32), backend)
    ref, _ = forward(x.astype(np.float64), np.ones(c), np.zeros(c), "numpy")
    assert np.all(np.isfinite(out)) and size == out.size
    np.testing.assert_allclose(out, ref, rtol=2e-7, atol=0)


@pytest.mark.parametrize("scale, overflows", [(1e200, True), (1e160, True), (1e153, False), (1e-300, False)])
def test_huge_finite_input_is_computed_scaled_or_said_to_overflow(backend, scale, overflows):
    x = scale * np.random.default_rng(0).normal(size=(8, 3))
    if overflows:
        with pytest.raises(ValueError, match=r"variance of x \(shape \(8, 3\).*overflows float64 in 3 of 3"):
            normlab.batchnorm_forward(x, None, None, backend=backend)
        return
    out, _ = normlab.batchnorm_forward(x, None, None, backend=backend)
    y = x.astype(LONG)
    ref = (y - y.mean(0)) / np.sqrt(np.square(y - y.mean(0)).mean(0) + LONG(1e-5))
    np.testing.assert_allclose(out, ref.astype(np.float64), rtol=1e-12, atol=1e-300)


def test_moments_of_huge_finite_input_are_scaled(backend):
    x = np.array([[F64MAX], [F64MAX], [F64MAX / 2]])
    mean, var = core.moments(x, normlab.norms.batch_layout(x.shape), backend)
    y = x.astype(LONG)
    assert mean[0] == pytest.approx(float(y.mean()), rel=1e-15)
    assert var[0] == pytest.approx(float(np.square(y - y.mean()).mean()), rel=1e-14)

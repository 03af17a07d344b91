"""The float32 lanes of the Numba backend (``backends/_numba_lanes``) keep the float64 path's promises.

Every kernel that writes float32 output in float32 arithmetic, serial and parallel twin: batch norm on (N, C)
(the columns kernels), spatial batch norm on short inputs (the channels kernels) and group norm with runs of 32
values or more (the fused rows, a gamma per run). On each: the extremes test's criterion (|error| <= eps*|v| +
1e-12*scale) on ordinary and offset data, the README's 1e6-offset bound (a float32 result within half an ulp of
the float64 one), the [f32max, f32max, f32max, -f32max] pattern, and given statistics rounded once as before.

The criterion is taken against the exact result of the backend's own float64 statistics (``reference(...,
stats=)``): what "float64 arithmetic, rounded once" rounds. Against x's exact statistics no float64 path meets it
at offsets: at x = 1e6 + N(0, 1) the mean alone is off by up to 2**-53 * 1e6 ~ 1e-10, and an output near zero
(|y| ~ 5e-4, seed 164 below) then lies 1.3 eps*|y| from the exact value on the float64 kernels and the NumPy
backend alike, each the once-rounded value of its float64 computation. The statistics' own accuracy is
``tests/test_extremes.py``'s to hold.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extremes import reference

import normlab

pytest.importorskip("numba")
from normlab.backends import _numba_lanes as lanes  # noqa: E402
from normlab.backends import numba_backend  # noqa: E402

F32MAX = float(np.finfo(np.float32).max)
LONG = np.longdouble


def _gn(groups):
    return lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, groups, **kw)


# name -> (forward, x shape, parameter length, the plan kind that serves it)
PATHS = {
    "columns-serial": (normlab.batchnorm_forward, (64, 37), 37, "columns"),
    "columns-parallel": (normlab.batchnorm_forward, (2048, 24), 24, "columns"),
    "channels-serial": (normlab.spatial_batchnorm_forward, (4, 6, 8, 9), 6, "channels"),
    "channels-parallel": (normlab.spatial_batchnorm_forward, (16, 8, 16, 16), 8, "channels"),
    "group-runs-serial": (_gn(2), (4, 4, 6, 8), 4, "rows"),
    "group-runs-parallel": (_gn(4), (16, 8, 16, 16), 8, "rows"),
}


def _run(name, x, gamma, beta, dout):
    """(out, dx, reference): the Numba backend's forward and backward, and the long-double reference formed
    from its float64 statistics."""
    forward = PATHS[name][0]
    out, cache = forward(x, gamma, beta, backend="numba")
    dx, _, _ = normlab.normalize_backward(dout, cache)
    _, ref_cache = forward(np.ones(x.shape, x.dtype), gamma, beta, backend="numpy")  # the layout and eps
    return out, dx, reference(x, gamma, beta, ref_cache, dout, stats=(cache.mean, cache.var))


def _criterion_ratio(out, dx, ref):
    """The largest error of out and of dx over what tests/test_extremes.py's criterion allows (<= 1 passes)."""
    out_ref, dx_ref, _, bound, m = ref
    eps = np.finfo(np.float32).eps
    tiny = 2 * np.finfo(np.float32).smallest_subnormal
    out_err = np.abs(out.astype(LONG) - out_ref) / (eps * np.abs(out_ref) + 1e-12 * (1 + np.abs(out_ref)) + tiny)
    dx_err = np.abs(dx.astype(LONG) - dx_ref) / (eps * np.abs(dx_ref) + 1e-12 * m * bound + tiny)
    return float(out_err.max()), float(dx_err.max())


def _case(name, offset, scale, seed):
    """x = offset + scale*N(0, 1), gamma and beta N(0, 1), a random dout, float32, for path ``name``."""
    _, shape, c, _ = PATHS[name]
    rng = np.random.default_rng(seed)
    x = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    return x, gamma, beta, rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_path_is_the_kernel_it_names(name):
    """The shapes above reach the kernels with lanes (else the tests below would test another path)."""
    forward, shape, _, kind = PATHS[name]
    _, cache = forward(np.ones(shape, np.float32), None, None, backend="numba")
    plan = numba_backend.fused_plan(cache.layout.view, cache.layout.batch_stats)
    assert (plan.kind if kind != "rows" else plan.kernel_kind) == kind
    assert (np.prod(shape) >= numba_backend.SERIAL_BELOW) == name.endswith("parallel")


OFFSETS = [0.0, 3.0, -40.0, 1e6, -1e7]
SCALES = [1e-3, 1.0, 2.0, 1e4, 1e30]


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=4, deadline=None)
@given(scale=st.sampled_from(SCALES), seed=st.integers(0, 2**32 - 1))
def test_lanes_meet_the_extremes_criterion(name, offset, scale, seed):
    """Forward and backward within eps*|v| + 1e-12*scale of the exact result of the float64 statistics
    (tests/test_extremes.py's criterion) on data the lanes take (small offsets) and data they must leave to
    float64 (large offsets: at offset/scale 1e7 the lanes' error terms would exceed it)."""
    out, dx, ref = _run(name, *_case(name, offset, scale, seed))
    assert max(_criterion_ratio(out, dx, ref)) <= 1


@pytest.mark.parametrize("name", sorted(PATHS))
def test_lanes_meet_the_criterion_over_many_seeds(name):
    """The criterion above over 25 fixed seeds per path, each with its offset and scale: a quick, repeatable
    sweep where the hypothesis test draws 4 examples per offset."""
    for seed in range(25):
        offset, scale = OFFSETS[seed % len(OFFSETS)], SCALES[(seed // len(OFFSETS)) % len(SCALES)]
        out, dx, ref = _run(name, *_case(name, offset, scale, 1000 + seed))
        ratios = _criterion_ratio(out, dx, ref)
        assert max(ratios) <= 1, (seed, offset, scale, ratios)


def test_output_near_zero_at_1e6_offset_is_rounded_once():
    """The input that once failed (group norm, serial rows, x = 1e6 + N(0, 1), seed 164): the output nearest
    zero (|y| ~ 5e-4) is the float64 computation rounded once, and within the criterion of the exact result of
    the float64 statistics. (Against x's exact mean it is 1.3 eps*|y| off, on the NumPy backend too: the float64
    mean's own rounding, 2**-53 * 1e6, not the writing pass.)"""
    name = "group-runs-serial"
    x, gamma, beta, dout = _case(name, 1e6, 1.0, 164)
    out, dx, ref = _run(name, x, gamma, beta, dout)
    assert max(_criterion_ratio(out, dx, ref)) <= 1
    assert np.array_equal(out, ref[0].astype(np.float32))  # the float64 statistics' exact result, rounded once
    assert np.abs(ref[0]).min() < 1e-3
    # what the criterion against x's exact statistics would miss is the float64 mean's own rounding: the mean
    # is within half a float64 ulp of x's exact mean, and the NumPy backend writes the same outputs
    numpy_out, numpy_cache = PATHS[name][0](x, gamma, beta, backend="numpy")
    exact_mean = x.astype(LONG).reshape(numpy_cache.layout.view).mean(axis=(2, 3))
    _, cache = PATHS[name][0](x, gamma, beta, backend="numba")
    assert np.all(np.abs(cache.mean - exact_mean) <= np.spacing(np.abs(cache.mean)) / 2)
    assert np.array_equal(numpy_out, out)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_lanes_run_on_ordinary_data(name):
    """On ordinary float32 data the lanes do run: some outputs differ from the float64 result rounded once
    (the float64 path's are that rounding), all within the criterion above."""
    _, shape, c, _ = PATHS[name]
    rng = np.random.default_rng(5)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    out, dx, ref = _run(name, x, gamma, beta, rng.normal(size=shape).astype(np.float32))
    assert np.count_nonzero(out != ref[0].astype(np.float32)) > 0
    assert np.count_nonzero(dx != ref[1].astype(np.float32)) > 0
    assert max(_criterion_ratio(out, dx, ref)) <= 1


@pytest.mark.parametrize("name", sorted(PATHS))
def test_offset_1e6_is_rounded_once(name):
    """float32 x = 1e6 + N(0, 1): each output within half an ulp of the float64 computation on the same values
    (README: within 2.1e-7 at (4096, 16), under one ulp at |xhat| ~ 3). The lanes would be off by up to an ulp
    here: this input must take the float64 path."""
    forward, shape, c, _ = PATHS[name]
    x = (1e6 + np.random.default_rng(3).standard_normal(shape)).astype(np.float32)
    g, b = np.linspace(0.5, 2, c, dtype=np.float32), np.linspace(-1, 1, c, dtype=np.float32)
    out, _ = forward(x, g, b, backend="numba")
    ref, _ = forward(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64), backend="numpy")
    half_ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64) / 2
    assert np.all(np.abs(out - ref) <= half_ulp + 1e-12 * (1 + np.abs(ref)))


@pytest.mark.parametrize("name", sorted(PATHS))
def test_given_statistics_stay_rounded_once(name):
    """Inference (given mean and var) keeps the float64 path: each output within half an ulp."""
    forward, shape, c, _ = PATHS[name]
    rng = np.random.default_rng(4)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    g, b = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    _, cache = forward(x, g, b, backend="numpy")
    mean, var = cache.mean + 0.1, cache.var + 0.5
    out, _ = forward(x, g, b, mean=mean, var=var, backend="numba")
    ref, _ = forward(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64), mean=mean, var=var,
                     backend="numpy")
    half_ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64) / 2
    assert np.all(np.abs(out - ref) <= half_ulp + 1e-12 * (1 + np.abs(ref)))


def test_offset_1e6_readme_bound():
    x = (1e6 + np.random.default_rng(0).standard_normal((4096, 16))).astype(np.float32)
    out, _ = normlab.batchnorm_forward(x, None, None, backend="numba")
    ref, _ = normlab.batchnorm_forward(x.astype(np.float64), None, None, backend="numpy")
    assert np.abs(out - ref).max() <= 2.1e-7


@pytest.mark.parametrize("name", sorted(PATHS))
def test_float32_max_pattern(name):
    """[f32max, f32max, f32max, -f32max] repeated: the ±√3 pattern, finite, forward and backward."""
    _, shape, c, _ = PATHS[name]
    x = np.full(shape, F32MAX, np.float32)
    x.reshape(-1)[::4] = -F32MAX
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    dout = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out, dx, ref = _run(name, x, gamma, beta, dout)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(out, ref[0].astype(np.float64), rtol=2e-7, atol=0)
    assert max(_criterion_ratio(out, dx, ref)) <= 1  # dx is ~1e-39 here: the subnormal term counts


def test_the_checks_take_ordinary_statistics_and_refuse_the_rest():
    # forward: mean, var, a = gamma*invstd, beta
    assert lanes.forward_ok(3.0, 4.0, 0.5, 0.2)
    assert not lanes.forward_ok(1e6, 1.0, 1.0, 0.0)  # an offset: |mean*a| = 1e6
    assert not lanes.forward_ok(7.25, 0.0, 300.0, 0.5)  # constant input keeps y = beta exactly (float64)
    assert not lanes.forward_ok(F32MAX / 2, 3 * F32MAX**2 / 4, 1.2e-38, 0.0)  # a's float32 tail would be subnormal
    assert not lanes.forward_ok(float("nan"), 1.0, 1.0, 0.0)
    # backward: count, |mean|*invstd, bounds of invstd*max|gamma*dy|, k1, k2, k2s = k2*invstd, k3
    assert lanes.backward_ok(4096, 1.5, 30.0, 0.5, 0.5, -0.01, -0.005, 0.02)
    assert lanes.backward_ok(2, 0.0, 1.0, 0.7, 1.0, 0.0, 0.0, 0.0)  # given statistics: no cancellation term
    assert not lanes.backward_ok(2, 100.0, 1.0, 0.7, 1.0, -0.1, -0.1, 0.0)  # offset too large for 2 values
    assert not lanes.backward_ok(4096, 1.5, 1e35, 1e33, 1e30, 1.0, 1.0, 0.0)  # could overflow
    assert not lanes.backward_ok(4096, 1.5, 1e-31, 1e-33, 1e-30, 0.0, 0.0, 0.0)  # subnormal tails
    assert not lanes.backward_ok(4096, 1.5, float("inf"), 1.0, 1.0, 0.0, 0.0, 0.0)

"""BatchRenorm: batch norm exactly at rmax=1, dmax=0; gradients with r, d constant; the paper's running
statistics and schedule; its derivation (docs/derivation.md section 10) checked with SymPy."""

import numpy as np
import pytest

import normlab
from normlab import derivation as dv
from normlab.distributed import synchronized
from normlab.gradcheck import numerical_gradient_array, rel_error
from normlab.renorm import renorm_limits

SHAPES = [(6, 3), (4, 3, 5), (3, 3, 2, 4)]


def _running(rng, c=3):
    running = normlab.RunningStats(c)
    running.mean, running.var = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
    running.num_batches_tracked = 7
    return running


def _axes(x):
    return (0, *range(2, x.ndim))


def _param(v, x):
    return v.reshape(1, -1, *(1,) * (x.ndim - 2))


def _frozen_forward(x, gamma, beta, r, d, eps=1e-5):
    """y = gamma*(r*xhat + d) + beta with r, d given: the function whose gradient batch renorm's backward is."""
    mean, var = x.mean(axis=_axes(x), keepdims=True), x.var(axis=_axes(x), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return _param(gamma, x) * (_param(r, x) * xhat + _param(d, x)) + _param(beta, x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_rmax_1_dmax_0_is_batchnorm_exactly(shape, affine, backend):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(1.0, 2.0, shape)
    gamma, beta = (rng.normal(size=3), rng.normal(size=3)) if affine else (None, None)
    running = _running(rng)
    bn = normlab.BatchNorm(3, affine=False, track_running_stats=False, backend=backend)
    rn = normlab.BatchRenorm(3, affine=False, track_running_stats=False, rmax=1, dmax=0, backend=backend)
    out_bn, cache_bn, _ = bn.apply(x, gamma, beta, running, training=True)
    out_rn, cache_rn, _ = rn.apply(x, gamma, beta, running, training=True)
    np.testing.assert_array_equal(out_rn, out_bn)
    dout = rng.standard_normal(shape)
    for got, want in zip(rn.apply_backward(dout, cache_rn), bn.apply_backward(dout, cache_bn)):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


def test_warmup_holds_batchnorm_then_ramps():
    assert renorm_limits(0, 3.0, 5.0, None) == (3.0, 5.0)
    assert renorm_limits(9, 3.0, 5.0, (10, 20)) == (1.0, 0.0)
    assert renorm_limits(20, 3.0, 5.0, (10, 20)) == (2.0, 2.5)
    assert renorm_limits(30, 3.0, 5.0, (10, 20)) == renorm_limits(10**6, 3.0, 5.0, (10, 20)) == (3.0, 5.0)
    assert renorm_limits(4, 3.0, 5.0, (5, 0)) == (1.0, 0.0) and renorm_limits(5, 3.0, 5.0, (5, 0)) == (3.0, 5.0)
    # During the hold the layer is batch norm, counted by the running statistics' num_batches_tracked.
    rng = np.random.default_rng(0)
    x, running = rng.normal(size=(5, 3)), _running(rng)
    held = normlab.BatchRenorm(3, warmup=(8, 4)).apply(x, None, None, running)[0]
    np.testing.assert_array_equal(held, normlab.BatchNorm(3).apply(x, None, None, running)[0])
    assert not np.array_equal(normlab.BatchRenorm(3, warmup=(5, 4)).apply(x, None, None, running)[0], held)


@pytest.mark.parametrize("shape", SHAPES)
def test_r_d_and_gradients_with_r_d_constant(shape, backend):
    rng = np.random.default_rng(10 + len(shape))
    x = rng.normal(0.5, 1.5, shape)
    gamma, beta, running = rng.normal(size=3), rng.normal(size=3), _running(rng)
    layer = normlab.BatchRenorm(3, rmax=1.5, dmax=0.4, backend=backend)
    out, cache, _ = layer.apply(x, gamma, beta, running)
    std_b = np.sqrt(x.var(axis=_axes(x)) + layer.eps)
    std = np.sqrt(running.var + layer.eps)
    r = np.clip(std_b / std, 1 / 1.5, 1.5)
    d = np.clip((x.mean(axis=_axes(x)) - running.mean) / std, -0.4, 0.4)
    np.testing.assert_allclose(cache.r, r, rtol=1e-12)
    np.testing.assert_allclose(cache.d, d, rtol=1e-12)
    np.testing.assert_allclose(out, _frozen_forward(x, gamma, beta, r, d), rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(shape)
    dx, dgamma, dbeta = layer.apply_backward(dout, cache)
    for got, index in ((dx, 0), (dgamma, 1), (dbeta, 2)):
        def f(v, index=index):
            args = [x, gamma, beta]
            args[index] = v
            return _frozen_forward(*args, r, d)
        numeric = numerical_gradient_array(f, [x, gamma, beta][index].copy(), dout)
        assert rel_error(got, numeric) < 1e-8


def test_clipped_r_d_do_not_depend_on_x_so_plain_centred_differences_agree():
    """With every r and d at its limit, the stop-gradient changes nothing: the true gradient is the backward."""
    rng = np.random.default_rng(3)
    x = rng.normal(4.0, 3.0, (6, 3, 4))  # far from running mean 0, var 1: r and d clip
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    running = normlab.RunningStats(3)
    layer = normlab.BatchRenorm(3, rmax=1.2, dmax=0.5)
    out, cache, _ = layer.apply(x, gamma, beta, running)
    assert np.all(cache.r == 1.2) and np.all(np.abs(cache.d) == 0.5)
    dout = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = layer.apply_backward(dout, cache)
    forward = [lambda v: layer.apply(v, gamma, beta, running)[0], lambda v: layer.apply(x, v, beta, running)[0],
               lambda v: layer.apply(x, gamma, v, running)[0]]
    for got, f, value in zip((dx, dgamma, dbeta), forward, (x, gamma, beta)):
        assert rel_error(got, numerical_gradient_array(f, value.copy(), dout)) < 1e-8


def test_running_statistics_are_the_papers_and_eval_uses_them():
    rng = np.random.default_rng(4)
    x, running = rng.normal(2.0, 3.0, (8, 3, 5)), _running(rng)
    running.momentum = 0.25  # the statistics' own momentum counts (a lab net keeps them), as for batch norm
    layer = normlab.BatchRenorm(3)
    mean_before, var_before = running.mean.copy(), running.var.copy()
    _, _, new = layer.apply(x, None, None, running)
    np.testing.assert_array_equal(running.mean, mean_before)  # apply changes nothing
    np.testing.assert_array_equal(running.var, var_before)
    std_b, std = np.sqrt(x.var(axis=(0, 2)) + 1e-5), np.sqrt(var_before + 1e-5)
    np.testing.assert_allclose(new.mean, mean_before + 0.25 * (x.mean(axis=(0, 2)) - mean_before), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(new.var + 1e-5), std + 0.25 * (std_b - std), rtol=1e-12)
    assert new.num_batches_tracked == running.num_batches_tracked + 1
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    out, _, none = layer.apply(x, gamma, beta, new, training=False)
    want = _param(gamma, x) * (x - _param(new.mean, x)) / _param(np.sqrt(new.var + 1e-5), x) + _param(beta, x)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert none is None


def test_stateful_layer_and_state_dict():
    rng = np.random.default_rng(5)
    layer = normlab.BatchRenorm(3, warmup=(1, 2))
    x, dout = rng.normal(size=(4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    for _ in range(3):
        layer.forward(x)
        layer.backward(dout)
    assert layer.num_batches_tracked == 3 and set(layer.grads) == {"gamma", "beta"}
    other = normlab.BatchRenorm(3)
    other.load_state_dict(layer.state_dict())
    layer.eval(), other.eval()
    np.testing.assert_array_equal(other.forward(x), layer.forward(x))
    assert "rmax=3.0, dmax=5.0, warmup=(1, 2)" in repr(layer)


def test_bad_arguments_and_no_running_statistics():
    for kwargs, match in (({"rmax": 0.5}, "rmax"), ({"dmax": -1}, "dmax"), ({"rmax": np.inf}, "rmax"),
                          ({"warmup": (1,)}, "warmup"), ({"warmup": (1, -2)}, "ramp_steps")):
        with pytest.raises(ValueError, match=match):
            normlab.BatchRenorm(3, **kwargs)
    layer = normlab.BatchRenorm(3, track_running_stats=False)
    with pytest.raises(ValueError, match="needs running statistics"):
        layer.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        normlab.BatchRenorm(3).forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match="channels"):
        normlab.BatchRenorm(3).forward(np.ones((4, 2)))
    with pytest.raises(TypeError, match="BatchRenorm.apply"):
        layer.apply_backward(np.ones((4, 3)), object())
    # Data-parallel training would need a synchronized batch renorm: refused, not silently swapped.
    with pytest.raises(ValueError, match="BatchRenorm has no synchronized form"):
        synchronized(normlab.BatchRenorm(3))
    assert type(synchronized(normlab.BatchNorm(3))).__name__ == "SyncBatchNorm"


# ----------------------------------------------------------------------------- derivation (SymPy)

RENORM = dv.DERIVATIONS["batchrenorm"]


@pytest.mark.parametrize("name", dv.step_names("batchrenorm"))
def test_derivation_step(name):
    result = dv.check_step(name, norm="batchrenorm")
    assert result.passed, result


def test_library_backward_against_the_exact_gradients():
    result = dv.check_closed_form_exact(RENORM)
    assert result.passed, result


def test_wrong_renorm_algebra_is_caught(monkeypatch):
    """The checks can fail: dgamma without its d term, and dx with gamma for gamma*r, are rejected."""
    def no_d_term(G):
        return (G.r * sum(g * xh for g, xh in zip(G.g, G.xhat())),)

    def gamma_not_gamma_r(G):
        xhat, m = G.xhat(), G.m
        dxhat = [g * G.gamma for g in G.g]
        s1, s2 = sum(dxhat), sum(a * b for a, b in zip(dxhat, xhat))
        return tuple(G.inverse() / m * (m * a - s1 - b * s2) for a, b in zip(dxhat, xhat))

    wrong = {"renorm_dgamma": no_d_term, "renorm_dx_closed": gamma_not_gamma_r}
    steps = tuple(s._replace(formula=wrong.get(s.name, s.formula)) for s in RENORM.steps)
    monkeypatch.setitem(dv.DERIVATIONS, "batchrenorm", RENORM._replace(steps=steps))
    for name in wrong:
        assert not dv.check_step(name, norm="batchrenorm").passed

    def library_without_d(*args):
        dx, dgamma, dbeta = RENORM.library(*args)
        r, d = args[5], args[6]
        return dx, dgamma - d * dbeta, dbeta

    assert not dv.check_closed_form_exact(RENORM._replace(library=library_without_d)).passed

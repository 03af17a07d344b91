"""Bad input fails loudly, names the argument and shapes, and changes no state."""

import numpy as np
import pytest

import normlab


def ok(shape=(4, 3)):
    return np.random.default_rng(0).normal(size=shape)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: normlab.batchnorm_forward(np.ones(3), None, None), ValueError, r"x must have at least 2 dim.*\(3,\)"),
    (lambda: normlab.batchnorm_forward(ok((2, 3, 4)), None, None), ValueError, r"x must have 2 dim.*\(2, 3, 4\)"),
    (lambda: normlab.spatial_batchnorm_forward(ok(), None, None), ValueError, r"x must have 4 dim.*\(4, 3\)"),
    (lambda: normlab.batchnorm_forward(ok(), np.ones(4), np.zeros(3)), ValueError,
     r"gamma must have shape \(3,\) \(one per channel for input shape \(4, 3\)\), got shape \(4,\)"),
    (lambda: normlab.layernorm_forward(ok(), None, None, mean=np.zeros(3), var=np.ones(4)), ValueError,
     r"mean must have shape \(4,\) \(one per statistic for input shape \(4, 3\)\), got shape \(3,\)"),
    (lambda: normlab.layernorm_forward(ok(), None, None, eps=float("nan")), ValueError, "eps must be finite"),
    (lambda: normlab.layernorm_forward(ok(), None, None, eps=True), TypeError, "eps must be a real number"),
    (lambda: normlab.batchnorm_forward(ok(), np.ones(3), np.zeros((3, 1))), ValueError, r"beta must have shape \(3,\).*\(3, 1\)"),
    (lambda: normlab.batchnorm_forward(ok(), np.ones(3), None), ValueError, "both be given"),
    (lambda: normlab.layernorm_forward(ok(), np.ones(4), np.zeros(4)), ValueError, r"normalized_shape \(4,\).*\(4, 3\)"),
    (lambda: normlab.groupnorm_forward(ok((2, 6, 2, 2)), None, None, 4), ValueError, r"groups \(4\) must divide.*C = 6"),
    (lambda: normlab.groupnorm_forward(ok((2, 6, 2, 2)), None, None, 0), ValueError, "groups must be a positive integer"),
    (lambda: normlab.batchnorm_forward(ok(), None, None, eps=-1e-5), ValueError, "eps must be finite and >= 0"),
    (lambda: normlab.batchnorm_forward(ok(), None, None, eps=0.0), ValueError, "eps must be > 0"),
    (lambda: normlab.batchnorm_forward(ok((1, 3)), None, None), ValueError, r"more than 1 value.*\(1, 3\)"),
    (lambda: normlab.layernorm_forward(ok((4, 1)), None, None), ValueError, r"more than 1 value.*\(4, 1\)"),
    (lambda: normlab.batchnorm_forward(np.ones((4, 3), dtype=int), None, None), TypeError, r"x must have a floating dtype.*int64"),
    (lambda: normlab.batchnorm_forward(np.ones((4, 3), dtype=bool), None, None), TypeError, "floating dtype.*bool"),
    (lambda: normlab.batchnorm_forward(np.ones((4, 3), dtype=complex), None, None), TypeError, "floating dtype.*complex"),
    (lambda: normlab.batchnorm_forward(np.zeros((0, 3)), None, None), ValueError, r"x must not be empty.*\(0, 3\)"),
    (lambda: normlab.batchnorm_forward(ok(), None, None, mean=np.zeros(3)), ValueError, "mean and var must both"),
    (lambda: normlab.batchnorm_forward(ok(), None, None, mean=np.zeros(3), var=-np.ones(3)), ValueError, "var must be >= 0"),
    (lambda: normlab.batchnorm_forward(ok(), None, None, backend="cuda"), ValueError, "unknown backend 'cuda'.*numpy"),
])
def test_bad_input_is_rejected_clearly(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_dout_of_the_wrong_shape_is_rejected():
    _, cache = normlab.batchnorm_forward(ok(), None, None)
    with pytest.raises(ValueError, match=r"dout must have the shape of the forward output \(4, 3\).*\(3, 4\)"):
        normlab.batchnorm_backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="cache must be the NormCache"):
        normlab.batchnorm_backward(np.ones((4, 3)), {"x": 1})


def test_given_statistics_allow_eps_zero_and_single_samples():
    """Inference is per sample: N = 1 and eps = 0 are fine with given statistics."""
    out, _ = normlab.batchnorm_forward(ok((1, 3)), None, None, eps=0.0, mean=np.zeros(3), var=np.ones(3))
    assert np.allclose(out, ok((1, 3)))


def _trained_layer():
    bn = normlab.BatchNorm(3)
    bn.forward(ok((6, 3)))
    return bn


@pytest.mark.parametrize("bad_x", [
    np.ones((6, 4)),                       # wrong channel count
    np.ones((1, 3)),                       # one value per statistic
    np.ones((6, 3), dtype=np.int32),       # integer dtype
    np.ones(3),                            # ndim < 2
    np.where(np.eye(6, 3) > 0, np.nan, 1.0),  # NaN
    np.where(np.eye(6, 3) > 0, np.inf, 1.0),  # inf
])
def test_a_rejected_batch_leaves_running_statistics_bit_identical(bad_x):
    bn = _trained_layer()
    before = bn.state_dict()
    with pytest.raises((ValueError, TypeError)):
        bn.forward(bad_x)
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_wrong_channel_count_names_the_layer_and_shape():
    with pytest.raises(ValueError, match=r"BatchNorm\(num_features=3\).*\(6, 4\)"):
        normlab.BatchNorm(3).forward(np.ones((6, 4)))
    with pytest.raises(ValueError, match=r"GroupNorm\(num_channels=4\).*\(2, 6, 3\)"):
        normlab.GroupNorm(2, 4).forward(np.ones((2, 6, 3)))
    with pytest.raises(ValueError, match="num_groups \\(3\\) must divide num_channels \\(4\\)"):
        normlab.GroupNorm(3, 4)


def test_nan_in_a_batch_raises_but_propagates_with_given_statistics():
    """Policy: batch statistics from non-finite data would poison running statistics,
    so forward with batch statistics raises; with given statistics (inference) NaN
    propagates element-wise, as IEEE arithmetic does, and touches no state."""
    x = ok((5, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x \(shape \(5, 3\)\) contains NaN or inf: 1 of 3"):
        normlab.batchnorm_forward(x, None, None)
    out, _ = normlab.batchnorm_forward(x, None, None, mean=np.zeros(3), var=np.ones(3))
    assert np.isnan(out[2, 1]) and np.isfinite(np.delete(out.ravel(), 2 * 3 + 1)).all()
    bn = _trained_layer().eval()
    before = bn.state_dict()
    assert np.isnan(bn.forward(x)[2, 1])
    assert all(np.array_equal(before[k], v) for k, v in bn.state_dict().items())


def test_input_arrays_are_never_modified(rng):
    x = rng.normal(size=(5, 4))
    gamma, beta, dout = rng.normal(size=4), rng.normal(size=4), rng.normal(size=(5, 4))
    copies = [a.copy() for a in (x, gamma, beta, dout)]
    _, cache = normlab.batchnorm_forward(x, gamma, beta)
    normlab.batchnorm_backward(dout, cache)
    normlab.batchnorm_backward_graph(dout, cache)
    assert all(np.array_equal(a, b) for a, b in zip((x, gamma, beta, dout), copies))


def test_out_buffers_overlapping_x_are_rejected(backend):
    """The cache holds x by reference; writing y or dx over it would corrupt backward."""
    x = ok((6, 3))
    with pytest.raises(ValueError, match="out must not share memory with x"):
        normlab.batchnorm_forward(x, None, None, backend=backend, out=x)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        normlab.spatial_batchnorm_forward(x.reshape(2, 3, 3, 1), None, None, backend=backend,
                                          out=x.reshape(2, 3, 3, 1))
    _, cache = normlab.batchnorm_forward(x, None, None, backend=backend)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        normlab.batchnorm_backward(ok((6, 3)), cache, out=x)
    with pytest.raises(ValueError, match=r"out must be an array with x's shape \(6, 3\)"):
        normlab.batchnorm_forward(x, None, None, backend=backend, out=np.empty((3, 6)))
    buf = np.zeros((6, 3))  # gamma a row of the dx buffer: dx would be written over what the kernels still read
    buf[0] = 1.5
    _, cache = normlab.layernorm_forward(x, buf[0], np.zeros(3), backend=backend)
    with pytest.raises(ValueError, match="out must not share memory with gamma"):
        normlab.layernorm_backward(ok((6, 3)), cache, out=buf)
    assert np.all(buf[0] == 1.5) and np.all(buf[1:] == 0)

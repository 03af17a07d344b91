"""Lab layers: gradients against centred differences (random dout), inverted dropout, softmax loss."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab
from normlab.gradcheck import check_forward_backward, numerical_gradient, rel_error
from normlab.lab import ops


def _assert_checks(results, tol=1e-8):
    for r in results:
        assert r.error < r.tol, r
    assert results


def test_affine_gradients(rng):
    x, w, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    out, _ = ops.affine_forward(x, w, b)
    np.testing.assert_allclose(out, x.reshape(5, 6) @ w + b)
    _assert_checks(check_forward_backward(ops.affine_forward, ops.affine_backward, [x, w, b], ["x", "w", "b"]))


def test_affine_without_bias_and_bad_shapes(rng):
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    np.testing.assert_allclose(ops.affine_forward(x, w)[0], x @ w)
    with pytest.raises(ValueError, match=r"w \(4, 2\), b \(3,\)"):
        ops.affine_forward(x, w, np.zeros(3))


def test_relu_gradient(rng):
    x = rng.standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep centred differences away from the kink
    out, cache = ops.relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    _assert_checks(check_forward_backward(ops.relu_forward, lambda d, c: ops.relu_backward(d, c), [x], ["x"]))


def test_dropout_is_inverted_seeded_and_identity_at_test_time():
    x = np.full((500, 400), 2.0)
    out, cache = ops.dropout_forward(x, 0.3, np.random.default_rng(0))
    dropped = np.mean(out == 0)
    assert dropped == pytest.approx(0.3, abs=0.01)
    assert np.unique(out[out != 0]) == pytest.approx(2.0 / 0.7)
    assert out.mean() == pytest.approx(2.0, rel=0.01)      # expectation preserved
    again, _ = ops.dropout_forward(x, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)               # same seed, same mask
    dout = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(ops.dropout_backward(dout, cache), dout * (out / x))
    test_out, test_cache = ops.dropout_forward(x, 0.3, None, training=False)
    assert test_out is x and ops.dropout_backward(dout, test_cache) is dout


def test_dropout_never_touches_the_global_rng():
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    ops.dropout_forward(np.ones((10, 10)), 0.5, np.random.default_rng(0))
    assert np.random.random() == expected


def test_dropout_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ops.dropout_forward(np.ones((2, 2)), 1.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        ops.dropout_forward(np.ones((2, 2)), 0.5, 0)


def test_softmax_loss_value_gradient_and_no_mutation(rng):
    scores = rng.standard_normal((7, 5)) * 3
    y = rng.integers(0, 5, size=7)
    before = scores.copy()
    loss, dscores = ops.softmax_loss(scores, y)
    np.testing.assert_array_equal(scores, before)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(7), y])), rel=1e-12)
    numeric = numerical_gradient(lambda s: ops.softmax_loss(s, y)[0], scores.copy())
    assert rel_error(dscores, numeric) < 1e-8


def test_softmax_loss_is_stable_for_huge_scores():
    loss, dscores = ops.softmax_loss(np.array([[1e4, 0.0, -1e4]]), np.array([0]))
    assert loss == 0.0 and np.all(np.isfinite(dscores))


def test_softmax_loss_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ops.softmax_loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        ops.softmax_loss(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3,\)"):
        ops.softmax_loss(np.zeros((2, 3)), np.array([0, 1, 2]))


@pytest.mark.parametrize("make_norm", [lambda m: normlab.BatchNorm(m, affine=False),
                                       lambda m: normlab.LayerNorm(m, elementwise_affine=False)],
                         ids=["batchnorm", "layernorm"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_affine_norm_relu_gradients(rng, make_norm, with_bias):
    x, w = rng.standard_normal((6, 5)), rng.standard_normal((5, 4))
    b = rng.standard_normal(4) if with_bias else None
    gamma, beta = 1 + 0.1 * rng.standard_normal(4), 0.1 * rng.standard_normal(4)
    norm = make_norm(4)

    def forward(x, w, gamma, beta):
        return ops.affine_norm_relu_forward(x, w, b, gamma, beta, norm)[:2]

    def backward(dout, cache):
        dx, dw, _, dgamma, dbeta = ops.sandwich_backward(dout, cache)
        return dx, dw, dgamma, dbeta

    _assert_checks(check_forward_backward(forward, backward, [x, w, gamma, beta], ["x", "w", "gamma", "beta"],
                                          tol=1e-7))


def test_affine_norm_relu_uses_the_library_norm_and_running_stats(rng):
    x, w, b = rng.standard_normal((6, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    gamma, beta = np.ones(4), np.zeros(4)
    norm, running = normlab.BatchNorm(4, affine=False), normlab.RunningStats(4)
    out, cache, new = ops.affine_norm_relu_forward(x, w, b, gamma, beta, norm, running)
    ref, _ = normlab.batchnorm_forward(x @ w + b, gamma, beta)
    np.testing.assert_allclose(out, np.maximum(ref, 0), rtol=1e-12)
    assert isinstance(cache.norm.cache, normlab.NormCache)
    assert new.num_batches_tracked == 1 and running.num_batches_tracked == 0  # returned, not changed
    running.mean, running.var = np.full(4, 0.5), np.full(4, 2.0)
    out, cache, new = ops.affine_norm_relu_forward(x, w, b, gamma, beta, norm, running, training=False)
    np.testing.assert_allclose(out, np.maximum((x @ w + b - 0.5) / np.sqrt(2.0 + 1e-5), 0), rtol=1e-12)
    assert cache.norm.cache.stats_given and new is None


def test_affine_relu_gradients(rng):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    _assert_checks(check_forward_backward(ops.affine_relu_forward,
                                          lambda d, c: ops.sandwich_backward(d, c)[:3], [x, w, b], ["x", "w", "b"]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 6), seed=st.integers(0, 2**32 - 1),
       shift=st.floats(-1e3, 1e3, allow_nan=False))
def test_softmax_loss_invariants(n, c, seed, shift):
    # Softmax ignores a per-row constant; each row of dscores sums to 0 (probabilities minus a one-hot).
    rng = np.random.default_rng(seed)
    scores, y = 5 * rng.standard_normal((n, c)), rng.integers(0, c, size=n)
    loss, dscores = ops.softmax_loss(scores, y)
    shifted_loss, shifted_d = ops.softmax_loss(scores + shift * rng.standard_normal((n, 1)), y)
    assert loss >= 0 and shifted_loss == pytest.approx(loss, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(shifted_d, dscores, atol=1e-12)
    np.testing.assert_allclose(dscores.sum(axis=1), 0, atol=1e-15)

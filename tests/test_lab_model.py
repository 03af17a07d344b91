"""FullyConnectedNet: gradient checks for every normalization, modes, state separation, validation."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import numerical_gradient, rel_error
from normlab.lab.model import NORMALIZATIONS, FullyConnectedNet

N, D, H, C = 8, 7, (6, 5), 4


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)), rng.integers(0, C, size=N)


def _check_all_params(model, X, y, reset_dropout=None):
    """Relative error of every analytic gradient against centred differences."""
    def loss(_):
        if reset_dropout is not None:
            model.dropout_rng = np.random.default_rng(reset_dropout)
        return model.loss(X, y)[0]

    if reset_dropout is not None:
        model.dropout_rng = np.random.default_rng(reset_dropout)
    _, grads = model.loss(X, y)
    assert set(grads) == set(model.params)
    return {name: rel_error(grads[name], numerical_gradient(loss, model.params[name], h=1e-6))
            for name in model.params}


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_gradients_match_centred_differences(normalization, reg):
    X, y = _problem()
    model = FullyConnectedNet(H, D, C, normalization=normalization, reg=reg, weight_scale=5e-1, seed=1)
    errors = _check_all_params(model, X, y)
    expected = {"W1", "b1", "W2", "b2", "W3", "b3"}
    if normalization:
        expected |= {"gamma1", "beta1", "gamma2", "beta2"}
    if normalization == "batchnorm":
        expected -= {"b1", "b2"}  # a bias before batch norm cancels; beta takes its role
    assert set(errors) == expected
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors)


@pytest.mark.parametrize("normalization", [None, "batchnorm"])
def test_gradients_with_dropout(normalization):
    # The same mask on every evaluation: reseed the model's dropout generator each time.
    X, y = _problem(1)
    model = FullyConnectedNet(H, D, C, normalization=normalization, dropout=0.3, weight_scale=5e-1, seed=2)
    errors = _check_all_params(model, X, y, reset_dropout=123)
    assert max(errors.values()) < 1e-6, errors


def test_initial_loss_is_log_num_classes():
    # Tiny weights give near-uniform scores, so the loss starts at log(C).
    X, y = _problem()
    model = FullyConnectedNet([20, 20], D, C, weight_scale=1e-3, seed=0)
    loss, _ = model.loss(X, y)
    assert abs(loss - np.log(C)) < 1e-3


def test_reg_adds_half_l2_of_weights():
    X, y = _problem()
    plain = FullyConnectedNet(H, D, C, weight_scale=0.3, seed=4)
    regd = FullyConnectedNet(H, D, C, weight_scale=0.3, seed=4, reg=0.7)
    penalty = 0.5 * 0.7 * sum(np.sum(plain.params[f"W{i}"] ** 2) for i in (1, 2, 3))
    assert regd.loss(X, y)[0] == pytest.approx(plain.loss(X, y)[0] + penalty, rel=1e-12)


def test_batchnorm_running_stats_apart_from_params_and_used_at_test_time():
    X, y = _problem()
    model = FullyConnectedNet(H, D, C, normalization="batchnorm", weight_scale=0.5, seed=0)
    assert set(model.batch_stats) == {"layer1", "layer2"}
    assert all(isinstance(s, normlab.RunningStats) for s in model.batch_stats.values())
    assert not any("mean" in k or "var" in k for k in model.params)
    before = model.loss(X)            # test mode: running stats (initially mean 0, var 1)
    model.loss(X, y)                  # training mode: updates them
    assert model.batch_stats["layer1"].num_batches_tracked == 1
    after = model.loss(X)
    assert not np.allclose(before, after)
    # Test mode is deterministic, per sample: a sample's scores don't depend on the rest of the batch.
    np.testing.assert_allclose(model.loss(X[:3]), after[:3], rtol=1e-12)
    # A validation loss in test mode leaves the running statistics alone.
    mean = model.batch_stats["layer1"].mean.copy()
    model.loss(X, y, training=False)
    np.testing.assert_array_equal(model.batch_stats["layer1"].mean, mean)


def test_training_mode_batchnorm_output_depends_on_batch_layernorm_does_not():
    X, y = _problem()
    for norm, batch_dependent in (("batchnorm", True), ("layernorm", False)):
        model = FullyConnectedNet(H, D, C, normalization=norm, weight_scale=0.5, seed=0)
        full = model.loss(X, training=True)
        part = model.loss(X[:4], training=True)
        assert np.allclose(full[:4], part) != batch_dependent, norm
    assert FullyConnectedNet(H, D, C, normalization="layernorm", seed=0).batch_stats == {}


def test_dropout_training_vs_test():
    X, _ = _problem()
    model = FullyConnectedNet([50], D, C, dropout=0.5, weight_scale=0.5, seed=0)
    np.testing.assert_array_equal(model.loss(X), model.loss(X))  # test mode: no dropout
    assert not np.allclose(model.loss(X, training=True), model.loss(X, training=True))


def test_seed_makes_init_reproducible():
    a = FullyConnectedNet(H, D, C, normalization="batchnorm", seed=7)
    b = FullyConnectedNet(H, D, C, normalization="batchnorm", seed=7)
    c = FullyConnectedNet(H, D, C, normalization="batchnorm", seed=8)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["W1"], c.params["W1"])
    assert a.params["W1"].std() == pytest.approx(1e-2, rel=0.3)


def test_float32_model_keeps_its_dtype():
    X, y = _problem()
    model = FullyConnectedNet(H, D, C, normalization="batchnorm", dtype=np.float32, seed=0)
    loss, grads = model.loss(X, y)
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert model.loss(X).dtype == np.float32


def test_loss_does_not_mutate_inputs():
    X, y = _problem()
    X0, y0 = X.copy(), y.copy()
    FullyConnectedNet(H, D, C, normalization="batchnorm", dropout=0.2, seed=0).loss(X, y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_registry_and_bad_arguments():
    assert set(NORMALIZATIONS) == {"none", "batchnorm", "layernorm"}
    with pytest.raises(ValueError, match="known: None, 'none', 'batchnorm', 'layernorm'"):
        FullyConnectedNet(H, D, C, normalization="groupnorm")
    with pytest.raises(ValueError, match="dropout"):
        FullyConnectedNet(H, D, C, dropout=1.0)
    with pytest.raises(ValueError, match="weight_scale"):
        FullyConnectedNet(H, D, C, weight_scale=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        FullyConnectedNet([10, 0], D, C)
    with pytest.raises(ValueError, match="seed"):
        FullyConnectedNet(H, D, C, seed=-1)
    assert FullyConnectedNet(H, D, C, seed=np.int64(3)).config()["seed"] == 3  # JSON-able for checkpoints
    model = FullyConnectedNet(H, D, C, seed=0)
    with pytest.raises(ValueError, match=r"7 features per sample, got shape \(8, 5\)"):
        model.loss(np.zeros((8, 5)))
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\)"):
        model.loss(np.zeros((8, D)), np.full(8, 4))


def _state(model):
    """Everything a training call may change, copied: params, running statistics, dropout generator."""
    stats = {k: (s.mean.copy(), s.var.copy(), s.num_batches_tracked) for k, s in model.batch_stats.items()}
    return ({k: v.copy() for k, v in model.params.items()}, stats, model.dropout_rng.bit_generator.state)


def _assert_same_state(before, after):
    (params0, stats0, rng0), (params1, stats1, rng1) = before, after
    assert params0.keys() == params1.keys() and stats0.keys() == stats1.keys()
    for k in params0:
        np.testing.assert_array_equal(params1[k], params0[k], strict=True)
    for k, (mean, var, tracked) in stats0.items():
        np.testing.assert_array_equal(stats1[k][0], mean, strict=True)
        np.testing.assert_array_equal(stats1[k][1], var, strict=True)
        assert stats1[k][2] == tracked
    assert rng1 == rng0


def _bad_batches(X, y):
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    return {
        "float labels": (X, y.astype(np.float64), TypeError, r"y must hold integer class labels, got dtype float64"),
        "label out of range": (X, np.where(np.arange(len(y)) == 5, C, y), ValueError,
                               rf"labels y must lie in \[0, {C}\), got range \[0, {C}\]"),
        "too few labels": (X, y[:-1], ValueError, rf"y must have shape \({len(y)},\).*got shape \({len(y) - 1},\)"),
        "NaN in X": (X_nan, y, ValueError, r"X \(shape \(\d+, 7\)\) contains NaN or inf"),
        "wrong feature count": (X[:, :-1], y, ValueError, r"X must have 7 features per sample, got shape \(\d+, 6\)"),
    }


@pytest.mark.parametrize("case", ["float labels", "label out of range", "too few labels", "NaN in X",
                                  "wrong feature count"])
def test_rejected_batch_leaves_all_state_bit_identical(case):
    X, y = _problem()
    model = FullyConnectedNet(H, D, C, normalization="batchnorm", dropout=0.3, seed=0)
    model.loss(X, y)  # running statistics and generator away from their initial values
    before = _state(model)
    X_bad, y_bad, error, message = _bad_batches(X, y)[case]
    with pytest.raises(error, match=message):
        model.loss(X_bad, y_bad)
    _assert_same_state(before, _state(model))
    # ... and the next good call continues exactly as if the bad one had never happened.
    twin = FullyConnectedNet(H, D, C, normalization="batchnorm", dropout=0.3, seed=0)
    twin.loss(X, y)
    loss, _ = model.loss(X, y)
    assert loss == twin.loss(X, y)[0]
    _assert_same_state(_state(twin), _state(model))


def test_failure_in_a_later_layer_leaves_earlier_running_stats_alone():
    X, y = _problem()
    model = FullyConnectedNet(H, D, C, normalization="batchnorm", dropout=0.3, seed=0)
    model.params["W2"][0, 0] = np.inf  # layer 1 normalizes fine, layer 2's batch statistics are not finite
    before = _state(model)
    with pytest.raises(ValueError, match="NaN or inf"), np.errstate(invalid="ignore"):
        model.loss(X, y)
    _assert_same_state(before, _state(model))

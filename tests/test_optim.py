"""Update rules: purity, reference values, convergence, registry."""

import numpy as np
import pytest

from normlab.lab import optim


@pytest.fixture
def wd():
    rng = np.random.default_rng(3)
    return rng.standard_normal((4, 5)), rng.standard_normal((4, 5))


@pytest.mark.parametrize("name", sorted(optim.UPDATE_RULES))
def test_rules_are_pure(name, wd):
    w, dw = wd
    w0, dw0 = w.copy(), dw.copy()
    rule = optim.get_update_rule(name)
    new_w, state = rule(w, dw, None)
    state_copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    new_w2, state2 = rule(new_w, dw, state)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(dw, dw0)
    for k, v in state_copy.items():
        np.testing.assert_array_equal(state[k], v)   # the old state is untouched by the second step
    assert state2 is not state and new_w2 is not new_w
    assert not np.array_equal(new_w, w)


def test_sgd_reference(wd):
    w, dw = wd
    new_w, state = optim.sgd(w, dw, {"learning_rate": 0.1})
    np.testing.assert_allclose(new_w, w - 0.1 * dw)
    assert state == {"learning_rate": 0.1}


def test_momentum_reference(wd):
    w, dw = wd
    w1, s = optim.sgd_momentum(w, dw, {"learning_rate": 0.1, "momentum": 0.5})
    w2, s = optim.sgd_momentum(w1, dw, s)
    # v1 = -0.1 dw; v2 = 0.5 v1 - 0.1 dw = -0.15 dw
    np.testing.assert_allclose(w2, w - 0.25 * dw)
    np.testing.assert_allclose(s["velocity"], -0.15 * dw)


def test_rmsprop_reference(wd):
    w, dw = wd
    new_w, s = optim.rmsprop(w, dw, {"learning_rate": 0.01, "decay_rate": 0.9})
    cache = 0.1 * dw**2
    np.testing.assert_allclose(new_w, w - 0.01 * dw / (np.sqrt(cache) + 1e-8))


def test_adam_first_step_and_bias_correction(wd):
    w, dw = wd
    new_w, s = optim.adam(w, dw, {"learning_rate": 0.01})
    # With bias correction the first step is lr * dw/|dw| (up to epsilon).
    np.testing.assert_allclose(new_w, w - 0.01 * np.sign(dw), rtol=1e-6)
    assert s["t"] == 1
    _, s2 = optim.adam(new_w, dw, s)
    assert s2["t"] == 2 and s["t"] == 1


@pytest.mark.parametrize("name,lr", [("sgd", 0.1), ("sgd_momentum", 0.05), ("rmsprop", 0.01), ("adam", 0.05)])
def test_rules_minimize_a_quadratic(name, lr):
    rule = optim.get_update_rule(name)
    target = np.array([1.0, -2.0, 3.0])
    w, state = np.zeros(3), {"learning_rate": lr}
    for _ in range(500):
        w, state = rule(w, 2 * (w - target), state)
    np.testing.assert_allclose(w, target, atol=1e-2)


def test_unknown_rule_and_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="known: sgd, sgd_momentum, rmsprop, adam"):
        optim.get_update_rule("adagrad")
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['learnig_rate'\].*learning_rate"):
        optim.check_config("adam", {"learnig_rate": 1e-3})
    with pytest.raises(ValueError, match="finite number >= 0"):
        optim.check_config("sgd", {"learning_rate": -1.0})
    assert optim.check_config("adam", {"beta1": 0.8}) == {"beta1": 0.8}

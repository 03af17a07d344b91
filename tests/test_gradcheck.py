import numpy as np
import pytest

from normlab.gradcheck import numerical_gradient, numerical_gradient_array, rel_error


def test_rel_error_is_normwise():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert rel_error([1.0, 1e-12], [1.0, 2e-12]) == pytest.approx(1e-12)
    assert rel_error([2.0], [1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal shapes"):
        rel_error(np.zeros(2), np.zeros(3))


def test_numerical_gradient_of_known_functions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    assert rel_error(numerical_gradient(lambda v: np.sum(np.sin(v)), x), np.cos(x)) < 1e-9
    dout = rng.normal(size=(3, 4))
    assert rel_error(numerical_gradient_array(lambda v: v**3, x, dout), 3 * x**2 * dout) < 1e-9
    before = x.copy()
    numerical_gradient(lambda v: np.sum(v**2), x)
    assert np.array_equal(x, before)  # perturbations are undone

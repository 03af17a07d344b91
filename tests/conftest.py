import numpy as np
import pytest

import normlab


@pytest.fixture(params=normlab.available_backends())
def backend(request):
    """Every test that takes `backend` runs once per backend that imports here."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

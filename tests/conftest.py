import numpy as np
import pytest

import normlab


def pytest_sessionstart(session):
    """Build normlab.torch's native node (~25 s, once per install) before any test or worker process needs it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    from normlab.torch import fused_node

    fused_node.load()


@pytest.fixture(params=normlab.available_backends())
def backend(request):
    """Every test that takes `backend` runs once per backend that imports here."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _restore_thread_counts():
    """Benchmarks and launchers set Numba's and PyTorch's thread counts; no test leaks them to the next."""
    import sys

    before = normlab.get_num_threads()
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    yield
    if normlab.get_num_threads() != before:
        normlab.set_num_threads(before)
    torch = sys.modules.get("torch")
    if torch is not None and torch_before is not None and torch.get_num_threads() != torch_before:
        torch.set_num_threads(torch_before)

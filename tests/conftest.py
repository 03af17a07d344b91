import os
import subprocess
import sys

import numpy as np
import pytest

import normlab

_WARM_TIMEOUT_S = 900


def pytest_sessionstart(session):
    """Before any test or worker process needs them: build normlab.torch's native node (~25 s, once per
    install) and, where xdist will start workers, compile the Numba kernels once (``_warm.py``, two processes,
    ~1 min on a fresh clone; seconds once cached), so the workers load them rather than all compiling them."""
    config = session.config
    warm = []
    if not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None):
        here = os.path.dirname(__file__)
        warm = [subprocess.Popen([sys.executable, "_warm.py", dtype], cwd=here, stdout=subprocess.DEVNULL)
                for dtype in ("float32", "float64")]
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        from normlab.torch import fused_node

        fused_node.load()
    for process in warm:  # a failed or slow warm-up only costs time: the tests compile what they need
        try:
            process.wait(timeout=_WARM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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

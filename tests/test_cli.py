import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from normlab.cli import main


def test_check_prints_the_table_and_passes():
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert "vs numeric" in result.output and "vs torch" in result.output
    assert "0 failed" in result.output and "backend:" in result.output


def test_check_fails_when_a_backward_is_wrong(monkeypatch):
    import normlab.backends.numpy_backend as nb
    real = nb.backward

    def off_by_a_bit(*args):
        dx, dgamma, dbeta = real(*args)
        return dx * (1 + 1e-6), dgamma, dbeta

    monkeypatch.setattr(nb, "backward", off_by_a_bit)
    result = CliRunner().invoke(main, ["check", "--backend", "numpy"])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_unknown_backend_is_a_usage_error():
    result = CliRunner().invoke(main, ["check", "--backend", "gpu"])
    assert result.exit_code == 2 and "unknown backend 'gpu'" in result.output


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "normlab", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "check" in out.stdout

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

    def off_by_a_bit(*args, **kwargs):
        dx, dgamma, dbeta = real(*args, **kwargs)
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


def test_without_the_lab_extra_lab_commands_say_how_to_install_it(monkeypatch):
    for name in ("normlab.lab", "normlab.lab.cli"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    listing = CliRunner().invoke(main, ["--help"])
    assert listing.exit_code == 0 and "check" in listing.output and "(not installed)" in listing.output
    for command in ("train", "experiment"):
        result = CliRunner().invoke(main, [command, "--epochs", "1"])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            'Error: normlab.lab needs the lab extra (matplotlib not installed): pip install "normlab[lab]"']


def test_lab_commands_keep_the_traceback_of_a_bug_for_debug(monkeypatch):
    # User errors become one-line messages; a bug (here a TypeError) says it is one in one line, and
    # propagates with its traceback under --debug or NORMLAB_DEBUG=1.
    from normlab.lab import train as lab_train

    def broken(config, **_):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(lab_train, "train", broken)
    result = CliRunner().invoke(main, ["--debug", "train", "--epochs", "1"])
    assert isinstance(result.exception, TypeError)
    result = CliRunner().invoke(main, ["train", "--epochs", "1"], env={"NORMLAB_DEBUG": "1"})
    assert isinstance(result.exception, TypeError)
    result = CliRunner().invoke(main, ["train", "--epochs", "1"])
    assert result.exit_code == 1 and result.output.strip() == (
        "Error: internal error (a bug in normlab), TypeError: unsupported operand type(s); "
        "run with normlab --debug or NORMLAB_DEBUG=1 for the traceback")
    monkeypatch.setattr(lab_train, "train", lambda config, **_: (_ for _ in ()).throw(ValueError("bad setting")))
    result = CliRunner().invoke(main, ["train", "--epochs", "1"])
    assert result.exit_code == 1 and result.output.strip() == "Error: bad setting"

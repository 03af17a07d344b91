"""Kills its parent process (which, unfenced, is the grader)."""
import os
import signal

from _honest import layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    os.kill(os.getppid(), signal.SIGKILL)
    raise RuntimeError(f"killed its parent {os.getppid()} and lived on")

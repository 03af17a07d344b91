"""Signals every process it may (kill -1): in a class, the other students' workers. Signal 0 asks
without sending, so that if this ever got out it would still harm nothing; what it may reach is
the same as for SIGKILL."""
import os

from _honest import layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    try:
        os.kill(-1, 0)
    except OSError as exc:
        raise RuntimeError(f"kill -1: {exc.strerror}") from None
    raise RuntimeError("kill -1 reached other processes")

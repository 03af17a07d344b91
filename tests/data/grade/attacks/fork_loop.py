"""Forks children that leave the process group and sleep; bounded at 200 so a missing limit cannot hurt."""
import os
import time

from _honest import layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    started = 0
    try:
        for _ in range(200):
            if os.fork() == 0:
                os.setsid()  # out of the worker's process group and session
                time.sleep(60)
                os._exit(0)
            started += 1
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} after {started} processes as uid {os.getuid()}") from None
    raise RuntimeError(f"forked {started} processes as uid {os.getuid()} without hitting a limit")

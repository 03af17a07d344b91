"""Takes address space 256 MiB at a time (without touching it) until something stops it."""
import numpy as np

from _honest import layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    hoard = [np.empty(1 << 25) for _ in range(64)]  # 64 x 256 MiB = 16 GiB
    raise RuntimeError(f"took {len(hoard) * 256} MiB without hitting a limit")

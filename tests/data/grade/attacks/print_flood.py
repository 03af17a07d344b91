"""Prints 100 MB on its first call."""
import sys

from _honest import layernorm_forward  # noqa: F401

printed = False


def batchnorm_forward(x, gamma, beta, bn_param):
    global printed
    if not printed:
        printed = True
        chunk = "x" * (1 << 20) + "\n"
        for _ in range(100):
            sys.stdout.write(chunk)
        sys.stdout.flush()
    return x, None

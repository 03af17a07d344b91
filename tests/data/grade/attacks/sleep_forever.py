"""Never returns."""
import time

from _honest import layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    time.sleep(10 ** 6)

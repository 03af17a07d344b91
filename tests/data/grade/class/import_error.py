"""Fails at import: the functions are there but cannot be run."""
import numpy as np

undefined_name_at_import  # noqa: B018, F821


def batchnorm_forward(x, gamma, beta, bn_param):
    return x, None

from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward with the right numbers that centres x in place (the caller's x changes)."""
import numpy as np

from .course_batchnorm import batchnorm_forward_with


def normalize_in_place(x, mean, var, eps):
    x -= mean
    return x / np.sqrt(var + eps)


batchnorm_forward = batchnorm_forward_with(normalize=normalize_in_place)

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

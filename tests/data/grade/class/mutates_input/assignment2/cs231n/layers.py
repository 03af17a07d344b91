"""batchnorm_forward with the right numbers that centres x in place (the caller's x changes)."""
import numpy as np

from .course_batchnorm import batchnorm_forward_with


def normalize_in_place(x, mean, var, eps):
    x -= mean
    return x / np.sqrt(var + eps)


batchnorm_forward = batchnorm_forward_with(normalize=normalize_in_place)

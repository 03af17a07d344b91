from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward that normalizes right but keeps the unbiased variance as running variance (PyTorch's rule)."""
from .course_batchnorm import batchnorm_forward_with, update


def unbiased(running_mean, running_var, mean, var, momentum, x):
    n = x.shape[0]
    return update(running_mean, running_var, mean, var * n / (n - 1), momentum, x)


batchnorm_forward = batchnorm_forward_with(update=unbiased)

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward with momentum swapped in the running update."""
from course_batchnorm import batchnorm_forward_with


def swapped(running_mean, running_var, mean, var, momentum, x):
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


batchnorm_forward = batchnorm_forward_with(update=swapped)

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

"""batchnorm_forward with momentum swapped in the running update."""
from course_batchnorm import batchnorm_forward_with


def swapped(running_mean, running_var, mean, var, momentum, x):
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


batchnorm_forward = batchnorm_forward_with(update=swapped)

from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward that adds eps after the square root, in train and in test mode."""
import numpy as np

from course_batchnorm import batchnorm_forward_with

batchnorm_forward = batchnorm_forward_with(normalize=lambda x, mean, var, eps: (x - mean) / (np.sqrt(var) + eps))

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

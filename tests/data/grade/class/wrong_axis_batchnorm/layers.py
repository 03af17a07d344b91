from reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward with the statistics over the features (axis 1) instead of the batch."""
from course_batchnorm import batchnorm_forward_with

batchnorm_forward = batchnorm_forward_with(
    moments=lambda x: (x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)))

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

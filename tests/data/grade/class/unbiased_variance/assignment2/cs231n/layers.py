from .reference_layers import *  # noqa: F401,F403 - the rest of the assignment, done right
"""batchnorm_forward with the unbiased variance (ddof=1), for normalizing and for the running variance."""
from .course_batchnorm import batchnorm_forward_with

batchnorm_forward = batchnorm_forward_with(moments=lambda x: (x.mean(axis=0), x.var(axis=0, ddof=1)))

del batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache

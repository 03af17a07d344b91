"""batchnorm_forward with the statistics over the features (axis 1) instead of the batch."""
from course_batchnorm import batchnorm_forward_with

batchnorm_forward = batchnorm_forward_with(
    moments=lambda x: (x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)))

"""A right batchnorm_backward_alt that is slower than batchnorm_backward: it runs the staged graph four times
(twice was too close: under a loaded test run one shape's medians once read 1.07x, where 0.5x was meant)."""
from layers import batchnorm_backward, batchnorm_forward  # noqa: F401


def batchnorm_backward_alt(dout, cache):
    for _ in range(3):
        batchnorm_backward(dout, cache)
    return batchnorm_backward(dout, cache)

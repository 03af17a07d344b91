"""A batchnorm_forward that never returns and leaves a child process behind; layernorm is fine."""
import subprocess

from layers import batchnorm_backward, layernorm_backward, layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    subprocess.Popen(["sleep", "300"])
    while True:
        pass

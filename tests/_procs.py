"""Process helpers only the tests need: bounded commands and a port for torchrun-style launches."""

from __future__ import annotations

import socket
import subprocess

from normlab.procs import kill_group


def run(cmd, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)``, bounded for its whole tree.

    The command runs in a new session (its own process group). On timeout the
    whole group is killed, not only the direct child, and
    subprocess.TimeoutExpired is raised; after a normal exit any process the
    command left behind in its group is killed too.
    """
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
        finally:
            kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy by nature: only for env:// launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

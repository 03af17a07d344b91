"""Process helpers only the tests need: bounded commands and a port for torchrun-style launches."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

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


def kill_when(proc: subprocess.Popen, ready, *, after: float, timeout: float = 60) -> None:
    """SIGKILL ``proc`` ``after`` seconds once ``ready()`` holds (or ``timeout`` passed), and reap it.

    Fails (AssertionError with its stderr) if the process ended by itself before the kill.
    """
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

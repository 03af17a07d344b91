"""Bounded multi-process runs on one machine: a port-free rendezvous, spawn with a deadline, bounded commands.

``local_rendezvous()`` gives an ``init_method`` for
``torch.distributed.init_process_group`` backed by a file in a fresh private
directory, so no TCP port has to be picked (picking a free port by binding
port 0 and closing it races with every other process on the machine).
``join(context, timeout)`` waits for the processes of
``torch.multiprocessing.spawn(..., join=False)`` and stops them all when the
deadline passes or the wait is interrupted. ``run(cmd, timeout)`` is
``subprocess.run`` in a new session that, on timeout, kills the whole process
group, grandchildren (e.g. spawned ranks) included; ``end_session(proc)``
does the same for a long-lived ``Popen`` started in its own session.
``free_port()`` is only for launchers that need a port number (torchrun's
env:// rendezvous).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

STOP_GRACE_S = 5.0


@contextlib.contextmanager
def local_rendezvous():
    """Yield a ``file://`` init_method for the ranks of one machine; the directory is removed afterwards.

    torch's FileStore needs a file that no earlier group used, hence a new directory per run.
    """
    # Ranks of one machine talk over loopback: gloo would otherwise pick the
    # interface the host name resolves to. A value the user set is kept.
    pinned = "GLOO_SOCKET_IFNAME" not in os.environ and Path("/sys/class/net/lo").exists()
    if pinned:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        with tempfile.TemporaryDirectory(prefix="normlab-rendezvous-") as directory:
            yield Path(directory, "store").as_uri()
    finally:
        if pinned:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Racy by nature (another process may take it before it is bound again):
    use :func:`local_rendezvous` wherever no port number is required.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(context, timeout: float | None = None) -> None:
    """Wait until every process of a ``torch.multiprocessing`` ProcessContext has exited.

    timeout: overall deadline in seconds (None: no deadline). When it passes,
    or the wait is interrupted (Ctrl-C), the processes are terminated and
    TimeoutError (or the interruption) is raised. A process that fails makes
    ``ProcessContext.join`` stop the others and raise, as with ``spawn(join=True)``.
    """
    end = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(context.processes)} spawned processes did not finish within "
                                   f"{timeout:g} s; they were stopped")
            # Short slices keep Ctrl-C and the deadline responsive.
            if context.join(timeout=1.0 if remaining is None else min(remaining, 1.0)):
                return
    except BaseException:
        stop(context.processes)
        raise


def stop(processes, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the live processes, SIGKILL those still alive ``grace`` seconds later, and reap them."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    end = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, end - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


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


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc``, started with ``start_new_session=True``, if any of it is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session leader's pid is the group id
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def end_session(proc: subprocess.Popen, grace: float = 0.0) -> int:
    """Give ``proc`` up to ``grace`` seconds to exit, then SIGKILL its process group and reap it.

    For a process started with ``start_new_session=True``: whatever it left
    behind in its group is killed too. Returns the exit code (negative: the signal).
    """
    if grace > 0:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    return proc.wait()

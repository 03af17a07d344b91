"""Bounded multi-process runs on one machine: spawn workers, collect their results, stop them all on failure.

``spawn(fn, args, nprocs)`` runs ``fn(rank, *args)`` in ``nprocs`` fresh
processes (the ``spawn`` start method: nothing of this process's state, no
threads or locks, leaks into them) and returns their results in rank order.
The first worker that raises ends the run: every worker is stopped (SIGTERM,
then SIGKILL after a grace period, so a stopped or stuck one goes too) and
:class:`WorkerError` names that rank and its error. An overall deadline is
optional. ``run_ranks`` does the same inside a torch.distributed gloo group
whose ranks rendezvous through a file in a private directory
(``local_rendezvous``): no TCP port is picked, so nothing races for one.
``end_session(proc)`` ends a ``Popen`` started in its own session together
with whatever it left behind in its process group.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

STOP_GRACE_S = 5.0
POLL_S = 0.2


class WorkerError(RuntimeError):
    """A spawned worker failed. ``rank`` is the first worker that failed (None if none said why)."""

    def __init__(self, message: str, rank: int | None = None, error: str | None = None):
        super().__init__(message)
        self.rank, self.error = rank, error


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


@contextlib.contextmanager
def child_environment(env: dict[str, str] | None):
    """Variables the processes started inside the block read at startup; the user's own values win;
    restored afterwards."""
    added = [name for name in (env or {}) if name not in os.environ]
    for name in added:
        os.environ[name] = env[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _worker(rank, fn, args, results):
    try:
        value = fn(rank, *args)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops every worker
        results.put(("error", rank, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    results.put(("ok", rank, value))


def spawn(fn: Callable, args: tuple, nprocs: int, *, timeout: float | None = None,
          env: dict[str, str] | None = None, what: str = "worker processes") -> list:
    """Run ``fn(rank, *args)`` for rank 0..nprocs-1 in spawned processes; their return values in rank order.

    fn, args and the return values must pickle (fn a module-level function).
    timeout: seconds for the whole run (None: no deadline). env: variables
    set for the workers unless already set here. Raises WorkerError when a
    worker raises, dies without a result or the deadline passes; every
    worker is stopped before it is raised (also on Ctrl-C).
    """
    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    processes = [ctx.Process(target=_worker, args=(rank, fn, args, results), daemon=True) for rank in range(nprocs)]
    try:
        with child_environment(env):
            for process in processes:
                process.start()
        return _collect(processes, results, timeout, what)
    finally:
        stop(processes)


def _collect(processes, results, timeout, what) -> list:
    end = None if timeout is None else time.monotonic() + timeout
    values: dict[int, object] = {}
    while len(values) < len(processes):
        while not results.empty():
            kind, rank, value = results.get()
            if kind == "error":
                raise WorkerError(f"{what} failed on rank {rank} of {len(processes)}: {value}", rank, value)
            values[rank] = value
        dead = [r for r, p in enumerate(processes) if p.exitcode is not None and r not in values]
        if dead and results.empty():
            time.sleep(POLL_S)  # a result put just before exiting may still be in the pipe
            if results.empty():
                raise WorkerError(f"{what}: rank {dead[0]} of {len(processes)} exited with code "
                                  f"{processes[dead[0]].exitcode} without a result", dead[0])
        if end is not None and time.monotonic() > end:
            raise WorkerError(f"{what} did not finish within {timeout:g} s; they were stopped")
        time.sleep(POLL_S)
    return [values[r] for r in range(len(processes))]


def stop(processes, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the live processes, SIGKILL those still alive ``grace`` seconds later, and reap them.

    A stopped process (SIGSTOP, Ctrl-Z) holds a SIGTERM pending until it runs
    again, so each also gets SIGCONT: it ends at once instead of after the grace.
    """
    for process in processes:
        if process.is_alive():
            process.terminate()
            with contextlib.suppress(ProcessLookupError, AttributeError):  # gone already; no SIGCONT on Windows
                os.kill(process.pid, signal.SIGCONT)
    end = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, end - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _in_group(rank, world_size, init_method, group_timeout, fn, args):
    """One rank of :func:`run_ranks`: join the gloo group, run fn, wait for every rank, leave."""
    import torch.distributed as dist

    # The timeout bounds the rendezvous and every collective: a dead peer ends the run instead of hanging it.
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=group_timeout))
    try:
        value = fn(*args)
        dist.barrier()  # e.g. rank 0's last checkpoint is written before any rank reports success
        return value
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, args: tuple, world_size: int, *, group_timeout: float, timeout: float | None = None,
              env: dict[str, str] | None = None, what: str = "ranks") -> list:
    """``fn(*args)`` on ``world_size`` local ranks of a torch.distributed gloo group; results in rank order.

    group_timeout: seconds a rank waits in the rendezvous or a collective
    before it fails (so a dead peer fails the others); timeout, env: as for
    :func:`spawn`. Needs PyTorch.
    """
    with local_rendezvous() as init_method:
        return spawn(_in_group, (world_size, init_method, group_timeout, fn, args), world_size,
                     timeout=timeout, env=env, what=what)



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

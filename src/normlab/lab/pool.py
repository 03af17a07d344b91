"""Independent runs in parallel processes: a small pool that takes a callable.

``run_all(fn, items, jobs)`` calls ``fn(item)`` for every item and returns
the results in the items' order, whatever order they finish in. With
``jobs == 1`` the calls run here, one after the other; with more, in
``jobs`` spawned processes, each taking the next item when it finishes one.
Given ``costs``, the costliest items go first, so no process is left with a
long run at the end while the others idle (longest-processing-time-first).

Every call runs with the fused kernels and BLAS on one thread, here as in a
worker: a run then computes the same floats whichever process runs it and
however many run at once, and small per-step tensors do not pay for thread
hand-offs (two threads per kernel were measured 3-4x slower per training
step than one on a shared 2-core machine).

A call that raises ends the whole: every worker is stopped (SIGTERM, then
SIGKILL) and :class:`RunError` names the item and carries the traceback
(with ``jobs == 1`` too). A worker that dies without a result (killed, out
of memory) ends it the same way.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import traceback
from typing import Callable, Sequence

from .. import procs

#: Environment for the workers: one BLAS/OpenMP/Numba thread each (a value the user set wins).
THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "NUMBA_NUM_THREADS")}
POLL_S = 0.1


class RunError(RuntimeError):
    """A run failed in the pool. ``index``: the item; ``details``: the worker's traceback (or None)."""

    def __init__(self, message: str, index: int | None = None, details: str | None = None):
        super().__init__(message)
        self.index, self.details = index, details


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def single_threaded():
    """Run the fused kernels and BLAS on one thread inside the block (both restored after)."""
    from threadpoolctl import threadpool_limits

    from .. import threads

    before = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        threads.set_num_threads(before)


def run_all(fn: Callable, items: Sequence, jobs: int, *, costs: Sequence[float] | None = None,
            labels: Sequence[str] | None = None, on_done: Callable | None = None,
            on_wait: Callable | None = None) -> list:
    """``[fn(item) for item in items]``, in ``jobs`` processes.

    fn: a module-level function (it is pickled by reference); items and the
        results must pickle.
    costs: relative cost of each item; the costliest are started first.
    labels: names of the items, for errors.
    on_done(index, result): called here as each item finishes.
    on_wait(): called here about every 0.1 s while waiting for a result.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if costs is not None and len(costs) != len(items):
        raise ValueError(f"costs must have one entry per item: {len(costs)} for {len(items)} items")
    order = list(range(len(items)))
    if costs is not None:
        order.sort(key=lambda i: -costs[i])  # stable: equal costs keep the items' order
    name = (lambda i: labels[i]) if labels is not None else (lambda i: f"item {i}")
    if jobs == 1 or len(items) <= 1:
        return _run_here(fn, items, order, name, on_done)
    return _run_in_processes(fn, items, order, min(jobs, len(items)), name, on_done, on_wait)


def _run_here(fn, items, order, name, on_done) -> list:
    values = [None] * len(items)
    with single_threaded():
        for i in order:
            try:
                values[i] = fn(items[i])
            except Exception as exc:
                raise RunError(f"{name(i)} failed: {type(exc).__name__}: {exc}", i, traceback.format_exc()) from exc
            if on_done is not None:
                on_done(i, values[i])
    return values


def _worker(fn, tasks, results) -> None:
    with single_threaded():
        while (task := tasks.get()) is not None:
            index, item = task
            try:
                value = fn(item)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops every worker
                results.put(("error", index, (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
                return
            results.put(("ok", index, value))


def _run_in_processes(fn, items, order, jobs, name, on_done, on_wait) -> list:
    ctx = multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.SimpleQueue()
    for i in order:
        tasks.put((i, items[i]))
    for _ in range(jobs):
        tasks.put(None)  # one stop sign per worker
    workers = [ctx.Process(target=_worker, args=(fn, tasks, results), daemon=True) for _ in range(jobs)]
    values: dict[int, object] = {}
    try:
        with procs.child_environment(THREAD_ENV):
            for worker in workers:
                worker.start()
        while len(values) < len(items):
            _drain(results, values, name, on_done)
            if len(values) == len(items):
                break
            _check_alive(workers, results, len(items) - len(values))
            if on_wait is not None:
                on_wait()
            time.sleep(POLL_S)
    finally:
        procs.stop(workers)
        tasks.cancel_join_thread()  # items a stopped worker never took must not hold up exit
        tasks.close()
    return [values[i] for i in range(len(items))]


def _drain(results, values, name, on_done) -> None:
    while not results.empty():
        kind, index, value = results.get()
        if kind == "error":
            message, details = value
            raise RunError(f"{name(index)} failed: {message}", index, details)
        values[index] = value
        if on_done is not None:
            on_done(index, value)


def _check_alive(workers, results, missing: int) -> None:
    """Raise if a worker died without reporting, or every worker is gone with results missing."""
    dead = [w for w in workers if w.exitcode not in (None, 0)]
    if not dead and not all(w.exitcode == 0 for w in workers):
        return
    time.sleep(POLL_S)  # a result put just before exiting may still be in the pipe
    if results.empty():
        code = dead[0].exitcode if dead else 0
        raise RunError(f"a worker process exited with code {code} with {missing} run(s) not done")

"""Data-parallel training of the lab's nets over torch.distributed (gloo, CPU).

``normlab train --nproc K`` spawns K processes on this machine that
rendezvous through a file in a private temporary directory (no port to pick,
see :func:`normlab.procs.local_rendezvous`); under torchrun (RANK,
WORLD_SIZE and MASTER_ADDR set) each process joins torchrun's group instead,
on one machine or several.
Every process then runs the ordinary :func:`normlab.lab.train.run` with
``data_parallel=True``: the Solver shards each global batch and
``FullyConnectedNet.loss`` synchronizes batch statistics and sums the
gradients (see :class:`normlab.lab.model.Shard`), so all processes hold the
same weights as a single process trained on the same global batches.

A process that raises reports its error to the launcher and leaves; its
peers fail in their next collective once the connection drops (or after
``config.timeout`` seconds), and the launcher stops them all and raises
:class:`DataParallelError` naming the rank that failed first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import timedelta

from .. import procs

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
INSTALL_HINT = 'data-parallel training (--nproc > 1 or torchrun) needs PyTorch: pip install "normlab[torch]"'


class DataParallelError(RuntimeError):
    """A data-parallel run failed; the message names the rank that failed first and its error."""


def launched_by_torchrun(environ=None) -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def train_data_parallel(config, *, verbose: bool = True, progress: str = "auto") -> dict | None:
    """Run ``config`` data-parallel: spawn ``config.nproc`` local processes, or join torchrun's group.

    Returns rank 0's summary (with ``processes``, the number of ranks); under
    torchrun, ranks other than 0 return None. Spawned processes print their
    progress on this process's stdout (only rank 0 prints).
    """
    _require_torch()
    if launched_by_torchrun():
        if config.nproc != 1:
            raise ValueError(f"started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}), which starts the "
                             f"processes itself: leave out --nproc (got {config.nproc})")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        return _run_rank(config, "env://", None, None, _threads_per_process(local), verbose, progress)
    return _spawn(config, verbose, progress)


# ----------------------------------------------------------------------------- launcher

def _require_torch() -> None:
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    if not (dist.is_available() and dist.is_gloo_available()):
        raise RuntimeError("this PyTorch build has no torch.distributed gloo backend, which data-parallel "
                           "training needs; " + INSTALL_HINT)


def _threads_per_process(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


@contextlib.contextmanager
def _thread_environment(threads: int):
    """Set the thread-count variables the children read at startup (unless the user set them), then restore."""
    added = [name for name in THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = str(threads)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _spawn(config, verbose, progress):
    import torch.multiprocessing as mp

    nproc = config.nproc
    reports = mp.get_context("spawn").SimpleQueue()
    threads = _threads_per_process(nproc)
    # No overall deadline: training may legitimately run for hours. What can hang is bounded in the
    # workers: config.timeout bounds the rendezvous and every collective, so a dead or stuck peer
    # makes the others raise and exit, and join() then stops them all (also on Ctrl-C).
    try:
        with procs.local_rendezvous() as init_method:
            with _thread_environment(threads):
                processes = mp.spawn(_worker, args=(nproc, init_method, threads, config, reports, verbose,
                                                    progress), nprocs=nproc, join=False)
            procs.join(processes)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        # join() has stopped the other processes; the reports say which rank failed first and why.
        errors = [(rank, message) for kind, rank, message in _drain(reports) if kind == "error"]
        if errors:
            rank, message = errors[0]
            raise DataParallelError(f"data-parallel training failed on rank {rank} of {nproc}: {message}") from exc
        raise DataParallelError(f"data-parallel training failed: {exc}") from exc
    summaries = [message for kind, rank, message in _drain(reports) if kind == "summary"]
    if not summaries:  # pragma: no cover - rank 0 always reports when every process exits cleanly
        raise DataParallelError("data-parallel training ended without a summary from rank 0")
    return summaries[0]


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _worker(rank, world_size, init_method, threads, config, reports, verbose, progress):
    """One spawned process: report the summary (rank 0) or the error, which ends the whole run."""
    try:
        summary = _run_rank(config, init_method, rank, world_size, threads, verbose, progress)
        if rank == 0:
            reports.put(("summary", rank, summary))
    except BaseException as exc:
        reports.put(("error", rank, f"{type(exc).__name__}: {exc}"))
        raise


# ----------------------------------------------------------------------------- one rank

def _run_rank(config, init_method, rank, world_size, threads, verbose, progress):
    """Join the process group, train this rank's part with the ordinary run(), leave the group."""
    import torch
    import torch.distributed as dist

    from . import train as lab_train

    torch.set_num_threads(threads)
    group_args = {} if rank is None else {"rank": rank, "world_size": world_size}
    # The timeout bounds the rendezvous and every collective: a dead peer ends the run instead of hanging it.
    dist.init_process_group("gloo", init_method=init_method, timeout=timedelta(seconds=config.timeout),
                            **group_args)
    try:
        me = dist.get_rank()
        single = dataclasses.replace(config, nproc=1)
        summary = lab_train.run(single, verbose=verbose and me == 0, progress=progress, data_parallel=True)
        dist.barrier()  # rank 0's last checkpoint is written before any process reports success
    finally:
        dist.destroy_process_group()
    return summary if me == 0 else None

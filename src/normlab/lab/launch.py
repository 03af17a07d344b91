"""Data-parallel runs of the lab over torch.distributed (gloo, CPU): a launcher that takes a callable.

:func:`run_data_parallel` runs ``fn(*args)`` once per rank inside a process
group and returns rank 0's result. ``normlab train --nproc K`` passes the
ordinary single-process training function: K local processes are spawned
(``normlab.procs.run_ranks``, a file rendezvous with no port to pick); under
torchrun (RANK, WORLD_SIZE and MASTER_ADDR set) this process joins
torchrun's group instead, on one machine or several. Inside, the Solver
shards each global batch and the model synchronizes what the placement
says (``normlab.lab.sharding``), so every process holds the same weights as
a single process trained on the same global batches.

A process that raises ends the run: its peers fail in their next collective
once the connection drops (or after ``timeout`` seconds), every process is
stopped, and :class:`DataParallelError` names the rank that failed first.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable

from .. import procs

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
INSTALL_HINT = 'data-parallel training (--nproc > 1 or torchrun) needs PyTorch: pip install "normlab[torch]"'


class DataParallelError(RuntimeError):
    """A data-parallel run failed; the message names the rank that failed first and its error."""


class TorchMissingError(ImportError):
    """Data-parallel training was asked for without a PyTorch that has torch.distributed's gloo backend."""


def launched_by_torchrun(environ=None) -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def run_data_parallel(fn: Callable, args: tuple, nproc: int, timeout: float):
    """``fn(*args)`` on every rank of a gloo process group; returns rank 0's result.

    nproc: local processes to spawn (must be 1 under torchrun, which starts
    them itself); timeout: seconds a rank waits for its peers in the
    rendezvous or a collective. Under torchrun, ranks other than 0 return None.
    fn and args must pickle (fn a module-level function).
    """
    _require_torch()
    if launched_by_torchrun():
        if nproc != 1:
            raise ValueError(f"started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}), which starts the "
                             f"processes itself: leave out --nproc (got {nproc})")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        return _join_torchrun(fn, args, _threads_per_process(local), timeout)
    threads = _threads_per_process(nproc)
    try:
        results = procs.run_ranks(_with_threads, (threads, fn, args), nproc, group_timeout=timeout,
                                  env={name: str(threads) for name in THREAD_VARIABLES},
                                  what="data-parallel training")
    except procs.WorkerError as exc:
        raise DataParallelError(str(exc)) from exc
    return results[0]


def _require_torch() -> None:
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise TorchMissingError(INSTALL_HINT) from exc
    if not (dist.is_available() and dist.is_gloo_available()):
        raise TorchMissingError("this PyTorch build has no torch.distributed gloo backend, which data-parallel "
                           "training needs; " + INSTALL_HINT)


def _threads_per_process(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


def _with_threads(threads: int, fn: Callable, args: tuple):
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def _join_torchrun(fn: Callable, args: tuple, threads: int, timeout: float):
    """This process as one rank of torchrun's env:// group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=timeout))
    try:
        result = _with_threads(threads, fn, args)
        dist.barrier()  # rank 0's last checkpoint is written before any process reports success
        return result if dist.get_rank() == 0 else None
    finally:
        dist.destroy_process_group()

"""Synchronization overhead: normlab.torch.SyncBatchNorm at world size 2 against local batch norm.

Two processes are spawned on 127.0.0.1 and joined by gloo; each holds one
half of every global batch (``distributed.shard_bounds``) and times, on its
shard, with the runner's blocks and rounds (all ranks run the same blocks in
the same order, so the collectives pair up):

``local``       normlab.torch.BatchNorm on the shard, no communication;
``torch.nn``    torch.nn.BatchNorm1d/2d on the shard (what a CPU user has
                without synchronization: torch.nn.SyncBatchNorm refuses CPU tensors);
``sync-math``   SyncBatchNorm's Function with a one-rank group: the same
                arithmetic as ``sync`` (float64 moments merged with Chan's
                formula, the corrected closed-form backward), no communication;
``sync``        normlab.torch.SyncBatchNorm over both ranks: one all_gather
                forward, one all_reduce backward;
``collectives`` the two collectives alone, on arrays of the sizes ``sync``
                sends (forward: all_gather of (3, C) float64; backward:
                all_reduce of (2, C) float64).

So ``sync - local`` is the whole overhead of synchronization, ``sync-math -
local`` its arithmetic and ``sync - sync-math`` its communication, waits for
the slower rank included. A step is as slow as the slowest rank, so the
report takes, per row, the larger of the ranks' medians (the JSON keeps both).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from .. import procs
from .cases import Case, Impl, _inputs
from .runner import PHASES, check_repeat, machine_info, prepare, time_impls
from .torch_suite import batchnorm_case, module_impl, module_pair

SYNC_SUITE = ("sbn:32x64x56x56", "bn:4096x1024")
SYNC_QUICK = ("bn:64x8", "sbn:4x4x6x6")
SYNC_IMPLS = ("local", "torch.nn", "sync-math", "sync", "collectives")


def sync_impls(case: Case, dtype, rank: int, world_size: int, solo_group) -> list[Impl]:
    """The five implementations of the module docstring on this rank's shard of the global batch."""
    import normlab.torch as nt
    from .. import distributed
    from ..torch.sync_batchnorm import SyncBatchNormFunction

    x_all, _, _, dout_all = _inputs(case, dtype)
    lo, hi = distributed.shard_bounds(case.shape[0], rank, world_size)
    ours, reference, x, dout = module_pair(case, dtype, x_all[lo:hi], dout_all[lo:hi])
    sync = nt.SyncBatchNorm(case.channels, dtype=ours.weight.dtype).train()
    sync.load_state_dict(ours.state_dict())
    solo = nt.SyncBatchNorm(case.channels, dtype=ours.weight.dtype).train()
    solo.load_state_dict(ours.state_dict())

    def solo_forward():
        return SyncBatchNormFunction.apply(x, solo.weight, solo.bias, solo.eps, solo_group, solo.backend)[0]

    solo_impl = module_impl("sync-math", solo, x, dout)
    solo_impl.forward = solo_forward

    gather = np.zeros((3, case.channels))
    reduce = np.zeros((2, case.channels))
    collectives = Impl("collectives", lambda: distributed.all_gather_rows(gather),
                       lambda _: distributed.all_reduce_sum(reduce), None, False)
    return [module_impl("local", ours, x, dout), module_impl("torch.nn", reference, x, dout), solo_impl,
            module_impl("sync", sync, x, dout), collectives]


def _rank_timings(world_size, case_ids, dtypes, repeat, rounds, threads):
    """One rank, inside the process group: time every case and dtype; the payload for the parent."""
    import torch.distributed as dist

    threads = prepare(threads, repeat)
    rank = dist.get_rank()
    # new_group is collective: every rank creates every one-rank group, in the same order.
    solo_group = [dist.new_group([r]) for r in range(world_size)][rank]
    results = []
    for case_id in case_ids:
        case = batchnorm_case(case_id)
        for dtype in dtypes:
            impls = sync_impls(case, dtype, rank, world_size, solo_group)
            timed = time_impls(impls, repeat, rounds)
            results.append({"case": case.id, "dtype": dtype, "timed": timed, "loadavg": os.getloadavg()[0]})
            dist.barrier()
    return {"results": results, "threads": threads}


def run_sync(cases=None, dtypes=("float32",), repeat: int = 7, threads: int | None = None, quick: bool = False,
             rounds: int = 3, world_size: int = 2, timeout_s: float = 600.0,
             log: Callable[[str], None] = print) -> dict:
    """Spawn ``world_size`` ranks on loopback (``threads`` each, default 1) and time them; JSON-ready dict.

    RuntimeError if a rank fails or the run takes longer than ``timeout_s`` (the ranks are then killed).
    """
    import torch  # noqa: F401 - ImportError here says the suite needs PyTorch

    if world_size < 2:
        raise ValueError(f"world_size must be >= 2 for a synchronized batch norm, got {world_size}")
    threads = threads or 1
    case_list = [batchnorm_case(c) for c in (cases or (SYNC_QUICK if quick else SYNC_SUITE))]
    for case in case_list:
        if case.shape[0] < 2 * world_size:
            raise ValueError(f"case {case.id!r}: the batch of {case.shape[0]} is too small to split over "
                             f"{world_size} ranks (at least 2 samples each)")
    check_repeat(repeat)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the ranks
    loadavg_start = os.getloadavg()
    case_ids = [c.id for c in case_list]
    log(f"sync suite: {world_size} ranks on 127.0.0.1 (gloo), {threads} thread(s) each")
    try:
        reports = procs.run_ranks(_rank_timings, (world_size, case_ids, tuple(dtypes), repeat, rounds, threads),
                                  world_size, group_timeout=timeout_s, timeout=timeout_s, what="sync benchmark")
    except procs.WorkerError as exc:  # the ranks are stopped already
        raise RuntimeError(str(exc)) from exc
    info = machine_info(threads)
    info["loadavg_start"], info["loadavg_end"] = loadavg_start, os.getloadavg()
    info["world_size"] = world_size
    info["threads_per_rank"] = reports[0]["threads"]
    rows = _rows(case_list, dtypes, reports, world_size)
    for row in rows:
        log(f"{row['case']:>18} {row['dtype']:>8} {row['impl']:>12}: fwd {row['forward_ms']:8.3f} ms  "
            f"bwd {row['backward_ms']:8.3f} ms  both {row['both_ms']:8.3f} ms")
    return {"suite": "sync", "machine": info, "repeat": repeat, "rounds": rounds, "rows": rows,
            "summary": summarize_sync(rows), "notes": []}


def _rows(case_list, dtypes, reports, world_size) -> list[dict]:
    """One row per case, dtype and impl: the slowest rank's median per phase, every rank's in ``ranks``."""
    rows = []
    for i, (case, dtype) in enumerate((c, d) for c in case_list for d in dtypes):
        per_rank = [reports[r]["results"][i] for r in range(world_size)]
        for impl in SYNC_IMPLS:
            row = {"case": case.id, "kind": case.kind, "shape": list(case.shape), "dtype": dtype, "impl": impl,
                   "shard_rows": [hi - lo for lo, hi in (_bounds(case, r, world_size) for r in range(world_size))],
                   "loadavg": max(p["loadavg"] for p in per_rank), "ranks": []}
            for p in per_rank:
                row["ranks"].append({f"{phase}_ms": p["timed"][impl][phase][0] for phase in PHASES})
            for phase in PHASES:
                row[f"{phase}_ms"] = max(r[f"{phase}_ms"] for r in row["ranks"])
                row[f"{phase}_min_ms"] = min(p["timed"][impl][phase][1] for p in per_rank)
            rows.append(row)
    return rows


def _bounds(case, rank, world_size):
    from .. import distributed
    return distributed.shard_bounds(case.shape[0], rank, world_size)


def summarize_sync(rows: list[dict]) -> dict:
    """Per case: sync/local (fwd+bwd), the overhead in ms, and its split into arithmetic and communication."""
    out = {}
    for key in dict.fromkeys((r["case"], r["dtype"]) for r in rows):
        by = {r["impl"]: r["both_ms"] for r in rows if (r["case"], r["dtype"]) == key}
        out[f"{key[0]} {key[1]}"] = {
            "sync_over_local": by["sync"] / by["local"],
            "overhead_ms": by["sync"] - by["local"],
            "math_ms": by["sync-math"] - by["local"],
            "communication_ms": by["sync"] - by["sync-math"],
            "collectives_ms": by["collectives"],
        }
    return out

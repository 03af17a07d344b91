"""Run the benchmark: each implementation against PyTorch and the bandwidth bound, in one process.

Per case and dtype, every implementation is timed in its own block (all its
runs back to back, so PyTorch's OpenMP threads spinning after a call cannot
slow the next implementation's first runs; OMP_WAIT_POLICY=PASSIVE is also set
before torch is imported): warm-up, then ``repeat`` runs each of forward,
backward, and forward+backward. The blocks go round ``rounds`` times, each
implementation in turn, so a burst of load from elsewhere on the machine
hits all of them alike; the median over all runs is reported (and the minimum).

Bandwidth bound: a triad ``a = b + s*c`` over float64 arrays far beyond the
last-level cache, on the same threads, measured in the same run: before the
first case and after every case, the best of these taken as the bound (load
from elsewhere on the machine can only lower a measurement, so the best is
the closest to what the hardware allows). Effective
GB/s counts the bytes a two-pass implementation must move, as if nothing
stayed in cache: forward reads x twice and writes y (3 |x| bytes); backward
reads x and dout twice and writes dx (5 |x|); both, 8 |x|. Shapes whose x fits
in the last-level cache can exceed 100% of the bound (the second read hits
the cache); the bound is meaningful for the others.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import subprocess
import time
import tracemalloc
from typing import Callable

import numpy as np

from ..backends import output_pool
from .cases import QUICK, SUITE, Case, Impl, normlab_impls, parse_case, torch_impl

PASS_BYTES = {"forward": 3, "backward": 5, "both": 8}
PHASES = ("forward", "backward", "both")


def _times(fn: Callable[[], object], repeat: int, warmup: int = 2) -> list[float]:
    """Seconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> tuple[float, float]:
    times = _times(fn, repeat, warmup)
    return statistics.median(times) * 1e3, min(times) * 1e3


_LOOPS: dict = {}


def _parallel_loops() -> dict:
    """The triad a = b + s*c and a fill a = s, parallel on Numba's threads (compiled once per process)."""
    if not _LOOPS:
        import numba

        @numba.njit(parallel=True, cache=False)
        def triad(a, b, c, s):
            for i in numba.prange(a.shape[0]):
                a[i] = b[i] + s * c[i]

        @numba.njit(parallel=True, cache=False)
        def fill(a, s):
            for i in numba.prange(a.shape[0]):
                a[i] = s

        _LOOPS.update(triad=triad, fill=fill)
    return _LOOPS


def triad_gbps(repeat: int = 7, n: int = 1 << 24) -> float:
    """Memory bandwidth of a = b + s*c (float64, 3 x n x 8 bytes per pass) on Numba's threads, GB/s."""
    triad = _parallel_loops()["triad"]
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
    median_ms, _ = _median_ms(lambda: triad(a, b, c, 3.0), repeat)
    return 3 * 8 * n / (median_ms * 1e-3) / 1e9


def first_touch_ms(nbytes: int, repeat: int = 7) -> float:
    """What a fresh output of ``nbytes`` costs beyond a reused one, ms: filling a new np.empty (its pages faulted
    in and zeroed by the kernel on first touch) against filling a buffer already touched, on Numba's threads,
    alternately; the difference of the medians."""
    fill = _parallel_loops()["fill"]
    n = max(nbytes // 8, 1)
    keep = np.empty(n)
    fill(keep, 1.0)
    fresh, reused = [], []
    for _ in range(repeat):
        fresh += _times(lambda: fill(np.empty(n), 1.0), 1, warmup=0)
        reused += _times(lambda: fill(keep, 1.0), 1, warmup=0)
    return max(statistics.median(fresh) - statistics.median(reused), 0.0) * 1e3


def llc_bytes() -> int | None:
    """Size of the last-level cache, from sysfs (None if unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        for entry in sorted(os.listdir(base)):
            with open(os.path.join(base, entry, "size")) as fh:
                text = fh.read().strip()
            value = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            best = max(best or 0, value)
    except (OSError, ValueError):
        return best
    return best


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "llc_bytes": llc_bytes(),
            "python": platform.python_version(), "numpy": np.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    except ImportError:
        info["numba"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def _forward_peak(impl: Impl) -> int | None:
    """Peak bytes allocated during one forward (tracemalloc; NumPy allocations only), recycled output blocks
    freed first: the memory a forward needs, not what the previous call left idle."""
    if not impl.traced:
        return None
    gc.collect()
    output_pool.clear()
    tracemalloc.start()
    try:
        state = impl.forward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del state
    return int(peak)


def _time_block(impl: Impl, repeat: int, samples: dict) -> None:
    """One block: forward, backward and both, ``repeat`` timed runs each, appended to samples."""
    state = impl.forward()
    samples["forward"] += _times(impl.forward, repeat)
    samples["backward"] += _times(lambda: impl.backward(state), repeat)
    samples["both"] += _times(lambda: impl.backward(impl.forward()), repeat)


def time_impls(impls: list[Impl], repeat: int, rounds: int) -> dict:
    """{impl name: {phase: (median ms, min ms)}} over rounds x repeat runs per phase."""
    samples = {impl.name: {phase: [] for phase in PHASES} for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            _time_block(impl, repeat, samples[impl.name])
    return {name: {phase: (statistics.median(t) * 1e3, min(t) * 1e3) for phase, t in by_phase.items()}
            for name, by_phase in samples.items()}


def set_threads(threads: int) -> None:
    """The same thread count for Numba's kernels (and the triad) and PyTorch's."""
    from ..threads import set_num_threads
    set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass


MIN_REPEAT = 7


def check_repeat(repeat) -> int:
    """Timed runs per measurement: a median of at least ``MIN_REPEAT``."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < MIN_REPEAT:
        raise ValueError(f"repeat must be an integer >= {MIN_REPEAT} (a median of at least {MIN_REPEAT} runs), "
                         f"got {repeat!r}")
    return repeat


def prepare(threads: int | None, repeat: int) -> int:
    """Check ``repeat``, set the same thread count for Numba and PyTorch (all cores for None); returns it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP pool
    check_repeat(repeat)
    from ..threads import get_num_threads, max_threads

    set_threads(threads or max_threads())
    return get_num_threads()


def run_kernel_threads(thread_counts, **options) -> dict:
    """The suite once per thread count, one after another in this process; a JSON-ready dict with each run
    under ``runs`` (keyed by the count) and their per-case ratios and shares of the bound side by side."""
    runs = {str(t): run_kernels(threads=t, **options) for t in thread_counts}
    first = next(iter(runs.values()))
    return {"suite": "kernels", "threads": [int(t) for t in runs], "machine": first["machine"], "runs": runs}


def run_kernels(cases=None, dtypes=("float32", "float64"), repeat: int = 7, threads: int | None = None,
        quick: bool = False, rounds: int = 3, log: Callable[[str], None] = print) -> dict:
    """Run the suite; returns a JSON-ready dict (machine, bandwidth, rows, notes)."""
    threads = prepare(threads, repeat)
    from ..backends import available_backends

    case_list = [parse_case(c) if isinstance(c, str) else c for c in (cases or (QUICK if quick else SUITE))]
    available = available_backends()
    notes = []
    has_torch = torch_impl(parse_case("bn:4x2"), np.float64) is not None
    if not has_torch:
        notes.append("PyTorch not installed: the torch rows and ratios are skipped (pip install 'normlab[torch]').")
    if "numba" not in available:
        notes.append("Numba did not import: the numba rows and the bandwidth bound are skipped.")

    info = machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    triads = [triad_gbps()] if "numba" in available else []
    if triads:
        import numba
        info["numba_threading_layer"] = numba.threading_layer()  # known once a parallel kernel ran
        log(f"triad bandwidth on {threads} thread(s): {triads[0]:.1f} GB/s")
    rows = []
    for case in case_list:
        for dtype in dtypes:
            impls = normlab_impls(case, dtype, available)
            t_impl = torch_impl(case, dtype)
            if t_impl is not None:
                impls.append(t_impl)
            nbytes = math.prod(case.shape) * np.dtype(dtype).itemsize
            timed = time_impls(impls, repeat, rounds)
            torch_ms = timed.get("torch")
            llc = info.get("llc_bytes")
            touch = first_touch_ms(nbytes) if llc and nbytes > llc and "numba" in available else None
            for impl in impls:
                row = {"case": case.id, "kind": case.kind, "shape": list(case.shape), "dtype": dtype,
                       "impl": impl.name, "x_bytes": nbytes, "cache_bytes": impl.cache_bytes,
                       "forward_peak_bytes": _forward_peak(impl), "loadavg": os.getloadavg()[0],
                       "first_touch_ms": touch}
                for phase in PHASES:
                    median_ms, min_ms = timed[impl.name][phase]
                    row[f"{phase}_ms"] = median_ms
                    row[f"{phase}_min_ms"] = min_ms
                    row[f"{phase}_vs_torch"] = torch_ms[phase][0] / median_ms if torch_ms else None
                    row[f"{phase}_gbps"] = PASS_BYTES[phase] * nbytes / (median_ms * 1e-3) / 1e9
                rows.append(row)
                log(f"{case.id:>18} {dtype:>8} {impl.name:>12}: fwd {row['forward_ms']:8.3f} ms  "
                    f"bwd {row['backward_ms']:8.3f} ms  both {row['both_ms']:8.3f} ms"
                    + (f"  x{row['both_vs_torch']:.2f} vs torch" if row["both_vs_torch"] else ""))
            del impls, timed
            gc.collect()
        if triads:
            triads.append(triad_gbps())
            log(f"triad bandwidth on {threads} thread(s): {triads[-1]:.1f} GB/s")
    bandwidth = max(triads) if triads else None
    for row in rows:
        for phase in PHASES:
            row[f"{phase}_of_bound"] = row[f"{phase}_gbps"] / bandwidth if bandwidth else None
    info["loadavg_end"] = os.getloadavg()
    return {"machine": info, "bandwidth_gbps": bandwidth, "triad_gbps_all": triads, "repeat": repeat,
            "rounds": rounds, "rows": rows,
            "summary": summarize(rows, info.get("llc_bytes")), "notes": notes}


#: the kernel suite's targets (issue 25): forward+backward at least ATen's speed on every case, a geometric mean
#: of at least 1.5x, and where x exceeds the last-level cache at least 70% of the bound with fresh outputs
TARGET_EVERY_CASE, TARGET_GEOMEAN, TARGET_OF_BOUND = 1.0, 1.5, 0.70


def summarize(rows: list[dict], llc: int | None) -> dict:
    """The targets: numba vs torch on every case, geometric mean, bandwidth, closed vs graph."""
    def pick(impl):
        return {(r["case"], r["dtype"]): r for r in rows if r["impl"] == impl}

    numba, torch, numpy, graph = pick("numba"), pick("torch"), pick("numpy"), pick("numpy-graph")
    out = {}
    speedups = {f"{k[0]} {k[1]}": torch[k]["both_ms"] / r["both_ms"] for k, r in numba.items() if k in torch}
    if speedups:
        out["numba_vs_torch_both"] = speedups
        out["numba_vs_torch_geomean"] = math.exp(sum(map(math.log, speedups.values())) / len(speedups))
        out["numba_faster_everywhere"] = all(v > 1 for v in speedups.values())
        out["targets_met"] = {"every_case": min(speedups.values()) >= TARGET_EVERY_CASE,
                              "geomean": out["numba_vs_torch_geomean"] >= TARGET_GEOMEAN}
    if llc:
        for name, impl_rows in (("numba", numba), ("numba+out", pick("numba+out"))):
            big = {f"{k[0]} {k[1]}": r["both_of_bound"] for k, r in impl_rows.items()
                   if r["x_bytes"] > llc and r["both_of_bound"] is not None}
            out[f"{name}_of_bound_beyond_llc"] = big
        if out["numba_of_bound_beyond_llc"] and "targets_met" in out:
            out["targets_met"]["of_bound"] = min(out["numba_of_bound_beyond_llc"].values()) >= TARGET_OF_BOUND
    closed = {f"{k[0]} {k[1]}": graph[k]["backward_ms"] / r["backward_ms"] for k, r in numpy.items() if k in graph}
    if closed:
        out["numpy_closed_vs_graph_backward"] = closed
    return out

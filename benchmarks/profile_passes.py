"""Where the Numba backend's time goes: per kernel pass, allocation, and the rest.

    PYTHONPATH=src python benchmarks/profile_passes.py bn:4096x1024 float32 [--threads 1]

Wraps each kernel the backend calls with a timer, runs forward and backward
(median over runs), and prints each pass's time with its effective GB/s
(bytes it must touch: reductions read x (and dout), writes read x (and dout)
and write the output), next to the triad bound and to the cost of
first-touching a fresh output array (page faults).
"""

import argparse
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import normlab  # noqa: E402
from normlab.backends import _numba_kernels as kernels  # noqa: E402
from normlab.bench import parse_case  # noqa: E402
from normlab.bench.cases import _inputs, _normlab_forward  # noqa: E402
from normlab.bench.runner import triad_gbps  # noqa: E402

# Arrays of x's size each pass touches (reads + writes).
TOUCHES = {"row_moments": 1, "col_moments": 1, "row_apply": 2, "col_apply": 2, "row_grad_sums": 2,
           "col_grad_sums": 2, "row_grad_apply": 3, "col_grad_apply": 3, "fused_rows_forward": 2,
           "fused_rows_backward": 3, "fused_rows_backward_elementwise": 3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("dtype", nargs="?", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    if args.threads:
        normlab.set_num_threads(args.threads)
    case = parse_case(args.case)
    x, gamma, beta, dout = _inputs(case, args.dtype)
    forward = _normlab_forward(case)

    spent = defaultdict(list)

    def timed(name, fn):
        def wrapper(*a):
            start = time.perf_counter()
            fn(*a)
            spent[name].append(time.perf_counter() - start)
        return wrapper

    for name in TOUCHES:
        par, ser = getattr(kernels, name)
        setattr(kernels, name, (timed(name, par), timed(name, ser)))

    totals = defaultdict(list)
    for i in range(args.repeat + 2):
        start = time.perf_counter()
        _, cache = forward(x, gamma, beta, backend="numba")
        mid = time.perf_counter()
        normlab.normalize_backward(dout, cache)
        end = time.perf_counter()
        if i < 2:  # warm-up
            spent.clear()
            continue
        totals["forward (whole call)"].append(mid - start)
        totals["backward (whole call)"].append(end - mid)

    def first_touch():
        np.empty_like(x).fill(0)
    first = [0.0] * args.repeat
    for i in range(args.repeat):
        start = time.perf_counter()
        first_touch()
        first[i] = time.perf_counter() - start

    bw = triad_gbps()
    print(f"{case.id} {args.dtype}, x = {x.nbytes / 2**20:.1f} MiB, threads {normlab.get_num_threads()}, "
          f"triad {bw:.1f} GB/s")
    for name, times in spent.items():
        med = statistics.median(times)
        gbps = TOUCHES[name] * x.nbytes / med / 1e9
        print(f"  {name:34s} {med * 1e3:8.3f} ms  {gbps:6.1f} GB/s  ({100 * gbps / bw:.0f}% of triad)")
    for name, times in totals.items():
        print(f"  {name:34s} {statistics.median(times) * 1e3:8.3f} ms")
    print(f"  {'fresh x-sized array, first touch':34s} {statistics.median(first) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()

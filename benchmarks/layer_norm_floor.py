"""How fast the layer-norm backward could be while its sums stay float64: the kernel's two passes timed apart.

    python benchmarks/layer_norm_floor.py [--shape 2048x256] [--threads 1] [--runs 400]

The float32 layer-norm backward makes two passes over each pair of rows: the sums (Σ γ·dy, Σ γ·dy·(x − μ) per
row and the dγ/dβ column slabs, float64 by the numerics policy: README, "Numerics") and the dx write. This
times, same process, alternating, medians over ``--runs``:

* ``sums``: the kernel's own pair-of-rows sums helper (``_numba_kernels._pair_sums``) over every row pair;
* ``dx float64``: the kernel's own dx helper (``_row_dx``), float64 arithmetic, rounded once;
* ``dx float32``: the same formula in plain float32 arithmetic, no conversions: a lower bound for any dx
  written in float32 lanes (those add exact products and sums on top, ``_numba_lanes``), and itself short of
  the README's bound (its per-term rounding is about 20× the allowed slack, docs/benchmarks.md);
* ``kernel``: the whole backward kernel (serial twin) as the library calls it;
* ``ATen``: ``aten.native_layer_norm_backward`` on the same tensors, on ``--threads`` threads (default 1).

``sums + dx float32`` is the floor for a backward that keeps float64 sums, whatever its dx pass does.
"""

import argparse
import os
import statistics
import time

import numba
import numpy as np
import torch

from normlab.backends import _numba_kernels as K

_pair_sums, _row_dx, _row_coefficients = K._pair_sums, K._row_dx, K._row_coefficients


@numba.njit(fastmath=K.FASTMATH)
def sums_pass(x, dy, w, mean, invstd, pb, pg, kx):
    """Every pair of rows through the kernel's sums helper, slabs included; each row's dx coefficients into
    kx (3, R) as the kernel forms them."""
    width = x.shape[1]
    for r in range(0, x.shape[0] - 1, 2):
        s0, s1 = invstd[r], invstd[r + 1]
        a0, a1, b0, b1 = _pair_sums(x[r], x[r + 1], dy[r], dy[r + 1], mean[r], mean[r + 1], s0, s1, w, pb, pg,
                                    True)
        _row_coefficients(r, s0, a0, b0 * s0, width, K.STATS_BATCH, kx)
        _row_coefficients(r + 1, s1, a1, b1 * s1, width, K.STATS_BATCH, kx)


@numba.njit(fastmath=K.FASTMATH)
def dx64_pass(x, dy, w, mean, s, sk2, k3, dx):
    """Every row through the kernel's dx helper (float64 arithmetic, rounded once)."""
    for r in range(x.shape[0]):
        _row_dx(x[r], dy[r], w, mean[r], s[r], sk2[r], k3[r], dx[r])


@numba.njit(fastmath=K.FASTMATH)
def dx32_pass(x, dy, w, mean, s, sk2, k3, dx):
    """The same formula in float32 throughout (w, mean and the coefficients float32 too)."""
    for r in range(x.shape[0]):
        xr, yr, out = x[r], dy[r], dx[r]
        m, a, b, c = mean[r], s[r], sk2[r], k3[r]
        for j in range(xr.shape[0]):
            out[j] = a * (w[j] * yr[j]) + (b * (xr[j] - m) + c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="2048x256", help="rows x width (default 2048x256, the transformer's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for ATen (the passes and the kernel, its serial twin: 1)")
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    rows, width = (int(v) for v in args.shape.lower().split("x"))
    if rows < 2 or rows % 2 or width < 1:
        raise SystemExit(f"--shape needs an even number of rows >= 2 and a width >= 1, got {args.shape!r}")
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = (3 + 2 * rng.standard_normal((rows, width))).astype(np.float32)
    dy = rng.standard_normal((rows, width)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, width).astype(np.float32)
    w = gamma.astype(np.float64)
    mean = x.astype(np.float64).mean(axis=1)
    invstd = 1.0 / np.sqrt(x.astype(np.float64).var(axis=1) + 1e-5)
    pb, pg, sums, dx = np.zeros(width), np.zeros(width), np.empty((3, rows)), np.empty_like(x)
    dgamma, dbeta, kernel_dx = np.empty(width), np.empty(width), np.empty_like(x)
    backward = K.rows_backward_call["rows_elementwise"][1]
    # The dx pass's coefficients from the sums pass (the kernel's own _row_coefficients): the passes timed
    # below compute what the kernel computes, checked against its dx.
    sums_pass(x, dy, w, mean, invstd, pb, pg, sums)
    k3, sk2 = sums[2].copy(), sums[0] * sums[1]
    dx64_pass(x, dy, w, mean, invstd, sk2, k3, dx)
    backward(x, dy, gamma, 1, width, 1, False, mean, invstd, K.STATS_BATCH, 1, dgamma, dbeta, kernel_dx)
    scale = float(np.max(np.abs(kernel_dx)))
    if not np.allclose(dx, kernel_dx, rtol=1e-6, atol=1e-6 * scale):
        raise SystemExit("the dx pass does not reproduce the kernel's dx: the passes timed are not the kernel's")
    f32 = [a.astype(np.float32) for a in (w, mean, invstd, sk2, k3)]
    tx, tdy, tg = (torch.from_numpy(a) for a in (x, dy, gamma))
    _, tmean, trstd = torch.ops.aten.native_layer_norm(tx, [width], tg, None, 1e-5)

    timed = {
        "sums": lambda: sums_pass(x, dy, w, mean, invstd, pb, pg, sums),
        "dx float64": lambda: dx64_pass(x, dy, w, mean, invstd, sk2, k3, dx),
        "dx float32": lambda: dx32_pass(x, dy, f32[0], f32[1], f32[2], f32[3], f32[4], dx),
        "kernel": lambda: backward(x, dy, gamma, 1, width, 1, False, mean, invstd, K.STATS_BATCH, 1, dgamma, dbeta,
                                   kernel_dx),
        "ATen": lambda: torch.ops.aten.native_layer_norm_backward(tdy, tx, [width], tmean, trstd, tg, None,
                                                                  [True, True, False]),
    }
    for fn in timed.values():  # compile and warm
        fn()
    spent = {name: [] for name in timed}
    for _ in range(args.runs):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            spent[name].append(time.perf_counter() - start)
    us = {name: statistics.median(v) * 1e6 for name, v in spent.items()}
    print(f"layer norm backward {rows}x{width} float32, {args.threads} thread(s) for ATen, passes serial; "
          f"load average {os.getloadavg()[0]:.2f}; medians of {args.runs} runs, alternating")
    for name, t in us.items():
        print(f"  {name:28s} {t:8.1f} us")
    for name, t in (("sums + dx float64", us["sums"] + us["dx float64"]),
                    ("sums + dx float32 (floor)", us["sums"] + us["dx float32"])):
        print(f"  {name:28s} {t:8.1f} us   ATen / this {us['ATen'] / t:.2f}x")
    print(f"  {'kernel':28s} {us['kernel']:8.1f} us   ATen / this {us['ATen'] / us['kernel']:.2f}x")


if __name__ == "__main__":
    main()

"""Numba kernels of the fused backend: batch statistics in one call per direction, no glue outside.

The whole forward (or backward) of batch statistics, reduced and written in
the kernel, so no per-thread slabs are merged outside and nothing is spread
per column in NumPy (at the sizes of a BatchNorm1d on (128, 512) that glue cost
more than the arithmetic). ``columns``: x is (N, C), one value per channel and
sample; tasks own blocks of rows (and of channels where rows are few), sum
them, and write them once the blocks' sums are merged: one parallel loop with
one row block, two otherwise. ``channels``: x is (N, C, L), a run of L values,
a thread per channel, one parallel loop. Numerics as in ``_numba_kernels``
(float64 arithmetic, rounded once when written; sums shifted by a pivot, the
channel's first value); the compiled twins and cache come from there."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from . import _numba_lanes as lanes
from ._numba_compile import CACHE, FASTMATH, keyed, twins


def _tile(t, col_blocks, width, n, c, row_blocks):
    """Task t of the (row block, channel block) grid: (row block, first row, end row, first channel, channels)."""
    rb = t // col_blocks
    c0 = (t - rb * col_blocks) * width
    return rb, rb * n // row_blocks, (rb + 1) * n // row_blocks, c0, min(width, c - c0)


# _QUARTERS: the sums sweep four rows at a time, one from each quarter of the block, not four neighbours: four
# streams far apart keep more cache-line fetches in flight than one (the hardware prefetchers follow each),
# and a thread alone reads far more slowly than the memory allows. Summing a (16384, 1024) float32 x on one
# thread of the AMD EPYC: 23.6 GB/s from four quarters, 17.9 from four neighbouring rows, 13.6 row by row.
# Each of two threads summing its block so, in one process against neighbours and against halves: forward
# sums 1.9-2.0 ms against 2.5-2.7 and 2.5-2.6, backward 4.4-5.2 against 5.6-5.8 and 5.0-5.5; at (65536, 64)
# halves were as good or better (backward 0.9-1.9 against 1.0-2.0 ms), quarters still ahead of neighbours.

def _forward_sums(x, r0, r1, c0, w, s1, s2):
    """s1, s2 (w,) = sums over rows r0:r1 of x - pivot and (x - pivot)**2, channels c0:c0+w; the pivot is each
    channel's first value."""
    p = np.empty(w)
    for j in range(w):
        p[j] = np.float64(x[0, c0 + j])
    s1[:] = 0.0
    s2[:] = 0.0
    q = (r1 - r0) // 4
    for i in range(r0, r0 + q):  # four rows per sweep, one from each quarter of the block (see _QUARTERS)
        x0, x1 = x[i, c0:c0 + w], x[i + q, c0:c0 + w]  # views: indices from 0 keep the loops vectorized
        x2, x3 = x[i + 2 * q, c0:c0 + w], x[i + 3 * q, c0:c0 + w]
        for j in range(w):
            pj = p[j]
            d0, d1 = np.float64(x0[j]) - pj, np.float64(x1[j]) - pj
            d2, d3 = np.float64(x2[j]) - pj, np.float64(x3[j]) - pj
            s1[j] += (d0 + d1) + (d2 + d3)
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for i in range(r0 + 4 * q, r1):
        xi = x[i, c0:c0 + w]
        for j in range(w):
            d = np.float64(xi[j]) - p[j]
            s1[j] += d
            s2[j] += d * d


def _forward_write(x, gam, bet, eps, given, mean, var, invstd, out, part, first, r0, r1, c0, w):
    """Merge the row blocks' sums of channels c0:c0+w (first: also write the statistics) and write rows
    r0:r1 of out. Every row block of a channel block merges the same sums in the same order."""
    n = x.shape[0]
    mu = np.empty(w)
    scale = np.empty(w)
    shift_b = np.empty(w)
    use_lanes = x.itemsize == 4 and not given  # batch statistics of float32: lanes where every channel allows
    coef = np.empty((4, w), x.dtype)  # the split coefficients of y = x*a + c
    for j in range(w):
        if given:
            mu[j], v = mean[c0 + j], var[c0 + j]
        else:
            s1 = 0.0
            s2 = 0.0
            for k in range(part.shape[0]):
                s1 += part[k, 0, c0 + j]
                s2 += part[k, 1, c0 + j]
            shift = s1 / n
            mu[j] = np.float64(x[0, c0 + j]) + shift
            v = max(s2 / n - shift * shift, 0.0)
        s = 1.0 / np.sqrt(v + eps)
        scale[j] = s * gam[c0 + j]
        shift_b[j] = bet[c0 + j]
        co = lanes.affine_coefficients(use_lanes, mu[j], v, scale[j], shift_b[j])
        use_lanes = co[0]
        coef[0, j], coef[1, j], coef[2, j], coef[3, j] = co[1], co[2], co[3], co[4]
        if first:
            invstd[c0 + j] = s
            if not given:
                mean[c0 + j] = mu[j]
                var[c0 + j] = v
    if use_lanes:
        lanes.affine_rows(x, out, r0, r1, c0, coef[0], coef[1], coef[2], coef[3])
        return
    for i in range(r0, r1):
        xi = x[i, c0:c0 + w]
        oi = out[i, c0:c0 + w]
        for j in range(w):
            oi[j] = (np.float64(xi[j]) - mu[j]) * scale[j] + shift_b[j]


def _sum_scales(x, s):
    """(per value, per channel): where the backward's sum of dy * x-hat takes invstd s. float64 x: (s, 1), x-hat
    formed per value; float32 x: (1, s), the sum of dy * (x - mean) scaled once per channel (one multiply per value
    fewer; |dy*(x - mean)| stays far inside float64's range for float32 values, not for float64 ones)."""
    return s, 1.0


@overload(_sum_scales, inline="always")
def _sum_scales_typed(x, s):
    if isinstance(x, types.Array) and x.dtype == types.float32:
        return lambda x, s: (1.0, s)
    return lambda x, s: (s, 1.0)


def _backward_sums(x, dy, mean, invstd, r0, r1, c0, w, a, b, q):
    """a, b, q (w,) = sums over rows r0:r1 of dy, dy * x-hat and dy**2, channels c0:c0+w (q bounds max|dy| for the
    float32 lanes' check), b without the per-channel factor of :func:`_sum_scales`."""
    mu = mean[c0:c0 + w]
    s = invstd[c0:c0 + w]
    a[:] = 0.0
    b[:] = 0.0
    q[:] = 0.0
    h = (r1 - r0) // 4
    for i in range(r0, r0 + h):  # four rows per sweep, one from each quarter, as in the forward
        x0, x1, x2, x3 = x[i, c0:c0 + w], x[i + h, c0:c0 + w], x[i + 2 * h, c0:c0 + w], x[i + 3 * h, c0:c0 + w]
        e0, e1, e2, e3 = dy[i, c0:c0 + w], dy[i + h, c0:c0 + w], dy[i + 2 * h, c0:c0 + w], dy[i + 3 * h, c0:c0 + w]
        for j in range(w):
            m, sj = mu[j], _sum_scales(x, s[j])[0]
            d0, d1, d2, d3 = np.float64(e0[j]), np.float64(e1[j]), np.float64(e2[j]), np.float64(e3[j])
            a[j] += (d0 + d1) + (d2 + d3)
            b[j] += ((d0 * ((np.float64(x0[j]) - m) * sj) + d1 * ((np.float64(x1[j]) - m) * sj))
                     + (d2 * ((np.float64(x2[j]) - m) * sj) + d3 * ((np.float64(x3[j]) - m) * sj)))
            q[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for i in range(r0 + 4 * h, r1):
        xi = x[i, c0:c0 + w]
        di = dy[i, c0:c0 + w]
        for j in range(w):
            d = np.float64(di[j])
            a[j] += d
            b[j] += d * ((np.float64(xi[j]) - mu[j]) * _sum_scales(x, s[j])[0])
            q[j] += d * d


def _backward_write(x, dy, gam, mean, invstd, given, dgamma, dbeta, dx, part, first, r0, r1, c0, w):
    """Merge the row blocks' sums of channels c0:c0+w (first: also write dgamma, dbeta) and write rows r0:r1
    of dx, as :func:`_forward_write` (dx with no rows: no dx wanted, the parameters' gradients only)."""
    n = x.shape[0]
    mu = mean[c0:c0 + w]
    s = invstd[c0:c0 + w]
    k1 = np.empty(w)
    k2 = np.zeros(w)
    k3 = np.zeros(w)
    use_lanes = x.itemsize == 4 and not given  # batch statistics of float32: lanes where every channel allows
    coef = np.empty((6, w), x.dtype)  # the split coefficients of dx = k1*dy + k2s*x + k3s
    for j in range(w):
        a = 0.0
        b = 0.0
        q = 0.0
        for k in range(part.shape[0]):
            a += part[k, 0, c0 + j]
            b += part[k, 1, c0 + j]
            q += part[k, 2, c0 + j]
        b *= _sum_scales(x, s[j])[1]  # float32: the sums of dy * (x - mean) (_backward_sums)
        if first:
            dbeta[c0 + j] = a
            dgamma[c0 + j] = b
        k1[j] = gam[c0 + j] * s[j]
        if not given:
            k2[j] = -k1[j] * (b / n)
            k3[j] = -k1[j] * (a / n)
        bound = abs(k1[j]) * np.sqrt(q)
        co = lanes.grad_coefficients(use_lanes, n, mu[j], s[j], bound, bound / np.sqrt(n), k1[j], k2[j], k3[j])
        use_lanes = co[0]
        coef[0, j], coef[1, j], coef[2, j], coef[3, j], coef[4, j], coef[5, j] = co[1], co[2], co[3], co[4], co[5], co[6]
    if dx.shape[0] == 0:  # no dx wanted (the input does not require grad)
        return
    if use_lanes:
        lanes.grad_rows(x, dy, dx, r0, r1, c0, coef)
        return
    for i in range(r0, r1):
        xi = x[i, c0:c0 + w]
        di = dy[i, c0:c0 + w]
        oi = dx[i, c0:c0 + w]
        for j in range(w):
            oi[j] = k1[j] * np.float64(di[j]) + k2[j] * ((np.float64(xi[j]) - mu[j]) * s[j]) + k3[j]


# Called, not inlined, from the kernels' parallel loops: inlined, every call site was analysed and compiled again
# (the parallel columns backward with its float32 lanes took 23 s of CPU to compile, against 6 s called).
_tile = numba.njit(cache=CACHE, inline="always")(_tile)
_forward_sums, _forward_write, _backward_sums, _backward_write = (
    keyed(f, fastmath=FASTMATH, nogil=True) for f in (_forward_sums, _forward_write, _backward_sums, _backward_write))


# The columns kernels: tasks on a grid of row blocks times channel blocks (numba_backend._column_grid). A task
# sums its rows of its channels; with one row block it then writes them, else a second parallel loop does,
# once every row block's sums are in. The two loops sit under different ``if``s: Numba fuses adjacent
# parallel loops of one size, and fused, a task would merge sums not yet written.

def _columns_forward(x, gam, bet, eps, given, mean, var, invstd, out, width, row_blocks):
    n, c = x.shape
    col_blocks = (c + width - 1) // width
    tasks = row_blocks * col_blocks
    part = np.empty((row_blocks, 2, c))  # each row block's sums, merged in _forward_write
    if row_blocks == 1 or not given:  # (given statistics: nothing to sum)
        for t in prange(tasks):
            rb, r0, r1, c0, w = _tile(t, col_blocks, width, n, c, row_blocks)
            if not given:
                _forward_sums(x, r0, r1, c0, w, part[rb, 0, c0:c0 + w], part[rb, 1, c0:c0 + w])
            if row_blocks == 1:
                _forward_write(x, gam, bet, eps, given, mean, var, invstd, out, part, rb == 0, r0, r1, c0, w)
    if row_blocks > 1:
        for t in prange(tasks):
            rb, r0, r1, c0, w = _tile(t, col_blocks, width, n, c, row_blocks)
            _forward_write(x, gam, bet, eps, given, mean, var, invstd, out, part, rb == 0, r0, r1, c0, w)


def _columns_backward(x, dy, gam, mean, invstd, given, dgamma, dbeta, dx, width, row_blocks):
    n, c = x.shape
    col_blocks = (c + width - 1) // width
    tasks = row_blocks * col_blocks
    part = np.empty((row_blocks, 3, c))  # each row block's sums of dy, dy * x-hat and dy**2
    for t in prange(tasks):
        rb, r0, r1, c0, w = _tile(t, col_blocks, width, n, c, row_blocks)
        _backward_sums(x, dy, mean, invstd, r0, r1, c0, w, part[rb, 0, c0:c0 + w], part[rb, 1, c0:c0 + w],
                       part[rb, 2, c0:c0 + w])
        if row_blocks == 1:
            _backward_write(x, dy, gam, mean, invstd, given, dgamma, dbeta, dx, part, rb == 0, r0, r1, c0, w)
    if row_blocks > 1:
        for t in prange(tasks):
            rb, r0, r1, c0, w = _tile(t, col_blocks, width, n, c, row_blocks)
            _backward_write(x, dy, gam, mean, invstd, given, dgamma, dbeta, dx, part, rb == 0, r0, r1, c0, w)


def _channels_forward(x, gam, bet, eps, given, mean, var, invstd, out):
    n, c, length = x.shape
    m = n * length
    if given:
        # Nothing to reduce: write row by row, so each thread sweeps contiguous memory (a thread per
        # channel would stride across all of x; measured 1.3-1.7x slower on a (64, 64, 32, 32) eval).
        for ch in range(c):
            invstd[ch] = 1.0 / np.sqrt(var[ch] + eps)
        for r in prange(n * c):
            i = r // c
            ch = r - i * c
            a = invstd[ch] * gam[ch]
            co = lanes.affine_coefficients(False, mean[ch], var[ch], a, bet[ch])  # given: float64, rounded once
            lanes.write_affine(x[i, ch], out[i, ch], co, mean[ch], a, bet[ch])
        return
    for ch in prange(c):
        p = np.float64(x[0, ch, 0])
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            for j in range(length):
                d = np.float64(x[i, ch, j]) - p
                s1 += d
                s2 += d * d
        shift = s1 / m
        mean[ch] = p + shift
        var[ch] = max(s2 / m - shift * shift, 0.0)
        invstd[ch] = 1.0 / np.sqrt(var[ch] + eps)
        a = invstd[ch] * gam[ch]
        co = lanes.affine_coefficients(x.itemsize == 4, mean[ch], var[ch], a, bet[ch])
        for i in range(n):
            lanes.write_affine(x[i, ch], out[i, ch], co, mean[ch], a, bet[ch])


def _channels_backward(x, dy, gam, mean, invstd, given, dgamma, dbeta, dx):
    n, c, length = x.shape
    m = n * length
    for ch in prange(c):
        mu = mean[ch]
        s = invstd[ch]
        a = 0.0
        b = 0.0
        q = 0.0
        for i in range(n):
            for j in range(length):
                d = np.float64(dy[i, ch, j])
                a += d
                b += d * ((np.float64(x[i, ch, j]) - mu) * s)
                q += d * d
        dbeta[ch] = a
        dgamma[ch] = b
        k1 = gam[ch] * s
        k2 = 0.0 if given else -k1 * (b / m)
        k3 = 0.0 if given else -k1 * (a / m)
        bound = abs(k1) * np.sqrt(q)
        co = lanes.grad_coefficients(x.itemsize == 4 and not given, m, mu, s, bound, bound / np.sqrt(m), k1, k2, k3)
        for i in range(n if dx.shape[0] != 0 else 0):  # (dx with no rows: no dx wanted)
            lanes.write_grad(x[i, ch], dy[i, ch], dx[i, ch], co, mu, s, k1, k2, k3)


columns_forward = twins(_columns_forward)
columns_backward = twins(_columns_backward)
channels_forward = twins(_channels_forward)
channels_backward = twins(_channels_backward)

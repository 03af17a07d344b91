"""Numba kernels of the fused backend, by loop shape.

Every normalization is served by one of three loop shapes over a C-contiguous view:

``rows`` (R, L)
    Each batch statistic reduces along contiguous rows of length L (spatial
    batch norm over its (n, c) rows). Parallel over rows;
    the per-row partial sums are merged over the slow axis afterwards in
    float64 (O(N*C) work, pairwise by NumPy).
``cols`` (N, M)
    The reduction runs along the slow axis N (batch norm on (N, C) with C
    contiguous, or short H*W runs). Each thread takes a block of rows and
    accumulates per-column partial sums in its own slab; the slabs are merged
    afterwards in a fixed order, so the result does not depend on scheduling.
``fused rows`` (R, M)
    Statistics per contiguous row (layer norm, group norm): each row is
    reduced and written while still in cache; dgamma and dbeta summed per
    block of rows, a slab each, merged in a fixed order.

Batch statistics in one launch per direction (the kernels most batch norms
take) are in ``_numba_batch_kernels``.

Everything is computed in float64 whatever the input dtype, and rounded
once, when an output element is written: x - mean of float32 input can
exceed float32's range (x = [f32max, -f32max]), and the backward's products
underflow in float32 long before they do in float64. The kernels are
memory-bound, so the wider arithmetic costs little (docs/benchmarks.md).
Reductions are shifted by a pivot (a sample value of the same statistic) so
that a large common offset cancels before it is squared, and the backward's
sums are taken over dy*xhat, xhat = (x - mean)*invstd, so they stay O(dy)
however large x is. Every kernel exists twice: parallel (``prange`` over threads) and
serial (the same source compiled without ``parallel``), because launching the
thread pool costs more than the whole job on small inputs.

Fast-math is restricted to ``reassoc`` and ``contract``: reassociation lets
LLVM vectorize the reductions, and ``nnan``/``ninf`` are left out so NaN and
inf in x propagate into the statistics, where the core reports them.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..running_rule import blend_running_stats
from . import _numba_lanes as lanes
from ._numba_compile import CACHE, FASTMATH, SOURCES_KEY, renamed, twins  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------- rows (R, L)
# Coefficients are per row, float64; x - mean and the products are formed in
# float64 and rounded once when written to out (x's dtype).

def _row_moments(x, pivot, s1, s2):
    """s1[r] = sum(x[r] - pivot[r]), s2[r] = sum((x[r] - pivot[r])**2), float64."""
    rows, length = x.shape
    for r in prange(rows):
        p = pivot[r]
        a = 0.0
        b = 0.0
        for i in range(length):
            d = np.float64(x[r, i]) - p
            a += d
            b += d * d
        s1[r] = a
        s2[r] = b


def _row_apply(x, mu, scale, shift, out):
    """out[r] = (x[r] - mu[r]) * scale[r] + shift[r]."""
    rows, length = x.shape
    for r in prange(rows):
        m = mu[r]
        a = scale[r]
        b = shift[r]
        for i in range(length):
            out[r, i] = (np.float64(x[r, i]) - m) * a + b


def _row_grad_sums(x, dy, mu, invstd, t1, t2):
    """t1[r] = sum(dy[r]), t2[r] = sum(dy[r] * xhat[r]), xhat = (x - mu)*invstd, float64."""
    rows, length = x.shape
    for r in prange(rows):
        m = mu[r]
        s = invstd[r]
        a = 0.0
        b = 0.0
        for i in range(length):
            d = np.float64(dy[r, i])
            a += d
            b += d * ((np.float64(x[r, i]) - m) * s)
        t1[r] = a
        t2[r] = b


def _row_grad_apply(x, dy, mu, invstd, k1, k2, k3, dx):
    """dx[r] = k1[r]*dy[r] + k2[r]*xhat[r] + k3[r], xhat = (x - mu)*invstd."""
    rows, length = x.shape
    for r in prange(rows):
        m = mu[r]
        s = invstd[r]
        a = k1[r]
        b = k2[r]
        c = k3[r]
        for i in range(length):
            dx[r, i] = a * np.float64(dy[r, i]) + b * ((np.float64(x[r, i]) - m) * s) + c


# ----------------------------------------------------------------------------- cols (N, M)
# Statistics per column, reduced along the slow axis (batch norm on (N, C)).
# Each block of rows (one per thread) accumulates into its own slab s[t];
# four rows per sweep so each slab entry is loaded and stored once per four.

def _col_moments(x, pivot, s1, s2):
    """s1[t, j] += x[i, j] - pivot[j], s2[t, j] += (x[i, j] - pivot[j])**2 over block t's rows."""
    n, width = x.shape
    blocks = s1.shape[0]
    for t in prange(blocks):
        lo = t * n // blocks
        hi = (t + 1) * n // blocks
        a1 = s1[t]
        a2 = s2[t]
        i = lo
        while i + 4 <= hi:
            for j in range(width):
                p = pivot[j]
                d0 = np.float64(x[i, j]) - p
                d1 = np.float64(x[i + 1, j]) - p
                d2 = np.float64(x[i + 2, j]) - p
                d3 = np.float64(x[i + 3, j]) - p
                a1[j] += (d0 + d1) + (d2 + d3)
                a2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            i += 4
        for r in range(i, hi):
            for j in range(width):
                d = np.float64(x[r, j]) - pivot[j]
                a1[j] += d
                a2[j] += d * d


def _col_apply(x, mu, scale, shift, out):
    """out[i, j] = (x[i, j] - mu[j]) * scale[j] + shift[j]."""
    n, width = x.shape
    for i in prange(n):
        for j in range(width):
            out[i, j] = (np.float64(x[i, j]) - mu[j]) * scale[j] + shift[j]


def _col_grad_sums(x, dy, mu, invstd, c1, c2):
    """c1[t, j] += dy[i, j], c2[t, j] += dy[i, j] * xhat[i, j] over block t's rows, xhat = (x - mu)*invstd."""
    n, width = x.shape
    blocks = c1.shape[0]
    for t in prange(blocks):
        lo = t * n // blocks
        hi = (t + 1) * n // blocks
        a1 = c1[t]
        a2 = c2[t]
        i = lo
        while i + 4 <= hi:
            for j in range(width):
                m = mu[j]
                s = invstd[j]
                d0 = np.float64(dy[i, j])
                d1 = np.float64(dy[i + 1, j])
                d2 = np.float64(dy[i + 2, j])
                d3 = np.float64(dy[i + 3, j])
                a1[j] += (d0 + d1) + (d2 + d3)
                a2[j] += ((d0 * ((np.float64(x[i, j]) - m) * s) + d1 * ((np.float64(x[i + 1, j]) - m) * s))
                          + (d2 * ((np.float64(x[i + 2, j]) - m) * s) + d3 * ((np.float64(x[i + 3, j]) - m) * s)))
            i += 4
        for r in range(i, hi):
            for j in range(width):
                d = np.float64(dy[r, j])
                a1[j] += d
                a2[j] += d * ((np.float64(x[r, j]) - mu[j]) * invstd[j])


def _col_grad_apply(x, dy, mu, invstd, k1, k2, k3, dx):
    """dx[i, j] = k1[j]*dy[i, j] + k2[j]*xhat[i, j] + k3[j], xhat = (x - mu)*invstd."""
    n, width = x.shape
    for i in prange(n):
        for j in range(width):
            dx[i, j] = k1[j] * np.float64(dy[i, j]) + k2[j] * ((np.float64(x[i, j]) - mu[j]) * invstd[j]) + k3[j]


# ----------------------------------------------------------------------------- fused rows (R, M)
# One statistic per contiguous row (layer norm: a sample; group norm: a
# sample's group), parameters per column run. Each row is reduced and then
# written while it is still in L1/L2 (a layer-norm row is a few KiB, a group
# of a (32, 64, 56, 56) input 100 KiB), so x crosses the memory bus once
# forward, and x and dout once backward. ``gam``/``bet`` are (G, P) float64
# with P runs of length L = M // P per row (P = M, L = 1 for per-element parameters).

# How the fused-row kernels get a row's statistics: from the row (mean and
# variance), given by the caller (inference), or from the row without a mean
# (RMS: mean 0, var = mean of squares; the closed form then loses its
# -sum(dxhat)/m term).
STATS_BATCH, STATS_GIVEN, STATS_RMS = 0, 1, 2


@numba.njit(cache=CACHE)
def finite_stats(mean, var):
    """Whether every mean and var is finite (invstd follows from var): the check the core makes after each
    forward, as one compiled loop (NumPy's isfinite/all pairs cost 15-25 us right after a kernel). mean, var:
    arrays of one shape, any layout (flat indices: the caller reshapes nothing)."""
    m, v = mean.flat, var.flat
    for j in range(mean.size):
        if not (np.isfinite(m[j]) and np.isfinite(v[j])):
            return False
    return True


@numba.njit(cache=CACHE)
def param_runs(param, g, k, length, per_run):
    """(G*K,) parameters as the (G, P) float64 runs the fused-rows kernels take: P = K, one per run of
    ``length`` values (``per_run``: _fused_rows_backward), or P = K*length, repeated per element
    (_fused_rows_backward_elementwise)."""
    if per_run:
        out = np.empty((g, k))
        for i in range(g * k):
            out[i // k, i % k] = param[i]
        return out
    out = np.empty((g, k * length))
    for i in range(g * k):
        v = np.float64(param[i])
        for j in range(length):
            out[i // k, (i % k) * length + j] = v
    return out


@numba.njit(cache=CACHE)
def fold_param_grads(slabs, k, out):
    """out[g*K + k] = the sum of the per-thread (T, G, P) slabs over threads and over the runs of
    parameter k (the inverse of :func:`param_runs`), rounded once to out's dtype."""
    blocks, groups, width = slabs.shape
    runs = width // k
    for g in range(groups):
        for q in range(k):
            total = 0.0
            for t in range(blocks):
                for j in range(q * runs, (q + 1) * runs):
                    total += slabs[t, g, j]
            out[g * k + q] = total


def _fused_rows_forward(x, gam, bet, eps, mode, mean, var, invstd, out):
    """Row r (group g = r % G): statistics per ``mode`` (STATS_*), then
    out = (x - mean) * (invstd*gam[g, p]) + bet[g, p], rounded to out's dtype.
    mean, var, invstd: float64 (R,), outputs (inputs mean/var when given)."""
    rows, width = x.shape
    groups, runs = gam.shape
    length = width // runs
    for r in prange(rows):
        g = r % groups
        if mode != STATS_GIVEN:
            p = np.float64(x[r, 0]) if mode == STATS_BATCH else 0.0
            a = 0.0
            b = 0.0
            for j in range(width):
                d = np.float64(x[r, j]) - p
                a += d
                b += d * d
            if mode == STATS_BATCH:
                shift = a / width
                mean[r] = p + shift
                var[r] = max(b / width - shift * shift, 0.0)
            else:
                mean[r] = 0.0
                var[r] = b / width
        invstd[r] = 1.0 / np.sqrt(var[r] + eps)
        m = mean[r]
        s = invstd[r]
        if length == 1:
            w = gam[g]
            c = bet[g]
            for j in range(width):
                out[r, j] = (np.float64(x[r, j]) - m) * (s * w[j]) + c[j]
        else:
            for q in range(runs):
                sq = s * gam[g, q]
                bq = bet[g, q]
                co = lanes.affine_coefficients(x.itemsize == 4 and mode != STATS_GIVEN, m, var[r], sq, bq)
                lanes.write_affine(x[r, q * length:(q + 1) * length], out[r, q * length:(q + 1) * length], co, m, sq,
                                   bq)


def _row_coefficients(r, s, a, b, width, mode, kx):
    """Store row r's dx coefficients (see _fused_rows_backward): a = sum(dxhat), b = sum(dxhat*xhat)."""
    kx[0, r] = s
    if mode == STATS_GIVEN:
        kx[1, r] = 0.0
        kx[2, r] = 0.0
    else:
        kx[1, r] = -s * (b / width)  # -invstd * mean(dxhat*xhat), the coefficient of xhat
        kx[2, r] = -s * (a / width) if mode == STATS_BATCH else 0.0  # -invstd * mean(dxhat)


_row_coefficients = numba.njit(cache=CACHE, inline="always")(_row_coefficients)


def _fused_rows_backward(x, dy, gam, mean, invstd, mode, dgp, dbp, kx, dx):
    """Rows with parameters per run of length L > 1 (group norm): per row r, the closed
    form's two sums, then dx while the row is in cache; dbeta/dgamma partials per thread block.

    gam: gamma (G, P) float64; dgp/dbp (T, G, P) float64 zeroed slabs; kx (3, R) float64 scratch; dx (R, M), or
    (0, M) when no dx is wanted (the input does not require grad): then only the slabs are written.
    dx = invstd*gam*dy + k2*xhat + k3, xhat = (x - mean)*invstd, k2 = -invstd*mean(dxhat*xhat),
    k3 = -invstd*mean(dxhat) (both 0 when the statistics were given, k3 0 for RMS)."""
    rows, width = x.shape
    groups, runs = gam.shape
    length = width // runs
    blocks = dgp.shape[0]
    for t in prange(blocks):
        lo = t * rows // blocks
        hi = (t + 1) * rows // blocks
        for r in range(lo, hi):
            g = r % groups
            mu = mean[r]
            s = invstd[r]
            a = 0.0
            b = 0.0
            g2 = 0.0  # sum of (gamma*dy)**2: bounds max|gamma*dy| for the float32 lanes' check
            for q in range(runs):
                aq = 0.0
                bq = 0.0
                cq = 0.0
                xq = x[r, q * length:(q + 1) * length]  # views: indices from 0 keep loops vectorized
                dq = dy[r, q * length:(q + 1) * length]
                for i in range(length):
                    d = np.float64(dq[i])
                    aq += d
                    bq += d * ((np.float64(xq[i]) - mu) * s)
                    cq += d * d
                a += gam[g, q] * aq
                b += gam[g, q] * bq
                g2 += gam[g, q] * gam[g, q] * cq
                if dgp.shape[2] != 0:  # (slabs of no width: no dgamma, dbeta wanted)
                    dbp[t, g, q] += aq
                    dgp[t, g, q] += bq
            _row_coefficients(r, s, a, b, width, mode, kx)
            if dx.shape[0] == 0:  # no dx wanted: the parameters' gradients only
                continue
            k2, k3 = kx[1, r], kx[2, r]
            bound = s * np.sqrt(g2)
            for q in range(runs):
                aq = s * gam[g, q]
                co = lanes.grad_coefficients(x.itemsize == 4 and mode != STATS_GIVEN, width, mu, s, bound,
                                             bound / np.sqrt(width), aq, k2, k3)
                lanes.write_grad(x[r, q * length:(q + 1) * length], dy[r, q * length:(q + 1) * length],
                                 dx[r, q * length:(q + 1) * length], co, mu, s, aq, k2, k3)


def _pair_sums(x0, x1, y0, y1, m0, m1, s0, s1, w, pb, pg, slabs):
    """Two rows' sums for their dx, (sum of w*dy, sum of w*dy*(x - mean)) each as (a0, a1, b0, b1), and with
    ``slabs`` their terms of the dbeta/dgamma slabs pb, pg. e = dy*(x - mean): invstd applied once per row to b
    (by the caller), per pair to pg."""
    a0 = a1 = b0 = b1 = 0.0
    if slabs:
        for j in range(x0.shape[0]):
            d0 = np.float64(y0[j])
            d1 = np.float64(y1[j])
            e0 = d0 * (np.float64(x0[j]) - m0)
            e1 = d1 * (np.float64(x1[j]) - m1)
            pb[j] += d0 + d1
            pg[j] += e0 * s0 + e1 * s1
            wj = w[j]
            a0 += wj * d0
            a1 += wj * d1
            b0 += wj * e0
            b1 += wj * e1
    else:  # (the loop above less pb, pg: no dgamma, dbeta wanted)
        for j in range(x0.shape[0]):
            d0 = np.float64(y0[j])
            d1 = np.float64(y1[j])
            wj = w[j]
            a0 += wj * d0
            a1 += wj * d1
            b0 += wj * (d0 * (np.float64(x0[j]) - m0))
            b1 += wj * (d1 * (np.float64(x1[j]) - m1))
    return a0, a1, b0, b1


def _pair_slabs(x0, x1, y0, y1, m0, m1, s0, s1, pb, pg):
    """Two rows' terms of the dbeta/dgamma slabs alone (no dx wanted)."""
    for j in range(x0.shape[0]):
        d0 = np.float64(y0[j])
        d1 = np.float64(y1[j])
        pb[j] += d0 + d1
        pg[j] += (d0 * (np.float64(x0[j]) - m0)) * s0 + (d1 * (np.float64(x1[j]) - m1)) * s1


def _row_dx(xr, yr, w, mu, s, sk2, k3, out):
    """One row's dx = s*(w*dy) + ((s*k2)*(x - mean) + k3): two fused multiply-adds after w*dy (s*(w*dy + k2*d)
    + k3 took three operations)."""
    for j in range(xr.shape[0]):
        out[j] = s * (w[j] * np.float64(yr[j])) + (sk2 * (np.float64(xr[j]) - mu) + k3)


def _one_row(xr, yr, w, mu, s, pb, pg, slabs, r, width, mode, kx, dx):
    """One row's sums (and slab terms), then its dx unless dx has no rows."""
    a = 0.0
    b = 0.0
    for j in range(width):
        d = np.float64(yr[j])
        e = d * ((np.float64(xr[j]) - mu) * s)
        a += w[j] * d
        b += w[j] * e
        if slabs:
            pb[j] += d
            pg[j] += e
    _row_coefficients(r, s, a, b, width, mode, kx)
    if dx.shape[0] != 0:
        _row_dx(xr, yr, w, mu, s, s * kx[1, r], kx[2, r], dx[r])


def _pair_rows(x, dy, w, mean, invstd, mode, pb, pg, kx, dx, lo, hi, slabs):
    """Rows lo:hi of one group, two per sweep, one from each half of the block: their sums (with ``slabs``, a
    literal at every call site, the slab terms), then the pair's dx while the rows are in L1; an odd last row
    alone. Halves rather than neighbours (two streams far apart, as ``_numba_lanes``' row writers): at
    (8192, 1024) float32, alternating processes, 8.0-8.7 -> 6.5-6.8 ms on 1 thread, 4.4-6.3 -> 3.9-4.5 on 2;
    at (2048, 256) within the noise (272-421 against 401-475 us, 198-214 against 145-211). ``slabs`` is passed as
    a constant so each call site compiles one loop: with the flag read at run time the same loops ran 10-12%
    slower at (2048, 256) float32, and 5% more with the group's views taken per pair (docs/benchmarks.md)."""
    width = x.shape[1]
    h = (hi - lo) // 2
    for r in range(lo, lo + h):  # one row from each half of the block (_numba_lanes: two streams far apart)
        q = r + h
        m0, m1 = mean[r], mean[q]
        s0, s1 = invstd[r], invstd[q]
        x0, x1, y0, y1 = x[r], x[q], dy[r], dy[q]  # row views: indices from 0 vectorize
        a0, a1, b0, b1 = _pair_sums(x0, x1, y0, y1, m0, m1, s0, s1, w, pb, pg, slabs)
        _row_coefficients(r, s0, a0, b0 * s0, width, mode, kx)
        _row_coefficients(q, s1, a1, b1 * s1, width, mode, kx)
        _row_dx(x0, y0, w, m0, kx[0, r], kx[0, r] * kx[1, r], kx[2, r], dx[r])  # dx while the rows are in L1
        _row_dx(x1, y1, w, m1, kx[0, q], kx[0, q] * kx[1, q], kx[2, q], dx[q])
    if lo + 2 * h < hi:
        r = hi - 1
        _one_row(x[r], dy[r], w, mean[r], invstd[r], pb, pg, slabs, r, width, mode, kx, dx)


_pair_sums, _pair_slabs, _row_dx, _one_row, _pair_rows = (
    numba.njit(cache=CACHE, inline="always")(f) for f in (_pair_sums, _pair_slabs, _row_dx, _one_row, _pair_rows))


def _fused_rows_backward_elementwise(x, dy, gam, mean, invstd, mode, dgp, dbp, kx, dx):
    """As _fused_rows_backward with parameters per element (layer norm; P = M). One group (layer norm): two
    rows per sweep (``_pair_rows``), so the dgamma/dbeta slab entries are loaded and stored once per two
    rows; then dx of those rows while they are in L1, as s*(gam*dy) + ((s*k2)*(x - mean) + k3), the closed
    form with invstd factored out (k2*(x - mean) = -mean(dxhat*xhat)*xhat stays O(dy)): four float64
    operations an element, 13-22% faster than four rows per sweep with x-hat formed again
    (docs/benchmarks.md). The sums take dy*(x - mean) and scale by invstd once per row (and once per pair of
    values for dgamma): 3-5% faster at (2048, 256) float32 than x-hat per value. Several groups (group norm
    with short runs): row by row, each with its group's parameters. dx (0, M): no dx, as there."""
    rows, width = x.shape
    groups = gam.shape[0]
    blocks = dgp.shape[0]
    for t in prange(blocks):
        lo = t * rows // blocks
        hi = (t + 1) * rows // blocks
        if groups != 1:
            for r in range(lo, hi):
                g = r % groups
                pg = dgp[t, g]
                _one_row(x[r], dy[r], gam[g], mean[r], invstd[r], dbp[t, g], pg, pg.shape[0] != 0, r, width,
                         mode, kx, dx)
            continue
        pb, pg, w = dbp[t, 0], dgp[t, 0], gam[0]  # (one group: the views once per block)
        if dx.shape[0] == 0:  # no dx: the slabs only (the rows' sums feed dx alone)
            if pg.shape[0] != 0:  # (rows paired as in _pair_rows: the slabs sum in the same order)
                h = (hi - lo) // 2
                for r in range(lo, lo + h):
                    q = r + h
                    _pair_slabs(x[r], x[q], dy[r], dy[q], mean[r], mean[q], invstd[r], invstd[q], pb, pg)
                if lo + 2 * h < hi:
                    r = hi - 1
                    _one_row(x[r], dy[r], w, mean[r], invstd[r], pb, pg, True, r, width, mode, kx, dx)
        elif pg.shape[0] != 0:
            _pair_rows(x, dy, w, mean, invstd, mode, pb, pg, kx, dx, lo, hi, True)
        else:  # no dgamma, dbeta wanted: slabs of no width
            _pair_rows(x, dy, w, mean, invstd, mode, pb, pg, kx, dx, lo, hi, False)


# The running-statistics rule compiled from its one definition, applied per channel on scalars: no
# temporary arrays (no fastmath, numpy's error model: bit for bit the NumPy backend's result).
_blend = numba.njit(cache=CACHE, error_model="numpy")(blend_running_stats)


def _update_running(running_mean, running_var, batch_mean, batch_var, count, factor):
    """numpy_backend.update_running in one compiled call (the O(C) NumPy chain costs more than the math)."""
    for c in range(running_mean.shape[0]):
        new_mean, new_var = _blend(np.float64(running_mean[c]), np.float64(running_var[c]), batch_mean[c],
                                   batch_var[c], count, factor)
        running_mean[c] = new_mean
        running_var[c] = new_var


# It calls the rule in running_rule.py: the sources key in its name keeps its cache entry current.
update_running = numba.njit(cache=CACHE, error_model="numpy")(renamed(_update_running, "_" + SOURCES_KEY))

row_moments = twins(_row_moments)
row_apply = twins(_row_apply)
row_grad_sums = twins(_row_grad_sums)
row_grad_apply = twins(_row_grad_apply)
col_moments = twins(_col_moments)
col_apply = twins(_col_apply)
col_grad_sums = twins(_col_grad_sums)
col_grad_apply = twins(_col_grad_apply)
fused_rows_forward = twins(_fused_rows_forward)
fused_rows_backward = twins(_fused_rows_backward)
fused_rows_backward_elementwise = twins(_fused_rows_backward_elementwise)


# ----------------------------------------------------------------------------- fused rows, whole calls
# One compiled call per direction from the caller's (G*K,) parameters, for every route into the fused-rows
# kernels (numba_backend.RowsPlan and the native node's C entry points): the parameters' float64 runs, the
# dgamma/dbeta slabs and their fold happen here, where each is a loop, instead of as NumPy calls and
# compiled calls of their own around the kernel (at layer norm (2048, 256) float32 those cost 20-45 us per
# backward, their caches cold after the kernel).

def _rows_forward_call(x, gamma, beta, groups, k, length, per_run, eps, mode, stats, out):
    """FORWARD (a fused_rows_forward twin) on x (R, M) with gamma/beta (G*K,) of any float dtype; stats (3, R)
    float64 mean, var, invstd (mean and var read with STATS_GIVEN). One array of statistics, not three views:
    each argument costs the dispatcher its typing."""
    FORWARD(x, param_runs(gamma, groups, k, length, per_run), param_runs(beta, groups, k, length, per_run), eps,
            mode, stats[0], stats[1], stats[2], out)


def _rows_backward_call(x, dy, gamma, groups, k, length, per_run, mean, invstd, mode, blocks, dgamma, dbeta, dx):
    """BACKWARD (a fused_rows_backward(_elementwise) twin) on x, dy (R, M) with gamma (G*K,) and float64 (R,)
    mean, invstd: dx, and dgamma, dbeta (G*K,) from ``blocks`` slabs of row blocks, rounded once to their dtype.
    dx (0, M): no dx; dgamma and dbeta (0,): none (the node's NO_DX and NO_PARAMS)."""
    gam = param_runs(gamma, groups, k, length, per_run)
    wanted = dgamma.shape[0] != 0  # dgamma, dbeta of no entries: not wanted, the slabs take no width
    dgp = np.zeros((blocks, groups, gam.shape[1] if wanted else 0))
    dbp = np.zeros((blocks, groups, gam.shape[1] if wanted else 0))
    BACKWARD(x, dy, gam, mean, invstd, mode, dgp, dbp, np.empty((3, x.shape[0])), dx)
    if wanted:
        fold_param_grads(dgp, k, dgamma)
        fold_param_grads(dbp, k, dbeta)


def _calls(fn, name, kernels, suffix):
    """fn compiled around each twin of ``kernels`` (bound as ``name``): (around parallel, around serial)."""
    return tuple(numba.njit(cache=CACHE, nogil=True)(renamed(fn, f"_{suffix}_{which}_{SOURCES_KEY}", **{name: kernel}))
                 for which, kernel in zip(("parallel", "serial"), kernels))


rows_forward_call = _calls(_rows_forward_call, "FORWARD", fused_rows_forward, "rows")
#: by backward kernel kind: "rows" (a parameter per run) or "rows_elementwise" (per element)
rows_backward_call = {"rows": _calls(_rows_backward_call, "BACKWARD", fused_rows_backward, "rows"),
                      "rows_elementwise": _calls(_rows_backward_call, "BACKWARD", fused_rows_backward_elementwise,
                                                 "rows_elementwise")}

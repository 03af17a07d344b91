"""Numba kernels of the fused backend: two loop shapes, four kernels each.

Every normalization is served by one of three loop shapes over a C-contiguous view:

``rows`` (R, L)
    Each statistic reduces along contiguous rows of length L (spatial batch
    norm over (n, c) rows, group norm over (n, g, k) rows). Parallel over rows;
    the per-row partial sums are merged over the slow axis afterwards in
    float64 (O(N*C) work, pairwise by NumPy).
``cols`` (N, M)
    The reduction runs along the slow axis N (batch norm on (N, C) with C
    contiguous, or short H*W runs). Each thread takes a block of rows and
    accumulates per-column partial sums in its own slab; the slabs are merged
    afterwards in a fixed order, so the result does not depend on scheduling.
``grp`` (N, G, M)
    Statistics per contiguous (n, g) row, parameters per column (layer norm,
    group norm over short H*W runs): row sums for the closed form, per-thread
    column slabs for dgamma and dbeta.

Sums are float64 whatever the input dtype, and shifted by a pivot (a sample
value of the same statistic) so that a large common offset cancels before it
is squared. Every kernel exists twice: parallel (``prange`` over threads) and
serial (the same source compiled without ``parallel``), because launching the
thread pool costs more than the whole job on small inputs.

Fast-math is restricted to ``reassoc`` and ``contract``: reassociation lets
LLVM vectorize the reductions, and ``nnan``/``ninf`` are left out so NaN and
inf in x propagate into the statistics, where the core reports them.
"""

from __future__ import annotations

import os
import tempfile
import types

import numba
import numpy as np
from numba import prange

_FASTMATH = {"reassoc", "contract"}


def _choose_cache() -> bool:
    """Whether ``cache=True`` works here; points Numba at a writable directory if needed.

    Numba caches next to the source, else in the user's cache directory. On a
    read-only install with a read-only HOME both fail, and ``cache=True``
    would raise "cannot cache function" at import. Then a per-user directory
    under the temp dir is used; if even that is not writable, no cache (each
    process compiles again, a few seconds).
    """

    def probe() -> bool:
        def f():  # pragma: no cover - never called, only its cache locator is built
            return 0
        try:
            numba.njit(cache=True)(f)
        except RuntimeError:
            return False
        return True

    if probe():
        return True
    if not os.environ.get("NUMBA_CACHE_DIR"):
        fallback = os.path.join(tempfile.gettempdir(), f"normlab-numba-cache-{os.getuid()}")
        try:
            os.makedirs(fallback, exist_ok=True)
        except OSError:
            return False
        os.environ["NUMBA_CACHE_DIR"] = fallback
        numba.config.CACHE_DIR = fallback  # the locator reads the config, set at numba's import
        if probe():
            return True
    return False


CACHE = _choose_cache()


def _twins(fn):
    """(parallel, serial) dispatchers compiled from the same Python function."""
    parallel = numba.njit(parallel=True, cache=CACHE, fastmath=_FASTMATH, nogil=True)(fn)
    # A distinct qualname gives the serial twin its own cache file: Numba keys
    # its cache by the function's name, not by the compile flags.
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                               fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + "_serial"
    clone.__module__ = fn.__module__
    serial = numba.njit(cache=CACHE, fastmath=_FASTMATH, nogil=True)(clone)
    return parallel, serial


# ----------------------------------------------------------------------------- rows (R, L)
# Coefficients are per row. Apply kernels compute in x's dtype (float32 math
# has twice the SIMD width): the mean comes split as mh + ml (hi and lo parts
# in x's dtype), so x - mh is exact near the mean and a large offset costs no
# accuracy; reductions always accumulate in float64.

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


def _row_apply(x, mh, ml, scale, shift, out):
    """out[r] = ((x[r] - mh[r]) - ml[r]) * scale[r] + shift[r]."""
    rows, length = x.shape
    for r in prange(rows):
        m0 = mh[r]
        m1 = ml[r]
        a = scale[r]
        b = shift[r]
        for i in range(length):
            out[r, i] = ((x[r, i] - m0) - m1) * a + b


def _row_grad_sums(x, dy, mu, t1, t2):
    """t1[r] = sum(dy[r]), t2[r] = sum(dy[r] * (x[r] - mu[r])), float64."""
    rows, length = x.shape
    for r in prange(rows):
        m = mu[r]
        a = 0.0
        b = 0.0
        for i in range(length):
            d = np.float64(dy[r, i])
            a += d
            b += d * (np.float64(x[r, i]) - m)
        t1[r] = a
        t2[r] = b


def _row_grad_apply(x, dy, mh, ml, k1, k2, k3, dx):
    """dx[r] = k1[r]*dy[r] + k2[r]*(x[r] - mh[r] - ml[r]) + k3[r]."""
    rows, length = x.shape
    for r in prange(rows):
        m0 = mh[r]
        m1 = ml[r]
        a = k1[r]
        b = k2[r]
        c = k3[r]
        for i in range(length):
            dx[r, i] = a * dy[r, i] + b * ((x[r, i] - m0) - m1) + c


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


def _col_apply(x, mh, ml, scale, shift, out):
    """out[i, j] = ((x[i, j] - mh[j]) - ml[j]) * scale[j] + shift[j]."""
    n, width = x.shape
    for i in prange(n):
        for j in range(width):
            out[i, j] = ((x[i, j] - mh[j]) - ml[j]) * scale[j] + shift[j]


def _col_grad_sums(x, dy, mu, c1, c2):
    """c1[t, j] += dy[i, j], c2[t, j] += dy[i, j] * (x[i, j] - mu[j]) over block t's rows."""
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
                d0 = np.float64(dy[i, j])
                d1 = np.float64(dy[i + 1, j])
                d2 = np.float64(dy[i + 2, j])
                d3 = np.float64(dy[i + 3, j])
                a1[j] += (d0 + d1) + (d2 + d3)
                a2[j] += ((d0 * (np.float64(x[i, j]) - m) + d1 * (np.float64(x[i + 1, j]) - m))
                          + (d2 * (np.float64(x[i + 2, j]) - m) + d3 * (np.float64(x[i + 3, j]) - m)))
            i += 4
        for r in range(i, hi):
            for j in range(width):
                d = np.float64(dy[r, j])
                a1[j] += d
                a2[j] += d * (np.float64(x[r, j]) - mu[j])


def _col_grad_apply(x, dy, mh, ml, k1, k2, k3, dx):
    """dx[i, j] = k1[j]*dy[i, j] + k2[j]*(x[i, j] - mh[j] - ml[j]) + k3[j]."""
    n, width = x.shape
    for i in prange(n):
        for j in range(width):
            dx[i, j] = k1[j] * dy[i, j] + k2[j] * ((x[i, j] - mh[j]) - ml[j]) + k3[j]


# ----------------------------------------------------------------------------- grouped (N, G, M)
# Statistics per (n, g) row, parameters per (g, j) column: layer norm (G = 1)
# and group norm over short spatial runs. Row sums feed the closed form;
# column partials per thread block are dgamma and dbeta.

def _grp_apply(x, mh, ml, invstd, gam, bet, out):
    """out[n, g, j] = ((x - mh[n, g]) - ml[n, g]) * invstd[n, g] * gam[g, j] + bet[g, j]."""
    n, groups, width = x.shape
    for i in prange(n):
        for g in range(groups):
            m0 = mh[i, g]
            m1 = ml[i, g]
            s0 = invstd[i, g]
            for j in range(width):
                out[i, g, j] = ((x[i, g, j] - m0) - m1) * s0 * gam[g, j] + bet[g, j]


def _grp_grad_sums(x, dy, mu, invstd, gam, r1, r2, c1, c2):
    """One pass over (x, dy) (N, G, M), xc = x - mu[n, g]: row sums r1[n, g] = sum_j gam*dy,
    r2[n, g] = sum_j gam*dy*xc; column partials c1[t, g, j] += dy, c2[t, g, j] += dy*xc*invstd[n, g].
    Four rows per sweep, as in the column kernels."""
    n, groups, width = x.shape
    blocks = c1.shape[0]
    for t in prange(blocks):
        lo = t * n // blocks
        hi = (t + 1) * n // blocks
        for g in range(groups):
            p1 = c1[t, g]
            p2 = c2[t, g]
            gm = gam[g]
            i = lo
            while i + 4 <= hi:
                m0, m1, m2, m3 = mu[i, g], mu[i + 1, g], mu[i + 2, g], mu[i + 3, g]
                s0, s1, s2, s3 = invstd[i, g], invstd[i + 1, g], invstd[i + 2, g], invstd[i + 3, g]
                a0 = a1 = a2 = a3 = 0.0
                b0 = b1 = b2 = b3 = 0.0
                for j in range(width):
                    d0 = np.float64(dy[i, g, j])
                    d1 = np.float64(dy[i + 1, g, j])
                    d2 = np.float64(dy[i + 2, g, j])
                    d3 = np.float64(dy[i + 3, g, j])
                    e0 = d0 * (np.float64(x[i, g, j]) - m0)
                    e1 = d1 * (np.float64(x[i + 1, g, j]) - m1)
                    e2 = d2 * (np.float64(x[i + 2, g, j]) - m2)
                    e3 = d3 * (np.float64(x[i + 3, g, j]) - m3)
                    p1[j] += (d0 + d1) + (d2 + d3)
                    p2[j] += (e0 * s0 + e1 * s1) + (e2 * s2 + e3 * s3)
                    w = gm[j]
                    a0 += w * d0
                    a1 += w * d1
                    a2 += w * d2
                    a3 += w * d3
                    b0 += w * e0
                    b1 += w * e1
                    b2 += w * e2
                    b3 += w * e3
                r1[i, g], r1[i + 1, g], r1[i + 2, g], r1[i + 3, g] = a0, a1, a2, a3
                r2[i, g], r2[i + 1, g], r2[i + 2, g], r2[i + 3, g] = b0, b1, b2, b3
                i += 4
            for r in range(i, hi):
                m0 = mu[r, g]
                s0 = invstd[r, g]
                a0 = 0.0
                b0 = 0.0
                for j in range(width):
                    d0 = np.float64(dy[r, g, j])
                    e0 = d0 * (np.float64(x[r, g, j]) - m0)
                    p1[j] += d0
                    p2[j] += e0 * s0
                    a0 += gm[j] * d0
                    b0 += gm[j] * e0
                r1[r, g] = a0
                r2[r, g] = b0


def _grp_grad_apply(x, dy, mh, ml, k1, gam, k2, k3, dx):
    """dx = k1[n, g]*gam[g, j]*dy + k2[n, g]*(x - mh[n, g] - ml[n, g]) + k3[n, g]."""
    n, groups, width = x.shape
    for i in prange(n):
        for g in range(groups):
            m0 = mh[i, g]
            m1 = ml[i, g]
            a0 = k1[i, g]
            b0 = k2[i, g]
            c0 = k3[i, g]
            for j in range(width):
                dx[i, g, j] = (a0 * gam[g, j]) * dy[i, g, j] + b0 * ((x[i, g, j] - m0) - m1) + c0


row_moments = _twins(_row_moments)
row_apply = _twins(_row_apply)
row_grad_sums = _twins(_row_grad_sums)
row_grad_apply = _twins(_row_grad_apply)
col_moments = _twins(_col_moments)
col_apply = _twins(_col_apply)
col_grad_sums = _twins(_col_grad_sums)
col_grad_apply = _twins(_col_grad_apply)
grp_apply = _twins(_grp_apply)
grp_grad_sums = _twins(_grp_grad_sums)
grp_grad_apply = _twins(_grp_grad_apply)

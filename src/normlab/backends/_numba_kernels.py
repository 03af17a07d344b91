"""Numba kernels of the fused backend: two loop shapes, four kernels each.

Every normalization is served by one of two loop shapes over a C-contiguous view:

``rows`` (R, L)
    Each statistic reduces along contiguous rows of length L (spatial batch
    norm over (n, c) rows, group norm over (n, g, k) rows). Parallel over rows;
    the per-row partial sums are merged over the slow axis afterwards in
    float64 (O(N*C) work, pairwise by NumPy).
``cols`` (N, G, M)
    The reduction runs along the slow axis N (batch norm on (N, C) with C
    contiguous, layer norm's parameter gradients). Each thread takes a block of
    rows and accumulates per-column partial sums in its own (G, M) slab; the
    slabs are merged afterwards, so the result does not depend on scheduling.

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

def _row_moments(x, pivot, s1, s2):
    """s1[r] = sum(x[r] - pivot[r]), s2[r] = sum((x[r] - pivot[r])**2)."""
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


def _row_grad_sums(x, dy, mu, t1, t2):
    """t1[r] = sum(dy[r]), t2[r] = sum(dy[r] * (x[r] - mu[r]))."""
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


def _row_grad_apply(x, dy, mu, k1, k2, k3, dx):
    """dx[r] = k1[r]*dy[r] + k2[r]*(x[r] - mu[r]) + k3[r]."""
    rows, length = x.shape
    for r in prange(rows):
        m = mu[r]
        a = k1[r]
        b = k2[r]
        c = k3[r]
        for i in range(length):
            dx[r, i] = a * np.float64(dy[r, i]) + b * (np.float64(x[r, i]) - m) + c


# ----------------------------------------------------------------------------- cols (N, G, M)

def _col_moments(x, pivot, s1, s2):
    """Per-thread column partials of shifted sums: x (N, M), pivot (M,), s1/s2 (T, M) zeroed."""
    n, width = x.shape
    blocks = s1.shape[0]
    for t in prange(blocks):
        lo = t * n // blocks
        hi = (t + 1) * n // blocks
        for i in range(lo, hi):
            for j in range(width):
                d = np.float64(x[i, j]) - pivot[j]
                s1[t, j] += d
                s2[t, j] += d * d


def _col_apply(x, mu_r, sc_r, mu_c, sc_c, sh_c, out):
    """out[n,g,j] = (x - mu_r[n,g] - mu_c[g,j]) * sc_r[n,g]*sc_c[g,j] + sh_c[g,j]; x (N, G, M)."""
    n, groups, width = x.shape
    for i in prange(n):
        for g in range(groups):
            m0 = mu_r[i, g]
            s0 = sc_r[i, g]
            for j in range(width):
                out[i, g, j] = (np.float64(x[i, g, j]) - m0 - mu_c[g, j]) * (s0 * sc_c[g, j]) + sh_c[g, j]


def _col_grad_sums(x, dy, mu_r, is_r, mu_c, gam_c, r1, r2, c1, c2):
    """One pass over (x, dy) of shape (N, G, M) with xc = x - mu_r[n,g] - mu_c[g,j]:

    row sums r1[n,g] = sum_j gam_c*dy, r2[n,g] = sum_j gam_c*dy*xc (layer norm's
    closed-form sums), and per-thread column partials c1[t,g,j] += dy,
    c2[t,g,j] += dy*xc*is_r[n,g] (dbeta, dgamma; batch norm's closed-form sums).
    """
    n, groups, width = x.shape
    blocks = c1.shape[0]
    for t in prange(blocks):
        lo = t * n // blocks
        hi = (t + 1) * n // blocks
        for i in range(lo, hi):
            for g in range(groups):
                m0 = mu_r[i, g]
                i0 = is_r[i, g]
                a = 0.0
                b = 0.0
                for j in range(width):
                    d = np.float64(dy[i, g, j])
                    xc = np.float64(x[i, g, j]) - m0 - mu_c[g, j]
                    c1[t, g, j] += d
                    c2[t, g, j] += d * xc * i0
                    gd = gam_c[g, j] * d
                    a += gd
                    b += gd * xc
                r1[i, g] = a
                r2[i, g] = b


def _col_grad_apply(x, dy, mu_r, mu_c, k1_r, k1_c, k2_r, k2_c, k3_r, k3_c, dx):
    """dx = k1_r*k1_c*dy + k2_r*k2_c*(x - mu_r - mu_c) + k3_r + k3_c, with *_r (N, G), *_c (G, M)."""
    n, groups, width = x.shape
    for i in prange(n):
        for g in range(groups):
            m0 = mu_r[i, g]
            a0 = k1_r[i, g]
            b0 = k2_r[i, g]
            c0 = k3_r[i, g]
            for j in range(width):
                xc = np.float64(x[i, g, j]) - m0 - mu_c[g, j]
                dx[i, g, j] = (a0 * k1_c[g, j]) * np.float64(dy[i, g, j]) + (b0 * k2_c[g, j]) * xc + (c0 + k3_c[g, j])


row_moments = _twins(_row_moments)
row_apply = _twins(_row_apply)
row_grad_sums = _twins(_row_grad_sums)
row_grad_apply = _twins(_row_grad_apply)
col_moments = _twins(_col_moments)
col_apply = _twins(_col_apply)
col_grad_sums = _twins(_col_grad_sums)
col_grad_apply = _twins(_col_grad_apply)

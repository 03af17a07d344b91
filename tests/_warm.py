"""Compile the Numba kernels the suite uses once, before the test workers start (``conftest.py``).

On a fresh clone every xdist worker would otherwise compile the same kernels at the same time (Numba's disk
cache is written by whichever finishes first); compiled here once, in two processes (one per dtype), the
workers load them from the cache. Nothing is asserted: the tests check these routes; this only calls each
kernel family once per dtype, on sizes served serially and in parallel, and compiles the C entry points
of each plan met (the native node's).

    python _warm.py float32      # from tests/
"""

import sys

import numpy as np

import normlab
from normlab.backends import numba_backend

_PARALLEL = numba_backend.SERIAL_BELOW  # values at or above this run the parallel twins


def _both_directions(forward, x, *params, **kw):
    out, cache = forward(x, *params, backend="numba", **kw)
    normlab.normalize_backward(np.ones_like(x), cache)
    layout = cache.layout
    if layout.center:  # given statistics (inference)
        forward(x, *params, backend="numba", mean=cache.mean, var=cache.var, **kw)
    for given in (False, True):
        plan = numba_backend.fused_plan(layout.view, layout.batch_stats, layout.center, given)
        if plan is not None:
            plan.entry_points(x.dtype)


def warm_numba_kernels(dtype) -> None:
    """Each norm forward and backward through the numba backend in ``dtype``, serial and parallel."""
    if "numba" not in normlab.available_backends():
        return
    rng = np.random.default_rng(0)
    for rows in (64, 2 * _PARALLEL // 64):  # serial, parallel (64 values per row)
        x = rng.standard_normal((rows, 64)).astype(dtype)
        g, b = np.ones(64, dtype), np.zeros(64, dtype)
        _both_directions(normlab.batchnorm_forward, x, g, b)
        _both_directions(normlab.layernorm_forward, x, g, b)
        _both_directions(normlab.rmsnorm_forward, x, g)
    for n, hw in ((2, (8, 8)), (16, (8, 8)), (4, (64, 64)), (64, (2, 2))):  # channels, rows, columns-like
        x = rng.standard_normal((n, 8, *hw)).astype(dtype)
        g, b = np.ones(8, dtype), np.zeros(8, dtype)
        _both_directions(normlab.spatial_batchnorm_forward, x, g, b)
        _both_directions(normlab.groupnorm_forward, x, g, b, 4)
        _both_directions(normlab.instancenorm_forward, x, g, b)


if __name__ == "__main__":
    warm_numba_kernels(np.dtype(sys.argv[1]))

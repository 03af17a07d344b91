"""The fused kernels as C entry points: raw pointers and sizes in, for a caller outside Python.

normlab.torch's native autograd node (``normlab/torch/fused_node.cpp``) runs a
BatchNorm's forward and backward without a Python frame in between; it calls
the same compiled kernels as every other route, through these ``numba.cfunc``
wrappers. Each wrapper views the pointers as arrays (``numba.carray``) and calls
one kernel of ``_numba_batch_kernels`` (batch statistics), the fused-rows calls
of ``_numba_kernels`` (per-sample statistics), or the running-statistics rule.

C signatures, T the input's type (float or double; weight and bias are T too)::

    int64 forward(T *x, T *gamma, T *beta, double eps, int64 given, double *stats, T *out, int64 *plan)
    void backward(T *x, T *dy, T *gamma, double *stats, int64 flags, T *dgamma, T *dbeta, T *dx, int64 *plan)
    void update(R *running_mean, R *running_var, double *stats, int64 channels, int64 count, double factor)

stats is the (3, S) float64 stack mean, var (biased), invstd per statistic; with
``given`` the forward reads mean and var from it. The backward's flags: :data:`GIVEN` (the statistics were
given: constants), :data:`NO_DX` (no dx wanted, the input does not require grad: dx is not read or written and
may be null) and :data:`NO_PARAMS` (no dgamma, dbeta wanted, frozen or absent parameters: those two are not
written and may be null), as torch's norms skip their outputs by an output mask. plan is the plan record
(``plan_record``): the wrappers read the view (n, groups, per_group, length) and the
task grid (width, row_blocks) from it by name, at the indices ``plan_record.INDEX``
gives. forward returns 1 when the statistics it computed are finite (always 1
with ``given``), else 0: the caller then takes the route that rescales or reports them.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import carray
from numba import types as nt

from . import _numba_batch_kernels as _kb
from . import _numba_kernels as _k
from . import plan_record

# The plan record's fields the wrappers read (constants frozen into the compiled code; plan_record.KEY in
# every wrapper's name keeps a cached one from reading another layout).
_FIELDS = len(plan_record.FIELDS)
_N, _GROUPS, _PER_GROUP, _LENGTH, _WIDTH, _ROW_BLOCKS = (
    plan_record.INDEX[name] for name in ("n", "groups", "per_group", "length", "width", "row_blocks"))

_TYPES = {np.dtype(np.float32): nt.float32, np.dtype(np.float64): nt.float64}

#: the backward's flags (``fused_node.cpp`` passes the same values)
GIVEN, NO_DX, NO_PARAMS = 1, 2, 4


@numba.njit(cache=_k.CACHE, inline="always")
def _dx_rows(flags, rows):
    """Rows of the dx view: none when the caller wants no dx (the kernels then write only dgamma, dbeta)."""
    return 0 if flags & NO_DX else rows


@numba.njit(cache=_k.CACHE, inline="always")
def _param_count(flags, params):
    """Entries of the dgamma, dbeta views: none when the caller wants neither."""
    return 0 if flags & NO_PARAMS else params


@numba.njit(cache=_k.CACHE, inline="always")
def _copy_out(flags, dgamma, dbeta, dgp, dbp):
    """The kernel's float64 dgamma, dbeta (C,) rounded once into the caller's buffers, unless it wants neither."""
    c = _param_count(flags, dgamma.shape[0])
    carray(dgp, (c,))[:] = dgamma[:c]
    carray(dbp, (c,))[:] = dbeta[:c]


def _columns_forward(xp, gp, bp, eps, given, sp, op, pp):
    plan = carray(pp, (_FIELDS,))
    n, c = plan[_N], plan[_GROUPS]
    st = carray(sp, (3, c))
    FORWARD(carray(xp, (n, c)), carray(gp, (c,)), carray(bp, (c,)), eps, given != 0, st[0], st[1], st[2],
            carray(op, (n, c)), plan[_WIDTH], plan[_ROW_BLOCKS])
    return 1 if given != 0 or _k.finite_stats(st[0], st[1]) else 0


def _columns_backward(xp, dyp, gp, sp, flags, dgp, dbp, dxp, pp):
    plan = carray(pp, (_FIELDS,))
    n, c = plan[_N], plan[_GROUPS]
    st = carray(sp, (3, c))
    dgamma, dbeta = np.empty(c), np.empty(c)  # the kernel's float64 sums, rounded once into the caller's type
    BACKWARD(carray(xp, (n, c)), carray(dyp, (n, c)), carray(gp, (c,)), st[0], st[2], (flags & GIVEN) != 0, dgamma,
             dbeta, carray(dxp, (_dx_rows(flags, n), c)), plan[_WIDTH], plan[_ROW_BLOCKS])
    _copy_out(flags, dgamma, dbeta, dgp, dbp)


def _channels_forward(xp, gp, bp, eps, given, sp, op, pp):
    plan = carray(pp, (_FIELDS,))
    n, c, length = plan[_N], plan[_GROUPS], plan[_LENGTH]
    st = carray(sp, (3, c))
    FORWARD(carray(xp, (n, c, length)), carray(gp, (c,)), carray(bp, (c,)), eps, given != 0, st[0], st[1], st[2],
            carray(op, (n, c, length)))
    return 1 if given != 0 or _k.finite_stats(st[0], st[1]) else 0


def _channels_backward(xp, dyp, gp, sp, flags, dgp, dbp, dxp, pp):
    plan = carray(pp, (_FIELDS,))
    n, c, length = plan[_N], plan[_GROUPS], plan[_LENGTH]
    st = carray(sp, (3, c))
    dgamma, dbeta = np.empty(c), np.empty(c)
    BACKWARD(carray(xp, (n, c, length)), carray(dyp, (n, c, length)), carray(gp, (c,)), st[0], st[2],
             (flags & GIVEN) != 0, dgamma, dbeta, carray(dxp, (_dx_rows(flags, n), c, length)))
    _copy_out(flags, dgamma, dbeta, dgp, dbp)


def _rows_forward(xp, gp, bp, eps, given, sp, op, pp):
    plan = carray(pp, (_FIELDS,))
    n, g, k, length = plan[_N], plan[_GROUPS], plan[_PER_GROUP], plan[_LENGTH]
    rows, width = n * g, k * length
    st = carray(sp, (3, rows))
    FORWARD(carray(xp, (rows, width)), carray(gp, (g * k,)), carray(bp, (g * k,)), g, k, length, PER_RUN, eps,
            _k.STATS_GIVEN if given != 0 else MODE, st, carray(op, (rows, width)))
    return 1 if given != 0 or _k.finite_stats(st[0], st[1]) else 0


def _rows_backward(xp, dyp, gp, sp, flags, dgp, dbp, dxp, pp):
    plan = carray(pp, (_FIELDS,))
    n, g, k, length = plan[_N], plan[_GROUPS], plan[_PER_GROUP], plan[_LENGTH]
    rows, width = n * g, k * length
    st = carray(sp, (3, rows))
    # row_blocks: the backward's slabs (numba_backend._blocks when the plan was made)
    BACKWARD(carray(xp, (rows, width)), carray(dyp, (rows, width)), carray(gp, (g * k,)), g, k, length, PER_RUN,
             st[0], st[2], _k.STATS_GIVEN if flags & GIVEN else MODE, plan[_ROW_BLOCKS],
             carray(dgp, (_param_count(flags, g * k),)), carray(dbp, (_param_count(flags, g * k),)),
             carray(dxp, (_dx_rows(flags, rows), width)))


def _update(rmp, rvp, sp, c, count, factor):
    st = carray(sp, (3, c))
    _k.update_running(carray(rmp, (c,)), carray(rvp, (c,)), st[0], st[1], count, factor)


_WRAPPERS = {"columns": (_columns_forward, _columns_backward), "channels": (_channels_forward, _channels_backward)}
_KERNELS = {"columns": (_kb.columns_forward, _kb.columns_backward),
            "channels": (_kb.channels_forward, _kb.channels_backward)}


def _bound(fn, suffix: str, **names):
    """fn calling ``names`` (the kernels), under a name of its own per combination, per version of the
    kernel sources and per layout of the plan record: a cached wrapper compiled against old kernels, or
    reading another record, is never loaded."""
    return _k.renamed(fn, f"{suffix}_{_k.SOURCES_KEY}_{plan_record.KEY}", **names)


def batch_entry_points(kind: str, parallel: bool, dtype) -> tuple[int, int]:
    """(forward, backward) addresses of the ``kind`` ("columns" or "channels") kernels for x of ``dtype``.

    Compiled on first use (cached on disk like the kernels).
    """
    return batch_entry_point(kind, parallel, dtype, "forward"), batch_entry_point(kind, parallel, dtype, "backward")


@functools.cache
def batch_entry_point(kind: str, parallel: bool, dtype, direction: str) -> int:
    """The address of one direction ("forward" or "backward") of :func:`batch_entry_points`: each compiles
    on its own (a caller that needs one does not pay for the other)."""
    # A cached wrapper of a parallel kernel links against the thread pool's symbols: start the pool
    # first (numba.get_num_threads does), or loading it from the cache aborts the process.
    numba.get_num_threads()
    t = _TYPES[np.dtype(dtype)]
    p, d, i = nt.CPointer(t), nt.CPointer(nt.float64), nt.CPointer(nt.int64)
    suffix = f"_{'parallel' if parallel else 'serial'}_{t}"
    which = 0 if parallel else 1  # the twins are (parallel, serial)
    if direction == "forward":
        sig, wrapper, names = nt.int64(p, p, p, nt.float64, nt.int64, d, p, i), _WRAPPERS[kind][0], {
            "FORWARD": _KERNELS[kind][0][which]}
    else:
        sig, wrapper, names = nt.void(p, p, p, d, nt.int64, p, p, p, i), _WRAPPERS[kind][1], {
            "BACKWARD": _KERNELS[kind][1][which]}
    compiled = numba.cfunc(sig, cache=_k.CACHE)(_bound(wrapper, suffix, **names))
    _KEEP.append(compiled)
    return compiled.address


@functools.cache
def rows_entry_points(kind: str, parallel: bool, center: bool, dtype) -> tuple[int, int]:
    """(forward, backward) addresses of the fused-rows kernels (layer, group, instance, RMS norm) for x of
    ``dtype``: ``kind`` "rows" (a parameter per run of L values) or "rows_elementwise"; center False: RMS.

    The plan record gives (N, G, K, L): N*G rows of K*L values, parameters (G*K,), and row_blocks, the
    backward's row blocks (a dgamma/dbeta slab each); ``given`` reads mean and var (N*G,) from stats.
    Compiled on first use (cached on disk like the kernels).
    """
    numba.get_num_threads()  # start the pool first, as in batch_entry_points
    t = _TYPES[np.dtype(dtype)]
    p, d, i = nt.CPointer(t), nt.CPointer(nt.float64), nt.CPointer(nt.int64)
    which = 0 if parallel else 1
    names = {"FORWARD": _k.rows_forward_call[which], "BACKWARD": _k.rows_backward_call[kind][which],
             "PER_RUN": kind == "rows",
             "MODE": _k.STATS_BATCH if center else _k.STATS_RMS}
    suffix = f"_{kind}_{'parallel' if parallel else 'serial'}_{'center' if center else 'rms'}_{t}"
    compiled_forward = numba.cfunc(nt.int64(p, p, p, nt.float64, nt.int64, d, p, i), cache=_k.CACHE)(
        _bound(_rows_forward, suffix, **names))
    compiled_backward = numba.cfunc(nt.void(p, p, p, d, nt.int64, p, p, p, i), cache=_k.CACHE)(
        _bound(_rows_backward, suffix, **names))
    _KEEP.extend((compiled_forward, compiled_backward))
    return compiled_forward.address, compiled_backward.address


@functools.cache
def update_entry_point(dtype) -> int:
    """The address of the running-statistics rule on buffers of ``dtype``."""
    t = _TYPES[np.dtype(dtype)]
    sig = nt.void(nt.CPointer(t), nt.CPointer(t), nt.CPointer(nt.float64), nt.int64, nt.int64, nt.float64)
    compiled = numba.cfunc(sig, cache=_k.CACHE)(_bound(_update, f"_{t}"))
    _KEEP.append(compiled)
    return compiled.address


_KEEP: list = []  # the compiled wrappers: their code lives as long as they do

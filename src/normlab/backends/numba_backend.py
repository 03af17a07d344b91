"""The fused Numba backend: two passes over x forward, two over (x, dout) backward.

Forward: pass 1 reduces x to shifted float64 sums per statistic, pass 2
writes ``(x - mean) * (invstd*gamma) + beta``, computed in float64 and
rounded once to x's dtype (into ``out`` when
given, so a training loop can reuse one buffer instead of paying page faults
on a fresh allocation). Backward: pass 1 reduces (x, dout) to the two sums
of the closed form (which are also dgamma and dbeta), pass 2 writes dx,
recomputing xhat from x, mean and invstd (float64 again, rounded once).

Memory: the cache holds a reference to x plus the O(C) float64 statistics
(mean, var, invstd); ``saved`` is None. (The NumPy backend keeps xhat too, a
float64 array the size of x: 8 bytes per element whatever x's dtype.)
Scratch per call is O(C*L + threads*C) float64, never O(x); the outputs y
and dx are the only x-sized allocations, and from 4 MiB on they come from
``output_pool`` (recycled blocks, so a step does not fault their pages in again).

Loop shape per layout (see ``_numba_kernels`` and ``_numba_batch_kernels``):

* batch statistics, most shapes: one launch per direction (``fused_plan``),
  ``columns`` kernels for every (N, C) (tasks on blocks of rows, then of
  channels: ``_column_grid``), ``channels`` kernels for runs of at least
  ``ROWS_MIN_LENGTH`` values or small inputs, below ``CHANNELS_FUSED_BELOW``
  values; the PyTorch bridge calls these directly (``normlab.torch.fused``),
  from C++ through their C entry points (``_numba_entry_points``,
  ``FusedPlan.entry_points``);
* given statistics (batch norm in eval mode): one launch at every size, row
  by row (nothing to reduce); above the fused sizes for the forward only;
* batch statistics otherwise (large inputs, mid-sized short runs): two
  kernels, ``rows`` (parallel over (n, c) rows, partial sums merged over N
  afterwards) or ``cols`` (row blocks with per-thread column slabs);
* per-sample statistics (layer and group norm): ``fused rows`` kernels, each
  row reduced and then written while it is still in cache.

Inputs smaller than ``SERIAL_BELOW`` values run the serial twins (the thread
pool's start-up costs more than the work). Non-contiguous inputs are copied
once to C order; float16 computes in float32 and returns float16.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable, NamedTuple

try:
    import numba

    from . import _numba_batch_kernels as _kb
    from . import _numba_kernels as _k
except Exception as exc:  # a broken numba (e.g. an unsupported NumPy) must not break normlab
    raise ImportError(f"the numba backend needs a working numba: {exc}") from exc

import numpy as np

from . import output_pool

NAME = "numba"

_LAUNCH_LOCK = threading.Lock()
_serialize: bool | None = None  # decided at the first launch, when Numba has picked its threading layer


def launch_lock() -> threading.Lock | None:
    """The lock every kernel launch holds where Numba's threading layer is not thread-safe, else None.

    The ``workqueue`` layer has one task queue: two Python threads launching
    parallel kernels at once (two models trained in two threads; the native node
    releases the GIL while its kernels run) corrupt it. ``omp`` and ``tbb``
    take concurrent launches. The native node holds the same lock
    (``normlab.torch.fused_node``), so Python and C++ launches take turns too.
    """
    global _serialize
    if _serialize is None:
        numba.get_num_threads()  # starts the pool, which picks the layer
        _serialize = numba.threading_layer() == "workqueue"
    return _LAUNCH_LOCK if _serialize else None


def _serialized(fn):
    """fn under :func:`launch_lock` where there is one."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        lock = launch_lock()
        if lock is None:
            return fn(*args, **kwargs)
        with lock:
            return fn(*args, **kwargs)
    return call

#: Reductions along contiguous runs at least this long use the ``rows`` kernels.
ROWS_MIN_LENGTH = 32
#: Inputs with fewer values run serially (the thread pool's start-up costs more).
SERIAL_BELOW = 1 << 15
#: Batch norm on (N, C, L) with fewer values takes the fused channels kernels.
CHANNELS_FUSED_BELOW = 1 << 20


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _work_dtype(*arrays) -> np.dtype:
    """float64 if any input is float64, else float32 (float16 computes in float32)."""
    for a in arrays:
        if a.dtype == _F64:
            return _F64
    return _F32


def _pick(twins, size):
    return twins[1] if size < SERIAL_BELOW else twins[0]


def _blocks(size, rows, per_thread=1):
    """How many blocks of rows, each summing into a column slab of its own: ``per_thread`` per thread,
    never more than rows (1 when the serial twins run)."""
    if size < SERIAL_BELOW:
        return 1
    return max(1, min(per_thread * numba.get_num_threads(), rows))


#: Row blocks per thread in the fused-rows backward. With one block per thread the backward of layer
#: norm at (2048, 256) float32 ran 1.1-1.7x slower than with four or more in most processes, though each
#: thread sweeps the same rows either way (docs/benchmarks.md, "Inside the step, per call").
ROW_BLOCKS_PER_THREAD = 4


def _f64(a):
    return np.ascontiguousarray(a, dtype=np.float64)


def _f64_flat(a):
    """a as a contiguous 1-d float64 array: itself when it is one (statistics the forward made: a call's
    fixed cost otherwise)."""
    if a.dtype == _F64 and a.flags.c_contiguous:
        return a if a.ndim == 1 else a.reshape(-1)
    return _f64(a).reshape(-1)


def _affine(gamma, beta, channels):
    gam = np.ones(channels) if gamma is None else _f64(gamma)
    bet = np.zeros(channels) if beta is None else _f64(beta)
    return gam, bet


def _channel_moments(xw, n, c, l):
    """Mean and biased var per channel of xw (N, C, 1, L), float64 (C,)."""
    m = n * l
    pivot = _f64(xw[0, :, 0, 0])  # a sample of each channel: the offset cancels before squaring
    if l >= ROWS_MIN_LENGTH:
        s1, s2 = np.empty(n * c), np.empty(n * c)
        _pick(_k.row_moments, xw.size)(xw.reshape(n * c, l), np.tile(pivot, n), s1, s2)
        s1, s2 = s1.reshape(n, c).sum(axis=0), s2.reshape(n, c).sum(axis=0)
    else:
        blocks = _blocks(xw.size, n)
        s1, s2 = np.zeros((blocks, c * l)), np.zeros((blocks, c * l))
        _pick(_k.col_moments, xw.size)(xw.reshape(n, c * l), np.repeat(pivot, l), s1, s2)
        s1, s2 = s1.sum(axis=0).reshape(c, l).sum(axis=1), s2.sum(axis=0).reshape(c, l).sum(axis=1)
    shift = s1 / m
    return pivot + shift, np.maximum(s2 / m - shift * shift, 0.0)


def _require_centered(batch_stats, center):
    if batch_stats and not center:
        raise NotImplementedError("the numba backend computes uncentred (RMS) statistics per sample only")


@_serialized
def forward(x4, gamma, beta, eps, batch_stats, given=None, out=None, center=True):
    _require_centered(batch_stats, center)
    plan = fused_plan(x4.shape, batch_stats, center, given is not None)
    if plan is not None:  # (per-sample statistics always have one) no NumPy arithmetic: skip errstate's cost
        return _fused_forward(plan, x4, gamma, beta, eps, given, out)
    # NaN/inf in x must reach the statistics (the core reports them), quietly.
    with np.errstate(invalid="ignore", over="ignore"):
        return _forward(x4, gamma, beta, eps, batch_stats, given, out, center)


def _fused_kind(n, c, l, size):
    """Which fused batch-statistics kernels serve (N, C, 1, L), or None for the two-kernel paths.

    Measured on 2 cores: the fused kernels (one launch, no NumPy glue) win for
    every (N, C) (their threads sweep blocks of whole rows: (256, 1024)
    forward+backward 0.97-1.07x torch.nn's time against 2.1-2.3x on the two-kernel
    paths, (4096, 1024) 1.02-1.24x against 1.18-1.31x, float32) and for runs
    L >= ROWS_MIN_LENGTH up to CHANNELS_FUSED_BELOW values; larger (N, C, L) are
    faster on the two-kernel paths, whose threads sweep contiguous memory where a
    thread per channel strides across all of x (forward+backward, float32, AMD
    EPYC: (32, 64, 256) 0.35 against 0.38 ms, (128, 128, 64) 1.01 against
    0.94 ms, (64, 32, 1024) 2.6 against 1.4 ms).
    """
    if l == 1:
        return "columns"
    if (l >= ROWS_MIN_LENGTH or size < SERIAL_BELOW) and size < CHANNELS_FUSED_BELOW:
        return "channels" if c >= _threads(size) else None
    return None


def _threads(size):
    return 1 if size < SERIAL_BELOW else numba.get_num_threads()


def _column_grid(n, c, size):
    """(width, row_blocks): the columns kernels' tasks, row blocks of x times blocks of ``width`` channels,
    one task per thread.

    Rows first: a thread then sweeps whole rows, the memory the matrix product
    before it and the elementwise op after it touch on the same core (in an
    MLP training step, paired step by step, row blocks were ~2% faster than a
    channel block per thread; docs/benchmarks.md). Blocks keep >= 16 rows, so
    merging their sums stays a small part of the work; channels split the rest.
    """
    threads = _threads(size)
    row_blocks = max(1, min(threads, n // 16))
    col_blocks = max(1, threads // row_blocks)
    if col_blocks == 1:
        return c, row_blocks
    per_block = -(-c // col_blocks)  # ceil
    return max(16, (per_block + 15) // 16 * 16), row_blocks


class FusedPlan(NamedTuple):
    """The one-launch kernels for a batch-statistics view (N, C, 1, L), bound to their loop shape.

    ``forward(x, gamma, beta, eps, given, mean, var, invstd, out, *extra)`` and
    ``backward(x, dy, gamma, mean, invstd, given, dgamma, dbeta, dx, *extra)``
    take arrays reshaped to ``view``: (N, C) for the columns kernels, (N, C, L)
    for the channels kernels. Statistics and parameter gradients are float64 (C,).
    """

    view: tuple
    forward: Callable
    backward: Callable
    extra: tuple
    kind: str  # "columns" or "channels"
    parallel: bool
    #: (running_mean, running_var, batch_mean, batch_var, count, factor): the running-statistics rule in place
    update_running: Callable = _k.update_running
    #: for given statistics above the fused sizes: the forward serves, the backward is slower than the general
    #: route's (``fused_plan``)
    forward_only: bool = False

    @property
    def count(self) -> int:
        """How many values each statistic reduces over (N, or N*L)."""
        return self.view[0] * (self.view[2] if len(self.view) == 3 else 1)

    def run_forward(self, xv, gamma, beta, eps, given, stats, out):
        """Statistics into stats (3, C) float64 (mean and var read from it when given) and out."""
        self.forward(xv, gamma, beta, float(eps), given, stats[0], stats[1], stats[2], out, *self.extra)

    def run_backward(self, xv, dyv, gamma, mean, invstd, given, dx):
        """dx into dx from float64 (C,) mean and invstd; returns (dgamma, dbeta), float64 (C,) arrays of their
        own."""
        dgamma, dbeta = np.empty(xv.shape[1]), np.empty(xv.shape[1])
        self.backward(xv, dyv, gamma, mean, invstd, bool(given), dgamma, dbeta, dx, *self.extra)
        return dgamma, dbeta

    def entry_points(self, dtype) -> dict[str, int]:
        """These kernels as C functions for input of ``dtype``, as fields of the plan record
        (``plan_record``): the addresses of forward, backward and the running-statistics rule on float32
        and on float64 buffers, and the view (N, C, 1, L) with the columns kernels' task grid
        (``_numba_entry_points`` gives the signatures). Compiled on first use."""
        from . import _numba_entry_points as ep

        forward, backward = ep.batch_entry_points(self.kind, self.parallel, dtype)
        n, c, length = (*self.view, 1)[:3]
        width, row_blocks = self.extra or (0, 0)
        return {"forward": forward, "backward": backward, "update_float": ep.update_entry_point(np.float32),
                "update_double": ep.update_entry_point(np.float64), "n": n, "groups": c, "per_group": 1,
                "length": length, "width": width, "row_blocks": row_blocks}


class RowsPlan(NamedTuple):
    """The fused-rows kernels for per-sample statistics of a (N, G, K, L) view, one launch per direction.

    Layer, group, instance and RMS norm: each (n, g) row of K*L values is one
    statistic. The same interface as :class:`FusedPlan`, on arrays reshaped to
    ``view`` (N*G, K*L), statistics (3, N*G) (the backward's mean and invstd (N*G,))
    and parameters (G*K,).
    """

    shape: tuple
    center: bool
    forward_only = False  # (FusedPlan's flag: the backward serves too)

    @property
    def view(self) -> tuple:
        n, g, k, l = self.shape
        return (n * g, k * l)

    def run_forward(self, xv, gamma, beta, eps, given, stats, out):
        _, g, k, l = self.shape
        mode = _k.STATS_GIVEN if given else (_k.STATS_BATCH if self.center else _k.STATS_RMS)
        _pick(_k.rows_forward_call, xv.size)(xv, gamma, beta, g, k, l, l >= ROWS_MIN_LENGTH, float(eps), mode,
                                             stats, out)

    def run_backward(self, xv, dyv, gamma, mean, invstd, given, dx):
        """dx into dx from x, dy (R, M), gamma (G*K,) and float64 (R,) mean, invstd; returns (dgamma, dbeta),
        float64 (G*K,) arrays of their own."""
        n, g, k, l = self.shape
        mode = _k.STATS_GIVEN if given else (_k.STATS_BATCH if self.center else _k.STATS_RMS)
        dgamma, dbeta = np.empty(g * k), np.empty(g * k)
        _pick(_k.rows_backward_call[self.kernel_kind], xv.size)(
            xv, dyv, gamma, g, k, l, l >= ROWS_MIN_LENGTH, mean, invstd, mode,
            _blocks(xv.size, n * g, ROW_BLOCKS_PER_THREAD), dgamma, dbeta, dx)
        return dgamma, dbeta

    @property
    def kernel_kind(self) -> str:
        """Which backward kernel serves these rows: per run, or per element (short runs)."""
        return "rows" if self.shape[3] >= ROWS_MIN_LENGTH else "rows_elementwise"

    def entry_points(self, dtype) -> dict[str, int]:
        """As :meth:`FusedPlan.entry_points`: forward, backward, no running-statistics rule (0), the view
        (N, G, K, L), and the backward's row blocks for the thread count of now."""
        from . import _numba_entry_points as ep

        size = math.prod(self.shape)
        forward, backward = ep.rows_entry_points(self.kernel_kind, size >= SERIAL_BELOW, self.center, dtype)
        n, g, k, length = self.shape
        return {"forward": forward, "backward": backward, "update_float": 0, "update_double": 0, "n": n,
                "groups": g, "per_group": k, "length": length, "width": 0,
                "row_blocks": _blocks(size, self.view[0], ROW_BLOCKS_PER_THREAD)}


def fused_plan(view4, batch_stats: bool = True, center: bool = True,
               given: bool = False) -> FusedPlan | RowsPlan | None:
    """The one-launch kernels serving a (N, G, K, L) view, or None (batch statistics on the two-kernel paths).

    batch_stats False: per-sample statistics (center False: RMS), always one launch.
    given: the statistics are given (inference): no reduction, so one launch at every size; above the
    fused sizes the plan is ``forward_only`` (its backward, a thread per channel, is slower there than
    the two-kernel path's).
    """
    if not batch_stats:
        return RowsPlan(tuple(view4), center)
    n, c, _, l = view4
    size = n * c * l
    kind = _fused_kind(n, c, l, size)
    forward_only = kind is None and given
    if forward_only:
        kind = "columns" if l == 1 else "channels"
    if kind == "columns":
        return FusedPlan((n, c), _pick(_kb.columns_forward, size), _pick(_kb.columns_backward, size),
                         _column_grid(n, c, size), "columns", size >= SERIAL_BELOW, forward_only=forward_only)
    if kind == "channels":
        return FusedPlan((n, c, l), _pick(_kb.channels_forward, size), _pick(_kb.channels_backward, size), (),
                         "channels", size >= SERIAL_BELOW, forward_only=forward_only)
    return None


def _fused_forward(plan, x4, gamma, beta, eps, given, out):
    """Statistics and the output in one compiled call: a FusedPlan (batch statistics, float64 (G,) each) or a
    RowsPlan (one (n, g) row per statistic, float64 (N, G) each)."""
    n, g, k, _ = x4.shape
    stat_shape = (n, g) if isinstance(plan, RowsPlan) else (g,)
    dt = _F64 if x4.dtype == _F64 else _F32  # (_work_dtype of one array)
    xw = x4 if x4.dtype == dt and x4.flags.c_contiguous else np.ascontiguousarray(x4, dtype=dt)
    direct = out is not None and out.dtype == dt and out.flags.c_contiguous
    y = out if direct else output_pool.empty(x4.shape, dt)
    stats = np.empty((3, *stat_shape))  # mean, var, invstd
    flat = stats.reshape(3, -1)
    if given is not None:
        flat[0], flat[1] = given[0].reshape(-1), given[1].reshape(-1)
    plan.run_forward(xw.reshape(plan.view), _param(gamma, 1.0, g * k), _param(beta, 0.0, g * k), eps,
                     given is not None, flat, y.reshape(plan.view))
    mean, var, invstd = stats  # (views of one array: unpacking costs less than three reshapes)
    return _finish(y, out, direct, x4), mean, var, invstd, None


def _fused_backward(plan, dout4, x4, gamma, mean, invstd, stats_given, out, want_dx=True):
    """The closed form in one compiled call (a FusedPlan: batch statistics; a RowsPlan: per-sample ones).
    want_dx False: the kernels get a dx of no rows and write only dgamma, dbeta (dx returned as None)."""
    params = x4.shape[1] * x4.shape[2]  # G*K (batch statistics: K = 1)
    dt = _F64 if x4.dtype == _F64 or dout4.dtype == _F64 else _F32  # (_work_dtype of the two)
    xw = x4 if x4.dtype == dt and x4.flags.c_contiguous else np.ascontiguousarray(x4, dtype=dt)
    dyw = dout4 if dout4.dtype == dt and dout4.flags.c_contiguous else np.ascontiguousarray(dout4, dtype=dt)
    direct = out is not None and out.dtype == dt and out.flags.c_contiguous
    if want_dx:
        dx = out if direct else output_pool.empty(x4.shape, dt)
        dx_view = dx.reshape(plan.view)
    else:
        dx, dx_view = None, np.empty((0, *plan.view[1:]), dt)
    dgamma, dbeta = plan.run_backward(xw.reshape(plan.view), dyw.reshape(plan.view), _param(gamma, 1.0, params),
                                      _f64_flat(mean), _f64_flat(invstd), stats_given, dx_view)
    if want_dx and out is not None and not direct:
        np.copyto(out, dx, casting="unsafe")
        dx = out
    return (dx, None, None) if gamma is None else (dx, dgamma, dbeta)


def _param(p, fill: float, channels: int) -> np.ndarray:
    """gamma or beta as the fused kernels take it: its own contiguous float array, or a constant."""
    if p is None:
        return np.full(channels, fill)
    if p.flags.c_contiguous and (p.dtype == _F32 or p.dtype == _F64):
        return p
    return _f64(p)  # float16 (which the kernels do not take), or a strided view


def _forward(x4, gamma, beta, eps, batch_stats, given, out, center):
    n, g, k, l = x4.shape
    dt = _work_dtype(x4)
    xw = np.ascontiguousarray(x4, dtype=dt)
    direct = out is not None and out.dtype == dt and out.flags.c_contiguous
    y = out if direct else output_pool.empty(x4.shape, dt)
    gam, bet = _affine(gamma, beta, g * k)
    size = xw.size
    if given is not None:
        mean, var = _f64(given[0]), _f64(given[1])
    else:
        mean, var = _channel_moments(xw, n, g, l)
    invstd = 1.0 / np.sqrt(var + eps)
    scale = invstd * gam
    if l >= ROWS_MIN_LENGTH:  # rows (n, c) of length L
        _pick(_k.row_apply, size)(xw.reshape(n * g, l), np.tile(mean, n), np.tile(scale, n), np.tile(bet, n),
                                  y.reshape(n * g, l))
    else:  # columns (c, l) of an (N, C*L) matrix
        _pick(_k.col_apply, size)(xw.reshape(n, g * l), np.repeat(mean, l), np.repeat(scale, l),
                                  np.repeat(bet, l), y.reshape(n, g * l))
    return _finish(y, out, direct, x4), mean, var, invstd, None


def _finish(y, out, direct, x4):
    """The result in x's dtype, in ``out`` when one was given."""
    if out is not None and not direct:
        np.copyto(out, y, casting="unsafe")
        return out
    return y if y.dtype == x4.dtype else y.astype(x4.dtype)


@_serialized
def backward(dout4, x4, gamma, mean, invstd, batch_stats, stats_given, saved, out=None, center=True, want_dx=True):
    _require_centered(batch_stats, center)
    plan = fused_plan(x4.shape, batch_stats, center)
    if plan is not None:  # (per-sample statistics always have one)
        return _fused_backward(plan, dout4, x4, gamma, mean, invstd, stats_given, out, want_dx)
    n, g, k, l = x4.shape
    dt = _work_dtype(x4, dout4)
    xw = np.ascontiguousarray(x4, dtype=dt)
    dyw = np.ascontiguousarray(dout4, dtype=dt)
    mean, invstd = _f64(mean), _f64(invstd)
    dbeta, dgamma = _batch_grad_sums(xw, dyw, mean, invstd, n, g, l)
    if not want_dx:  # the sums are the parameters' gradients: nothing more to do
        return (None, None, None) if gamma is None else (None, dgamma, dbeta)
    direct = out is not None and out.dtype == dt and out.flags.c_contiguous
    dx = out if direct else output_pool.empty(x4.shape, dt)
    gam, _ = _affine(gamma, None, g)
    m = n * l
    k1 = gam * invstd
    if stats_given:  # mean and var are constants: dx = dout * gamma * invstd
        k2, k3 = np.zeros(g), np.zeros(g)
    else:  # gamma*invstd*(dout - dbeta/m - xhat*dgamma/m)
        k2, k3 = -k1 * (dgamma / m), -k1 * (dbeta / m)
    _batch_grad_apply(xw, dyw, mean, invstd, k1, k2, k3, dx, n, g, l)
    if out is not None and not direct:
        np.copyto(out, dx, casting="unsafe")
        dx = out
    if gamma is None:
        return dx, None, None
    return dx, dgamma, dbeta


def _batch_grad_sums(xw, dyw, mean, invstd, n, g, l):
    """Per channel of (N, G, 1, L): sum(dy) and sum(dy*xhat), float64 (G,)."""
    if l >= ROWS_MIN_LENGTH:  # rows (n, c) of length L
        t1, t2 = np.empty(n * g), np.empty(n * g)
        _pick(_k.row_grad_sums, xw.size)(xw.reshape(n * g, l), dyw.reshape(n * g, l), np.tile(mean, n),
                                         np.tile(invstd, n), t1, t2)
        return t1.reshape(n, g).sum(axis=0), t2.reshape(n, g).sum(axis=0)
    # columns (c, l) of an (N, C*L) matrix
    blocks = _blocks(xw.size, n)
    c1, c2 = np.zeros((blocks, g * l)), np.zeros((blocks, g * l))
    _pick(_k.col_grad_sums, xw.size)(xw.reshape(n, g * l), dyw.reshape(n, g * l), np.repeat(mean, l),
                                     np.repeat(invstd, l), c1, c2)
    return c1.sum(axis=0).reshape(g, l).sum(axis=1), c2.sum(axis=0).reshape(g, l).sum(axis=1)


def _batch_grad_apply(xw, dyw, mean, invstd, k1, k2, k3, dx, n, g, l):
    """dx = k1*dy + k2*xhat + k3 with per-channel float64 coefficients (G,), into dx."""
    rows = l >= ROWS_MIN_LENGTH
    shape2 = (n * g, l) if rows else (n, g * l)
    spread = (lambda a: np.tile(a, n)) if rows else (lambda a: np.repeat(a, l))
    kernel = _pick(_k.row_grad_apply if rows else _k.col_grad_apply, xw.size)
    kernel(xw.reshape(shape2), dyw.reshape(shape2), spread(mean), spread(invstd), spread(k1), spread(k2),
           spread(k3), dx.reshape(shape2))


# ----------------------------------------------------------------------------- pieces
# The backward split where sums from other ranks join (normlab.distributed):
# batch layouts only; per-sample statistics need no synchronization.

def _require_batch_stats(batch_stats):
    if not batch_stats:
        raise ValueError("grad_sums/grad_apply are defined for batch statistics (one per channel, K == 1)")


@_serialized
def moments(x4, batch_stats):
    """Mean and biased var, float64 (G,) or (N, G): the forward's statistics pass alone."""
    n, g, k, l = x4.shape
    if not batch_stats:  # per-sample statistics live inside the fused row kernel: use the reference
        from . import numpy_backend

        return numpy_backend.moments(x4, batch_stats)
    with np.errstate(invalid="ignore", over="ignore"):
        return _channel_moments(np.ascontiguousarray(x4, dtype=_work_dtype(x4)), n, g, l)


@_serialized
def grad_sums(dout4, x4, mean, invstd, batch_stats):
    """(sum dy, sum dy*xhat) per channel, float64 (G,): the backward's first pass alone."""
    _require_batch_stats(batch_stats)
    n, g, _, l = x4.shape
    dt = _work_dtype(x4, dout4)
    return _batch_grad_sums(np.ascontiguousarray(x4, dtype=dt), np.ascontiguousarray(dout4, dtype=dt),
                            _f64(mean), _f64(invstd), n, g, l)


@_serialized
def grad_apply(dout4, x4, gamma, mean, invstd, sum_dy, sum_dy_xhat, count, batch_stats, out=None):
    """dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count): the backward's second pass alone."""
    _require_batch_stats(batch_stats)
    n, g, _, l = x4.shape
    dt = _work_dtype(x4, dout4)
    direct = out is not None and out.dtype == dt and out.flags.c_contiguous
    dx = out if direct else output_pool.empty(x4.shape, dt)
    invstd = _f64(invstd)
    gam, _ = _affine(gamma, None, g)
    k1 = gam * invstd
    k2, k3 = -k1 * (_f64(sum_dy_xhat) / count), -k1 * (_f64(sum_dy) / count)
    _batch_grad_apply(np.ascontiguousarray(x4, dtype=dt), np.ascontiguousarray(dout4, dtype=dt), _f64(mean),
                      invstd, k1, k2, k3, dx, n, g, l)
    return _finish(dx, out, direct, x4)


def update_running(running_mean, running_var, batch_mean, batch_var, count, factor):
    """Fold a batch's float64 (C,) statistics into running (C,) arrays in place (the NumPy backend's rule)."""
    _k.update_running(running_mean, running_var, _f64(batch_mean), _f64(batch_var), int(count), float(factor))


def all_finite(mean, var) -> bool:
    """Whether every statistic is finite: one compiled loop."""
    return _k.finite_stats(mean, var)

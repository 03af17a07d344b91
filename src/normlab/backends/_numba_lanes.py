"""Float32 lanes: the writing passes of float32 input in float32 arithmetic, where that is provably as accurate.

The numerics policy of ``_numba_kernels`` forms every output from float64 statistics and rounds once. A float32
vector holds twice the values of a float64 one and needs no conversions, so for float32 input the writing passes
run in float32 wherever an error bound shows the result meets the criterion ``tests/test_extremes.py`` holds the
float64 path to: |error| <= eps*|v| + 1e-12*(scale), eps = 2**-23, v the exact value formed from the float64
statistics (mean, var) the kernel computed. (That reference, not x's exact statistics: at x = 1e6 + N(0, 1) the
float64 mean is itself off by up to 2**-53 * 1e6 ~ 1e-10, and an output near zero is then 1.3 eps*|y| from the
exact value on the float64 path and the NumPy backend alike, though it is their float64 result rounded once.)
The statistics and every sum stay float64.

Each coefficient is split into a float32 head and tail (k = kh + kl to 2**-48*|k|) and each product formed so
that its large part is exact:

* forward, y = x*a + c (a = gamma*invstd, c = beta - mean*a): p = fma(x, ah, ch) rounds x*ah + ch once (the
  product is exact inside the fma, so an offset in x cancels against c before any rounding), q = fma(x, al, cl)
  carries the tails, y = p + q. |y - y*| <= eps*|y*| + 2**-46*(|x*a| + |c|), and |x*a| + |c| <= |y*| + 2K
  with K = |beta| + |mean*a|: :func:`forward_ok` asks K <= 16 (then the second term is at most 2**-46*(|y*| + 32)
  < 4.6e-13*(1 + |y*|), inside the criterion's 1e-12*(1 + |y*|)), a finite nonzero variance (constant input keeps
  y = beta exactly) and a tail that is a normal float32.
* backward, dx = k1*dy + k2s*x + k3 (k2s = k2*invstd, k3 with the mean folded in): P + E = k2h*x exactly
  (two-product), S + F = P + k3h exactly (two-sum), D = fma(k1h, dy, S), dx = D + (F + E + tails).
  |dx - dx*| <= eps*|dx*| + 2**-45*T with T <= 3*(B*(2.5 + ...)) in terms of B = invstd*max|gamma*dy|:
  :func:`backward_ok` bounds it by 1e-12*m*B*(1 + max xhat**2), the slack of the float64 path's test, and
  excludes overflow and subnormal tails with the sum of dy**2 over the statistic.

What this keeps of the README's promises, and why:

* the criterion above, on every output the lanes write: the two bounds, checked per statistic before anything
  is written, with the float64 loops for any statistic that fails them (a columns block takes the lanes only
  when every channel of it passes);
* the 1e6-offset bound (float32 x = 1e6 + N(0, 1) within half an ulp of the float64 computation, README): there
  |mean*a| = 1e6*|gamma|/sigma > 16 for any gamma above 1.6e-5, so the forward leaves such statistics to the
  float64 loops, which round once; the lanes write them only when |gamma| is so small that |y| <= 16 + |beta|
  and the bound above holds;
* the [f32max, f32max, f32max, -f32max] pattern: invstd ~ 1/f32max makes a = gamma*invstd and the backward's
  coefficients fall below TINY (their float32 tails would be subnormal), so both directions take float64;
* given statistics (inference) and layer norm never take the lanes.

``tests/test_float32_lanes.py`` checks each of these on every kernel that has lanes, serial and parallel.

The lanes serve batch statistics (training). With given statistics (inference) the forward is one streaming pass,
a read and a write per value, where float64 arithmetic costs little: those outputs stay float64 rounded once
(within half an ulp), as ``tests/test_torch_fused.py`` holds the eval route to.

Everything here is compiled without fast-math: reassociation would undo the two-sum.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._numba_compile import CACHE, FASTMATH

#: forward: float32 lanes where |beta| + |mean*a| stays below this (the error bound's offset term).
FORWARD_OFFSET = 16.0
#: coefficients and bounds must lie within [TINY, HUGE] (or be 0): tails stay normal, nothing overflows.
TINY, HUGE = 2.0 ** -100, 2.0 ** 100


@intrinsic
def fma(typingctx, a, b, c):
    """a*b + c rounded once (LLVM's llvm.fma), in the widest of the three float types (the arguments are cast to
    it: a float64 twin of a float32 lane compiles, though the lanes never run it)."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    wide = max((a, b, c), key=lambda t: t.bitwidth)

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(signature.return_type)
        name = "llvm.fma.f32" if lty == ir.FloatType() else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty] * 3), name)
        return builder.call(fn, args)

    return wide(wide, wide, wide), codegen


_inline = numba.njit(cache=CACHE, inline="always")
_plain = numba.njit(cache=CACHE, nogil=True)  # no fast-math: the two-sum must stay as written
_float64_loops = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True)


@_inline
def split(v):
    """(head, tail) float32 of a float64: v = head + tail to 2**-48*|v| when |v| >= TINY."""
    head = np.float32(v)
    return head, np.float32(v - np.float64(head))


@_inline
def _scale_ok(v):
    a = abs(v)
    return a == 0.0 or TINY <= a <= HUGE


@_inline
def forward_ok(mean, var, a, beta):
    """Whether y = x*a + (beta - mean*a) may be written in float32 lanes (see the module docstring)."""
    k = abs(beta) + abs(mean * a)
    return var > 0.0 and math.isfinite(mean) and _scale_ok(a) and k <= FORWARD_OFFSET


@_inline
def backward_ok(count, scaled_mean, gamma_dy_max, gamma_dy_rms, k1, k2, k2s, k3):
    """Whether dx = k1*dy + k2s*x + k3 may be written in float32 lanes, for one statistic over ``count`` values.

    scaled_mean: |mean|*invstd; gamma_dy_max / gamma_dy_rms: invstd*|gamma| times upper / lower bounds of max|dy|
    (sqrt of the sum of dy**2, and of its mean): B = invstd*max|gamma*dy| lies between them. k2: the coefficient
    of xhat (0 when the statistics were given), |k2| <= B.
    """
    if not (math.isfinite(k1) and math.isfinite(k2s) and math.isfinite(k3) and math.isfinite(gamma_dy_max)):
        return False
    offset = scaled_mean if k2 != 0.0 else 0.0
    if 7.5 + 6.0 * offset > 16.0 * count:  # the cancellation term against the test's 1e-12*m*bound
        return False
    if 3.0 * gamma_dy_max * (2.5 * (1.0 + count) + 2.0 * offset) > HUGE:  # no intermediate overflows
        return False
    if gamma_dy_max == 0.0:  # dy or gamma all zero: every term is 0, dx is exact
        return True
    return gamma_dy_rms >= TINY and _scale_ok(k1) and _scale_ok(k2s)


# The two below are called, not inlined: inside a kernel's parallel loop their branches would be analysed and
# compiled again at every call site (the parallel columns backward took twice as long to compile).

@_plain
def affine_coefficients(lanes, mean, var, a, beta):
    """(ok, ah, al, ch, cl): whether y = (x - mean)*a + beta may be written in float32 lanes (``lanes``: x is
    float32, and :func:`forward_ok`), and a and c = beta - mean*a split, so that y = x*a + c."""
    ah, al = split(a)
    ch, cl = split(beta - mean * a)
    return lanes and forward_ok(mean, var, a, beta), ah, al, ch, cl


@_plain
def grad_coefficients(lanes, count, mean, invstd, bound_max, bound_rms, k1, k2, k3):
    """(ok, k1h, k1l, k2h, k2l, k3h, k3l): whether dx = k1*dy + k2*xhat + k3 (xhat = (x - mean)*invstd, one
    statistic of ``count`` values) may be written in float32 lanes (``lanes``: x is float32, and
    :func:`backward_ok`), and k1, k2s = k2*invstd and k3s = k3 - k2s*mean split, so that dx = k1*dy + k2s*x + k3s.
    bound_max, bound_rms: invstd*|gamma| times sqrt of the sum of dy**2 and of its mean over the statistic (for a
    gamma per run: of the sum of (gamma*dy)**2)."""
    k2s = k2 * invstd
    k3s = k3 - k2s * mean
    k1h, k1l = split(k1)
    k2h, k2l = split(k2s)
    k3h, k3l = split(k3s)
    ok = lanes and backward_ok(count, abs(mean) * invstd, bound_max, bound_rms, k1, k2, k2s, k3s)
    return ok, k1h, k1l, k2h, k2l, k3h, k3l


# ----------------------------------------------------------------------------- one value

@_inline
def affine1(v, ah, al, ch, cl):
    """x*a + c from the split coefficients (the forward)."""
    return fma(v, ah, ch) + fma(v, al, cl)


@_inline
def grad1(v, d, k1h, k1l, k2h, k2l, k3h, k3l):
    """k1*dy + k2s*x + k3 from the split coefficients (the backward), the x*k2h + k3h part exact."""
    p = v * k2h
    e = fma(v, k2h, -p)  # p + e = v*k2h exactly
    s = p + k3h
    b = s - p
    f = (p - (s - b)) + (k3h - b)  # s + f = p + k3h exactly
    return fma(d, k1h, s) + ((f + e) + fma(d, k1l, fma(v, k2l, k3l)))


# ----------------------------------------------------------------------------- runs with one coefficient set

def _affine_run(x, out, ah, al, ch, cl):
    """out[i] = x[i]*a + c for a run (1-d views), coefficients split."""
    for i in range(x.shape[0]):
        out[i] = affine1(x[i], ah, al, ch, cl)


def _grad_run(x, dy, out, k1h, k1l, k2h, k2l, k3h, k3l):
    """out[i] = k1*dy[i] + k2s*x[i] + k3 for a run (1-d views), coefficients split."""
    for i in range(x.shape[0]):
        out[i] = grad1(x[i], dy[i], k1h, k1l, k2h, k2l, k3h, k3l)


# ----------------------------------------------------------------------------- rows with a coefficient per column

# The row writers sweep two rows at a time, one from each half of the block, not two neighbours: two streams far
# apart keep more cache-line fetches in flight (as the sums' quarters in ``_numba_batch_kernels``). Writing a
# (16384, 1024) float32 block, two runs each in one process against neighbouring rows: backward 12.5, 13.5 ms
# against 13.9, 15.9 on 1 thread, 7.3, 7.1 against 7.8, 8.1 on 2; forward 5.9, 8.1 against 7.3, 9.2 on 1 thread,
# 4.6, 4.3 against 5.1, 4.8 on 2 (a plain float32 y = a*x + c: 5.9, 7.0 and 4.6, 4.8).

def _affine_rows(x, out, r0, r1, c0, ah, al, ch, cl):
    """out[i, c0 + j] = x[i, c0 + j]*a[j] + c[j] for rows r0:r1, split coefficients (w,); two rows per sweep, one
    from each half of the block (see above), so each coefficient is loaded once per two rows."""
    w = ah.shape[0]
    h = (r1 - r0) // 2
    for i in range(r0, r0 + h):
        x0, x1 = x[i, c0:c0 + w], x[i + h, c0:c0 + w]  # views: indices from 0 keep the loop vectorized
        o0, o1 = out[i, c0:c0 + w], out[i + h, c0:c0 + w]
        for j in range(w):
            a, b, c, d = ah[j], al[j], ch[j], cl[j]
            o0[j] = affine1(x0[j], a, b, c, d)
            o1[j] = affine1(x1[j], a, b, c, d)
    if r0 + 2 * h < r1:
        xi, oi = x[r1 - 1, c0:c0 + w], out[r1 - 1, c0:c0 + w]
        for j in range(w):
            oi[j] = affine1(xi[j], ah[j], al[j], ch[j], cl[j])


def _grad_rows(x, dy, dx, r0, r1, c0, k):
    """dx[i, c0 + j] = k1[j]*dy + k2s[j]*x + k3[j] for rows r0:r1; k: (6, w) float32, the split k1, k2s, k3. Two
    rows per sweep, one from each half of the block, as :func:`_affine_rows`."""
    w = k.shape[1]
    k1h, k1l, k2h, k2l, k3h, k3l = k[0], k[1], k[2], k[3], k[4], k[5]
    h = (r1 - r0) // 2
    for i in range(r0, r0 + h):
        x0, x1 = x[i, c0:c0 + w], x[i + h, c0:c0 + w]
        d0, d1 = dy[i, c0:c0 + w], dy[i + h, c0:c0 + w]
        o0, o1 = dx[i, c0:c0 + w], dx[i + h, c0:c0 + w]
        for j in range(w):
            a, b, c, d, e, f = k1h[j], k1l[j], k2h[j], k2l[j], k3h[j], k3l[j]
            o0[j] = grad1(x0[j], d0[j], a, b, c, d, e, f)
            o1[j] = grad1(x1[j], d1[j], a, b, c, d, e, f)
    if r0 + 2 * h < r1:
        xi, di, oi = x[r1 - 1, c0:c0 + w], dy[r1 - 1, c0:c0 + w], dx[r1 - 1, c0:c0 + w]
        for j in range(w):
            oi[j] = grad1(xi[j], di[j], k1h[j], k1l[j], k2h[j], k2l[j], k3h[j], k3l[j])


# ----------------------------------------------------------------------------- float32 only
# The loops above as compiled code sees them: for float32 arrays the loop, for any other dtype a stub that
# raises. The callers' checks never take the lanes for other dtypes, so a float64 kernel does not compile them.

@numba.njit(cache=CACHE)
def _not_float32():
    raise TypeError("the float32 lanes take float32 arrays")


def _float32(x):
    return isinstance(x, types.Array) and x.dtype == types.float32


def affine_run(x, out, ah, al, ch, cl):
    """Compiled callers only: :func:`_affine_run` for float32 arrays."""
    raise TypeError("affine_run is called from compiled kernels")


def grad_run(x, dy, out, k1h, k1l, k2h, k2l, k3h, k3l):
    """Compiled callers only: :func:`_grad_run` for float32 arrays."""
    raise TypeError("grad_run is called from compiled kernels")


def affine_rows(x, out, r0, r1, c0, ah, al, ch, cl):
    """Compiled callers only: :func:`_affine_rows` for float32 arrays."""
    raise TypeError("affine_rows is called from compiled kernels")


def grad_rows(x, dy, dx, r0, r1, c0, k):
    """Compiled callers only: :func:`_grad_rows` for float32 arrays."""
    raise TypeError("grad_rows is called from compiled kernels")


_LOOP_OPTIONS = {"nogil": True}  # and no fast-math: the two-sum must stay as written


@overload(affine_run, jit_options=_LOOP_OPTIONS)
def _affine_run_float32(x, out, ah, al, ch, cl):
    return _affine_run if _float32(x) else (lambda x, out, ah, al, ch, cl: _not_float32())


@overload(grad_run, jit_options=_LOOP_OPTIONS)
def _grad_run_float32(x, dy, out, k1h, k1l, k2h, k2l, k3h, k3l):
    return _grad_run if _float32(x) else (lambda x, dy, out, k1h, k1l, k2h, k2l, k3h, k3l: _not_float32())


@overload(affine_rows, jit_options=_LOOP_OPTIONS)
def _affine_rows_float32(x, out, r0, r1, c0, ah, al, ch, cl):
    return _affine_rows if _float32(x) else (lambda x, out, r0, r1, c0, ah, al, ch, cl: _not_float32())


@overload(grad_rows, jit_options=_LOOP_OPTIONS)
def _grad_rows_float32(x, dy, dx, r0, r1, c0, k):
    return _grad_rows if _float32(x) else (lambda x, dy, dx, r0, r1, c0, k: _not_float32())


# ----------------------------------------------------------------------------- a run, in lanes or in float64
# Called from the kernels' parallel loops, compiled once per dtype (inlined, each call site compiled them again).
# The float64 loops take the kernels' fast-math flags; the lanes are calls, compiled without them.

@_float64_loops
def write_affine(x, out, co, mean, a, beta):
    """out = (x - mean)*a + beta over a run (1-d views): in float32 lanes when co (from
    :func:`affine_coefficients`) allows, else float64 rounded once."""
    if co[0]:
        affine_run(x, out, co[1], co[2], co[3], co[4])
        return
    for i in range(x.shape[0]):
        out[i] = (np.float64(x[i]) - mean) * a + beta


@_float64_loops
def write_grad(x, dy, out, co, mean, invstd, k1, k2, k3):
    """out = k1*dy + k2*(x - mean)*invstd + k3 over a run: in float32 lanes when co (from
    :func:`grad_coefficients`) allows, else float64 rounded once."""
    if co[0]:
        grad_run(x, dy, out, co[1], co[2], co[3], co[4], co[5], co[6])
        return
    for i in range(x.shape[0]):
        out[i] = k1 * np.float64(dy[i]) + k2 * ((np.float64(x[i]) - mean) * invstd) + k3

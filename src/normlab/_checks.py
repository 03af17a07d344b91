"""Validation at the boundary.

Every public entry point checks its arguments here before it computes or
touches state, so a bad call fails with a ValueError/TypeError that names the
argument and its shape, never with a silent wrong answer or a half-updated
layer. ValueError rather than assert: asserts vanish under ``python -O``.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def as_float_array(value, name: str, *, min_ndim: int = 0) -> np.ndarray:
    """Return ``value`` as a plain floating ndarray (no copy for ndarrays) or raise.

    Integer, bool and complex inputs are rejected rather than cast: a silent
    cast hides a caller's bug (an image batch left as uint8, say). Array
    subclasses are seen as the plain ndarray of their values (np.matrix,
    np.memmap, read-only arrays: no copy), except masked arrays: no backend
    could honour the mask, and dropping it would be a silent wrong answer.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray (shape {value.shape}): normalization would ignore "
                        f"its mask; pass {name}.filled(...) or only the unmasked values")
    if isinstance(value, np.ndarray):
        array = value if type(value) is np.ndarray else np.asarray(value)
    else:
        try:
            array = np.asarray(value)
        except Exception as exc:  # pragma: no cover - numpy's own message is kept
            raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from exc
    if array.dtype.type not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, float32 or float64), "
            f"got dtype {array.dtype} with shape {array.shape}"
        )
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {array.shape}"
        )
    return array


def check_out(out, x: np.ndarray, reads: dict | None = None) -> np.ndarray | None:
    """An ``out=`` buffer: None, or a writeable ndarray of x's shape and dtype that shares no memory
    with x or with the arrays in ``reads`` (name -> array the call still reads while it writes out).
    Returns it as a plain ndarray (an np.memmap's view). Every problem is a ValueError naming it.

    The cache keeps a reference to x, not a copy, and the fused backend
    recomputes xhat from it in backward: writing y or dx over x would make
    every later gradient silently wrong.
    """
    if out is None:
        return None
    if not isinstance(out, np.ndarray) or isinstance(out, (np.ma.MaskedArray, np.matrix)):
        raise ValueError(f"out must be an array with x's shape {x.shape} and dtype {x.dtype} (a numpy.ndarray), "
                         f"got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must be an array with x's shape {x.shape} and dtype {x.dtype}, got shape "
                         f"{out.shape} and dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"out (shape {out.shape}) is read-only")
    for name, array in {"x": x, **(reads or {})}.items():
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"out must not share memory with {name}: the call reads {name} while it writes out"
                             + (", and the cache reads x again in backward" if name == "x" else ""))
    return out if type(out) is np.ndarray else out.view(np.ndarray)


def check_normalized_shape(value) -> tuple[int, ...]:
    """normalized_shape: an int (NumPy integers too) or a non-empty sequence of them, as a tuple of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {value!r}") from None
    if not dims:
        raise ValueError("normalized_shape must not be empty")
    return tuple(check_positive_int(d, "normalized_shape entries") for d in dims)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` when the machine does not have them available:
    a ValueError saying how much, instead of a MemoryError traceback or the machine swapping."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than the "
                         f"{available / 2**30:.3g} GiB available on this machine")


def check_eps(eps, *, training: bool) -> float:
    """eps must be a finite number >= 0, and > 0 whenever batch statistics are used."""
    if eps.__class__ is not float:  # (a float, the usual case, skips the ABC check: a call's fixed cost)
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
            raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
        eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if training and eps == 0:
        raise ValueError(
            "eps must be > 0 when statistics come from the batch: a constant "
            "feature has variance 0 and eps == 0 would divide by zero"
        )
    return eps


def check_param(value, name: str, shape: tuple[int, ...], what) -> np.ndarray | None:
    """gamma/beta: None, or a float array of exactly ``shape``. what: what the shape means, a string or a
    function that makes it (built only for the error message)."""
    if value is None:
        return None
    array = as_float_array(value, name)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what() if callable(what) else what}), got shape "
                         f"{array.shape}")
    return array


def check_affine_pair(gamma, beta) -> None:
    if (gamma is None) != (beta is None):
        raise ValueError("gamma and beta must both be given or both be None")


def check_stats(mean, var, name_shape: tuple[int, ...], what):
    """Given inference statistics: both or neither, right shape, finite, var >= 0 (what: as ``check_param``)."""
    if (mean is None) != (var is None):
        raise ValueError("mean and var must both be given (inference) or both be None (batch statistics)")
    if mean is None:
        return None, None
    mean = check_param(mean, "mean", name_shape, what)
    var = check_param(var, "var", name_shape, what)
    for name, stat in (("mean", mean), ("var", var)):
        if not np.all(np.isfinite(stat)):  # a whole channel of NaN, or of zeros for var = inf
            raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(stat)))} NaN or inf value(s)")
    if np.any(var < 0):
        raise ValueError(f"var must be >= 0, got minimum {float(np.min(var))}")
    return mean, var


def check_dout(dout, out_shape: tuple[int, ...]) -> np.ndarray:
    dout = as_float_array(dout, "dout")
    if dout.shape != tuple(out_shape):
        raise ValueError(f"dout must have the shape of the forward output {tuple(out_shape)}, got shape {dout.shape}")
    return dout


def check_positive_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_momentum(momentum) -> float | None:
    if momentum is None:
        return None
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1] or None (cumulative average), got {momentum!r}")
    return float(momentum)


def check_seed(seed, name: str = "seed", *, optional: bool = True) -> int | None:
    """A seed is an integer >= 0, or None where ``optional`` (returned as a plain int: configs stay JSON-able)."""
    if seed is None and optional:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer >= 0, got {seed!r}")
    return int(seed)

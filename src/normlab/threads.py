"""Thread count of the fused kernels.

Numba's pool is sized once per process by NUMBA_NUM_THREADS (default: all
cores); ``set_num_threads`` picks how many of those the kernels use, up to
that maximum. Without numba these are no-ops reporting 1 thread.
"""

from __future__ import annotations

import numbers


def _numba():
    try:
        import numba
    except Exception:  # noqa: BLE001 - a broken numba means the numpy backend, which is single-threaded
        return None
    return numba


def max_threads() -> int:
    """The most threads the kernels may use (NUMBA_NUM_THREADS, or the core count)."""
    numba = _numba()
    return 1 if numba is None else int(numba.config.NUMBA_NUM_THREADS)


def get_num_threads() -> int:
    """How many threads the kernels use now."""
    numba = _numba()
    return 1 if numba is None else int(numba.get_num_threads())


def set_num_threads(n: int) -> None:
    """Use n threads in the fused kernels (1 <= n <= ``max_threads()``).

    Like ``numba.set_num_threads``, this applies to the calling thread: set it
    in each thread that runs kernels (the main thread, for most programs).
    """
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= max_threads():
        raise ValueError(f"n must be an integer in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {n!r}")
    numba = _numba()
    if numba is not None:
        numba.set_num_threads(int(n))

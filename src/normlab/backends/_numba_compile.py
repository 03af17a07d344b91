"""How the fused backend's kernels are compiled and cached: one place for the cache directory, the fast-math
flags, the (parallel, serial) twins and the key that ties cached code to the kernel sources it was built from."""

from __future__ import annotations

import hashlib
import os
import tempfile
import types
from pathlib import Path

import numba

#: reassociation lets LLVM vectorize the reductions; nnan/ninf stay off so NaN and inf in x reach the statistics.
FASTMATH = {"reassoc", "contract"}


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


def renamed(fn, suffix: str, **names):
    """fn under the name ``fn.__name__ + suffix``, with ``names`` added to the globals it sees.

    Numba keys its cache by a function's name and its own file: not by the
    compile flags, the globals it calls, or the files those come from. A
    distinct name gives each such variant a cache entry of its own.
    """
    clone = types.FunctionType(fn.__code__, {**fn.__globals__, **names} if names else fn.__globals__,
                               fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__module__ = fn.__module__
    return clone


#: the files whose kernels call into one another (and the running-statistics rule, next to them in normlab/)
KERNEL_SOURCES = ("_numba_kernels.py", "_numba_batch_kernels.py", "_numba_lanes.py")


def _sources_key() -> str:
    """A short hash of the kernel sources (:data:`KERNEL_SOURCES`) and the running-statistics rule.

    Numba checks a cached function against its own file only (numba/numba#8396):
    a cached function calling kernels of another file kept running the old
    kernels after that file changed. Every such function carries this key in
    its name (:func:`renamed`), so a change to any kernel source compiles it anew.
    """
    here = Path(__file__).resolve().parent
    digest = hashlib.blake2b(digest_size=6)
    for path in (*(here / name for name in KERNEL_SOURCES), here.parent / "running_rule.py"):
        try:
            digest.update(path.read_bytes())
        except OSError:  # no source next to the code (a zip): the cache cannot check it either
            digest.update(path.name.encode())
    return digest.hexdigest()


SOURCES_KEY = _sources_key()


def keyed(fn, **options):
    """A cached dispatcher of fn named with :data:`SOURCES_KEY`, for helpers that call into other kernel files
    (see :func:`twins`); options as numba.njit's."""
    return numba.njit(cache=CACHE, **options)(renamed(fn, "_" + SOURCES_KEY))


def twins(fn):
    """(parallel, serial) dispatchers compiled from the same Python function, named with :data:`SOURCES_KEY`:
    a kernel calls helpers of other kernel files, and its cache entry must follow their edits too."""
    parallel = numba.njit(parallel=True, cache=CACHE, fastmath=FASTMATH, nogil=True)(renamed(fn, "_" + SOURCES_KEY))
    serial = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True)(renamed(fn, "_serial_" + SOURCES_KEY))
    return parallel, serial

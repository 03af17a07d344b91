"""Large output arrays on recycled memory: a dropped output's pages serve the next output of its size.

A fresh output beyond glibc's mmap threshold (32 MiB at most) is a new mapping
on every call, and the kernel that fills it first faults in and zeroes every
page: on the 2-core AMD EPYC guest a fresh 64 MiB float32 array took 8.3 ms to
fill against 3.7 ms for a reused one (docs/benchmarks.md). A training loop asks
for the same output sizes every step, so the fused backend takes its outputs of
:data:`MIN_BYTES` or more from here: :func:`empty` hands out an ndarray whose
base is a lease on a pooled block, and when the last view of it is dropped the
lease gives the block back for the next call of that size, its pages already
mapped. Nothing else changes for the caller (a plain, writeable, C-contiguous
ndarray of the asked shape and dtype; its contents are undefined, as
``np.empty``'s are).

Idle blocks are bounded by :func:`limit` bytes in all (``NORMLAB_POOL_BYTES``,
default the smaller of 1 GiB and an eighth of the memory available at the first
call; 0 turns recycling off; :func:`set_limit` changes it at run time): a block
given back to a full pool frees the longest-idle blocks to make room, so a loop
whose sizes change (another batch size) recycles its new sizes, not the old.
Smaller outputs come from ``np.empty``: malloc already reuses their memory.

A block goes back only when its lease (the output's ``base``) is collected, and
every view, buffer export (``memoryview``, ``np.frombuffer``), ``torch.from_numpy``
tensor or DLPack capsule of the output holds a reference to it: nothing that can
still read an output shares its memory with a later one (``tests/test_output_pool``).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from .. import _checks

#: outputs of at least this many bytes are pooled (NumPy's threshold for advising huge pages)
MIN_BYTES = 1 << 22
_DEFAULT_LIMIT = 1 << 30

_lock = threading.RLock()  # re-entrant: a lease collected while the pool holds the lock gives back safely
_idle: list[np.ndarray] = []  # idle blocks, longest idle first
_state = {"idle_bytes": 0, "limit": None}


def limit() -> int:
    """Bytes of idle blocks the pool keeps at most (read from ``NORMLAB_POOL_BYTES`` once)."""
    if _state["limit"] is None:
        text = os.environ.get("NORMLAB_POOL_BYTES", "").strip()
        if text:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"NORMLAB_POOL_BYTES must be a whole number of bytes >= 0, got {text!r}") from None
            if value < 0:
                raise ValueError(f"NORMLAB_POOL_BYTES must be a whole number of bytes >= 0, got {text!r}")
        else:
            available = _checks.available_memory()
            value = _DEFAULT_LIMIT if available is None else min(_DEFAULT_LIMIT, available // 8)
        _state["limit"] = value
    return _state["limit"]


def set_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of idle blocks from now on (0: recycling off), freeing idle blocks beyond it.

    Outputs handed out before keep their memory; they give it back under the new limit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the pool limit must be a whole number of bytes >= 0, got {nbytes!r}")
    with _lock:
        _state["limit"] = nbytes
        _evict_until(nbytes)


def idle_bytes() -> int:
    """Bytes held in idle blocks now."""
    return _state["idle_bytes"]


def clear() -> None:
    """Free every idle block."""
    with _lock:
        _idle.clear()
        _state["idle_bytes"] = 0


def _after_fork_in_child() -> None:
    """A fork copies the lock as it was: if another thread held it then, nothing in the child would release it."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Lease:
    """The base of a pooled output: exposes the block as (shape, dtype) and returns it when collected."""

    __slots__ = ("_block", "__array_interface__")

    def __init__(self, block: np.ndarray, shape: tuple, dtype: np.dtype):
        self._block = block
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3,
                                    "data": (block.ctypes.data, False)}

    def __del__(self):
        block = self._block
        if block is None or _lock is None:  # interpreter shutdown: nothing to keep
            return
        self._block = None
        _give_back(block)


def _evict_until(nbytes: int) -> None:
    """Free the longest-idle blocks until at most ``nbytes`` are idle (the caller holds the lock)."""
    while _idle and _state["idle_bytes"] > nbytes:
        _state["idle_bytes"] -= _idle.pop(0).nbytes


def _give_back(block: np.ndarray) -> None:
    with _lock:
        cap = _state["limit"]  # set by the empty() that leased the block (never read from here: shutdown)
        if cap is None or block.nbytes > cap:
            return  # freed with the lease
        _evict_until(cap - block.nbytes)
        _idle.append(block)
        _state["idle_bytes"] += block.nbytes


def empty(shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, on a recycled block when it is :data:`MIN_BYTES` or larger."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * math.prod(shape)  # (np.prod costs 5 us a call: this runs on every output)
    if nbytes < MIN_BYTES or limit() == 0:
        return np.empty(shape, dtype)
    shape = tuple(map(int, shape))
    block = None
    with _lock:
        # the most recently idle block of this size (a few blocks at most: a linear scan)
        for i in range(len(_idle) - 1, -1, -1):
            if _idle[i].nbytes == nbytes:
                block = _idle.pop(i)
                _state["idle_bytes"] -= nbytes
                break
    if block is None:
        block = np.empty(nbytes, np.uint8)
    return np.asarray(_Lease(block, shape, dtype))

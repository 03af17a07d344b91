"""Fresh output tensors backed by transparent huge pages where the system offers them.

An output the size of an activation is fresh memory on every call, and the
first write to it faults every page in: torch's allocator leaves a 32 MiB
tensor to 8192 faults of 4 KiB, where NumPy asks the kernel for huge pages
(``madvise(MADV_HUGEPAGE)`` on arrays of 4 MiB and more) and takes about 530
(what each costs: docs/benchmarks.md, "PyTorch bridge: modules through
autograd"). :func:`empty_like` gives torch tensors the same advice, so the
kernels that fill them do not spend most of their time in page faults. The
tensors stay torch's own; where madvise is unavailable (not Linux) or
refused, they are plain ``torch.empty_like`` results.
"""

from __future__ import annotations

import ctypes
import sys

import torch

#: NumPy's threshold for the advice (numpy/_core/src/multiarray/alloc.c).
HUGE_PAGE_MIN_BYTES = 1 << 22
_MADV_HUGEPAGE = 14  # Linux's value (asm-generic/mman-common.h)
_PAGE = 4096


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask for transparent huge pages under a CPU tensor's memory; whether the system took the advice.

    Only tensors of at least ``HUGE_PAGE_MIN_BYTES`` are advised; a refusal is not an error.
    """
    nbytes = t.untyped_storage().nbytes()
    if _MADVISE is None or nbytes < HUGE_PAGE_MIN_BYTES:
        return False
    start = t.untyped_storage().data_ptr()
    first = -(-start // _PAGE) * _PAGE  # madvise wants a page-aligned start: the pages wholly inside
    return _MADVISE(first, (start + nbytes - first) // _PAGE * _PAGE, _MADV_HUGEPAGE) == 0


def empty_like(x: torch.Tensor, memory_format=torch.preserve_format) -> torch.Tensor:
    """``torch.empty_like(x, memory_format=...)`` advised to use huge pages when large (not yet touched)."""
    out = torch.empty_like(x, memory_format=memory_format)
    if out.is_cpu:
        advise_huge_pages(out)
    return out

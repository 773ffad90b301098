"""The process's memory allocator for large NumPy arrays (glibc's malloc): nothing to do with array modules."""
from __future__ import annotations

from typing import Any

__all__ = ["heap_arrays"]

# glibc mallopt parameters (malloc.h) and the values heap_arrays sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_HEAP_ARRAYS = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 64 << 20, _M_MMAP_MAX: 0}


def _glibc() -> Any:
    """The C library (ctypes) where it is glibc, else None."""
    import ctypes
    import platform
    import sys

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") else None


def heap_arrays() -> bool:
    """Serve large NumPy arrays from the process heap and keep freed memory there (glibc only).

    By default glibc maps every block over its mmap threshold (at most 32 MB: im2col columns, k-stacked
    tangents, Gram inputs) freshly from the kernel and unmaps it when freed, so each training step pays page
    faults on all of its large temporaries again. This sets mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GB,
    M_TOP_PAD=64 MB): large blocks come from the heap and freed ones are reused by the next step (the process
    keeps its peak footprint). Process-wide and one-way (setting any of these turns off glibc's dynamic mmap
    threshold for good); bench/runtime.py turns it on, the training CLI with ``--heap-arrays``. Returns False
    where it does not apply (not Linux/glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) for param, value in _HEAP_ARRAYS.items())

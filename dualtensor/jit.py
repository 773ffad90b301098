"""CPU kernels compiled by numba where it is installed (the ``numba`` extra).

Each kernel has an array twin (NumPy passes, which CuPy runs too) doing the same operations in the
same order, so compiling changes the speed, never the numbers; callers fall back to the twin when
:func:`compile` gives None (no numba, or ``DUALTENSOR_NUMBA=0``).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable


@functools.cache
def _numba() -> Any:
    if os.environ.get("DUALTENSOR_NUMBA", "1") == "0":
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def available() -> bool:
    """Whether kernels are compiled (numba importable and not switched off)."""
    return _numba() is not None


@functools.cache
def compile(kernel: Callable) -> Callable | None:
    """``kernel`` (a module-level function of NumPy arrays) compiled once, without the GIL and with its
    machine code cached on disk beside its module, or None where numba is not there. No fast-math: the
    compiled float operations round as the array code's do (no fused multiply-adds)."""
    numba = _numba()
    if numba is None:
        return None
    return numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")(kernel)

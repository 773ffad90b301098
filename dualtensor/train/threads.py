"""BLAS (and oneDNN) threads of a run: the libraries' own defaults unless a count is given."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["blas_threads", "blas_thread_count"]


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS, and oneDNN's OpenMP pool where it is installed, to ``n`` threads within the block
    (threadpoolctl); None leaves the defaults."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    from ..onednn import available

    available()  # load oneDNN (and with it its OpenMP runtime) now, so that the limit reaches its pool
    with threadpool_limits(limits=int(n), user_api="blas"), threadpool_limits(limits=int(n), user_api="openmp"):
        yield


def blas_thread_count() -> int | None:
    """The threads NumPy's BLAS uses now (the largest count over loaded BLAS libraries)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [d.get("num_threads") for d in threadpool_info() if d.get("user_api") == "blas"]
    return max((c for c in counts if c), default=None)

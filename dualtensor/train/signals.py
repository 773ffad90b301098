"""SIGINT and SIGTERM as :class:`RunInterrupted`, deferred while a checkpoint is being written.

The command line installs :func:`interrupt_on_signals`; library code marks the few moments that
must not be cut in half with :func:`deferred` (a no-op unless those handlers are installed).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

from .errors import RunInterrupted

__all__ = ["interrupt_on_signals", "deferred"]

_depth = 0
_pending: int | None = None


def _handler(signum: int, frame: object) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise RunInterrupted(signum)


@contextlib.contextmanager
def interrupt_on_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, each of ``signums`` raises :class:`RunInterrupted` (in the main thread;
    elsewhere this does nothing). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back a signal that arrives within the block until its end."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise RunInterrupted(signum)

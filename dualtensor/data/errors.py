"""The base of every data error: a dataset file that is missing, damaged or not the release."""
from __future__ import annotations

from ..errors import UsageError

__all__ = ["DataError"]


class DataError(UsageError, ValueError):
    """A data file is unreadable, malformed, or differs from the official release (one-line message
    naming the file)."""

"""The one base class of every error that is the user's to fix.

Bad options, missing or damaged data files, unusable checkpoints and run folders all raise a
subclass of :class:`UsageError` with a one-line message naming the problem; the command line
prints that line and exits with status 2. Anything else escaping is a bug in dualtensor.
"""
from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with what the user gave (options, files, data, checkpoints): CLI exit status 2."""

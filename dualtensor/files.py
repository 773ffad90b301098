"""Files written whole or not at all, with the permissions the user's umask asks for.

:func:`atomic_write` fills a temporary file beside the target, fsyncs it and renames it over
the target, so a crash leaves the old file or the new one, never half of one. Temporary files
are named ``.<target name>.<random>.tmp`` so their owner can recognise (and remove) the ones a
killed process left behind (:func:`stale_temporaries`).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_text", "new_temp_file", "file_mode", "stale_temporaries", "sha256_of"]

TEMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    try:  # Linux reports it without touching the process umask (no window for other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def new_temp_file(directory: str | os.PathLike, name: str, suffix: str = TEMP_SUFFIX) -> tuple[int, Path]:
    """``(fd, path)`` of a new temporary file ``.<name>.<random><suffix>`` in ``directory``,
    created with the umask's mode (``tempfile.mkstemp`` alone makes it 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 before_replace: Callable[[Path], None] | None = None) -> Path:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary file in the same
    directory, which is fsynced, shown to ``before_replace(tmp)`` (e.g. to record it) and renamed
    over ``path``; on any error it is removed. An existing ``path`` that is not a regular file or a
    directory (``/dev/null``, ``/dev/stdout``, a FIFO) is written in place: renaming over it would replace the
    device or pipe with a file (a FIFO's write waits for its reader, as any writer's does). There is no
    temporary file then, so with ``before_replace`` such a target is refused (ValueError)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        if before_replace is not None:
            raise ValueError(f"{path} is a device or pipe, not a file: it cannot be written as a recorded file")
        with open(path, "wb") as f:
            write(f)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def stale_temporaries(directory: str | os.PathLike, names: set[str] | frozenset[str],
                      suffix: str = TEMP_SUFFIX, older_than: float = 0.0) -> list[Path]:
    """Temporary files of :func:`new_temp_file` for any of ``names`` lying in ``directory``, last
    modified at least ``older_than`` seconds ago."""
    pattern = re.compile(r"\.(.+)\.[A-Za-z0-9_]+" + re.escape(suffix) + r"\Z")
    found, now = [], time.time()
    for p in Path(directory).iterdir():
        m = pattern.match(p.name)
        if m and m.group(1) in names and p.is_file() and now - p.stat().st_mtime >= older_than:
            found.append(p)
    return sorted(found)

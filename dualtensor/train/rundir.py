"""The run folder: the only code that touches ``--out``.

Rules (see the README's "Runs and files"):

* dualtensor writes only into a folder it made (it holds the marker :data:`MARKER`) or an empty
  one; any other existing folder is refused, whatever the mode;
* a folder that already holds a run needs ``resume`` (continue it) or ``overwrite`` (delete the
  files the run wrote, then start afresh); other files there are never touched;
* one live run per folder: :data:`LOCK` is held with ``flock`` while a run writes (released by
  the kernel when the process dies, so a killed run leaves no stale lock);
* every file is written atomically; the marker records each file's size, mtime and inode when
  written, and a file found changed since (edited by hand, replaced) is neither overwritten nor
  deleted. The new file's stat is recorded (beside the old one's) before the rename, which keeps
  all three, so a run killed at any moment leaves a marker that accepts what is on disk;
* temporaries a killed run left behind (``.last.npz.<random>.tmp``) are removed on opening.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..errors import UsageError
from ..files import atomic_write_text, file_mode, new_temp_file, stale_temporaries
from .signals import deferred

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDir", "RunDirError", "RUN_FILES", "MARKER", "LOCK", "MODES"]

#: the files a run writes into its folder
RUN_FILES = ("config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz", "summary.json", "curves.png")
MARKER = ".dualtensor-run.json"
LOCK = ".dualtensor-run.lock"
MODES = ("new", "resume", "overwrite")
_MANIFEST_FORMAT = 1


class RunDirError(UsageError):
    """The run folder cannot be used as asked (the message names the folder and why)."""


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


class RunDir:
    """A run folder opened in one of :data:`MODES` and locked until :meth:`close`.

    Use :meth:`check` before expensive work (it only reads) and :meth:`open` to take the folder.
    """

    def __init__(self, path: Path, files: dict[str, list[list[int]]], created: bool, lock_fd: int | None):
        self.path = path
        self._files = files
        self._created = created
        self._lock_fd = lock_fd

    # -- inspection (read-only) ---------------------------------------------------------------

    @staticmethod
    def check(path: str | os.PathLike, mode: str = "new") -> None:
        """Raise :class:`RunDirError` unless ``path`` can be opened in ``mode``; writes nothing."""
        if mode not in MODES:
            raise ValueError(f"RunDir: mode must be one of {MODES}, got {mode!r}")
        path = Path(path).expanduser()
        base = _nearest_existing(path)
        if base != path and not base.is_dir():
            raise RunDirError(f"--out {path}: {base} is a file, not a folder")
        if base == path and not path.is_dir():
            raise RunDirError(f"--out {path} is a file, not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {path}: {base} is not writable")
        RunDir._check_contents(path, mode, RunDir._read_manifest(path) if (path / MARKER).is_file() else None)

    @staticmethod
    def _check_contents(path: Path, mode: str, files: dict | None) -> None:
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK) if path.is_dir() else []
        if files is None and entries:
            shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
            raise RunDirError(f"--out {path} exists and was not made by dualtensor (it holds {shown}); "
                              "dualtensor writes only into folders it made or empty ones: choose another --out")
        has_run = bool(files)
        if mode == "resume" and not (files and "last.npz" in files and (path / "last.npz").is_file()):
            raise RunDirError(f"--resume: {path} holds no run to resume (no last.npz written by dualtensor)")
        if mode == "new" and has_run:
            raise RunDirError(f"--out {path} already holds a run; pass --resume to continue it, --overwrite "
                              "to delete its files and start afresh, or choose another --out")

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, list[list[int]]]:
        try:
            manifest = json.loads((path / MARKER).read_text(encoding="utf-8"))
            files = manifest["files"]
            if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError
            return {str(k): [[int(x) for x in stat] for stat in v] for k, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise RunDirError(f"{path / MARKER} is damaged; this folder's files cannot be told apart, "
                              "so dualtensor will not write there: choose another --out") from None

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "new") -> "RunDir":
        """Take the folder: create it (or adopt an empty one), lock it, remove stale temporaries and,
        with ``overwrite``, delete the files the previous run wrote. Raises :class:`RunDirError`."""
        path = Path(path).expanduser()
        cls.check(path, mode)
        created = False
        if not path.exists():
            try:
                path.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
        fd = cls._lock(path)
        try:
            files = cls._read_manifest(path) if (path / MARKER).is_file() else None
            cls._check_contents(path, mode, files)
            run = cls(path, files or {}, created, fd)
            if files is None:
                run._write_manifest()
            for tmp in stale_temporaries(path, {*RUN_FILES, MARKER}):
                tmp.unlink(missing_ok=True)
            if mode == "overwrite":
                run._delete_own_files()
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        except BaseException:
            cls._unlock(fd)
            raise
        return run

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, file_mode())
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                who = f" (pid {holder['pid']} on {holder['host']}, since {holder['since']})"
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                who = ""
            os.close(fd)
            raise RunDirError(f"--out {path} is in use by another run{who}; wait for it to end or "
                              "choose another --out") from None
        return fd

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def close(self) -> None:
        """Release the lock. When no run file was written and the folder holds nothing but the marker
        and the lock, those two are removed again (and the folder too, when this run created it)."""
        if self._lock_fd is None:
            return
        if not self._files and set(os.listdir(self.path)) <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (self.path / name).unlink(missing_ok=True)
            if self._created:
                try:
                    self.path.rmdir()
                except OSError:
                    pass
        self._unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- files --------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """The path of run file ``name`` (one of :data:`RUN_FILES`)."""
        if name not in RUN_FILES:
            raise ValueError(f"RunDir: {name!r} is not a run file ({', '.join(RUN_FILES)})")
        return self.path / name

    def has(self, name: str) -> bool:
        """True when this run wrote ``name`` and it is still there."""
        return name in self._files and self.file(name).is_file()

    def changed(self, name: str) -> bool:
        """True when ``name`` exists but is not the file this run last wrote (edited, replaced, or
        never written by dualtensor)."""
        path = self.file(name)
        if not path.exists():
            return False
        return _stat(path) not in self._files.get(name, [])

    def write(self, name: str, write: Callable[[IO[bytes]], None]) -> Path:
        """Write run file ``name`` atomically with ``write(f)``; refuses to replace a changed file.
        Signals wait until the file and the marker agree."""
        if self._lock_fd is None:
            raise RuntimeError(f"RunDir {self.path} is closed")
        path = self.file(name)
        if self.changed(name):
            raise RunDirError(f"{path} was changed since dualtensor wrote it (or was not written by it); "
                              "move it away to let the run continue")
        with deferred():
            fd, tmp = new_temp_file(self.path, name)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                old = [_stat(path)] if path.exists() else []
                self._files[name] = [*old, _stat(tmp)]  # a rename keeps size, mtime and inode
                self._write_manifest()
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a UTF-8 run file atomically (see :meth:`write`)."""
        data = text.encode("utf-8")
        return self.write(name, lambda f: f.write(data))

    def _write_manifest(self) -> None:
        from .. import __version__

        atomic_write_text(self.path / MARKER, json.dumps(
            {"format": _MANIFEST_FORMAT, "dualtensor": __version__, "files": self._files}, indent=1) + "\n")

    def _delete_own_files(self) -> None:
        changed = [n for n in self._files if self.changed(n)]
        if changed:
            raise RunDirError(f"--overwrite: {', '.join(str(self.path / n) for n in changed)} changed since "
                              "dualtensor wrote them; move them away first (dualtensor deletes only its own files)")
        for name in list(self._files):
            self.file(name).unlink(missing_ok=True)
            del self._files[name]
        self._write_manifest()

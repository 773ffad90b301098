"""The run folder: the only code that touches ``--out``.

Rules (see the README's "Runs and files"):

* dualtensor writes only into a folder it made (it holds the marker :data:`MARKER`) or an empty
  one; any other existing folder is refused, whatever the mode;
* a folder that already holds a run needs ``resume`` (continue it) or ``overwrite`` (delete the
  files the run wrote, then start afresh: the deletion waits for the new run's first write, so a
  new run that fails before writing anything leaves the old one intact); other files there are
  never touched;
* one live run per folder: :data:`LOCK` is held with ``flock`` while a run writes (released by
  the kernel when the process dies, so a killed run leaves no stale lock);
* every file is written atomically; the marker records each file as written (size, mtime, inode
  and SHA-256). A file whose content differs from what the run wrote (edited by hand, replaced)
  is neither overwritten nor deleted; a copy with the same content (``cp -a``, ``rsync``, a
  restored backup) is the same file. A new file is recorded beside the old one before the rename
  (which keeps size, mtime and inode), so a run killed at any moment leaves a marker that accepts
  what is on disk;
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
from ..files import atomic_write, atomic_write_text, file_mode, sha256_of, stale_temporaries
from .signals import deferred

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDir", "RunDirError", "RunDirBusy", "RUN_FILES", "MARKER", "LOCK", "MODES"]

#: the files a run writes into its folder
RUN_FILES = ("config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz", "summary.json", "curves.png")
MARKER = ".dualtensor-run.json"
LOCK = ".dualtensor-run.lock"
MODES = ("new", "resume", "overwrite")
_MANIFEST_FORMAT = 1
Entry = list  # [size, mtime_ns, inode, sha256] of one version of a file


class RunDirError(UsageError):
    """The run folder cannot be used as asked (the message names the folder and why)."""


class RunDirBusy(RunDirError):
    """Another live run holds the folder's lock."""


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _entry(path: Path) -> Entry:
    return [*_stat(path), sha256_of(path)]


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


class RunDir:
    """A run folder opened in one of :data:`MODES` and locked until :meth:`close`.

    Use :meth:`check` before expensive work (it only reads) and :meth:`open` to take the folder.
    """

    def __init__(self, path: Path, files: dict[str, list[Entry]], created: bool, lock_fd: int | None):
        self.path = path
        self._files = files
        self._created = created
        self._lock_fd = lock_fd
        self._overwrite_pending = False

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
        if files is None and entries and set(entries) <= {p.name for p in stale_temporaries(path, {MARKER})}:
            entries = []  # all a run killed while writing its first marker left: the folder it made or adopted
        if files is None and entries:
            if {"last.npz", "config.json"} <= set(entries):
                raise RunDirError(f"--out {path} holds a run of an earlier dualtensor (it has no {MARKER}); this "
                                  "version resumes and replaces only runs it made: choose another --out")
            shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
            raise RunDirError(f"--out {path} exists and was not made by dualtensor (it holds {shown}); "
                              "dualtensor writes only into folders it made or empty ones: choose another --out")
        present = [n for n in files or {} if (path / n).exists()]
        if mode == "resume" and "last.npz" not in present:
            raise RunDirError(f"--resume: {path} holds no run to resume (no last.npz written by dualtensor)")
        if mode == "new" and present:
            raise RunDirError(f"--out {path} already holds a run; pass --resume to continue it, --overwrite "
                              "to delete its files and start afresh, or choose another --out")

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, list[Entry]]:
        try:
            manifest = json.loads((path / MARKER).read_text(encoding="utf-8"))
            files = manifest["files"]
            if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError
            return {str(k): [[int(e[0]), int(e[1]), int(e[2]), str(e[3])] for e in v] for k, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise RunDirError(f"{path / MARKER} is damaged; this folder's files cannot be told apart, "
                              "so dualtensor will not write there: choose another --out") from None

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "new") -> "RunDir":
        """Take the folder: create it (or adopt an empty one), lock it and remove stale temporaries.
        With ``overwrite`` the previous run's files must be unchanged; they are deleted just before
        this run's first write. Raises :class:`RunDirError`."""
        path = Path(path).expanduser()
        for _ in range(5):  # a lock file replaced under us (see _lock) means: look again
            cls.check(path, mode)
            created = False
            if not path.exists():
                try:
                    path.mkdir(parents=True)
                    created = True
                except FileExistsError:
                    pass
            fd = cls._lock(path)
            if fd is not None:
                break
        else:
            raise RunDirError(f"--out {path}: its lock file keeps changing; another run is starting there")
        try:
            files = cls._read_manifest(path) if (path / MARKER).is_file() else None
            cls._check_contents(path, mode, files)
            run = cls(path, files or {}, created, fd)
            if files is None:
                run._write_manifest()
            for tmp in stale_temporaries(path, {*RUN_FILES, MARKER}):
                tmp.unlink(missing_ok=True)
            if mode == "overwrite":
                changed = run.changed_files()
                if changed:
                    raise RunDirError(f"--overwrite: {', '.join(str(path / n) for n in changed)} changed since "
                                      "dualtensor wrote them; move them away first (dualtensor deletes only its "
                                      "own files)")
                run._overwrite_pending = bool(run._files)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return run

    @staticmethod
    def _lock(path: Path) -> int | None:
        """The descriptor of the folder's lock file, flocked; None when the file was replaced between
        opening and locking it (a run closing an empty folder removes it)."""
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
            raise RunDirBusy(f"--out {path} is in use by another run{who}; wait for it to end or "
                             "choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path / LOCK).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def close(self) -> None:
        """Release the lock. When no run file was written and the folder holds nothing but the marker
        and the lock, those two are removed again (and the folder too, when this run created it)."""
        if self._lock_fd is None:
            return
        if not self._files and set(os.listdir(self.path)) <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):  # removed while still locked: see _lock for who comes next
                (self.path / name).unlink(missing_ok=True)
            if self._created:
                try:
                    self.path.rmdir()
                except OSError:
                    pass
        os.close(self._lock_fd)  # closing the descriptor releases the flock
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
        """True when ``name`` exists but its content is not what this run wrote (edited, replaced, or
        never written by dualtensor). A copy with the run's content is not changed (and recorded)."""
        path = self.file(name)
        if not path.exists():
            return False
        versions = self._files.get(name, [])
        stat = _stat(path)
        if any(v[:3] == stat for v in versions):
            return False
        digest = sha256_of(path)
        if any(v[3] == digest for v in versions):
            self._files[name] = [[*stat, digest]]  # the same content under a new stat: a copy
            self._write_manifest()
            return False
        return True

    def changed_files(self) -> list[str]:
        """The files this run wrote whose content has changed since (see :meth:`changed`)."""
        return [n for n in list(self._files) if self.changed(n)]

    def write(self, name: str, write: Callable[[IO[bytes]], None]) -> Path:
        """Write run file ``name`` atomically with ``write(f)``; refuses to replace a changed file.
        Signals wait until the file and the marker agree."""
        if self._lock_fd is None:
            raise RuntimeError(f"RunDir {self.path} is closed")
        path = self.file(name)
        with deferred():
            if self._overwrite_pending:
                self._delete_own_files()
            if self.changed(name):
                raise RunDirError(f"{path} was changed since dualtensor wrote it (or was not written by it); "
                                  "move it away to let the run continue")

            # the file on disk is the recorded version changed() just matched: keep that entry, no rehash
            current = [v for v in self._files.get(name, []) if path.exists() and v[:3] == _stat(path)][:1]

            def record(tmp: Path) -> None:  # the new version is accepted before the rename makes it current
                self._files[name] = [*current, _entry(tmp)]
                self._write_manifest()

            atomic_write(path, write, before_replace=record)
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
        for name in list(self._files):
            self.file(name).unlink(missing_ok=True)
            del self._files[name]
        self._overwrite_pending = False
        self._write_manifest()

"""The sweep folder: made and owned by the sweep, like a run folder (see :class:`dualtensor.train.RunDir`).

Layout: ``.dualtensor-sweep.json`` (the marker: what the sweep is), ``study.db`` (the default
SQLite storage), ``trials/trial-NNNN/`` (one training run folder per trial), ``seeds/best-trial-NNNN/seed-S/``
(the final runs at trial NNNN's values), ``sweep.json`` (the result), ``.workers/`` (one lock file per live worker
process). An existing folder without the marker must be empty; nothing the sweep did not write
is touched.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .config import SweepConfig, SweepError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

__all__ = ["SweepDir", "MARKER", "worker_id"]

MARKER = ".dualtensor-sweep.json"
_FORMAT = 1


def worker_id() -> str:
    """This process as the study records it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SweepDir:
    """An opened sweep folder (:meth:`open` makes or checks it)."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def open(cls, config: SweepConfig) -> "SweepDir":
        """Make the folder for ``config``, or check that it holds the same sweep (raises
        :class:`SweepError` naming the first difference)."""
        path = config.folder
        marker = path / MARKER
        if marker.is_file():
            try:
                stored = json.loads(marker.read_text(encoding="utf-8"))
                if stored.get("format") != _FORMAT:
                    raise ValueError
            except (OSError, ValueError):
                raise SweepError(f"{marker} is damaged; dualtensor will not write into {path}: choose another "
                                 "--out") from None
            diff = config.difference(stored["sweep"])
            if diff is not None:
                raise SweepError(f"--out {path} holds another sweep: it was made with {diff}; continue it with "
                                 "its own options, or choose another --out")
            return cls(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise SweepError(f"--out {path} exists and was not made by a dualtensor sweep; dualtensor writes only "
                             "into folders it made or empty ones: choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps({"format": _FORMAT, "sweep": config.recorded()}, indent=2) + "\n")
        except OSError as e:
            raise SweepError(f"--out {path}: {e.strerror or e}") from None
        return cls(path)

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / f"trial-{number:04d}"

    def seed_dir(self, seed: int, best_trial: int) -> Path:
        """The final run of ``seed`` at the values of trial ``best_trial`` (a later, better trial gets
        new final runs; the earlier ones stay)."""
        return self.path / "seeds" / f"best-trial-{best_trial:04d}" / f"seed-{seed}"

    def write_result(self, result: dict) -> Path:
        """``sweep.json``, written atomically."""
        return atomic_write_text(self.path / "sweep.json", json.dumps(result, indent=2) + "\n")

    # -- worker liveness: a worker holds an flock on its own file while it lives --------------

    def hold_worker_lock(self) -> Any:
        """Take this process's worker lock (kept until the process ends); returns the descriptor."""
        folder = self.path / ".workers"
        folder.mkdir(exist_ok=True)
        for stale in folder.glob(f"{socket.gethostname()}-*.lock"):  # this machine's workers that are gone
            if not _locked(stale) and not _pid_alive(stale.stem.rsplit("-", 1)[1]):
                stale.unlink(missing_ok=True)
        fd = os.open(folder / f"{worker_id().replace(':', '-')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    def ask_lock(self) -> Any:
        """A context holding the folder's ask lock: SQLite gives no row locks, so local workers take
        queued trials one at a time (else two could take the same one)."""
        import contextlib

        @contextlib.contextmanager
        def held() -> Any:
            (self.path / ".workers").mkdir(exist_ok=True)
            fd = os.open(self.path / ".workers" / "ask.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
        return held()

    def worker_alive(self, worker: str) -> bool | None:
        """True/False for a worker of this machine (by its lock), None for another machine's."""
        host, _, pid = worker.rpartition(":")
        if host != socket.gethostname():
            return None
        lock = self.path / ".workers" / f"{host}-{pid}.lock"
        return (lock.exists() and _locked(lock)) or _pid_alive(pid)  # alive: also between creating and locking


def _pid_alive(pid: str) -> bool:
    """True when process ``pid`` of this machine exists (and is not a zombie)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _locked(path: Path) -> bool:
    """True when another process holds ``path``'s flock."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)

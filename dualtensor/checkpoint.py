"""Atomic files and ``.npz`` training checkpoints (no pickle anywhere).

A checkpoint is one ``.npz`` archive that loads with ``np.load(path, allow_pickle=False)``:

* ``model/<name>``: parameters and buffers (``Module.state_dict()``), copied to the host;
* ``optim/...`` and ``sched/...``: optimizer and schedule state, flattened with
  :func:`dualtensor.optim.state_to_arrays` (arrays plus a JSON ``__meta__`` string);
* ``epoch`` (int64) and ``best_metric`` (float64) scalars;
* ``config``, ``rng_state`` and ``train_state``: JSON strings (0-d unicode arrays). NumPy
  ``Generator`` states are stored as their ``bit_generator.state`` dicts, whose 128-bit
  integers JSON keeps exactly.

Every file is written atomically: a temporary file in the destination directory, flushed and
fsynced, then ``os.replace``-d over the target, so a crash leaves either the old or the new file
and never a partial one (nor a stray temporary).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["Checkpoint", "CheckpointError", "atomic_write", "atomic_write_text", "save_npz_atomic",
           "save_checkpoint", "load_checkpoint", "generator_state", "set_generator_state",
           "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MODEL, _OPTIM, _SCHED = "model/", "optim/", "sched/"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a dualtensor checkpoint."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temporary file in the same directory,
    which is fsynced and renamed over ``path``; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def _host(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """``np.savez`` (uncompressed) of ``arrays`` to ``path``, atomically. Object arrays are refused
    (they would need pickle)."""
    host = {}
    for k, v in arrays.items():
        a = _host(v)
        if a.dtype.hasobject:
            raise TypeError(f"save_npz_atomic: entry {k!r} is an object array, which needs pickle")
        host[k] = a
    return atomic_write(path, lambda f: np.savez(f, **host))


def generator_state(gen: Any) -> dict:
    """The JSON-able state of a NumPy ``Generator`` (its ``bit_generator.state``)."""
    return gen.bit_generator.state


def set_generator_state(gen: Any, state: Mapping) -> None:
    """Restore a state from :func:`generator_state` (the bit generator kinds must match)."""
    kind = type(gen.bit_generator).__name__
    if state.get("bit_generator") != kind:
        raise CheckpointError(f"checkpoint RNG state is for {state.get('bit_generator')!r}, "
                              f"the generator is a {kind}")
    gen.bit_generator.state = dict(state)


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring)."""

    model_state: dict[str, np.ndarray]
    optimizer_state: dict | None
    scheduler_state: dict | None
    epoch: int
    best_metric: float
    config: dict
    rng_state: dict = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    path: Path | None = None


def _json(obj: Any) -> np.ndarray:
    return np.array(json.dumps(obj, allow_nan=True, sort_keys=False))


def save_checkpoint(path: str | os.PathLike, *, model: Any, optimizer: Any = None, scheduler: Any = None,
                    epoch: int, best_metric: float, config: Mapping, rng_state: Mapping | None = None,
                    train_state: Mapping | None = None) -> Path:
    """Write a full training checkpoint to ``path`` atomically (see the module docstring)."""
    from .optim import state_to_arrays

    arrays: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        arrays[_MODEL + name] = value
    if optimizer is not None:
        arrays.update(state_to_arrays(optimizer.state_dict(), prefix=_OPTIM))
    if scheduler is not None:
        arrays.update(state_to_arrays(scheduler.state_dict(), prefix=_SCHED))
    arrays["format_version"] = np.array(FORMAT_VERSION, np.int64)
    arrays["epoch"] = np.array(int(epoch), np.int64)
    arrays["best_metric"] = np.array(float(best_metric), np.float64)
    arrays["config"] = _json(dict(config))
    arrays["rng_state"] = _json(dict(rng_state or {}))
    arrays["train_state"] = _json(dict(train_state or {}))
    return save_npz_atomic(path, arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``allow_pickle=False``)."""
    from .optim import state_from_arrays

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    for key in ("format_version", "epoch", "best_metric", "config"):
        if key not in data:
            raise CheckpointError(f"{path} is not a dualtensor checkpoint (no {key!r} entry)")
    version = int(data["format_version"])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this dualtensor reads {FORMAT_VERSION}")

    def text(key: str) -> dict:
        return json.loads(str(data[key][()])) if key in data else {}

    model_state = {k[len(_MODEL):]: v for k, v in data.items() if k.startswith(_MODEL)}
    optim = state_from_arrays(data, prefix=_OPTIM) if _OPTIM + "__meta__" in data else None
    sched = state_from_arrays(data, prefix=_SCHED) if _SCHED + "__meta__" in data else None
    return Checkpoint(model_state, optim, sched, int(data["epoch"]), float(data["best_metric"]),
                      text("config"), text("rng_state"), text("train_state"), path)

"""``.npz`` training checkpoints: written atomically, read without pickle, validated on load.

A checkpoint is one ``.npz`` archive that loads with ``np.load(path, allow_pickle=False)``:

* ``model/<name>``: parameters and buffers (``Module.state_dict()``), copied to the host;
* ``best/<name>``: the best epoch's weights, when they are not the model's own (a run's
  ``last.npz`` is then all a resume needs);
* ``optim/...`` and ``sched/...``: optimizer and schedule state, flattened with
  :func:`dualtensor.optim.state_to_arrays` (arrays plus a JSON ``__meta__`` string);
* ``format_version`` and ``epoch``: 0-d int64;
* ``config`` and ``train_state``: JSON objects stored as 0-d unicode arrays. (A training run's
  random generators are seeded by (seed, epoch), so no generator state is saved.)

:func:`load_checkpoint` checks the file's structure (every entry present, of the right kind,
JSON that parses to objects) and raises :class:`CheckpointError` naming the first bad entry;
:func:`check_arrays` checks arrays against the ones they are meant to replace (names, shapes,
dtypes, finiteness).
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .backend import to_device
from .errors import UsageError
from .files import atomic_write

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_arrays", "save_checkpoint", "load_checkpoint", "read_config",
           "read_epoch",
           "save_npz_atomic", "write_npz", "check_arrays", "FORMAT_VERSION"]

FORMAT_VERSION = 2
MODEL, BEST, OPTIM, SCHED = "model/", "best/", "optim/", "sched/"
_JSON_ENTRIES = ("config", "train_state")


class CheckpointError(UsageError, ValueError):
    """A checkpoint file is missing, unreadable, damaged or does not fit the run."""


def write_npz(f: IO[bytes], arrays: Mapping[str, Any]) -> None:
    """``np.savez`` (uncompressed) of ``arrays``, copied to the host, into the open file ``f``.
    Object arrays are refused (they would need pickle)."""
    host = {}
    for k, v in arrays.items():
        a = np.asarray(to_device(v, "cpu"))
        if a.dtype.hasobject:
            raise TypeError(f"write_npz: entry {k!r} is an object array, which needs pickle")
        host[k] = a
    np.savez(f, **host)


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """:func:`write_npz` into ``path``, atomically."""
    return atomic_write(path, lambda f: write_npz(f, arrays))


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring)."""

    model_state: dict[str, np.ndarray]
    optimizer_state: dict | None
    scheduler_state: dict | None
    epoch: int
    config: dict
    train_state: dict
    path: Path | None = None
    best_state: dict[str, np.ndarray] | None = None


def _json(obj: Any) -> np.ndarray:
    return np.array(json.dumps(obj, allow_nan=True))


def checkpoint_arrays(*, model: Any, optimizer: Any = None, scheduler: Any = None, epoch: int,
                      config: Mapping, train_state: Mapping | None = None,
                      best_state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entries of a checkpoint (see the module docstring), arrays still on their device."""
    from .optim import state_to_arrays

    arrays: dict[str, Any] = {MODEL + name: value for name, value in model.state_dict().items()}
    arrays.update({BEST + name: value for name, value in (best_state or {}).items()})
    if optimizer is not None:
        arrays.update(state_to_arrays(optimizer.state_dict(), prefix=OPTIM))
    if scheduler is not None:
        arrays.update(state_to_arrays(scheduler.state_dict(), prefix=SCHED))
    arrays["format_version"] = np.array(FORMAT_VERSION, np.int64)
    arrays["epoch"] = np.array(int(epoch), np.int64)
    arrays["config"] = _json(dict(config))
    arrays["train_state"] = _json(dict(train_state or {}))
    return arrays


def save_checkpoint(path: str | os.PathLike, **contents: Any) -> Path:
    """Write a checkpoint (the keywords of :func:`checkpoint_arrays`) to ``path`` atomically."""
    return save_npz_atomic(path, checkpoint_arrays(**contents))


def _read_entries(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a dualtensor checkpoint (not an .npz archive)")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable .npz archive ({type(e).__name__})") from None
    data = {}
    with z:
        for key in z.files if keys is None else [k for k in keys if k in z.files]:
            try:
                data[key] = z[key]
            except ValueError as e:
                if "allow_pickle" in str(e):  # NumPy's text suggests unpickling; dualtensor never does
                    raise CheckpointError(f"{path}: entry {key!r} holds a Python object (pickle), "
                                          "which dualtensor never loads") from None
                raise CheckpointError(f"{path}: entry {key!r} is damaged ({type(e).__name__})") from None
            except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise CheckpointError(f"{path}: entry {key!r} is damaged ({type(e).__name__})") from None
    return data


def _int_entry(data: Mapping, key: str, path: Path) -> int:
    v = data[key]
    if v.shape != () or v.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: entry {key!r} must be a 0-d integer, got {v.dtype} of shape {v.shape}")
    return int(v)


def _json_entry(data: Mapping, key: str, path: Path) -> dict:
    v = data[key]
    if v.shape != () or v.dtype.kind != "U":
        raise CheckpointError(f"{path}: entry {key!r} must be a JSON string, got {v.dtype} of shape {v.shape}")
    try:
        obj = json.loads(str(v[()]))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({e.msg} at {e.pos})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: entry {key!r} must be a JSON object, got {type(obj).__name__}")
    return obj


def _state_entry(data: Mapping, prefix: str, path: Path) -> dict | None:
    from .optim import state_from_arrays

    if prefix + "__meta__" not in data:
        return None
    try:
        return state_from_arrays(data, prefix=prefix)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        what = {OPTIM: "optimizer", SCHED: "schedule"}[prefix]
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"{path}: the {what} state ({prefix}__meta__) is damaged ({reason})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and structurally check a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    data = _read_entries(path)
    for key in ("format_version", "epoch", *_JSON_ENTRIES):
        if key not in data:
            raise CheckpointError(f"{path} is not a dualtensor checkpoint (no {key!r} entry)")
    version = _int_entry(data, "format_version", path)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}; this dualtensor reads format {FORMAT_VERSION}")
    epoch = _int_entry(data, "epoch", path)
    if epoch < 0:
        raise CheckpointError(f"{path}: entry 'epoch' is {epoch}, must be >= 0")
    model_state = {k[len(MODEL):]: v for k, v in data.items() if k.startswith(MODEL)}
    best_state = {k[len(BEST):]: v for k, v in data.items() if k.startswith(BEST)} or None
    config, train_state = (_json_entry(data, k, path) for k in _JSON_ENTRIES)
    return Checkpoint(model_state, _state_entry(data, OPTIM, path), _state_entry(data, SCHED, path), epoch,
                      config, train_state, path, best_state)


def _read_one(path: str | os.PathLike, key: str, parse: Any) -> Any:
    path = Path(path)
    data = _read_entries(path, (key,))
    if key not in data:
        raise CheckpointError(f"{path} is not a dualtensor checkpoint (no {key!r} entry)")
    return parse(data, key, path)


def read_config(path: str | os.PathLike) -> dict:
    """Only the ``config`` entry of a checkpoint (the other entries are not read)."""
    return _read_one(path, "config", _json_entry)


def read_epoch(path: str | os.PathLike) -> int:
    """Only the ``epoch`` entry of a checkpoint."""
    return _read_one(path, "epoch", _int_entry)


def check_arrays(found: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the names of ``expected``, each with
    the same shape and dtype, and every floating value finite. ``where`` names the source."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    extra = [k for k in found if k not in expected]
    if extra:
        raise CheckpointError(f"{where}: unexpected entry {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    for name, ref in expected.items():
        a = found[name]
        if tuple(a.shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(a.shape)}, the model needs {tuple(ref.shape)}")
        if a.dtype != ref.dtype:
            raise CheckpointError(f"{where}: {name} is {a.dtype}, the run is {ref.dtype}")
        if a.dtype.kind in "fc" and not bool(np.isfinite(to_device(a, "cpu")).all()):
            raise CheckpointError(f"{where}: {name} holds non-finite values (NaN or inf)")

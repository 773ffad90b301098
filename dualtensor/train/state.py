"""The typed progress of a run: what a checkpoint must hold besides the model and optimizer."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..checkpoint import CheckpointError

__all__ = ["TrainState"]

_FLOATS = ("train_time", "elapsed")
_INTS = ("epoch", "step", "samples", "best_epoch")


@dataclass
class TrainState:
    """Progress of a run after ``epoch`` finished epochs.

    * ``step``/``samples``: optimizer steps taken and training samples seen;
    * ``best_epoch``/``best_metric``: the epoch with the best monitored validation metric so far
      (0/None before the first), whose weights give the reported test accuracy;
    * ``history``: one record per finished epoch (:data:`dualtensor.metrics.FIELDS`);
    * ``lr_changes``: learning rates changed on resume (``{"epoch", "from", "to"}``);
    * ``train_time``/``elapsed``: seconds spent in training steps / in the whole run, over all resumes.

    The RNG states live in the generators themselves and are saved beside this in checkpoints.
    """

    epoch: int = 0
    step: int = 0
    samples: int = 0
    best_epoch: int = 0
    best_metric: float | None = None
    history: list[dict] = field(default_factory=list)
    lr_changes: list[dict] = field(default_factory=list)
    train_time: float = 0.0
    elapsed: float = 0.0

    @property
    def epochs_since_best(self) -> int:
        """Finished epochs after the best one (all of them before any validation)."""
        return self.epoch - self.best_epoch

    def record_epoch(self, row: Mapping[str, Any], monitor: str) -> bool:
        """Append the finished epoch's ``row``; True when its ``monitor`` value is the best so far
        (higher ``val_acc`` / lower ``val_loss``)."""
        value = float(row[monitor])
        better = self.best_metric is None or (value > self.best_metric if monitor == "val_acc"
                                              else value < self.best_metric)
        self.epoch = int(row["epoch"])
        self.history.append(dict(row))
        if better:
            self.best_epoch, self.best_metric = self.epoch, value
        return better

    def best_record(self) -> dict:
        """The history record of the best epoch ({} before the first)."""
        return next((r for r in self.history if r["epoch"] == self.best_epoch), {})

    def to_dict(self) -> dict:
        """A JSON-able copy (what checkpoints store as ``train_state``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, epoch: int) -> "TrainState":
        """The state stored by :meth:`to_dict` in a checkpoint of ``epoch``; anything inconsistent
        raises :class:`CheckpointError` naming the field."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"train_state must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise CheckpointError(f"train_state: unknown fields {unknown}")
        for name in _INTS:
            v = d.get(name, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CheckpointError(f"train_state.{name} must be a non-negative integer, got {v!r}")
        for name in _FLOATS:
            v = d.get(name, 0.0)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise CheckpointError(f"train_state.{name} must be a non-negative number, got {v!r}")
        best = d.get("best_metric")
        if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)):
            raise CheckpointError(f"train_state.best_metric must be a number or null, got {best!r}")
        history, changes = d.get("history", []), d.get("lr_changes", [])
        for name, v in (("history", history), ("lr_changes", changes)):
            if not isinstance(v, list) or not all(isinstance(r, dict) for r in v):
                raise CheckpointError(f"train_state.{name} must be a list of objects")
        state = cls(**{**dict(d), "history": [dict(r) for r in history], "lr_changes": [dict(r) for r in changes]})
        if state.epoch != epoch:
            raise CheckpointError(f"train_state.epoch is {state.epoch}, the checkpoint's epoch {epoch}")
        if [r.get("epoch") for r in history] != list(range(1, epoch + 1)):
            raise CheckpointError(f"train_state.history does not hold epochs 1..{epoch}")
        if state.best_epoch > epoch or (state.best_epoch == 0) != (best is None):
            raise CheckpointError(f"train_state: best epoch {state.best_epoch} does not fit epoch {epoch}")
        return state

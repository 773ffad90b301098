"""What a sweep is: the trials' training template, the search space, the study's storage and budget."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..train import ConfigError, TrainConfig
from ..train.config import option

__all__ = ["SweepConfig", "SweepError", "SearchSpace", "parse_search", "PRUNERS", "SWEEP_MUTABLE",
           "SEARCHABLE"]

PRUNERS = ("median", "halving", "none")

#: options a continued sweep may change (everything else must equal what the sweep folder records)
SWEEP_MUTABLE = frozenset({"trials", "seeds", "workers", "storage", "pruner"})
#: training options that only say how a run is executed, not what it computes: they may differ between
#: the runs of one sweep (e.g. a worker on another machine)
_EXECUTION = ("data_dir", "download", "mirrors", "device", "threads", "heap_arrays", "eval_batch_size", "quiet",
              "plot", "out", "lr", "check_every", "test")
#: training options a search range may cover
SEARCHABLE = ("k", "momentum", "weight_decay", "batch_size", "width", "depth", "aggregate", "tangents", "optimizer",
              "gamma", "decay", "cone_alpha", "perturb", "estimator")


class SweepError(UsageError):
    """A sweep that cannot run as asked (the message names the option or the folder)."""


@dataclass(frozen=True)
class SearchSpace:
    """One searched option: ``choices`` (categorical) or ``low``..``high`` (``log``: log-uniform)."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """This trial's value (Optuna's ``suggest_*``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if _field_kind(self.name) is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_text(self) -> str:
        if self.choices is not None:
            return f"{self.name}={','.join(map(str, self.choices))}"
        return f"{self.name}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


def _field_kind(name: str) -> type:
    hint = str(TrainConfig.__dataclass_fields__[name].type)
    return int if hint.startswith("int") else float if hint.startswith("float") else str


def parse_search(text: str) -> SearchSpace:
    """``NAME=V1,V2,...`` (choices) or ``NAME=LOW:HIGH[:log]`` (a range) -> :class:`SearchSpace`."""
    name, sep, spec = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if not sep or not spec:
        raise SweepError(f"--search {text!r}: expected NAME=V1,V2,... or NAME=LOW:HIGH[:log]")
    if name not in SEARCHABLE:
        raise SweepError(f"--search {text!r}: {option(name)} cannot be searched (searchable: "
                         f"{', '.join(SEARCHABLE)}; the learning rate is always searched)")
    kind = _field_kind(name)
    try:
        if ":" in spec:
            parts = spec.split(":")
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) not in (2, 3) or (len(parts) == 3 and not log) or kind is str:
                raise ValueError
            low, high = kind(parts[0]), kind(parts[1])
            if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
                raise ValueError
            return SearchSpace(name, low=low, high=high, log=log)
        choices = tuple(kind(v) for v in spec.split(","))
        if len(set(choices)) != len(choices):
            raise ValueError
        return SearchSpace(name, choices=choices)
    except ValueError:
        what = {int: "integers", float: "numbers", str: "names"}[kind]
        raise SweepError(f"--search {text!r}: expected {option(name)} as distinct {what} V1,V2,... or a range "
                         "LOW:HIGH[:log] with LOW < HIGH (and LOW > 0 for log)") from None


@dataclass
class SweepConfig:
    """A learning-rate search (and optionally more, ``search``) over the training runs ``train``
    describes, then ``seeds`` final runs at the best trial's values.

    The study lives in ``storage`` (an SQLAlchemy URL; default: ``sqlite:///<out>/study.db``) under
    the name ``study`` (default: the sweep folder's name); ``workers`` local processes run trials.
    """

    train: TrainConfig
    out: str
    trials: int = 20
    seeds: int = 3
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    lr_min: float = 1e-6
    lr_max: float = 1.0
    pruner: str = "median"
    search: list[SearchSpace] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return Path(self.out).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        """The study's storage (the SQLite file in the sweep folder unless ``storage``)."""
        return self.storage or f"sqlite:///{self.folder / 'study.db'}"

    @property
    def local(self) -> bool:
        """True for an SQLite study: one machine's workers (no row locks; their locks say who lives)."""
        return self.storage_url.startswith("sqlite")

    @property
    def study_name(self) -> str:
        return self.study or self.folder.name

    def validate(self) -> None:
        """Raise :class:`SweepError` (or :class:`ConfigError`) for bad options, before any work."""
        for name, low in (("trials", 1), ("seeds", 0), ("workers", 1)):
            if int(getattr(self, name)) < low:
                raise SweepError(f"--{name} must be >= {low}, got {getattr(self, name)}")
        if not (0 < self.lr_min < self.lr_max and math.isfinite(self.lr_max)):
            raise SweepError(f"--lr-min {self.lr_min:g} / --lr-max {self.lr_max:g}: need 0 < lr-min < lr-max")
        if self.train.parallel != "none":
            raise SweepError(f"--parallel {self.train.parallel}: a sweep runs each trial in one process; spread a "
                             "sweep with --workers or with workers on several machines sharing --storage")
        if self.pruner not in PRUNERS:
            raise SweepError(f"--pruner: invalid choice {self.pruner!r} (choose from {', '.join(PRUNERS)})")
        names = [s.name for s in self.search]
        if len(set(names)) != len(names):
            raise SweepError(f"--search: {option(max(names, key=names.count))} is given twice")
        trial = self.train.replace(lr=math.sqrt(self.lr_min * self.lr_max))
        for s in self.search:  # every value of a choice must make a valid run
            for v in (s.choices or (s.low, s.high)):
                try:
                    trial.replace(**{s.name: v}).resolved().validate(machine=False)
                except ConfigError as e:
                    raise SweepError(f"--search {s.to_text()}: {e}") from None
        trial.resolved().validate()
        if self.storage is not None and "://" not in self.storage:
            raise SweepError(f"--storage {self.storage!r}: expected an SQLAlchemy URL such as "
                             "postgresql+psycopg://user@host/db or sqlite:////path/study.db")

    def recorded(self) -> dict:
        """What the sweep folder records and a continued sweep must repeat."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _EXECUTION}
        return {"train": train, "lr_min": self.lr_min, "lr_max": self.lr_max,
                "search": [s.to_text() for s in self.search], "study": self.study_name}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["train"] = self.train.to_dict()
        out["search"] = [s.to_text() for s in self.search]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        d = dict(d)
        d["train"] = TrainConfig.from_dict(d["train"])
        d["search"] = [parse_search(t) for t in d.get("search", [])]
        return cls(**d)

    def difference(self, stored: dict) -> str | None:
        """The first recorded setting that differs from ``stored`` (None when they agree)."""
        mine = self.recorded()
        for key in ("study", "lr_min", "lr_max", "search"):
            if stored.get(key) != mine[key]:
                return f"{key.replace('_', '-')} {stored.get(key)} (now {mine[key]})"
        for name in sorted(set(mine["train"]) | set(stored.get("train", {}))):
            a, b = stored.get("train", {}).get(name), mine["train"].get(name)
            if a != b:
                return f"{option(name)} {a} (now {b})"
        return None

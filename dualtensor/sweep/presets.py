"""The paper's grids as presets: ``--preset table1`` and ``--preset fig6``.

Both follow Flügel et al. 2024, Sec. IV, and its reference code (``lrs/*.csv``, ``nn_training/configs``):
SGD without momentum or schedule, learning rate searched log-uniformly in [1e-6, 1] on a 10,000-sample
validation split, early stopping after 10 epochs without a better validation accuracy, at most 200
epochs, batch 64 (MNIST, Fashion-MNIST) / 128 (CIFAR-10), 3 seeds at the chosen rate.

* ``table1``: ResNet18 and ViT (width 256, depth 6, 4 heads, MLP 512, patch 4) on MNIST and CIFAR-10;
  backprop, forward gradients with the mean aggregator at k = 1, 2, 4, 16 and the projection at
  k = 2, 4, 16, activity perturbation, each with the paper's ``batch`` estimator and dualtensor's
  ``per-sample`` one.
* ``fig6``: MLPs with 2 hidden layers of width 256, 1024, 4096 on MNIST; the same gradients and both
  estimators, activity perturbation (the reference code's default ``--perturbation_mode node``).

``scale`` s (0 < s <= 1) shrinks a preset for a small machine: training samples ``ceil(s * N)``,
validation samples ``max(100, ceil(10000 s))``, epoch cap ``max(1, ceil(200 s))``, trials
``max(2, ceil(20 s))``, early-stopping patience ``max(2, ceil(10 s))``; s = 1 is the full protocol.
Options given explicitly (``--dataset``, ``--epochs``, ``--trials``, ...) override the preset's; gradient
options (``--grad simulated``, ``--shared-tangents``, ``--k``, ...) change the forward-gradient entries only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import data as _data
from ..files import atomic_write_text
from .config import SweepError

__all__ = ["Preset", "PRESETS", "expand_preset", "preset_grid", "GRID_KEYS", "open_preset_folder", "PRESET_MARKER"]

PRESET_MARKER = ".dualtensor-preset.json"

GRID_KEYS = ("model", "dataset", "width", "grad", "k", "aggregate", "estimator")
#: explicit options that change the forward-gradient entries only (``--grad simulated`` keeps backprop)
_FORWARD_ONLY = ("grad", "k", "aggregate", "estimator", "perturb", "tangents", "shared_tangents", "keep",
                 "cone_alpha", "tangent_length")
_BATCH = {"mnist": 64, "fashion-mnist": 64, "digits": 64, "cifar10": 128}


def _gradients(estimators: tuple[str, ...] | None) -> list[dict]:
    grads = [{"grad": "backprop"}]
    for aggregate, ks in (("mean", (1, 2, 4, 16)), ("projection", (2, 4, 16))):
        for k in ks:
            base = {"grad": "forward", "k": k, "aggregate": aggregate}
            grads += [{**base, "estimator": e} for e in estimators] if estimators else [base]
    return grads


@dataclass(frozen=True)
class Preset:
    """A grid of sweeps: ``axes`` (every combination) x ``gradients``, each with ``fixed`` options."""

    name: str
    axes: dict
    gradients: list
    fixed: dict
    trials: int = 20
    seeds: int = 3
    doc: str = ""
    options: dict = field(default_factory=dict)


_PROTOCOL = {"optimizer": "sgd", "momentum": 0.0, "schedule": "constant", "epochs": 200, "early_stopping": 10,
             "val_size": 10000, "track_test": True}

PRESETS: dict[str, Preset] = {
    "table1": Preset("table1", {"model": ("resnet18", "vit"), "dataset": ("mnist", "cifar10")},
                     _gradients(("batch", "per-sample")), {**_PROTOCOL, "perturb": "activity"},
                     doc="Table I: ResNet18 and ViT, both activity estimators"),
    "fig6": Preset("fig6", {"model": ("mlp",), "dataset": ("mnist",), "width": (256, 1024, 4096)},
                   _gradients(("batch", "per-sample")), {**_PROTOCOL, "perturb": "activity", "depth": 2},
                   doc="Fig. 6: MLP test error against width"),
}


def preset_grid(name: str, only: dict[str, tuple] | None = None, given: dict | None = None) -> list[dict]:
    """The grid's entries (training options of each sweep, before scaling), filtered by ``only``
    (grid key -> allowed values); ``given`` (explicit options) replaces a grid axis entirely."""
    if name not in PRESETS:
        raise SweepError(f"--preset: invalid choice {name!r} (choose from {', '.join(PRESETS)})")
    preset, given, only = PRESETS[name], given or {}, only or {}
    for key in only:
        if key not in GRID_KEYS:
            raise SweepError(f"--only {key}: not a grid key (choose from {', '.join(GRID_KEYS)})")
    combos: list[dict] = [{}]
    for key, values in preset.axes.items():
        values = (given[key],) if key in given else values
        combos = [{**c, key: v} for c in combos for v in values]
    entries = []
    for combo in combos:
        for g in preset.gradients:
            entry = {**combo, **g}
            if any(key in entry and str(entry[key]) not in {str(v) for v in allowed} for key, allowed in only.items()):
                continue
            entries.append(entry)
    if not entries:
        raise SweepError(f"--preset {name}: --only leaves no sweep")
    return entries


def open_preset_folder(path: str | Path, name: str) -> Path:
    """The folder holding a preset's sweep folders: made here (with :data:`PRESET_MARKER`), or one
    this preset made before; an existing folder it did not make must be empty."""
    path = Path(path).expanduser()
    marker = path / PRESET_MARKER
    if marker.is_file():
        try:
            made = json.loads(marker.read_text(encoding="utf-8")).get("preset")
        except (OSError, ValueError, AttributeError):
            made = None
        if made != name:
            raise SweepError(f"--out {path} holds the sweeps of --preset {made}, not {name}: choose another --out")
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SweepError(f"--out {path} exists and was not made by a dualtensor preset; dualtensor writes only "
                         "into folders it made or empty ones: choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"preset": name}) + "\n")
    except OSError as e:
        raise SweepError(f"--out {path}: {e.strerror or e}") from None
    return path


def entry_name(entry: dict) -> str:
    """A sweep folder name for a grid entry: ``resnet18-mnist-forward-k4-projection-batch``."""
    parts = [entry["model"] + (f"-w{entry['width']}" if entry.get("width") else ""), entry["dataset"], entry["grad"]]
    if entry["grad"] != "backprop":
        parts += [f"k{entry.get('k', 16)}", entry.get("aggregate", "projection")]
        parts += [entry["estimator"]] if "estimator" in entry else []
    return "-".join(parts)


def expand_preset(name: str, scale: float = 1.0, only: dict[str, tuple] | None = None,
                  given: dict | None = None) -> list[tuple[str, dict, dict]]:
    """``(folder name, training options, sweep options)`` of every sweep of preset ``name`` at
    ``scale``; ``given`` (options set explicitly) override the preset's values."""
    if not (0 < scale <= 1):
        raise SweepError(f"--scale must be in (0, 1], got {scale}")
    given = dict(given or {})
    entries = preset_grid(name, only, given)  # (raises for an unknown preset)
    preset = PRESETS[name]
    out = []
    for entry in entries:
        train: dict[str, Any] = {**preset.fixed, **entry, "batch_size": _BATCH.get(entry["dataset"], 64)}
        sweep = {"trials": preset.trials, "seeds": preset.seeds}
        if scale < 1:
            spec = _data.get_spec(given.get("dataset", entry["dataset"]))
            val = max(100, math.ceil(10000 * scale))
            train.update(val_size=val, limit=math.ceil(scale * (spec.train_size - val)),
                         epochs=max(1, math.ceil(200 * scale)), early_stopping=max(2, math.ceil(10 * scale)))
            sweep["trials"] = max(2, math.ceil(20 * scale))
        for key in list(given):
            if key in _FORWARD_ONLY and entry["grad"] == "backprop":
                continue  # the backprop baseline stays the baseline
            (sweep if key in sweep else train)[key] = given[key]
        name = entry_name(train)
        if name not in {n for n, _, _ in out}:  # an explicit option may merge grid entries
            out.append((name, train, sweep))
    return out

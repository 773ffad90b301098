"""The run configuration: one dataclass, one table of per-model defaults, choices from the registries.

A :class:`TrainConfig` holds every option of a run (the CLI's options map one to one onto its
fields). :meth:`TrainConfig.resolved` fills the defaults that depend on other options (the
model's architecture, the learning rate, the validation size) and :meth:`TrainConfig.validate`
checks everything that can be checked before any data is read, raising :class:`ConfigError`.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as _data
from .. import fgrad, optim
from ..errors import UsageError
from ..nn import models as _models

__all__ = ["TrainConfig", "ConfigError", "MODEL_OPTIONS", "DEFAULT_LR", "RESUME_MUTABLE", "CHOICES",
           "schedule_depends_on_epochs", "option", "STEP_GAMMA", "STEP_EVERY_FRACTION", "EXP_GAMMA"]


class ConfigError(UsageError, ValueError):
    """An invalid or inconsistent training configuration (the message names the option)."""


def _twice_width(config: "TrainConfig") -> int:
    return 2 * int(config.width)


#: the architecture options each model takes and their defaults; a callable default is computed
#: from the configuration once the others are filled in. Giving an option to a model that does not
#: take it is an error.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"width": 256, "depth": 2},
    "resnet18": {"stem": "imagenet", "fine_blocks": False},
    "vit": {"width": 256, "depth": 6, "patch_size": 4, "heads": 4, "mlp_dim": _twice_width},
}
_ARCH_OPTIONS = ("width", "depth", "stem", "fine_blocks", "patch_size", "heads", "mlp_dim")

#: defaults of the schedule options when None: the step schedule decays by STEP_GAMMA every
#: epochs // STEP_EVERY_FRACTION epochs, the exponential one by EXP_GAMMA per epoch, cosine has a
#: period of ``epochs``
STEP_GAMMA, STEP_EVERY_FRACTION, EXP_GAMMA = 0.1, 3, 0.9

#: default learning rate by (gradient, optimizer) when ``lr`` is None; measured on digits and
#: Fashion-MNIST MLPs with projection forward gradients (see the README's results)
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("backprop", "sgd"): 0.1, ("forward", "sgd"): 1.0, ("simulated", "sgd"): 1.0,
    ("backprop", "adam"): 1e-3, ("forward", "adam"): 1e-3, ("simulated", "adam"): 1e-3,
    ("backprop", "adamw"): 1e-3, ("forward", "adamw"): 1e-3, ("simulated", "adamw"): 1e-3,
}

#: the choices of every option that takes a name; the library's registries are the source
CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(_models.MODELS),
    "dataset": tuple(_data.DATASETS),
    "grad": ("backprop", "forward", "simulated"),
    "perturb": ("activity", "weight"),
    "estimator": tuple(fgrad.ESTIMATORS),
    "aggregate": tuple(fgrad.AGGREGATORS),
    "tangents": tuple(fgrad.SAMPLERS),
    "keep": ("tape", "recompute"),
    "optimizer": tuple(optim.OPTIMIZERS),
    "schedule": tuple(optim.SCHEDULES),
    "monitor": ("val_acc", "val_loss"),
    "device": ("cpu", "gpu"),
    "dtype": ("float32", "float64"),
    "stem": ("imagenet", "cifar"),
    "parallel": ("none", "tangents", "data"),
    "other_tangents": tuple(fgrad.activity.OTHER_TANGENTS),
}

#: options a resumed run may change; every other one must equal the checkpoint's. A new ``lr`` is
#: recorded as a learning-rate change at the epoch the run resumes from.
RESUME_MUTABLE = frozenset({"epochs", "early_stopping", "lr", "eval_batch_size", "data_dir", "download",
                            "mirrors", "device", "threads", "heap_arrays", "plot", "quiet", "check_every",
                            "other_tangents"})

# smallest allowed value of integer options (others: no bound)
_MIN_INT = {"k": 1, "epochs": 1, "batch_size": 1, "eval_batch_size": 1, "width": 1, "depth": 0, "patch_size": 1,
            "heads": 1, "mlp_dim": 1, "limit": 1, "val_size": 0, "step_size": 1, "t_max": 1, "early_stopping": 1,
            "threads": 1, "seed": 0, "ranks": 1, "check_every": 0}
_NONNEG_FLOAT = ("momentum", "weight_decay", "gamma", "decay", "eta_min", "cone_alpha", "tangent_length")
# the schedule options and the schedules that take them
_SCHEDULE_OPTIONS = {"step_size": ("step",), "gamma": ("step", "exponential"), "decay": ("exponential", "expdecay"),
                     "t_max": ("cosine",), "eta_min": ("cosine",)}


_SPELLING = {"mirrors": "--mirror", "download": "--no-download"}


def option(name: str) -> str:
    """The command-line spelling of a field: ``batch_size`` -> ``--batch-size``."""
    return _SPELLING.get(name) or "--" + name.replace("_", "-")


def schedule_depends_on_epochs(config: "TrainConfig") -> str | None:
    """Why the schedule's rates depend on ``epochs`` (None when they do not)."""
    if config.schedule == "cosine" and config.t_max is None:
        return f"the cosine schedule's period is --epochs ({config.epochs}) unless --t-max fixes it"
    if config.schedule == "step" and config.step_size is None:
        return (f"the step schedule decays every --epochs/{STEP_EVERY_FRACTION} epochs ({config.epochs}) unless "
                "--step-size fixes it")
    return None


@dataclass
class TrainConfig:
    """Everything that defines a training run (one field per CLI option; see ``train --help``).

    Architecture options (``width``, ``depth``, ``stem``, ``fine_blocks``, ``patch_size``, ``heads``,
    ``mlp_dim``) are None until :meth:`resolved` fills in :data:`MODEL_OPTIONS` for the model.
    """

    # model
    model: str = "mlp"
    width: int | None = None
    depth: int | None = None
    stem: str | None = None
    patch_size: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    fine_blocks: bool | None = None
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    mirrors: list[str] | None = None
    limit: int | None = None
    val_size: int | None = None
    # gradient
    grad: str = "forward"
    k: int = 16
    aggregate: str = "projection"
    perturb: str = "activity"
    tangents: str = "normal"
    cone_alpha: float | None = None
    tangent_length: float | None = None
    shared_tangents: bool = False
    estimator: str = "per-sample"
    keep: str = "tape"
    # optimisation
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int | None = None
    gamma: float | None = None
    decay: float | None = None
    t_max: int | None = None
    eta_min: float | None = None
    epochs: int = 30
    batch_size: int = 32
    drop_last: bool = True
    eval_batch_size: int = 1000
    early_stopping: int | None = None
    monitor: str = "val_acc"
    track_test: bool = False
    test: bool = True
    # run
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    heap_arrays: bool = False
    dtype: str = "float32"
    out: str | None = None
    init_from: str | None = None
    plot: bool = False
    quiet: bool = False
    # scale-out (MPI): ``ranks`` is the job's size, recorded by fit, not an option
    parallel: str = "none"
    ranks: int = 1
    check_every: int = 100
    other_tangents: str = "exchange"

    def to_dict(self) -> dict:
        """A JSON-able copy of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """The configuration stored as ``to_dict()``; unknown keys raise :class:`ConfigError`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a configuration must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "TrainConfig":
        """A copy with every default that depends on other options filled in (see the class doc)."""
        self._check_types()
        changes: dict[str, Any] = {}
        takes = MODEL_OPTIONS.get(self.model, {})
        for name, default in takes.items():
            if getattr(self, name) is None and not callable(default):
                changes[name] = default
        if self.lr is None and (self.grad, self.optimizer) in DEFAULT_LR:
            changes["lr"] = DEFAULT_LR[(self.grad, self.optimizer)]
        if self.val_size is None and self.dataset in _data.DATASETS:
            changes["val_size"] = _data.get_spec(self.dataset).default_val_size
        out = self.replace(**changes)
        for name, default in takes.items():  # computed defaults see the filled-in values
            if getattr(out, name) is None and callable(default):
                out = out.replace(**{name: default(out)})
        return out

    # -- validation ---------------------------------------------------------------------------

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is not list else ()
            kinds = kinds or (hints[f.name],)
            if not any(_is_kind(value, kind) for kind in kinds):
                wanted = " or ".join(_kind_name(k) for k in kinds)
                raise ConfigError(f"{option(f.name)}: expected {wanted}, got {value!r}")

    def validate(self, machine: bool = True) -> None:
        """Check every option that can be checked without reading data; raise :class:`ConfigError`
        naming the first bad one. Expects a :meth:`resolved` configuration. ``machine=False`` skips
        what depends on this machine (a GPU for ``device``, the ``data_dir`` folder)."""
        self._check_types()
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in options:
                raise ConfigError(f"{option(name)}: invalid choice {value!r} (choose from {', '.join(options)})")
        for name, low in _MIN_INT.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{option(name)} must be >= {low}, got {value}")
        for name in _NONNEG_FLOAT:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{option(name)} must be a non-negative number, got {value}")
        if not (self.lr is not None and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        self._check_model_options()
        self._check_gradient_options()
        for name, schedules in _SCHEDULE_OPTIONS.items():
            if getattr(self, name) is not None and self.schedule not in schedules:
                raise ConfigError(f"{option(name)} applies to --schedule {' or '.join(schedules)} only")
        if self.gamma is not None and self.decay is not None:
            raise ConfigError("--gamma and --decay: the exponential schedule takes one of them, not both")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"--momentum applies to sgd only (optimizer {self.optimizer!r})")
        if self.mirrors is not None and not self.download:
            raise ConfigError("--mirror needs downloads (drop --no-download)")
        try:
            _data.mirror_bases(_data.get_spec(self.dataset), self.mirrors)
        except _data.DataError as e:
            raise ConfigError(str(e)) from None
        self._check_data_sizes()
        self._check_parallel()
        if not machine:
            return
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(f"--data-dir {self.data_dir}: no such folder")
        if self.device == "gpu":
            from ..backend import gpu_available

            if not gpu_available():
                raise ConfigError("--device gpu: no usable GPU (CuPy is not installed, or it sees no device; "
                                  "pip install 'dualtensor[gpu]')")

    def _check_model_options(self) -> None:
        takes = MODEL_OPTIONS[self.model]
        for name in _ARCH_OPTIONS:
            if getattr(self, name) is not None and name not in takes:
                users = [m for m, opts in MODEL_OPTIONS.items() if name in opts]
                raise ConfigError(f"{option(name)} applies to --model {' or '.join(users)} only")
        if self.model == "vit":
            h, w = _data.get_spec(self.dataset).input_shape[1:]
            if h != w:
                raise ConfigError(f"--model vit needs square images, got {h}x{w}")
            if h % self.patch_size:
                raise ConfigError(f"--patch-size {self.patch_size} does not divide the image size {h}")
            if self.width % self.heads:
                raise ConfigError(f"--width {self.width} (the ViT embedding dim) is not divisible by "
                                  f"--heads {self.heads}")

    def _check_gradient_options(self) -> None:
        if self.estimator != "per-sample" and (self.grad == "backprop" or self.perturb != "activity"):
            raise ConfigError(f"--estimator {self.estimator} applies to activity perturbation only "
                              "(--grad forward or simulated, --perturb activity)")
        for name, sampler, param in (("cone_alpha", "cone", "alpha"), ("tangent_length", "varying_length", "L")):
            value = getattr(self, name)
            if value is None:
                continue
            if self.tangents != sampler:
                raise ConfigError(f"{option(name)} applies to --tangents {sampler} only")
            try:  # the sampler is the one judge of its parameters: draw two tiny tangents
                fgrad.get_sampler(sampler, **{param: value})(2, (4,), np.random.default_rng(0))
            except ValueError as e:
                raise ConfigError(f"{option(name)} {value}: {e}") from None

    def _check_parallel(self) -> None:
        if self.parallel == "tangents" and self.grad != "forward":
            raise ConfigError(f"--parallel tangents splits the k tangents of forward gradients; --grad {self.grad} "
                              "carries none (use --parallel data)")
        if self.parallel == "tangents" and self.k < self.ranks:
            raise ConfigError(f"--parallel tangents: --k {self.k} tangents cannot be split over {self.ranks} ranks "
                              "(need k >= ranks)")
        if self.parallel == "data" and self.batch_size < self.ranks:
            raise ConfigError(f"--parallel data: --batch-size {self.batch_size} cannot be split over {self.ranks} "
                              "ranks (need batch size >= ranks)")
        last = self.train_samples() % self.batch_size
        if self.parallel == "data" and not self.drop_last and 0 < last < self.ranks:
            raise ConfigError(f"--parallel data --no-drop-last: the last batch of each epoch has {last} samples, "
                              f"fewer than the {self.ranks} ranks (drop it, or choose another --batch-size or --limit)")
        if self.other_tangents != "exchange" and not (self.parallel == "tangents" and self.perturb == "activity"
                                                      and self.grad == "forward"):
            raise ConfigError(f"--other-tangents {self.other_tangents} applies to --parallel tangents with activity "
                              "perturbation only")
        if self.parallel == "none" and self.ranks > 1:
            raise ConfigError(f"this job has {self.ranks} MPI ranks but --parallel none: choose --parallel "
                              "tangents or data (or start one process)")

    def _check_data_sizes(self) -> None:
        spec = _data.get_spec(self.dataset)
        if self.val_size >= spec.train_size:
            raise ConfigError(f"--val-size {self.val_size} leaves no training samples: {spec.name} has "
                              f"{spec.train_size} (choose at most {spec.train_size - 1})")
        if self.val_size == 0:
            raise ConfigError("--val-size 0: a validation split is needed to pick the best epoch")
        n_train = self.train_samples()
        if self.drop_last and n_train < self.batch_size:
            raise ConfigError(f"--batch-size {self.batch_size} exceeds the {n_train} training samples "
                              "(lower it, or pass --no-drop-last)")

    def train_samples(self) -> int:
        """The number of training samples the run uses (after the validation split and ``limit``)."""
        available = _data.get_spec(self.dataset).train_size - int(self.val_size)
        return available if self.limit is None else min(self.limit, available)


def _is_kind(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and all(_is_kind(v, item) for v in value)
    return isinstance(value, kind)


def _kind_name(kind: Any) -> str:
    if kind is type(None):
        return "nothing"
    if typing.get_origin(kind) is list:
        return "a list of strings"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))

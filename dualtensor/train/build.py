"""The objects of a run, built from its configuration: model, optimizer, schedule, generators."""
from __future__ import annotations

from typing import Any

from .config import EXP_GAMMA, STEP_EVERY_FRACTION, STEP_GAMMA, ConfigError, TrainConfig

__all__ = ["build_model", "build_optimizer", "build_schedule", "tangent_generator", "dropout_modules",
           "RandomStreams", "model_blocks"]

_TANGENT_STREAM = (0, 1)   # tangent_generator of epoch e: default_rng([seed, 0, 1, e])
_DROPOUT_STREAM = (0, 2)   # dropout module i in epoch e: default_rng([seed, 0, 2, i, e])


def build_model(config: TrainConfig, input_shape: tuple[int, ...], classes: int) -> Any:
    """The configured network (a :meth:`TrainConfig.resolved` configuration), initialised from
    ``config.seed`` in ``config.dtype`` on the CPU (:class:`RandomStreams` seeds its dropout)."""
    from .. import nn
    from ..backend import set_default_dtype
    from ..nn import models

    set_default_dtype(config.dtype)
    nn.init.manual_seed(config.seed)
    c, h, w = input_shape
    if config.model == "mlp":
        model = models.mlp(c * h * w, width=config.width, depth=config.depth, classes=classes)
    elif config.model == "resnet18":
        model = models.resnet18(in_channels=c, classes=classes, stem=config.stem)
    else:
        model = models.vit(image_size=h, patch_size=config.patch_size, in_channels=c, classes=classes,
                           dim=config.width, depth=config.depth, heads=config.heads, mlp_dim=config.mlp_dim)
    return model


def model_blocks(model: Any, config: TrainConfig) -> list:
    """The blocks activity perturbation injects tangents after."""
    return model.blocks(fine=True) if config.fine_blocks else model.blocks()


def build_optimizer(config: TrainConfig, model: Any) -> Any:
    """The configured optimizer over ``model``'s parameters."""
    from ..optim import make_optimizer

    kw: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        kw["momentum"] = config.momentum
    return make_optimizer(config.optimizer, list(model.parameters()), **kw)


def build_schedule(config: TrainConfig, optimizer: Any) -> Any:
    """The configured per-epoch learning-rate schedule (defaults: :data:`STEP_GAMMA`, epochs //
    :data:`STEP_EVERY_FRACTION`, :data:`EXP_GAMMA`, ``t_max`` = epochs)."""
    from ..optim import make_schedule

    kw: dict[str, Any] = {}
    if config.schedule == "step":
        kw = {"step_size": config.step_size or max(1, config.epochs // STEP_EVERY_FRACTION),
              "gamma": STEP_GAMMA if config.gamma is None else config.gamma}
    elif config.schedule in ("exponential", "expdecay"):
        kw = {"gamma": config.gamma, "decay": config.decay}
        if config.schedule == "exponential" and config.gamma is None and config.decay is None:
            kw["gamma"] = EXP_GAMMA
    elif config.schedule == "cosine":
        kw = {"T_max": config.t_max or config.epochs, "eta_min": config.eta_min}
    try:
        return make_schedule(config.schedule, optimizer, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--schedule {config.schedule}: {e}") from None


def tangent_generator(config: TrainConfig, epoch: int = 1) -> Any:
    """A generator for the tangents of ``epoch``, on the run's device, seeded by ``(seed, epoch)``
    (for :func:`make_step` outside :func:`fit`, which draws keyed tangents instead)."""
    from ..backend import array_module, default_rng

    return default_rng([config.seed, *_TANGENT_STREAM, epoch], array_module(config.device))


def dropout_modules(model: Any) -> list[tuple[str, Any]]:
    """Modules holding their own random generator (dropout), in a fixed order."""
    from ..backend import rng_module

    return [(name, m) for name, m in model.named_modules() if rng_module(getattr(m, "rng", None)) is not None]


class RandomStreams:
    """The run's random numbers. The tangents of step s (counted over the whole run from 0) are
    :class:`~dualtensor.fgrad.streams.KeyedTangents` ``(seed, s)``: a pure function of seed, step,
    tangent index and position, so any MPI rank can draw any part of them and a resumed run draws
    exactly what the uninterrupted one drew. Every dropout module's masks come from a generator
    seeded by ``(seed, epoch)``, made afresh on the run's device when an epoch starts (nothing to
    save; CuPy's generators cannot save their state at all).
    """

    def __init__(self, config: TrainConfig, model: Any):
        self.config, self.model = config, model
        self.dropout = [m for _, m in dropout_modules(model)]
        self.step = 0

    def next_tangents(self) -> Any:
        """The keyed tangents of the next step (and count it)."""
        from ..fgrad.streams import KeyedTangents

        keys = KeyedTangents(self.config.seed, self.step)
        self.step += 1
        return keys

    def start_epoch(self, epoch: int, step: int = 0) -> None:
        """Seed the dropout generators of ``epoch`` (1-based), whose first step is ``step``."""
        from ..backend import array_module, default_rng

        xp = array_module(self.config.device)
        self.step = step
        for i, m in enumerate(self.dropout):
            m.rng = default_rng([self.config.seed, *_DROPOUT_STREAM, i, epoch], xp)

"""The objects of a run, built from its configuration: model, optimizer, schedule, generators."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..checkpoint import generator_state, set_generator_state
from .config import EXP_GAMMA, STEP_EVERY_FRACTION, STEP_GAMMA, ConfigError, TrainConfig

__all__ = ["build_model", "build_optimizer", "build_schedule", "tangent_generator", "dropout_modules",
           "rng_state", "restore_rng", "model_blocks"]

_TANGENT_STREAM = (0, 1)   # tangent generator: default_rng([seed, 0, 1])
_DROPOUT_STREAM = (0, 2)   # dropout generator i: default_rng([seed, 0, 2, i])


def build_model(config: TrainConfig, input_shape: tuple[int, ...], classes: int) -> Any:
    """The configured network (a :meth:`TrainConfig.resolved` configuration), initialised from
    ``config.seed`` in ``config.dtype`` on the CPU; its dropout generators are seeded too."""
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
    for i, (_, m) in enumerate(dropout_modules(model)):
        m.rng = np.random.default_rng([config.seed, *_DROPOUT_STREAM, i])
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


def tangent_generator(config: TrainConfig) -> np.random.Generator:
    """The generator of every tangent the run draws, seeded from ``config.seed``."""
    return np.random.default_rng([config.seed, *_TANGENT_STREAM])


def dropout_modules(model: Any) -> list[tuple[str, Any]]:
    """Modules holding their own NumPy generator (dropout), in a fixed order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)]


def rng_state(tangent_rng: np.random.Generator, model: Any) -> dict:
    """The states of the tangent generator and of every dropout generator (JSON-able)."""
    return {"tangent": generator_state(tangent_rng),
            "dropout": {name: generator_state(m.rng) for name, m in dropout_modules(model)}}


def restore_rng(state: Mapping, tangent_rng: np.random.Generator, model: Any) -> None:
    """Restore :func:`rng_state`; raises :class:`dualtensor.checkpoint.CheckpointError` on a mismatch."""
    from ..checkpoint import CheckpointError

    saved = state.get("dropout", {})
    mods = dict(dropout_modules(model))
    if not isinstance(saved, Mapping) or set(saved) != set(mods):
        raise CheckpointError(f"rng_state: dropout generators {sorted(saved) if isinstance(saved, Mapping) else saved}"
                              f" do not match the model's {sorted(mods)}")
    set_generator_state(tangent_rng, state.get("tangent"), "rng_state.tangent")
    for name, s in saved.items():
        set_generator_state(mods[name].rng, s, f"rng_state.dropout.{name}")

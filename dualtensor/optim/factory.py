"""Build an optimizer by name (for command-line tools)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["make_optimizer", "OPTIMIZERS"]

OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params: Iterable[Any] | Iterable[dict], **kwargs: Any) -> Optimizer:
    """``OPTIMIZERS[name](params, **kwargs)`` ("sgd", "adam", "adamw"); ``None`` values are ignored."""
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return cls(params, **{k: v for k, v in kwargs.items() if v is not None})

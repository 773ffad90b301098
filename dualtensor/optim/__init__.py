"""Optimizers and learning-rate schedules with ``torch.optim`` semantics, on NumPy or CuPy arrays.

Parameters are objects with a ``.data`` array (updated in place) and a ``.grad`` array or None.
"""
from .adam import Adam, AdamW
from .factory import OPTIMIZERS, make_optimizer
from .optimizer import Optimizer, ParamState
from .schedules import (SCHEDULES, ConstantLR, CosineAnnealingLR, ExpDecayLR, ExponentialLR,
                        LRScheduler, StepLR, make_schedule)
from .serialization import (optimizer_state_from_arrays, optimizer_state_to_arrays,
                            state_from_arrays, state_to_arrays)
from .sgd import SGD

__all__ = [
    "Optimizer", "ParamState", "SGD", "Adam", "AdamW", "make_optimizer", "OPTIMIZERS",
    "LRScheduler", "ConstantLR", "StepLR", "ExponentialLR", "ExpDecayLR", "CosineAnnealingLR",
    "make_schedule", "SCHEDULES",
    "state_to_arrays", "state_from_arrays", "optimizer_state_to_arrays", "optimizer_state_from_arrays",
]

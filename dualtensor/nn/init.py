"""Parameter initialisations (PyTorch defaults) from a module-level seeded generator."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_default_dtype

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used for new parameters."""
    global _rng
    _rng = np.random.default_rng(seed)


def uniform(shape: tuple, bound: float, dtype: Any = None) -> np.ndarray:
    """U(-bound, bound) in the default (or given) dtype."""
    return _rng.uniform(-bound, bound, size=shape).astype(dtype or get_default_dtype())


def kaiming_uniform(shape: tuple, fan_in: int, dtype: Any = None) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights: kaiming_uniform(a=sqrt(5)), i.e. U(±1/sqrt(fan_in))."""
    gain = math.sqrt(2.0 / (1 + 5.0))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in), dtype)


def trunc_normal(shape: tuple, std: float = 0.02, a: float = -2.0, b: float = 2.0, dtype: Any = None) -> np.ndarray:
    """Normal(0, std) truncated to [a, b] (absolute bounds, as torch.nn.init.trunc_normal_)."""
    out = _rng.standard_normal(shape) * std
    bad = (out < a) | (out > b)
    while bad.any():  # resample the (rare) outliers
        out[bad] = _rng.standard_normal(int(bad.sum())) * std
        bad = (out < a) | (out > b)
    return out.astype(dtype or get_default_dtype())


def kaiming_normal_fan_out(shape: tuple, fan_out: int, dtype: Any = None) -> np.ndarray:
    """He normal init with fan_out mode for ReLU (torchvision's ResNet conv init)."""
    return (_rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(dtype or get_default_dtype())

"""Fully connected ReLU networks (the paper's 784-W-W-10 and Baydin et al.'s 784-1024-1024-10)."""
from __future__ import annotations

from ..layers import Flatten, Linear, ReLU
from ..module import Sequential
from .blocked import Blocked


class MLP(Blocked):
    """Flatten, then ``depth`` hidden Linear+ReLU blocks of ``width`` units, then a Linear head block."""


def mlp(in_features: int = 784, width: int = 256, depth: int = 2, classes: int = 10) -> MLP:
    """An MLP whose blocks are each Linear+ReLU (the flatten is folded into the first, the head is last)."""
    if depth < 0 or width < 1:
        raise ValueError(f"mlp: need depth >= 0 and width >= 1, got depth={depth}, width={width}")
    blocks, fan_in = [], in_features
    for i in range(depth):
        layers = ([Flatten()] if i == 0 else []) + [Linear(fan_in, width), ReLU()]
        blocks.append(Sequential(*layers))
        fan_in = width
    blocks.append(Sequential(*(([Flatten()] if depth == 0 else []) + [Linear(fan_in, classes)])))
    return MLP(blocks)

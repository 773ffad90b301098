"""A model given as a sequence of blocks (the unit of activity perturbation)."""
from __future__ import annotations

from typing import Any

from ..module import Module, ModuleList


class Blocked(Module):
    """Forward = the blocks applied in order; ``blocks()`` returns them for activity perturbation."""

    def __init__(self, blocks: list[Module]):
        super().__init__()
        self.body = ModuleList(blocks)

    def blocks(self) -> list[Module]:
        return list(self.body)

    def forward(self, x: Any) -> Any:
        for b in self.body:
            x = b(x)
        return x

    def activation_sizes(self, input_shape: tuple, blocks: list | None = None) -> list[int]:
        """Per-sample size of each block's output (of ``blocks``, default ``self.blocks()``) for one
        input of ``input_shape`` (C, H, W) or (F,).

        Runs one batch-1 input of zeros through the blocks in eval mode (no batch-norm statistics
        change) on the parameters' device; every module's training flag is restored afterwards."""
        import numpy as np

        from ...backend import get_xp

        p = next(self.parameters()).data
        x = get_xp(p).zeros((1, *input_shape), p.dtype)
        mods = list(self.modules())
        modes = [m.training for m in mods]
        self.eval()
        try:
            sizes = []
            for b in self.blocks() if blocks is None else blocks:
                x = b(x)
                sizes.append(int(np.prod(x.shape[1:])))
        finally:
            for m, t in zip(mods, modes):
                object.__setattr__(m, "training", t)
        return sizes

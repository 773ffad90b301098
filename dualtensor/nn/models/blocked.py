"""A model given as a sequence of blocks (the unit of activity perturbation)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

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
        input of ``input_shape`` (C, H, W) or (F,), on the parameters' device."""
        from ...backend import get_xp

        p = next(self.parameters()).data
        return probe_blocks(self.blocks() if blocks is None else blocks,
                            get_xp(p).zeros((1, *input_shape), p.dtype))[0]


@contextmanager
def eval_mode(blocks: list) -> Iterator[None]:
    """Every module of ``blocks`` in eval mode (no batch-norm statistics or dropout state change) for the
    duration; each module's training flag is restored afterwards."""
    mods = [m for b in blocks for m in b.modules()]
    modes = [m.training for m in mods]
    for m in mods:
        object.__setattr__(m, "training", False)
    try:
        yield
    finally:
        for m, t in zip(mods, modes):
            object.__setattr__(m, "training", t)


def probe_blocks(blocks: list, x: Any) -> tuple[list[int], Any]:
    """Per-sample output sizes of ``blocks`` and the last output's dtype, from one batch-1 pass of
    ``x[:1]`` on plain arrays in eval mode (:func:`eval_mode`)."""
    with eval_mode(blocks):
        h, sizes = x[:1], []
        for b in blocks:
            h = b(h)
            sizes.append(int(np.prod(h.shape[1:])))
    return sizes, h.dtype

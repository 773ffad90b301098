"""The two plain functions every training loop is made of: one epoch of steps, and an evaluation."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import get_xp, quiet_float_errors, synchronize
from .steps import Step, StepOutput

__all__ = ["EpochStats", "train_epoch", "evaluate", "reduce_stats"]


@dataclass
class EpochStats:
    """Running totals of one epoch. The loss and accuracy sums stay on the device (0-d arrays) until
    :attr:`loss` or :attr:`acc` is read, so a step adds no device-to-host sync."""

    loss_sum: Any = np.float64(0.0)
    correct: Any = 0
    seen: int = 0
    steps: int = 0
    time: float = 0.0

    @property
    def loss(self) -> float:
        """Mean training loss over the samples seen so far."""
        return float(self.loss_sum) / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        """Training accuracy over the samples seen so far."""
        return int(self.correct) / self.seen if self.seen else float("nan")

    def add(self, out: StepOutput, y: Any) -> None:
        """Count one step's batch: its loss, its correct predictions, its samples."""
        y = y if out.targets is None else out.targets
        b = int(y.shape[0])
        self.loss_sum = self.loss_sum + out.loss * b  # float64: loss_sum starts as a NumPy float64
        self.correct = self.correct + (out.logits.argmax(axis=1) == y).sum()
        self.seen += b
        self.steps += 1


def train_epoch(model: Any, optimizer: Any, step: Step, batches: Iterable[tuple[Any, Any]], *,
                on_step: Callable[[StepOutput, EpochStats], None] | None = None) -> EpochStats:
    """One pass over ``batches`` in train mode: each batch's ``step`` gradients go into the
    parameters' ``.grad`` and ``optimizer`` updates them; ``on_step(out, stats)`` follows every
    update. Returns the epoch's totals (``time``: seconds, device work included)."""
    params = list(model.named_parameters())
    xp = get_xp(*(p.data for _, p in params))
    model.train()
    stats = EpochStats()
    t0 = time.perf_counter()
    with quiet_float_errors():
        for xb, yb in batches:
            out = step(xb, yb)
            for name, p in params:
                p.grad = out.grads.get(name)
            optimizer.step()
            optimizer.zero_grad()
            stats.add(out, yb)
            if on_step is not None:
                on_step(out, stats)
    synchronize(xp)
    stats.time = time.perf_counter() - t0
    return stats


def evaluate(model: Any, x: Any, y: Any, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on plain arrays, in batches."""
    from ..nn import functional as F

    was = model.training
    model.eval()
    total, correct, n = 0.0, 0, len(y)
    try:
        with quiet_float_errors():
            for i in range(0, n, batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                logits = model(xb)
                total += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(axis=1) == yb).sum())
    finally:
        model.train(was)
    return (total / n, correct / n) if n else (float("nan"), float("nan"))


def reduce_stats(comm: Any, stats: EpochStats) -> EpochStats:
    """An epoch's totals summed over the ranks of ``comm`` (data parallelism: each rank saw its shards)."""
    if comm.size == 1:
        return stats
    total = comm.allreduce(np.array([float(stats.loss_sum), int(stats.correct), stats.seen], dtype=np.float64))
    stats.loss_sum, stats.correct, stats.seen = np.float64(total[0]), int(total[1]), int(total[2])
    return stats

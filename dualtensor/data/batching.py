"""Seeded minibatch iteration.

The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at epoch ``e`` sees
exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Sample order of one epoch: a permutation drawn from ``default_rng([seed, epoch])``,
    or ``arange(n)`` without shuffling."""
    if not shuffle:
        return np.arange(n)
    if seed < 0 or epoch < 0:
        raise ValueError(f"epoch_order: seed and epoch must be >= 0, got {seed}, {epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


class Batches:
    """Iterable of ``(x_batch, y_batch)`` for one epoch; ``len()`` is the number of batches.

    Iterating again yields the same batches. ``device="gpu"`` copies each batch with
    ``dualtensor.backend.to_device``; arrays already on the GPU are indexed there.
    """

    def __init__(self, x: Any, y: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, drop_last: bool = False, device: str = "cpu") -> None:
        if len(x) != len(y):
            raise ValueError(f"batches: x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batches: batch_size must be >= 1, got {batch_size}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"batches: device must be 'cpu' or 'gpu', got {device!r}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), int(epoch)
        self.drop_last, self.device = drop_last, device

    def __len__(self) -> int:
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        order = epoch_order(len(self.y), self.seed, self.epoch, self.shuffle)
        from dualtensor.backend import is_cupy

        on_host = not (is_cupy(self.x) or is_cupy(self.y))
        if not on_host:
            from dualtensor.backend import get_xp

            order = get_xp(self.x, self.y).asarray(order)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.device != "cpu" or not on_host:
                from dualtensor.backend import to_device

                xb, yb = to_device(xb, self.device), to_device(yb, self.device)
            yield xb, yb


def batches(x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int = 0,
            epoch: int = 0, drop_last: bool = False, device: str = "cpu") -> Batches:
    """Minibatches of ``(x, y)`` for epoch ``epoch``, shuffled by ``(seed, epoch)``.

    Typical loop, resumable at any epoch::

        for epoch in range(start_epoch, epochs):
            for xb, yb in tqdm(batches(x, y, 128, seed=seed, epoch=epoch)):
                ...
    """
    return Batches(x, y, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                   drop_last=drop_last, device=device)

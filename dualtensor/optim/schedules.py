"""Learning-rate schedules acting on an optimizer's param groups (``torch.optim.lr_scheduler`` style).

Construction sets every group's ``"initial_lr"`` and applies epoch 0; each :meth:`step` then
advances one epoch and writes the new rates into the groups. Rates are computed in closed
form from the base rates (torch's ``_get_closed_form_lr``), so a schedule is a pure function
of the epoch counter and resumes exactly from :meth:`LRScheduler.state_dict`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["LRScheduler", "ConstantLR", "StepLR", "ExponentialLR", "ExpDecayLR",
           "CosineAnnealingLR", "make_schedule", "SCHEDULES"]


class LRScheduler:
    """Base class: subclasses implement :meth:`_lr_at` (the rate of one group at an epoch).

    Args:
        optimizer: any object with ``param_groups`` (list of dicts holding ``"lr"``).
        last_epoch: index of the last finished epoch; ``-1`` starts afresh, otherwise every
            group must already hold ``"initial_lr"`` (as in torch).
    """

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group["initial_lr"] = group["lr"]
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: 'initial_lr' is not specified in "
                                   f"param_groups[{i}] when resuming with last_epoch={last_epoch}")
        self.base_lrs: list[float] = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._last_lr: list[float] = []
        self.step()

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not implement _lr_at")

    def get_lr(self) -> list[float]:
        """The rates of every group at the current epoch (``last_epoch``)."""
        return [float(self._lr_at(base, self.last_epoch)) for base in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        """The rates last written into the optimizer's groups, one per group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one epoch and set each group's ``"lr"``."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (plain numbers; see :func:`state_to_arrays`)."""
        return {k: (list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same schedule and write its current rates into the
        optimizer. Keys or value kinds that do not match this schedule's raise ``ValueError``."""
        own = self.state_dict()
        if not isinstance(state_dict, Mapping) or set(state_dict) != set(own):
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{type(self).__name__}: loaded state has keys {got}, expected {sorted(own)}")
        for k, v in state_dict.items():
            numbers = v if isinstance(v, (list, tuple)) else [v]
            if isinstance(own[k], list) != isinstance(v, (list, tuple)) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers):
                raise ValueError(f"{type(self).__name__}: loaded {k!r} is {v!r}, expected finite numbers "
                                 f"like {own[k]!r}")
        groups = self.optimizer.param_groups
        if len(state_dict["base_lrs"]) != len(groups) or len(state_dict["_last_lr"]) != len(groups):
            raise ValueError(f"{type(self).__name__}: loaded state has {len(state_dict['base_lrs'])} "
                             f"groups, the optimizer has {len(groups)}")
        self.__dict__.update({k: (list(v) if isinstance(v, (list, tuple)) else v)
                              for k, v in state_dict.items()})
        self._write_rates()

    def set_base_lrs(self, lrs: list[float]) -> None:
        """Change the base rate of every group (e.g. after a divergence) and apply the schedule's
        rate for the current epoch; later epochs follow the schedule from the new base."""
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise ValueError(f"{type(self).__name__}: {len(lrs)} rates for {len(groups)} groups")
        self.base_lrs = [float(lr) for lr in lrs]
        self._last_lr = self.get_lr()
        self._write_rates()

    def _write_rates(self) -> None:
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, self._last_lr):
            group["initial_lr"] = base
            group["lr"] = lr


class ConstantLR(LRScheduler):
    """``lr = base * factor`` for the first ``total_iters`` epochs, ``base`` after (torch defaults).

    With ``factor=1`` (what :func:`make_schedule` ``"constant"`` uses) the rate never changes.
    """

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"ConstantLR: factor must be in [0, 1], got {factor!r}")
        if total_iters < 0:
            raise ValueError(f"ConstantLR: total_iters must be >= 0, got {total_iters!r}")
        self.factor = float(factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr if epoch >= self.total_iters else base_lr * self.factor


class StepLR(LRScheduler):
    """``lr = base * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        if not gamma >= 0:
            raise ValueError(f"StepLR: gamma must be >= 0, got {gamma!r}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``lr = base * gamma ** epoch``."""

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        if not gamma >= 0:
            raise ValueError(f"ExponentialLR: gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** epoch


class ExpDecayLR(LRScheduler):
    """``lr_i = lr_0 * exp(-i * decay)``, the schedule of Baydin et al. (2022), "Gradients
    without backpropagation" (``decay`` is their ``k``; ``ExponentialLR`` with ``gamma = e^-k``)."""

    def __init__(self, optimizer: Any, decay: float, last_epoch: int = -1) -> None:
        if not decay >= 0:
            raise ValueError(f"ExpDecayLR: decay must be >= 0, got {decay!r}")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * math.exp(-epoch * self.decay)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    Past ``T_max`` the cosine continues (the rate climbs back), as torch's closed form does.
    """

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if not T_max > 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be > 0, got {T_max!r}")
        if not eta_min >= 0:
            raise ValueError(f"CosineAnnealingLR: eta_min must be >= 0, got {eta_min!r}")
        self.T_max = T_max
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, epoch: int) -> float:
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1.0 + cos) / 2.0


SCHEDULES: tuple[str, ...] = ("constant", "step", "exponential", "expdecay", "cosine")


def make_schedule(name: str, optimizer: Any, **kwargs: Any) -> LRScheduler:
    """Build a schedule by name, for command-line use; ``None`` keyword values are ignored.

    * ``"constant"``: :class:`ConstantLR` (``factor=1``, ``total_iters=0`` unless given)
    * ``"step"``: :class:`StepLR` (``step_size``, ``gamma``)
    * ``"exponential"``: :class:`ExponentialLR` (``gamma``), or :class:`ExpDecayLR` when
      ``decay`` is given instead
    * ``"expdecay"``: :class:`ExpDecayLR` (``decay``)
    * ``"cosine"``: :class:`CosineAnnealingLR` (``T_max``, ``eta_min``)
    """
    kw = {k: v for k, v in kwargs.items() if v is not None}
    key = name.lower().replace("_", "").replace("-", "")
    if key == "exponential" and "decay" in kw:
        if "gamma" in kw:
            raise ValueError("make_schedule: 'exponential' takes gamma or decay, not both")
        key = "expdecay"
    if key == "constant":
        kw.setdefault("factor", 1.0)
        kw.setdefault("total_iters", 0)
    classes = {"constant": ConstantLR, "step": StepLR, "exponential": ExponentialLR,
               "expdecay": ExpDecayLR, "cosine": CosineAnnealingLR}
    if key not in classes:
        raise ValueError(f"make_schedule: unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    try:
        return classes[key](optimizer, **kw)
    except TypeError as err:
        raise TypeError(f"make_schedule({name!r}): {err}") from None

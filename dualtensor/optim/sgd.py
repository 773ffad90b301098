"""Stochastic gradient descent with momentum (``torch.optim.SGD`` semantics)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backend import get_xp as _xp
from .optimizer import Optimizer

__all__ = ["SGD"]


def _check_nonneg(opt: str, what: str, value: Any) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{opt}: invalid {what}: {value!r} (must be >= 0)")


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as ``torch.optim.SGD``.

    Per step, with ``g`` the gradient::

        g = -g if maximize
        g = g + weight_decay * p
        b = g (first step) | momentum * b + (1 - dampening) * g
        g = g + momentum * b if nesterov else b        (only when momentum != 0)
        p = p - lr * g

    State: ``"momentum_buffer"`` (only when ``momentum != 0``).
    """

    def __init__(self, params: Iterable[Any] | Iterable[dict], lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        _check_nonneg("SGD", "learning rate", group["lr"])
        _check_nonneg("SGD", "momentum", group["momentum"])
        _check_nonneg("SGD", "weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum requires momentum > 0 and zero dampening "
                             f"(got momentum={group['momentum']!r}, dampening={group['dampening']!r})")

    def _update(self, data: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        dampening = float(group["dampening"])
        weight_decay = float(group["weight_decay"])
        g = -grad if group["maximize"] else grad
        if weight_decay != 0:
            g = g + weight_decay * data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # a real array even for 0-d parameters (ufuncs return scalars there)
                buf = state["momentum_buffer"] = _xp(data).array(g, dtype=data.dtype, copy=True)
            else:
                buf *= momentum
                if dampening == 0:
                    buf += g
                else:
                    buf += (1.0 - dampening) * g
            g = g + momentum * buf if group["nesterov"] else buf
        data -= lr * g

"""Adam and AdamW (``torch.optim.Adam`` / ``torch.optim.AdamW`` semantics)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..backend import get_xp as _xp
from .optimizer import Optimizer
from .sgd import _check_nonneg

__all__ = ["Adam", "AdamW"]


def _lerp_(a: Any, b: Any, w: float) -> None:
    """``a += w * (b - a)`` in place, with torch's two-sided lerp (exact at w = 1)."""
    if abs(w) < 0.5:
        a += w * (b - a)
    else:
        d = b - a
        d *= 1.0 - w
        _xp(a).subtract(b, d, out=a)


class Adam(Optimizer):
    """Adam (Kingma & Ba), optionally AMSGrad, as ``torch.optim.Adam``.

    Per step ``t``, with ``g`` the gradient::

        g = -g if maximize
        g = g + weight_decay * p                      (L2 penalty, Adam only)
        p = p * (1 - lr * weight_decay)               (decoupled decay, AdamW only)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_max = max(v_max, v)                         (amsgrad; then used instead of v)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"`` and, with amsgrad,
    ``"max_exp_avg_sq"``, all in the parameter's dtype.
    """

    _decoupled = False

    def __init__(self, params: Iterable[Any] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        name = self._name
        _check_nonneg(name, "learning rate", group["lr"])
        _check_nonneg(name, "epsilon value", group["eps"])
        _check_nonneg(name, "weight_decay value", group["weight_decay"])
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: invalid beta parameter at index {i}: {beta!r} "
                                 "(must be in [0, 1))")
        group["betas"] = tuple(betas)

    def _update(self, data: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = _xp(data)
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        weight_decay = float(group["weight_decay"])
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(data)
            state["exp_avg_sq"] = xp.zeros_like(data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(data)

        g = -grad if group["maximize"] else grad
        if weight_decay != 0:
            if self._decoupled:
                data *= 1.0 - lr * weight_decay
            else:
                g = g + weight_decay * data
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(exp_avg, g, 1.0 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * g * g
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        if group["amsgrad"]:
            # torch keeps the running max of the *uncorrected* second moment
            max_sq = state["max_exp_avg_sq"]
            xp.maximum(max_sq, exp_avg_sq, out=max_sq)
            denom = xp.sqrt(max_sq, out=xp.empty_like(data))
        else:
            denom = xp.sqrt(exp_avg_sq, out=xp.empty_like(data))
        denom /= bias_correction2_sqrt
        denom += eps
        xp.divide(exp_avg, denom, out=denom)
        denom *= lr / bias_correction1
        data -= denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Same as :class:`Adam` except that ``weight_decay`` (default ``1e-2``) shrinks the
    parameter directly, ``p *= 1 - lr * weight_decay``, instead of adding to the gradient.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Any] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)

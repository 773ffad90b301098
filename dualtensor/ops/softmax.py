"""softmax and log_softmax (fused, max-shifted for stability).

Both rules reuse the primal probabilities ``s``: softmax ``s * (t - sum(s * t))``, log_softmax
``t - sum(s * t)``, the sums running over the softmax axis of all k tangents at once.
"""
from __future__ import annotations

from typing import Any

from ..backend import get_xp as _xp
from ..core import Primitive

__all__ = ["softmax", "log_softmax"]


def _axes(op: str, x: Any, dim: Any) -> tuple:
    """The softmax axis as a 1-tuple (empty for a 0-d input), validated."""
    shape = tuple(getattr(x, "shape", ()))
    nd = len(shape)
    if isinstance(dim, bool) or not isinstance(dim, int) and not hasattr(dim, "__index__"):
        raise TypeError(f"{op}: dim must be an integer, got {dim!r}")
    dim = int(dim)
    lo, hi = (-1, 0) if nd == 0 else (-nd, nd - 1)
    if not lo <= dim <= hi:
        raise ValueError(f"{op}: dim {dim} is out of range for an input of shape {shape} (expected [{lo}, {hi}])")
    return () if nd == 0 else (dim % nd,)


def _shifted(x: Any, axes: tuple) -> tuple:
    """(z, e, sum e) with z = x - max(x) over ``axes``."""
    xp = _xp(x)
    z = x - x.max(axis=axes, keepdims=True)
    e = xp.exp(z)
    return z, e, e.sum(axis=axes, keepdims=True)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _sum_prod(t: Any, s: Any, axis: int, keepdims: bool = True) -> Any:
    """sum over ``axis`` of s * t, where t is s-shaped or a (k, *s.shape) stack (einsum: no t-sized temporary)."""
    if s.ndim > len(_LETTERS) - 1:  # pragma: no cover - absurd ranks
        r = (t * s).sum(axis=axis - s.ndim)
    else:
        idx = _LETTERS[:s.ndim]
        r = _xp(t).einsum(f"...{idx},{idx}->...{idx[:axis] + idx[axis + 1:]}", t, s)
    return _xp(r).expand_dims(r, axis - s.ndim) if keepdims else r


def softmax(input: Any, dim: int = -1) -> Any:
    """exp(x) / sum(exp(x)) along ``dim`` (torch.softmax)."""
    return _softmax(input, axes=_axes("softmax", input, dim))


def _softmax_impl(x, *, axes):
    if x.ndim == 0 or x.size == 0:
        return _xp(x).ones_like(x)
    _, e, se = _shifted(x, axes)
    e /= se
    return e


def _softmax_jvp(t, s, x, *, axes):
    if not axes:  # 0-d: constant 1
        return t * 0
    r = t - _sum_prod(t, s, axes[0])
    r *= s
    return r


def _softmax_vjp(g, s, x, *, axes):
    return _softmax_jvp(g, s, x, axes=axes)  # the Jacobian diag(s) - s s^T is symmetric


_softmax = Primitive("softmax", _softmax_impl, jvps=[_softmax_jvp], vjps=[_softmax_vjp])


def log_softmax(input: Any, dim: int = -1) -> Any:
    """x - logsumexp(x) along ``dim`` (torch.log_softmax)."""
    return _log_softmax(input, axes=_axes("log_softmax", input, dim))[0]


def _log_softmax_impl(x, *, axes):
    if x.ndim == 0 or x.size == 0:
        return _xp(x).zeros_like(x), _xp(x).ones_like(x)
    z, e, se = _shifted(x, axes)
    z -= _xp(x).log(se)
    e /= se
    return z, e  # (log-probabilities, probabilities saved for the rules)


def _log_softmax_jvp(t, ans, x, *, axes):
    return t - _sum_prod(t, ans[1], axes[0]) if axes else t * 0


def _log_softmax_vjp(g, ans, x, *, axes):
    return g - ans[1] * g.sum(axis=axes, keepdims=True) if axes else g * 0


_log_softmax = Primitive("log_softmax", _log_softmax_impl, jvps=[_log_softmax_jvp], vjps=[_log_softmax_vjp],
                         has_aux=True)

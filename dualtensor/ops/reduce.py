"""Reductions: sum, mean, var, max, min, logsumexp (NumPy axis/keepdims semantics).

``axis`` is None (all axes), an int or a tuple of ints (negative allowed); the public functions
normalise it to a sorted tuple before calling the primitive, so the rules only ever see that.
Results are always arrays (0-d for full reductions), never NumPy scalars.
In the JVP the data axes of the ``(k, *shape)`` tangent stack are shifted by one, so every
rule reduces ``axis + 1`` of the whole stack: one call serves all k tangents.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ..backend import get_xp as _xp
from ..tensor import primal_of as _value
from ..core import Primitive

__all__ = ["sum", "mean", "var", "max", "min", "logsumexp"]


# ---------------------------------------------------------------- helpers

def _shape_of(a: Any) -> tuple:
    v = _value(a)
    return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)


def _axes(op: str, axis: Any, shape: tuple) -> tuple:
    """Normalise ``axis`` (None, int or tuple of ints) into a sorted tuple of axes in range(ndim)."""
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError(f"{op}: axis must be None, an int or a tuple of ints, got {axis!r}")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{op}: axis must be None, an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of bounds for an array of shape {shape}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r} for an array of shape {shape}")
    return tuple(sorted(out))


def _count(shape: tuple, axis: tuple) -> int:
    return math.prod(shape[a] for a in axis)


def _shift(axis: tuple) -> tuple:
    """The same axes in the ``(k, *shape)`` tangent stack."""
    return tuple(a + 1 for a in axis)


def _kept_shape(shape: tuple, axis: tuple) -> tuple:
    """``shape`` with the reduced axes set to 1 (the keepdims shape)."""
    return tuple(1 if i in axis else s for i, s in enumerate(shape))


def _expand(g: Any, shape: tuple, axis: tuple, keepdims: bool) -> Any:
    """A cotangent of the reduced output reshaped to the keepdims shape (broadcastable to ``shape``)."""
    return g if keepdims else g.reshape(_kept_shape(shape, axis))


def _drop(r: Any, axis: tuple, keepdims: bool) -> Any:
    """A keepdims result with the reduced axes removed unless ``keepdims``."""
    if keepdims:
        return r
    return r.reshape(tuple(s for i, s in enumerate(r.shape) if i not in axis))


def _broadcast_ct(g: Any, shape: tuple) -> Any:
    """A fresh (writable) array of ``shape`` holding the broadcast cotangent ``g``."""
    xp = _xp(g)
    out = xp.empty(shape, dtype=g.dtype)
    out[...] = g
    return out


def _nonempty(op: str, shape: tuple, axis: tuple) -> None:
    if _count(shape, axis) == 0:
        raise ValueError(f"{op}: cannot reduce over an empty axis (shape {shape}, axis {axis}); "
                         "the reduction has no identity")


# ---------------------------------------------------------------- sum

def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Sum over ``axis`` (numpy.sum / torch.sum)."""
    axis = _axes("sum", axis, _shape_of(x))
    return _sum(x, axis=axis, keepdims=bool(keepdims))


def _sum_impl(x, axis, keepdims):
    xp = _xp(x)
    return xp.asarray(xp.sum(x, axis=axis, keepdims=keepdims))


def _sum_jvp(tangents, ans, x, axis, keepdims):
    return tangents[0].sum(axis=_shift(axis), keepdims=keepdims)


def _sum_vjp(g, ans, x, axis, keepdims):
    return (_broadcast_ct(_expand(g, x.shape, axis, keepdims), x.shape),)


_sum = Primitive("sum", _sum_impl, jvp=_sum_jvp, vjp=_sum_vjp)


# ---------------------------------------------------------------- mean

def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Mean over ``axis`` (numpy.mean / torch.mean)."""
    shape = _shape_of(x)
    axis = _axes("mean", axis, shape)
    _nonempty("mean", shape, axis)
    return _mean(x, axis=axis, keepdims=bool(keepdims))


def _mean_impl(x, axis, keepdims):
    xp = _xp(x)
    return xp.asarray(xp.mean(x, axis=axis, keepdims=keepdims))


def _mean_jvp(tangents, ans, x, axis, keepdims):
    return tangents[0].mean(axis=_shift(axis), keepdims=keepdims)


def _mean_vjp(g, ans, x, axis, keepdims):
    return (_broadcast_ct(_expand(g, x.shape, axis, keepdims) * (1.0 / _count(x.shape, axis)), x.shape),)


_mean = Primitive("mean", _mean_impl, jvp=_mean_jvp, vjp=_mean_vjp)


# ---------------------------------------------------------------- var (fused: reuses the centred primal)

def var(x: Any, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Any:
    """Variance over ``axis`` with ``ddof`` delta degrees of freedom (numpy.var; torch: correction=ddof)."""
    shape = _shape_of(x)
    axis = _axes("var", axis, shape)
    if isinstance(ddof, (bool, np.bool_)):
        raise TypeError(f"var: ddof must be a non-negative integer, got {ddof!r}")
    try:
        ddof = operator.index(ddof)
    except TypeError:
        raise TypeError(f"var: ddof must be a non-negative integer, got {ddof!r}") from None
    n = _count(shape, axis)
    if ddof < 0 or n - ddof <= 0:
        raise ValueError(f"var: need more reduced elements than ddof, got {n} element(s) with ddof={ddof} "
                         f"(shape {shape}, axis {axis})")
    out, _ = _var(x, axis=axis, keepdims=bool(keepdims), ddof=ddof)
    return out


def _var_impl(x, axis, keepdims, ddof):
    xp = _xp(x)
    x = xp.asarray(x)
    c = x - xp.mean(x, axis=axis, keepdims=True)
    out = xp.asarray(xp.sum(c * c, axis=axis, keepdims=keepdims) / (_count(x.shape, axis) - ddof))
    return out, c


def _var_jvp(tangents, ans, x, axis, keepdims, ddof):
    c = ans[1]  # x - mean, shape of x: aligns with the data axes of the (k, *shape) stack
    scale = 2.0 / (_count(x.shape, axis) - ddof)
    return (tangents[0] * c).sum(axis=_shift(axis), keepdims=keepdims) * scale


def _var_vjp(g, ans, x, axis, keepdims, ddof):
    c = ans[1]
    scale = 2.0 / (_count(x.shape, axis) - ddof)
    return (_expand(g, x.shape, axis, keepdims) * scale * c,)


_var = Primitive("var", _var_impl, jvp=_var_jvp, vjp=_var_vjp, has_aux=True)


# ---------------------------------------------------------------- max / min (ties share the derivative)

def _chooser_impl(pick):
    def impl(x, axis, keepdims):
        xp = _xp(x)
        m = xp.asarray(getattr(xp, pick)(x, axis=axis, keepdims=True))
        return _drop(m, axis, keepdims), m  # the keepdims extremum locates the argmax/argmin
    return impl


def _chooser_weights(ans, x, axis, dtype):
    """The argmax/argmin mask of the primal and the number of ties per reduced slice (keepdims)."""
    xp = _xp(x)
    mask = x == ans[1]
    return mask, xp.sum(mask, axis=axis, keepdims=True, dtype=dtype)


def _chooser_jvp(tangents, ans, x, axis, keepdims):
    t = tangents[0]
    mask, count = _chooser_weights(ans, x, axis, t.dtype)
    # ties split the derivative equally (as JAX): the sum over the mask divided by the tie count
    return (t * mask).sum(axis=_shift(axis), keepdims=keepdims) / _drop(count, axis, keepdims)


def _chooser_vjp(g, ans, x, axis, keepdims):
    mask, count = _chooser_weights(ans, x, axis, g.dtype)
    return ((_expand(g, x.shape, axis, keepdims) / count) * mask,)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Maximum over ``axis`` (numpy.max / torch.amax); the derivative is split equally among ties."""
    shape = _shape_of(x)
    axis = _axes("max", axis, shape)
    _nonempty("max", shape, axis)
    out, _ = _max(x, axis=axis, keepdims=bool(keepdims))
    return out


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Minimum over ``axis`` (numpy.min / torch.amin); the derivative is split equally among ties."""
    shape = _shape_of(x)
    axis = _axes("min", axis, shape)
    _nonempty("min", shape, axis)
    out, _ = _min(x, axis=axis, keepdims=bool(keepdims))
    return out


_max = Primitive("max", _chooser_impl("max"), jvp=_chooser_jvp, vjp=_chooser_vjp, has_aux=True)
_min = Primitive("min", _chooser_impl("min"), jvp=_chooser_jvp, vjp=_chooser_vjp, has_aux=True)


# ---------------------------------------------------------------- logsumexp (stable; reuses the softmax)

def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """log(sum(exp(x))) over ``axis``, computed stably (scipy.special.logsumexp / torch.logsumexp)."""
    shape = _shape_of(x)
    axis = _axes("logsumexp", axis, shape)
    _nonempty("logsumexp", shape, axis)
    out, _ = _logsumexp(x, axis=axis, keepdims=bool(keepdims))
    return out


def _logsumexp_impl(x, axis, keepdims):
    xp = _xp(x)
    x = xp.asarray(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf/nan) slices: keep exp() well defined
    e = xp.exp(x - m)
    s = xp.sum(e, axis=axis, keepdims=True)
    out = xp.log(s) + m
    return _drop(xp.asarray(out), axis, keepdims), (e, s)  # softmax = e / s, formed only in the rules


def _logsumexp_jvp(tangents, ans, x, axis, keepdims):
    e, s = ans[1]
    return (tangents[0] * e).sum(axis=_shift(axis), keepdims=keepdims) / _drop(s, axis, keepdims)


def _logsumexp_vjp(g, ans, x, axis, keepdims):
    e, s = ans[1]
    return ((_expand(g, x.shape, axis, keepdims) / s) * e,)


_logsumexp = Primitive("logsumexp", _logsumexp_impl, jvp=_logsumexp_jvp, vjp=_logsumexp_vjp, has_aux=True)

"""Normalisation primitives (fused): layer_norm and batch_norm.

The primal saves the normalised input ``xhat`` and ``rstd = 1/sqrt(var + eps)``; the rules reuse
them. For statistics computed from the input, the input tangent map is the projection
``rstd * (t - mean(t) - xhat * mean(t * xhat))`` over the normalised axes, applied to all k
tangents at once, then scaled by the weight; the projection is symmetric, so the VJP applies the
same formula to the weight-scaled cotangent.
"""
from __future__ import annotations

import math
from typing import Any

from ..tensor import primal_of
from ..backend import get_xp as _xp
from ..core import Primitive, lift
from ..tensor import DualTensor, Traced, describe

__all__ = ["layer_norm", "batch_norm"]


def _project(t: Any, xhat: Any, a: Any, c: Any, scale: Any) -> Any:
    """scale * (t - a - xhat * c), with a = mean(t) and c = mean(t * xhat) per normalisation group:
    the Jacobian of the normalisation applied to ``t`` (a (k, ...) stack or a cotangent), in four
    passes over t-sized memory."""
    u = xhat * c
    u += a
    _xp(u).subtract(t, u, out=u)
    u *= scale
    return u


def _ln_stats(t: Any, xhat: Any, n: int) -> tuple:
    """Per-group mean(t) and mean(t * xhat) over the trailing n axes (one batched GEMV, no temporary)."""
    a = t.mean(axis=tuple(range(-n, 0)), keepdims=True)
    if xhat.size == 0:
        return a, a
    lead = t.shape[:t.ndim - xhat.ndim]  # (k,) for a tangent stack, () for a cotangent
    d = math.prod(xhat.shape[xhat.ndim - n:])
    c = t.reshape(lead + (-1, 1, d)) @ xhat.reshape(-1, d, 1)
    return a, c.reshape(a.shape) * (1.0 / d)


def _bn_stats(t: Any, xhat: Any) -> tuple:
    """Per-channel mean(t) and mean(t * xhat) over N and the spatial dims, kept as (..., 1, C, 1, ...)."""
    xp = _xp(t)
    lead = t.shape[:t.ndim - xhat.ndim]
    nb, ch = xhat.shape[:2]
    m = max(xhat.size // ch, 1) if ch else 1
    t3 = t.reshape(lead + (nb, ch, math.prod(xhat.shape[2:])))
    keep = lead + _bn_cshape(xhat)
    a = xp.einsum("...ncs->...c", t3).reshape(keep)
    c = xp.einsum("...ncs,ncs->...c", t3, xhat.reshape(t3.shape[-3:])).reshape(keep)
    return a * (1.0 / m), c * (1.0 / m)


def _moments(x: Any, axes: tuple, eps: float) -> tuple:
    xp = _xp(x)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    rstd = 1 / xp.sqrt(var + eps)
    xc *= rstd  # xc is a fresh array: becomes xhat in place
    return xc, rstd, mean, var


def _shape_of(a: Any) -> tuple:
    return tuple(getattr(a, "shape", ()))


def _check_constant(op: str, name: str, a: Any) -> None:
    if type(a) in (DualTensor, Traced):
        raise TypeError(f"{op}: {name} is a constant buffer and cannot be differentiated, got {describe(a)}")


# ---------------------------------------------------------------------------------------- layer_norm

def layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
    """Layer normalisation over the trailing ``normalized_shape`` dims (torch.nn.functional.layer_norm)."""
    nshape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(int(s) for s in normalized_shape)
    xs, n = _shape_of(input), len(nshape)
    if n == 0 or n > len(xs) or xs[len(xs) - n:] != nshape:
        raise ValueError(f"layer_norm: normalized_shape {nshape} does not match the trailing dimensions of "
                         f"the input of shape {xs}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and _shape_of(a) != nshape:
            raise ValueError(f"layer_norm: {name} has shape {_shape_of(a)}, expected normalized_shape {nshape}")
    if not eps > 0:
        raise ValueError(f"layer_norm: eps must be positive, got {eps}")
    out, _ = _layer_norm(input, weight, bias, n=n, eps=eps)
    return out


def _layer_norm_impl(x, w, b, *, n, eps):
    xhat, rstd, _, _ = _moments(x, tuple(range(-n, 0)), eps)
    out = xhat if w is None else xhat * w
    if b is not None:
        out = out + b
    return out, (xhat, rstd)


def _layer_norm_jvp(tangents, ans, x, w, b, *, n, eps):
    tx, tw, tb = tangents
    xhat, rstd = ans[1]
    res = None
    if tx is not None:  # negative axes: the same for the (k, *x.shape) stack
        res = _project(tx, xhat, *_ln_stats(tx, xhat, n), rstd if w is None else rstd * w)
    return _add_affine_tangents(res, xhat, tw if tw is None else lift(tw, x.ndim),
                                tb if tb is None else lift(tb, x.ndim), x.shape)


def _add_affine_tangents(res, xhat, tw, tb, shape):
    """res + xhat * tw + tb for lifted weight/bias tangent stacks (None = zero), as a (k, *shape) stack."""
    if tw is not None:
        term = xhat * tw
        if res is None:
            res = term
        else:
            res += term
    if tb is not None:
        if res is None:
            res = _xp(tb).broadcast_to(tb, (tb.shape[0], *shape))
        else:
            res += tb
    return res


def _layer_norm_vjp_x(g, ans, x, w, b, *, n, eps):
    xhat, rstd = ans[1]
    # the weight varies inside the normalised group: apply it before the (symmetric) projection
    g = g if w is None else g * w
    return _project(g, xhat, *_ln_stats(g, xhat, n), rstd)


def _layer_norm_vjp_w(g, ans, x, w, b, *, n, eps):
    return (g * ans[1][0]).sum(axis=tuple(range(x.ndim - n)))


def _layer_norm_vjp_b(g, ans, x, w, b, *, n, eps):
    return g.sum(axis=tuple(range(x.ndim - n)))


_layer_norm = Primitive("layer_norm", _layer_norm_impl, jvp=_layer_norm_jvp, has_aux=True,
                        vjps=[_layer_norm_vjp_x, _layer_norm_vjp_w, _layer_norm_vjp_b])


# ---------------------------------------------------------------------------------------- batch_norm

def _bn_axes(ndim: int) -> tuple:
    """Reduction axes of batch norm: N and the spatial dims (all but the channel axis 1)."""
    return (0,) + tuple(range(2, ndim))


def _bn_cshape(x: Any) -> tuple:
    """Shape that aligns a per-channel (C,) vector with the input: (1, C, 1, ..., 1)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _bn_lift(t: Any, x: Any) -> Any:
    """A per-channel tangent stack (k, C) as (k, 1, C, 1, ..., 1)."""
    return t.reshape((t.shape[0],) + _bn_cshape(x))


def batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Any:
    """Batch normalisation over (N, C) or (N, C, *spatial) (torch.nn.functional.batch_norm).

    Training: batch statistics (biased variance); running_mean/running_var (if given) are updated in
    place once per call from the primal, with the unbiased variance. Eval: running statistics.
    """
    xs = _shape_of(input)
    if len(xs) < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C) or (N, C, *spatial), got shape {xs}")
    c = xs[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and _shape_of(a) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {_shape_of(a)} but the input of shape {xs} has "
                             f"{c} channels (expected shape ({c},))")
    _check_constant("batch_norm", "running_mean", running_mean)
    _check_constant("batch_norm", "running_var", running_var)
    if not eps > 0:
        raise ValueError(f"batch_norm: eps must be positive, got {eps}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required when training=False")
        return _batch_norm_eval(input, running_mean, running_var, weight, bias, eps=eps)[0]
    m = 1
    for s in xs[:1] + xs[2:]:
        m *= s
    if m <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input shape {xs}")
    if momentum is None or not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1], got {momentum}")
    if running_mean is not None or running_var is not None:
        _xp(primal_of(input), running_mean, running_var, op="batch_norm")
    out, (_, _, mean, var) = _batch_norm_train(input, weight, bias, eps=eps)
    # running statistics: from the primal only, once per call (whatever k is)
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean.reshape(c)
    if running_var is not None:
        running_var[...] = (1 - momentum) * running_var + (momentum * m / (m - 1)) * var.reshape(c)
    return out


def _bn_sum(t: Any, u: Any = None) -> Any:
    """Per-channel sums over N and the spatial dims of an (N, C, ...) array, or of ``t * u``, as (C,): one einsum
    pass, faster than NumPy's reduction over those axes of channels-last data. Dtypes narrower than float32 (whose
    einsum would accumulate, and overflow, in their own precision) and empty arrays take that reduction."""
    if t.dtype.itemsize < 4 or t.size == 0:
        return (t if u is None else t * u).sum(axis=_bn_axes(t.ndim))
    t3 = t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))
    if u is None:
        return _xp(t).einsum("ncs->c", t3)
    return _xp(t).einsum("ncs,ncs->c", t3, u.reshape(t3.shape))


def _bn_moments(x: Any, eps: float) -> tuple:
    """_moments over batch norm's axes, the sums by _bn_sum (NumPy's mean, with its float32 accumulator, for
    narrower dtypes and empty arrays)."""
    if x.dtype.itemsize < 4 or x.size == 0:
        return _moments(x, _bn_axes(x.ndim), eps)
    m = x.size // x.shape[1]
    cs = _bn_cshape(x)
    mean = (_bn_sum(x) * (1.0 / m)).reshape(cs)
    xc = x - mean
    var = (_bn_sum(xc, xc) * (1.0 / m)).reshape(cs)
    rstd = 1 / _xp(x).sqrt(var + eps)
    xc *= rstd
    return xc, rstd, mean, var


def _bn_train_impl(x, w, b, *, eps):
    xhat, rstd, mean, var = _bn_moments(x, eps)
    cs = _bn_cshape(x)
    out = xhat if w is None else xhat * w.reshape(cs)
    if b is not None:
        out = out + b.reshape(cs)
    return out, (xhat, rstd, mean, var)


def _bn_train_jvp(tangents, ans, x, w, b, *, eps):
    tx, tw, tb = tangents
    xhat, rstd = ans[1][:2]
    res = None
    if tx is not None:  # batch statistics depend on the input: project over N and spatial dims
        res = _project(tx, xhat, *_bn_stats(tx, xhat), rstd if w is None else rstd * w.reshape(_bn_cshape(x)))
    return _add_affine_tangents(res, xhat, tw if tw is None else _bn_lift(tw, x),
                                tb if tb is None else _bn_lift(tb, x), x.shape)


def _bn_train_vjp_x(g, ans, x, w, b, *, eps):
    xhat, rstd = ans[1][:2]
    # per-channel weight and rstd are constant inside each projection group: they commute with it
    return _project(g, xhat, *_bn_stats(g, xhat), rstd if w is None else rstd * w.reshape(_bn_cshape(x)))


def _bn_vjp_w(g, ans, *args, eps):
    return _bn_sum(g, ans[1][0])


def _bn_vjp_b(g, ans, *args, eps):
    return _bn_sum(g)


def _bn_train_value(x, w, b, *, eps):
    """The primal for plain arrays, bit for bit the impl's, with the affine map applied in place (no xhat kept)."""
    xp = _xp(x)
    cs = _bn_cshape(x)
    if xp.result_type(x, *(a for a in (w, b) if a is not None)) != x.dtype:  # wider parameters: the result too
        return _bn_train_impl(x, w, b, eps=eps)
    out, _, mean, var = _bn_moments(x, eps)
    if w is not None:
        out *= w.reshape(cs)
    if b is not None:
        out += b.reshape(cs)
    return out, (None, None, mean, var)


_batch_norm_train = Primitive("batch_norm_train", _bn_train_impl, jvp=_bn_train_jvp, has_aux=True,
                              vjps=[_bn_train_vjp_x, _bn_vjp_w, _bn_vjp_b], plain_impl=_bn_train_value)


def _bn_eval_impl(x, rm, rv, w, b, *, eps):
    xp = _xp(x)
    cs = _bn_cshape(x)
    rstd = (1 / xp.sqrt(rv.astype(x.dtype, copy=False) + eps)).reshape(cs)
    xhat = (x - rm.astype(x.dtype, copy=False).reshape(cs)) * rstd
    if w is None:
        out, scale = xhat, rstd
    else:
        scale = rstd * w.reshape(cs)
        out = xhat * w.reshape(cs)
    if b is not None:
        out = out + b.reshape(cs)
    return out, (xhat, scale)


def _bn_eval_jvp(tangents, ans, x, rm, rv, w, b, *, eps):
    tx, _, _, tw, tb = tangents
    xhat, scale = ans[1]
    res = None
    res = None if tx is None else tx * scale  # an affine map: running statistics are constants
    return _add_affine_tangents(res, xhat, tw if tw is None else _bn_lift(tw, x),
                                tb if tb is None else _bn_lift(tb, x), x.shape)


_batch_norm_eval = Primitive("batch_norm_eval", _bn_eval_impl, jvp=_bn_eval_jvp, has_aux=True, nondiff=(1, 2),
                             vjps=[lambda g, ans, *args, eps: g * ans[1][1], None, None, _bn_vjp_w, _bn_vjp_b])

"""Loss primitives (fused): cross_entropy, nll_loss, mse_loss (torch.nn.functional semantics).

Class targets (indices with class weights, ignore_index and label smoothing, or class
probabilities) are turned into one dense per-class weight array ``q`` of the input's shape, so that
the per-sample loss is ``-sum_c q_c * log p_c`` (cross_entropy) or ``-sum_c q_c * x_c`` (nll_loss).
cross_entropy computes the log-softmax once and saves ``G = (sum_c q_c) p - q`` (``p - y`` in the
plain case), already scaled by the reduction: the input JVP is one contraction of all k tangents
with G (a single GEMV for 'mean'/'sum').
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import primal_of
from ..backend import get_xp as _xp
from ..core import Primitive
from ..tensor import DualTensor, Traced, describe
from .softmax import _shifted, _sum_prod

__all__ = ["cross_entropy", "nll_loss", "mse_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op: str, reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _logits_info(op: str, input: Any) -> tuple:
    """(xp, dtype, input shape, class axis, number of classes, shape of a class-index target)."""
    x0 = primal_of(input)
    if not hasattr(x0, "dtype"):
        x0 = np.asarray(x0)
    xs = tuple(x0.shape)
    if x0.dtype.kind != "f":
        raise TypeError(f"{op}: input must be a floating array, got {describe(x0)}")
    if len(xs) == 0:
        raise ValueError(f"{op}: input must have shape (C,), (N, C) or (N, C, d1, ...), got a 0-d input")
    cax = 0 if len(xs) == 1 else 1  # torch: unbatched (C,) or class axis 1
    return _xp(x0), x0.dtype, xs, cax, xs[cax], xs[:cax] + xs[cax + 1:]


def _class_weight(op: str, weight: Any, c: int, xp: Any, dtype: Any) -> Any:
    if weight is None:
        return None
    if type(weight) in (DualTensor, Traced):
        raise TypeError(f"{op}: the class weight is a constant and cannot be differentiated, got {describe(weight)}")
    weight = primal_of(weight)
    if tuple(getattr(weight, "shape", np.shape(weight))) != (c,):
        raise ValueError(f"{op}: weight must have shape ({c},) (one entry per class), got shape "
                         f"{tuple(np.shape(weight))}")
    return xp.asarray(weight, dtype=dtype)


def _index_weights(op: str, xp: Any, dtype: Any, xs: tuple, cax: int, target: Any, weight: Any,
                   smoothing: float, ignore_index: int) -> tuple:
    """Dense q and the 'mean' denominator for class-index targets (torch semantics).

    q_ic = (1 - eps) w_{y_i} [c == y_i] + (eps / C) w_c for kept samples, 0 for ignored ones;
    the denominator is sum of w_{y_i} (count of kept samples without weights) over kept samples.
    """
    c = xs[cax]
    target = xp.asarray(target).astype(xp.int64, copy=False)
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):
        vals = sorted({int(v) for v in target[bad].ravel()[:20].tolist()})
        raise ValueError(f"{op}: target values must be class indices in [0, {c}) or ignore_index={ignore_index}, "
                         f"got {vals} (input shape {xs}, target shape {tuple(target.shape)})")
    classes = xp.arange(c).reshape((c,) + (1,) * (len(xs) - cax - 1))
    onehot = (xp.expand_dims(xp.where(valid, target, -1), cax) == classes).astype(dtype)
    if weight is not None:
        wv = weight.reshape(classes.shape)
        onehot *= wv
        denom = onehot.sum()
    else:
        denom = valid.sum().astype(dtype)
    if not smoothing:
        return onehot, denom
    q = onehot * (1.0 - smoothing)
    keep = xp.expand_dims(valid, cax).astype(dtype)
    q += keep * (smoothing / c) if weight is None else keep * ((smoothing / c) * wv)
    return q, denom


def _targets(op: str, input: Any, target: Any, weight: Any, smoothing: float, ignore_index: int,
             allow_probs: bool) -> tuple:
    """Validate and build (q, cax, denom) for cross_entropy / nll_loss."""
    xp, dtype, xs, cax, c, ts = _logits_info(op, input)
    t0 = primal_of(target)
    if not hasattr(t0, "dtype"):
        t0 = xp.asarray(t0)  # a list of class indices: on the logits' device
    _xp(primal_of(input), t0, primal_of(weight) if weight is not None else None, op=op)  # one device for all
    weight = _class_weight(op, weight, c, xp, dtype)
    tshape, kind = tuple(t0.shape), t0.dtype.kind
    if allow_probs and tshape == xs:  # class probabilities (may be differentiable)
        if kind != "f":
            raise TypeError(f"{op}: a target of the input's shape {xs} holds class probabilities and must be "
                            f"floating, got dtype {t0.dtype}")
        q = target if type(target) in (DualTensor, Traced) else xp.asarray(t0, dtype=dtype)
        if smoothing:
            q = q * (1.0 - smoothing) + smoothing / c
        if weight is not None:
            q = q * weight.reshape((c,) + (1,) * (len(xs) - cax - 1))
        return q, cax, (int(np.prod(ts)) if ts else 1)
    if tshape != ts:
        expect = f"{ts} (class indices)" + (f" or {xs} (class probabilities)" if allow_probs else "")
        raise ValueError(f"{op}: target shape {tshape} does not match input shape {xs}: expected {expect}")
    if kind not in "iu":
        raise TypeError(f"{op}: class-index targets must have an integer dtype, got {t0.dtype} "
                        f"(input shape {xs}, target shape {tshape})")
    if type(target) in (DualTensor, Traced):  # pragma: no cover - integer DualTensors cannot exist
        raise TypeError(f"{op}: class-index targets are not differentiable")
    q, denom = _index_weights(op, xp, dtype, xs, cax, t0, weight, smoothing, ignore_index)
    return q, cax, denom


def _reduce(li: Any, reduction: str, denom: Any) -> tuple:
    """(reduced loss, scale of its derivative w.r.t. the per-sample losses)."""
    if reduction == "none":
        return li, 1
    xp = _xp(li)
    if reduction == "sum":
        return xp.asarray(li.sum()), 1
    return xp.asarray(li.sum() / denom), 1 / denom


def _contract(t: Any, a: Any, cax: int, reduction: str) -> Any:
    """sum_c t_c a_c per sample for every tangent (reduction 'none'), or the full contraction (k,)."""
    if reduction == "none":
        return _sum_prod(t, a, cax, keepdims=False)
    return t.reshape(t.shape[0], -1) @ a.reshape(-1)  # one GEMV for all k


def _spread(g: Any, a: Any, cax: int, reduction: str) -> Any:
    """Adjoint of _contract: the output cotangent times a, back on the input's shape."""
    return (_xp(g).expand_dims(g, cax) if reduction == "none" else g) * a


# ---------------------------------------------------------------------------------------- cross_entropy

def cross_entropy(input: Any, target: Any, weight: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, ignore_index: int = -100) -> Any:
    """Cross entropy of logits (C,), (N, C) or (N, C, d1, ...) with class indices or class probabilities
    (torch.nn.functional.cross_entropy, incl. class weights, ignore_index and label smoothing)."""
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    q, cax, denom = _targets("cross_entropy", input, target, weight, label_smoothing, ignore_index, True)
    return _cross_entropy(input, q, cax=cax, reduction=reduction, denom=denom)[0]


def _ce_impl(x, q, *, cax, reduction, denom):
    xp = _xp(x)
    z, e, se = _shifted(x, (cax,))
    z -= xp.log(se)  # log-probabilities, computed once
    li = -(q * xp.where(q == 0, 0, z)).sum(axis=cax)  # a class of weight 0 adds 0, even at log p = -inf
    # G = d loss_i / d x = (sum_c q_c) p - q, with p = e / se; scaled by the reduction below
    e *= q.sum(axis=cax, keepdims=True) / se
    e -= q
    out, scale = _reduce(li, reduction, denom)
    if reduction == "mean":
        e *= scale
    return out, (e, z, scale)


_cross_entropy = Primitive(
    "cross_entropy", _ce_impl, has_aux=True,
    jvps=[lambda t, ans, x, q, *, cax, reduction, denom: _contract(t, ans[1][0], cax, reduction),
          lambda t, ans, x, q, *, cax, reduction, denom: _contract(t, ans[1][1], cax, reduction) * -ans[1][2]],
    vjps=[lambda g, ans, x, q, *, cax, reduction, denom: _spread(g, ans[1][0], cax, reduction),
          lambda g, ans, x, q, *, cax, reduction, denom: _spread(g * -ans[1][2], ans[1][1], cax, reduction)])


# ---------------------------------------------------------------------------------------- nll_loss

def nll_loss(input: Any, target: Any, weight: Any = None, reduction: str = "mean", ignore_index: int = -100) -> Any:
    """Negative log-likelihood of log-probabilities with class-index targets (torch.nn.functional.nll_loss)."""
    _check_reduction("nll_loss", reduction)
    q, cax, denom = _targets("nll_loss", input, target, weight, 0.0, ignore_index, False)
    return _nll_loss(input, q, cax=cax, reduction=reduction, denom=denom)[0]


def _nll_impl(x, q, *, cax, reduction, denom):
    out, scale = _reduce(-(q * x).sum(axis=cax), reduction, denom)
    return out, scale


_nll_loss = Primitive(
    "nll_loss", _nll_impl, has_aux=True, nondiff=(1,),
    jvps=[lambda t, ans, x, q, *, cax, reduction, denom: _contract(t, q, cax, reduction) * -ans[1], None],
    vjps=[lambda g, ans, x, q, *, cax, reduction, denom: _spread(g * -ans[1], q, cax, reduction), None])


# ---------------------------------------------------------------------------------------- mse_loss

def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """Mean squared error (x - y)^2 with reduction 'mean', 'sum' or 'none' (torch.nn.functional.mse_loss)."""
    _check_reduction("mse_loss", reduction)
    x0, y0 = primal_of(input), primal_of(target)
    _xp(x0, y0, op="mse_loss")  # one device for both
    xs, ys = tuple(np.shape(x0)), tuple(np.shape(y0))
    if xs != ys:
        raise ValueError(f"mse_loss: input shape {xs} and target shape {ys} must match")
    for name, a in (("input", input), ("target", target)):
        a0 = primal_of(a)
        if type(a) in (DualTensor, Traced) or hasattr(a, "__dt_value__"):
            continue
        if hasattr(a0, "dtype") and a0.dtype.kind not in "fiub":
            raise TypeError(f"mse_loss: {name} must be numeric, got {describe(a0)}")
    if type(target) not in (DualTensor, Traced) and not hasattr(target, "__dt_value__"):
        xd = getattr(x0, "dtype", None)
        target = _xp(x0).asarray(y0, dtype=xd if xd is not None and xd.kind == "f" else None)
    return _mse_loss(input, target, reduction=reduction)[0]


def _mse_impl(x, y, *, reduction):
    xp = _xp(x, y)
    d = x - y
    if reduction == "none":
        return d * d, (d, 1)
    dv = d.reshape(-1)
    s = dv @ dv
    if reduction == "sum":
        return xp.asarray(s), (d, 2)
    return xp.asarray(s / d.size), (d, 2 / d.size if d.size else float("nan"))


def _mse_jvp(t, ans, x, y, *, reduction):
    d, scale = ans[1]
    if reduction == "none":
        return (2 * d) * t
    return (t.reshape(t.shape[0], -1) @ d.reshape(-1)) * scale


def _mse_vjp(g, ans, x, y, *, reduction):
    d, scale = ans[1]
    return (2 * g) * d if reduction == "none" else (g * scale) * d


_mse_loss = Primitive("mse_loss", _mse_impl, has_aux=True,
                      jvps=[_mse_jvp, lambda t, ans, x, y, *, reduction: -_mse_jvp(t, ans, x, y, reduction=reduction)],
                      vjps=[_mse_vjp, lambda g, ans, x, y, *, reduction: -_mse_vjp(g, ans, x, y, reduction=reduction)])

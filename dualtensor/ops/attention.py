"""Fused scaled dot-product attention (torch.nn.functional semantics).

One primitive: the primal computes S = q kᵀ·scale (+ mask), P = softmax(S), O = P v and saves P;
the JVP reuses that P for all k tangents at once (no softmax per tangent), the VJP is the standard
attention backward with the same P.

Fully-masked rows (every key masked out, by a boolean mask or -inf additive mask) are defined to
give P = 0 in that row, hence a zero output row and zero derivatives there (torch's math backend
gives NaN instead).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tensor import primal_of as _primal_of
from ..backend import get_xp as _xp
from ..core import Primitive, lift, sum_to

__all__ = ["scaled_dot_product_attention"]


def _mT(a):
    return a.swapaxes(-1, -2)


def _broadcast(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _sdpa_impl(q, key, v, mask, *, scale, causal):
    xp = _xp(q, key, v, mask)
    s = xp.matmul(q, _mT(key))
    s *= scale
    masked = causal or mask is not None
    if causal:
        L, S = s.shape[-2:]
        s = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), s, -math.inf)
    elif mask is not None:
        if mask.dtype == bool:
            s = xp.where(mask, s, -math.inf)
        else:
            mask = mask.astype(s.dtype, copy=False)
            if _broadcast(s.shape, mask.shape) == s.shape:
                s += mask
            else:
                s = s + mask
    # numerically stable softmax over the key axis, in place in s
    if s.shape[-1] > 0:
        m = s.max(axis=-1, keepdims=True)
        if masked:  # rows with every key masked: max is -inf; keep them finite (they become zeros)
            m = xp.where(xp.isfinite(m), m, 0)
        s -= m
    xp.exp(s, out=s)
    den = s.sum(axis=-1, keepdims=True)
    if masked:
        den = xp.where(den == 0, 1, den)
    s /= den
    p = s
    return xp.matmul(p, v), p


def _sdpa_jvp(tangents, ans, q, key, v, mask, *, scale, causal):
    out, p = ans
    tq, tk, tv, tm = tangents
    xp = _xp(out)
    nd = out.ndim  # data rank of the output (and of the attention weights)
    ds = None
    if tq is not None:  # tq kᵀ, primal broadcasting over the tangent axis: one batched matmul
        ds = xp.matmul(lift(tq, nd), _mT(key))
    if tk is not None:
        term = xp.matmul(q, _mT(lift(tk, nd)))
        ds = term if ds is None else _acc(ds, term)
    if ds is not None:
        ds *= scale
    if tm is not None:  # differentiable additive (float) mask
        tm = lift(tm, nd)
        ds = tm + 0 if ds is None else _acc(ds, tm)  # "+ 0" so ds is always our own buffer
    t_out = None
    if ds is not None:
        full = (ds.shape[0],) + _broadcast(ds.shape[1:], p.shape)
        if ds.shape != full:
            ds = xp.broadcast_to(ds, full).copy()
        # dP = P ⊙ (dS − rowsum(P ⊙ dS)), computed in place in ds
        r = (p * ds).sum(axis=-1, keepdims=True)
        ds -= r
        ds *= p
        t_out = xp.matmul(ds, v)
    if tv is not None:
        term = xp.matmul(p, lift(tv, nd))
        t_out = term if t_out is None else _acc(t_out, term)
    want = (t_out.shape[0],) + out.shape
    if t_out.shape != want:  # only when a tangent term did not span every batch axis
        t_out = xp.broadcast_to(t_out, want).copy()
    return t_out


def _acc(a, b):
    """a + b, in place in ``a`` (our own buffer) when the shapes allow."""
    if _broadcast(a.shape, b.shape) == a.shape:
        a += b
        return a
    return a + b


def _sdpa_vjp(g, ans, q, key, v, mask, *, scale, causal):
    out, p = ans
    xp = _xp(g)
    dv = sum_to(xp.matmul(_mT(p), g), v.shape)
    dp = xp.matmul(g, _mT(v))
    if dp.shape != _broadcast(dp.shape, p.shape):
        dp = xp.broadcast_to(dp, _broadcast(dp.shape, p.shape)).copy()
    r = (p * dp).sum(axis=-1, keepdims=True)
    dp -= r
    dp *= p  # dS
    dq = sum_to(xp.matmul(dp, key) * scale, q.shape)
    dkey = sum_to(xp.matmul(_mT(dp), q) * scale, key.shape)
    dm = sum_to(dp, mask.shape) if mask is not None and mask.dtype != bool else None
    return dq, dkey, dv, dm


_sdpa = Primitive("scaled_dot_product_attention", _sdpa_impl, jvp=_sdpa_jvp, vjp=_sdpa_vjp, has_aux=True)


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None) -> Any:
    """softmax(q kᵀ·scale + mask) v over (..., L, E), (..., S, E), (..., S, Ev) with broadcast batch axes (torch)."""
    name = "scaled_dot_product_attention"
    q, key_arr, v = (_primal_of(a) for a in (query, key, value))  # the plain arrays
    for what, a in (("query", q), ("key", key_arr), ("value", v)):
        if not hasattr(a, "shape") or a.ndim < 2:
            raise ValueError(f"{name}: {what} must have at least 2 dimensions (..., length, features), "
                             f"got shape {getattr(a, 'shape', type(a).__name__)}")
        if a.dtype.kind != "f":
            raise TypeError(f"{name}: {what} must have a floating dtype, got {a.dtype} (shape {a.shape})")
    shapes = f"query shape {q.shape}, key shape {key_arr.shape}, value shape {v.shape}"
    if q.shape[-1] != key_arr.shape[-1]:
        raise ValueError(f"{name}: query has embedding size {q.shape[-1]} but key has {key_arr.shape[-1]} ({shapes})")
    if key_arr.shape[-2] != v.shape[-2]:
        raise ValueError(f"{name}: key has sequence length {key_arr.shape[-2]} but value has {v.shape[-2]} ({shapes})")
    batch = _broadcast(q.shape[:-2], key_arr.shape[:-2], v.shape[:-2])
    if batch is None:
        raise ValueError(f"{name}: batch dimensions do not broadcast ({shapes})")
    weights = batch + (q.shape[-2], key_arr.shape[-2])
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{name}: pass either attn_mask or is_causal=True, not both")
        m = _primal_of(attn_mask)
        if not hasattr(m, "shape"):
            raise TypeError(f"{name}: attn_mask must be an array, got {type(m).__name__}")
        if m.dtype != bool and m.dtype.kind != "f":
            raise TypeError(f"{name}: attn_mask must be boolean (True = attend) or floating (additive), got {m.dtype}")
        if _broadcast(m.shape, weights) != weights:
            raise ValueError(f"{name}: attn_mask of shape {m.shape} does not broadcast to the attention weights "
                             f"shape {weights} ({shapes})")
        if m.dtype == bool:
            attn_mask = m  # a boolean mask is a constant
    if dropout_p != 0.0:
        if not 0.0 <= dropout_p <= 1.0:
            raise ValueError(f"{name}: dropout_p must be in [0, 1], got {dropout_p}")
        raise NotImplementedError(f"{name}: dropout_p > 0 is not supported (got {dropout_p}); "
                                  "use dropout_p=0.0 (e.g. in evaluation, or apply dropout elsewhere)")
    if scale is None:
        if q.shape[-1] == 0:
            raise ValueError(f"{name}: embedding size 0 needs an explicit scale ({shapes})")
        scale = 1.0 / math.sqrt(q.shape[-1])
    scale = float(scale)
    out, _ = _sdpa(query, key, value, attn_mask, scale=scale, causal=bool(is_causal))
    return out

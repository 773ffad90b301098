"""Linear algebra: matmul (NumPy semantics), linear (torch conventions), einsum.

The tangent rules fold the k tangents into the rows/columns of the GEMM wherever a plain reshape
allows it, so one BLAS call serves the whole ``(k, ...)`` stack; only products whose operands both
carry batch dimensions fall back to one batched ``xp.matmul`` with the k axis broadcast in front.
"""
from __future__ import annotations

import string
from typing import Any

import numpy as np

from ..backend import fast_matmul as _fast_matmul
from ..backend import get_xp as _xp
from ..backend import product as _product
from ..tensor import primal_of as _value
from ..core import Primitive, lift, sum_to

__all__ = ["matmul", "linear", "einsum"]


# ---------------------------------------------------------------- helpers

def _shape_of(a: Any) -> tuple:
    v = _value(a)
    return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)


def _dtype_of(a: Any) -> Any:
    v = _value(a)
    return v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype


def _mT(a: Any) -> Any:
    return a.swapaxes(-1, -2)


def _broadcast_shapes(op: str, s1: tuple, s2: tuple, what: str) -> tuple:
    out = []
    for i in range(1, max(len(s1), len(s2)) + 1):
        a = s1[-i] if i <= len(s1) else 1
        b = s2[-i] if i <= len(s2) else 1
        if a != b and a != 1 and b != 1:
            raise ValueError(f"{op}: {what}")
        out.append(max(a, b))
    return tuple(reversed(out))


# ---------------------------------------------------------------- matmul

def matmul(a: Any, b: Any) -> Any:
    """Matrix product with NumPy semantics (1-d operands, broadcast batch dimensions); a @ b."""
    sa, sb = _shape_of(a), _shape_of(b)
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: operands must be at least 1-d, got shapes {sa} and {sb} "
                         "(use multiply for scalars)")
    n_a, n_b = sa[-1], sb[-2] if len(sb) >= 2 else sb[0]
    if n_a != n_b:
        raise ValueError(f"matmul: shapes {sa} and {sb} are not aligned ({n_a} != {n_b})")
    _broadcast_shapes("matmul", sa[:-2], sb[:-2],
                      f"batch dimensions {sa[:-2]} and {sb[:-2]} do not broadcast (shapes {sa} and {sb})")
    return _matmul(a, b)


def _matmul_impl(a, b):
    xp = _xp(a, b)
    return xp.asarray(xp.matmul(a, b))


def _promote(a, b):
    """Views of a as (..., m, n) and b as (..., n, p), as NumPy's matmul treats 1-d operands."""
    return (a[None, :] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)


def _matmul_jvp_a(ta, ans, a, b):
    xp = _xp(ta, b)
    k, n = ta.shape[0], a.shape[-1]
    want = (k, *ans.shape)
    if b.ndim <= 2:  # fold k and every row of a into one GEMM: (k*...*m, n) @ (n, p)
        return xp.matmul(ta.reshape(-1, n), b).reshape(want)
    a_p, b_p = _promote(a, b)
    ta_p = ta[..., None, :] if a.ndim == 1 else ta  # (k, *A, m, n)
    if a_p.ndim == 2:  # a has no batch dims: fold k into the rows of each batched GEMM
        m = a_p.shape[0]
        r = xp.matmul(ta_p.reshape(k * m, n), b_p)  # (*B, k*m, p)
        r = r.reshape(*r.shape[:-2], k, m, r.shape[-1])
        return xp.moveaxis(r, -3, 0).reshape(want)
    nd = max(a_p.ndim, b_p.ndim)
    return xp.matmul(lift(ta_p, nd), b_p).reshape(want)  # one batched call, k broadcast in front


def _matmul_jvp_b(tb, ans, a, b):
    xp = _xp(tb, a)
    k = tb.shape[0]
    want = (k, *ans.shape)
    if a.ndim == 1 and b.ndim == 1:
        return xp.matmul(tb, a)  # (k, n) @ (n,): one GEMV
    a_p, b_p = _promote(a, b)
    tb_p = tb[..., None] if b.ndim == 1 else tb  # (k, *B, n, p)
    n, p = tb_p.shape[-2], tb_p.shape[-1]
    if b_p.ndim == 2:  # b has no batch dims: (rows of a) @ (n, k*p), one GEMM
        cols = tb_p.transpose(1, 0, 2).reshape(n, k * p)
        r = xp.matmul(a_p.reshape(-1, n), cols)  # (*A*m, k*p)
        r = r.reshape(*a_p.shape[:-1], k, p)
        return xp.moveaxis(r, -2, 0).reshape(want)
    if a_p.ndim == 2:  # a has no batch dims: a @ (n, k*B*p), one GEMM
        cols = xp.moveaxis(tb_p, -2, 0).reshape(n, -1)
        r = xp.matmul(a_p, cols)  # (m, k*B*p)
        r = r.reshape(a_p.shape[0], *tb_p.shape[:-2], p)
        return xp.moveaxis(r, 0, -2).reshape(want)
    nd = max(a_p.ndim, b_p.ndim)
    return xp.matmul(a_p, lift(tb_p, nd)).reshape(want)  # one batched call, k broadcast in front


def _matmul_g(g, a, b):
    """The cotangent reshaped to the promoted (..., m, p) output."""
    m = 1 if a.ndim == 1 else a.shape[-2]
    p = 1 if b.ndim == 1 else b.shape[-1]
    return g.reshape(*g.shape[:g.ndim - (a.ndim >= 2) - (b.ndim >= 2)], m, p)


def _matmul_vjp_a(g, ans, a, b):
    xp = _xp(g, b)
    a_p, b_p = _promote(a, b)
    g_p = _matmul_g(g, a, b)
    return sum_to(xp.matmul(g_p, _mT(b_p)), a_p.shape).reshape(a.shape)


def _matmul_vjp_b(g, ans, a, b):
    xp = _xp(g, a)
    a_p, b_p = _promote(a, b)
    g_p = _matmul_g(g, a, b)
    n, p = b_p.shape[-2], b_p.shape[-1]
    if b_p.ndim == 2:  # sum over a's batch inside one GEMM: (rows of a)^T @ (rows of g)
        return xp.matmul(a_p.reshape(-1, n).T, g_p.reshape(-1, p)).reshape(b.shape)
    return sum_to(xp.matmul(_mT(a_p), g_p), b_p.shape).reshape(b.shape)


_matmul = Primitive("matmul", _matmul_impl, jvps=[_matmul_jvp_a, _matmul_jvp_b],
                    vjps=[_matmul_vjp_a, _matmul_vjp_b])


# ---------------------------------------------------------------- linear (fused)

def linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """x @ weight.T + bias with torch conventions: weight (out_features, in_features), x (..., in_features)."""
    sx, sw = _shape_of(x), _shape_of(weight)
    for name, v in (("input", x), ("weight", weight), ("bias", bias)):
        if v is not None and _dtype_of(v).kind != "f":
            raise TypeError(f"linear: {name} must have a floating dtype, got {_dtype_of(v)} "
                            f"(shape {_shape_of(v)}); cast it with .astype(float32/float64)")
    if len(sw) != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features), got weight shape {sw}")
    if len(sx) == 0:
        raise ValueError(f"linear: input must be at least 1-d (..., in_features), got input shape {sx}")
    if sx[-1] != sw[1]:
        raise ValueError(f"linear: input has {sx[-1]} features but weight expects {sw[1]} "
                         f"(input shape {sx}, weight shape {sw})")
    if bias is not None and _shape_of(bias) != (sw[0],):
        raise ValueError(f"linear: bias must have shape ({sw[0]},) to match weight shape {sw}, "
                         f"got bias shape {_shape_of(bias)}")
    return _linear(x, weight, bias)


# Rows up to which x @ W^T is computed as (W @ x^T)^T plus a transposing copy: OpenBLAS runs that
# orientation faster for few rows (1 BLAS thread, 784 -> 1024: 64 rows 0.71 against 0.93 ms, 16 rows
# 0.40 against 0.69; 256 rows 0.92x; equal from about 1024 rows on, where the copy would cost more).
_FEW_ROWS = 256


def _times_wt(x2d: Any, w: Any, b: Any = None) -> Any:
    """x2d @ w.T (+ b) as a C-contiguous (N, out) array."""
    xp = _xp(x2d, w)
    out = _fast_matmul(x2d, w.T)
    if out is None and x2d.shape[0] > _FEW_ROWS:
        out = xp.matmul(x2d, w.T)
    if out is not None:
        if b is None:
            return out
        if out.dtype == xp.result_type(out, b):
            out += b
            return out
        return out + b
    y = xp.matmul(w, x2d.T).T
    dtype = y.dtype if b is None else xp.result_type(y, b)
    out = xp.empty(y.shape, dtype=dtype)
    if b is None:
        out[...] = y
    else:  # the bias added in the transposing copy
        xp.add(y, b, out=out)
    return out


def _linear_impl(x, w, b):
    _xp(x, w, b)
    return _times_wt(x.reshape(-1, w.shape[1]), w, b).reshape(*x.shape[:-1], w.shape[0])


def _linear_jvp(tangents, ans, x, w, b):
    tx, tw, tb = tangents
    xp = _xp(x, w)
    k = next(t.shape[0] for t in tangents if t is not None)
    want = (k, *ans.shape)
    n_out, n_in = w.shape
    t_out = None
    if tx is not None:  # (k*N, in) @ W^T: one GEMM for all k
        t_out = _times_wt(tx.reshape(-1, n_in), w).reshape(want)
    if tw is not None:
        x2d = x.reshape(-1, n_in)
        if tw.flags.c_contiguous:  # x (N, in) @ tW^T viewed as (in, k*out): one GEMM for all k
            r = _product(x2d, tw.reshape(k * n_out, n_in).T)  # (N, k*out)
            r = xp.moveaxis(r.reshape(-1, k, n_out), 1, 0).reshape(want)
        else:  # a strided slice of a global tangent: k GEMMs on the view write (k, N, out) directly,
            # no reshape copy of tW and no moveaxis copy of the result (k=16, 64x784 -> 1024, 1 BLAS thread:
            # 1.6-1.7x faster; on contiguous tW both paths are within 4%, so the single GEMM stays there)
            r = xp.matmul(x2d, tw.swapaxes(-1, -2)).reshape(want)
        if t_out is None:
            t_out = r
        else:
            t_out += r
    if tb is not None:
        tb = lift(tb, ans.ndim)
        if t_out is None:
            t_out = xp.broadcast_to(tb, want)
        else:
            t_out += tb
    return t_out


def _linear_vjp_x(g, ans, x, w, b):
    return _product(g.reshape(-1, w.shape[0]), w).reshape(x.shape)


def _linear_vjp_w(g, ans, x, w, b):
    g2, x2 = g.reshape(-1, w.shape[0]).T, x.reshape(-1, w.shape[1])
    return _product(g2, x2, fresh_output=True)  # a large, fresh (out, in) result


def _linear_vjp_b(g, ans, x, w, b):
    return g.reshape(-1, w.shape[0]).sum(axis=0)


_linear = Primitive("linear", _linear_impl, jvp=_linear_jvp,
                    vjps=[_linear_vjp_x, _linear_vjp_w, _linear_vjp_b])


# ---------------------------------------------------------------- einsum

_LETTERS = string.ascii_uppercase + string.ascii_lowercase  # ASCII order, as NumPy sorts implicit outputs


def _parse_einsum(subscripts: Any, shapes: list) -> tuple[tuple, str, dict]:
    """Explicit (input labels, output labels, label sizes) with every '...' replaced by fresh letters."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {subscripts!r}")
    spec = subscripts.replace(" ", "")
    if spec.count("->") > 1 or ("-" in spec.replace("->", "")) or (">" in spec.replace("->", "")):
        raise ValueError(f"einsum: malformed subscripts {subscripts!r}")
    explicit = "->" in spec
    lhs, out = spec.split("->") if explicit else (spec, None)
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum: subscripts {subscripts!r} name {len(ins)} operand(s) but {len(shapes)} were given")
    for term in ins + ([out] if explicit else []):
        bad = set(term.replace("...", "")) - set(_LETTERS)
        if bad or term.replace("...", "").count(".") or term.count("...") > 1:
            raise ValueError(f"einsum: invalid subscript term {term!r} in {subscripts!r} "
                             "(use letters and at most one '...' per term)")
    used = set(spec) & set(_LETTERS)
    spare = [c for c in _LETTERS if c not in used]
    # ellipsis dims per operand, right-aligned across operands (NumPy broadcasting)
    n_ell = []
    for term, shape in zip(ins, shapes):
        n_lab = len(term.replace("...", ""))
        if "..." in term:
            if len(shape) < n_lab:
                raise ValueError(f"einsum: operand of shape {shape} has fewer dimensions than the "
                                 f"{n_lab} labels of {term!r}")
            n_ell.append(len(shape) - n_lab)
        else:
            if len(shape) != n_lab:
                raise ValueError(f"einsum: operand of shape {shape} has {len(shape)} dimension(s) but "
                                 f"subscript {term!r} names {n_lab}")
            n_ell.append(0)
    m = max(n_ell, default=0)
    if m > len(spare):
        raise ValueError(f"einsum: too many dimensions for the available labels in {subscripts!r}")
    ell = "".join(spare[:m])
    ins = tuple(term.replace("...", ell[m - e:]) for term, e in zip(ins, n_ell))
    if explicit:
        if "..." not in out and m > 0 and any(n_ell):
            raise ValueError(f"einsum: output {out!r} of {subscripts!r} has no '...' but the operands "
                             "have broadcast dimensions")
        out = out.replace("...", ell)
    else:
        counts = {c: "".join(ins).count(c) for c in set("".join(ins)) if c not in ell}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    sizes: dict = {}
    for term, shape in zip(ins, shapes):
        own: dict = {}
        for c, s in zip(term, shape):
            if c in own and own[c] != s:
                raise ValueError(f"einsum: repeated label {c!r} in {term!r} spans dimensions of different "
                                 f"sizes in operand shape {shape}")
            own[c] = s
            prev = sizes.get(c, 1)
            if s != prev and s != 1 and prev != 1:
                raise ValueError(f"einsum: label {c!r} has size {prev} in one operand and {s} in another "
                                 f"(subscripts {subscripts!r}, shapes {tuple(shapes)})")
            sizes[c] = s if prev == 1 else prev
    for c in out:
        if c not in sizes:
            raise ValueError(f"einsum: output label {c!r} of {subscripts!r} appears in no input")
    if len(set(out)) != len(out):
        raise ValueError(f"einsum: output subscript of {subscripts!r} repeats a label")
    return ins, out, sizes


def einsum(subscripts: str, *operands: Any) -> Any:
    """Einstein summation (numpy.einsum / torch.einsum): explicit '->' or implicit output, '...' broadcasting."""
    shapes = [_shape_of(o) for o in operands]
    if not operands:
        raise ValueError("einsum: at least one operand is required")
    ins, out, _ = _parse_einsum(subscripts, shapes)
    return _einsum(*operands, ins=ins, out=out)


def _einsum_call(xp, ins, out, ops):
    spec = ",".join(ins) + "->" + out
    if len(ops) > 1:
        return xp.einsum(spec, *ops, optimize=True)  # may contract through BLAS (tensordot)
    return xp.einsum(spec, *ops)


def _einsum_impl(*ops, ins, out):
    xp = _xp(*ops)
    return xp.asarray(_einsum_call(xp, ins, out, ops))


def _fresh(labels: str) -> str:
    for c in _LETTERS:
        if c not in labels:
            return c
    raise ValueError("einsum: no label left for the tangent axis (all 52 letters are in use)")


def _einsum_jvp(tangents, ans, *ops, ins, out):
    xp = _xp(*ops)
    kl = _fresh("".join(ins) + out)  # the tangent axis gets a fresh label, first in the output
    t_out = None
    for i, t in enumerate(tangents):
        if t is None:
            continue
        args = list(ops)
        args[i] = t
        term = _einsum_call(xp, ins[:i] + (kl + ins[i],) + ins[i + 1:], kl + out, args)
        t_out = term if t_out is None else t_out + term
    return t_out


def _einsum_vjp_i(i, g, ans, *ops, ins, out):
    """Cotangent of operand i: einsum of g with the other operands onto operand i's labels."""
    x = ops[i]
    xp = _xp(g, x)
    target, extra_ins, extra_ops = "", [], []
    taken = set("".join(ins) + out)
    for c, s in zip(ins[i], x.shape):
        if c in target:  # repeated label (trace/diagonal): a fresh label tied to c by an identity
            f = _fresh("".join(taken))
            taken.add(f)
            extra_ins.append(c + f)
            extra_ops.append(xp.eye(s, dtype=g.dtype))
            c = f
        target += c
    avail = set(out) | set("".join(ins[:i] + ins[i + 1:])) | set("".join(extra_ins))
    for c, s in zip(target, x.shape):
        if c not in avail:  # summed out only in operand i: d/dx is broadcast along it
            extra_ins.append(c)
            extra_ops.append(xp.ones(s, dtype=g.dtype))
    args = [g] + [o for j, o in enumerate(ops) if j != i] + extra_ops
    labels = (out,) + ins[:i] + ins[i + 1:] + tuple(extra_ins)
    ct = xp.asarray(_einsum_call(xp, labels, target, args))
    if ct.shape != x.shape:  # size-1 labels of x that broadcast against the other operands
        ct = sum_to(ct, x.shape)
    return ct


class _PerOperand:
    """``vjps[i]`` for any operand index i (einsum takes a variable number of operands)."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, i):
        return lambda g, ans, *ops, **params: self.fn(i, g, ans, *ops, **params)


_einsum = Primitive("einsum", _einsum_impl, jvp=_einsum_jvp, vjps=_PerOperand(_einsum_vjp_i))

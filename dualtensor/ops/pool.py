"""2-d pooling (fused primitives): max_pool2d, avg_pool2d, adaptive_avg_pool2d.

All take (N, C, H, W) or unbatched (C, H, W) input and pool the last two axes, with torch semantics.

* max_pool2d: a running maximum over the kh*kw strided slices of the (padded) input, one per window
  offset, with torch's tie rule (the first maximum; a NaN wins); the winning offset of every window is
  saved (has_aux, uint8). JVP: the same selection of all k tangents at once, per offset by bit masks
  (exact and branch-free: NaN or inf in a cell that lost does not leak); for padded or overlapping
  windows one gather at the winners' positions. VJP: the cotangent written (added,
  for overlapping windows) into each offset's slice where it won. No im2col copy and no int64 positions;
  the input's memory layout carries through (against the window-last argmax it replaced, A/B per layer in
  bench/kernels.py, bench/results/kernels-1t.md). 2 x 2 windows on channels-last NumPy input (oneDNN's
  convolutions give it) go to compiled one-pass kernels (:mod:`.pool_kernels`, the numba extra; the same
  bits).
* avg_pool2d: a sum of kh*kw strided slices divided by the window count; linear, so the JVP is the
  same map applied to the whole (k, ...) tangent stack and the VJP is col2im of the scaled cotangent.
* adaptive_avg_pool2d: torch's windows start = floor(i*In/Out), end = ceil((i+1)*In/Out); a reshape +
  mean when In is divisible by Out, else the separable form A_h @ x @ A_w^T with averaging matrices.
"""
from __future__ import annotations

from typing import Any

from ..backend import get_xp as _xp
from ..core import Primitive
from . import pool_kernels
from .conv import _check_float, _col2im, _offsets, _pad, _pair, _shape_of, _unpad, _windows

__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def _check_input(op: str, input: Any) -> tuple:
    xs = _shape_of(input)
    if len(xs) not in (3, 4):
        raise ValueError(f"{op}: input must be 4-d (N, C, H, W) or 3-d (C, H, W), got shape {xs}")
    _check_float(op, input=input)
    return xs


def _geometry(op: str, xs: tuple, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> tuple:
    """Validated (kernel, stride, pads, dilation, out_hw); pads include the extra ceil-mode padding at the end."""
    k = _pair(kernel, "kernel_size", op, 1)
    default = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)  # torch: [] means kernel_size
    s = k if default else _pair(stride, "stride", op, 1)
    p = _pair(padding, "padding", op, 0)
    d = _pair(dilation, "dilation", op, 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding {p} must be at most half of the kernel size {k}")
    pads, out_hw = [], []
    for n, kk, ss, pp, dd in zip(xs[-2:], k, s, p, d):
        span = n + 2 * pp - dd * (kk - 1) - 1
        if span < 0:
            raise ValueError(f"{op}: kernel size {k} (dilation {d}) is larger than the padded input "
                             f"({xs[-2] + 2 * p[0]}, {xs[-1] + 2 * p[1]}) for input shape {xs}")
        o = (span + (ss - 1 if ceil_mode else 0)) // ss + 1
        if ceil_mode and (o - 1) * ss >= n + pp:  # the last window must start inside the input or left padding
            o -= 1
        extra = max(0, (o - 1) * ss + dd * (kk - 1) + 1 - (n + 2 * pp))
        pads.append((pp, pp + extra))
        out_hw.append(o)
    return k, s, tuple(pads), d, tuple(out_hw)


# -------------------------------------------------------------------------------------- max_pool2d

def max_pool2d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False) -> Any:
    """Max pooling over the last two axes of (N, C, H, W) or (C, H, W) input (torch semantics, -inf padding)."""
    xs = _check_input("max_pool2d", input)
    k, s, pads, d, out_hw = _geometry("max_pool2d", xs, kernel_size, stride, padding, dilation, ceil_mode)
    out, _ = _max_pool2d(input, kernel=k, stride=s, pads=pads, dilation=d)
    return out


def _max_pool2d_impl(x, *, kernel, stride, pads, dilation, winners=True):
    xp = _xp(x)
    xpad = _pad(x, pads, -float("inf"))
    out_hw = _windows(xpad, kernel, stride, dilation).shape[-2:]
    if pool_kernels.usable(x, kernel, stride, pads, dilation):
        best, arg = pool_kernels.max_with_winners(x, stride, out_hw, _arg_dtype(xp, kernel))
        return best, arg if winners else None
    best = arg = None
    for n, (_, _, (rs, cs)) in enumerate(_offsets(kernel, stride, dilation, out_hw)):
        s = xpad[..., rs, cs]
        if best is None:
            best = xp.empty_like(s)  # the input's memory layout (channels-last stays so)
            best[...] = s
            if winners:
                arg = xp.zeros_like(best, dtype=_arg_dtype(xp, kernel))
            continue
        if not winners:
            xp.maximum(best, s, out=best)
            continue
        # torch's rule: a later window cell wins when larger or NaN (ties keep the first, a NaN the last);
        # offsets only grow, so max() records the winner, and maximum() carries a NaN on
        win = s > best
        win |= s != s
        xp.maximum(arg, win * arg.dtype.type(n), out=arg)
        xp.maximum(best, s, out=best)
    return best, arg


def _arg_dtype(xp: Any, kernel: tuple) -> Any:
    return xp.uint8 if kernel[0] * kernel[1] < 256 else xp.int32


def _bits(a: Any) -> Any:
    """The same memory as unsigned integers of the item size (for exact branch-free selection)."""
    return a.view({2: "uint16", 4: "uint32", 8: "uint64"}[a.dtype.itemsize])


def _mask(arg: Any, n: int, like: Any) -> Any:
    """All-ones bits where offset n won, zero bits elsewhere, in the unsigned type of ``like``."""
    return _xp(arg).negative((arg == n).astype(like.dtype))


def _winner_positions(arg: Any, x: Any, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> Any:
    """The flat position in x of every window's winning cell (int64, shaped like arg; a window of
    padding only keeps an in-bounds, meaningless index)."""
    xp = _xp(arg)
    (h, w), (ho, wo) = x.shape[-2:], arg.shape[-2:]
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    offset = xp.asarray([i * dh * w + j * dw for i in range(kh) for j in range(kw)], dtype=xp.int64)
    planes = xp.arange(arg.size // (ho * wo), dtype=xp.int64).reshape(arg.shape[:-2] + (1, 1)) * (h * w)
    flat = planes + ((xp.arange(ho) * sh - pads[0][0]) * w)[:, None] + (xp.arange(wo) * sw - pads[1][0])
    flat += xp.take(offset, arg)
    xp.clip(flat, 0, max(x.size - 1, 0), out=flat)
    return flat


def _max_pool2d_jvp(tangents, ans, x, *, kernel, stride, pads, dilation):
    (t,) = tangents
    xp, arg = _xp(t), ans[1]
    if any(map(sum, pads)) or _overlapping(kernel, stride, dilation):
        # padded or overlapping windows (ResNet's 3x3/2 stem pool): one gather of all k tangents; padding
        # the k-stack and selecting over 9 offsets took 202 ms against 104 for the window-last argmax and
        # gather it replaced, this gather 77 (primal included; 1 BLAS thread, batch 64, 64x32x32, k = 4,
        # bench/results/kernels-1t.md)
        flat = _winner_positions(arg, x, kernel, stride, pads, dilation)
        return xp.take(t.reshape(t.shape[0], -1), flat, axis=1)
    if pool_kernels.usable(x, kernel, stride, pads, dilation):
        return pool_kernels.pick(t, arg, stride)
    res = bits = None
    for n, (_, _, (rs, cs)) in enumerate(_offsets(kernel, stride, dilation, arg.shape[-2:])):
        s = _bits(t[..., rs, cs])
        if res is None:
            res = xp.empty_like(t[..., rs, cs])
            bits = _bits(res)
            bits[...] = s
            continue
        m = _mask(arg, n, bits)  # broadcast over the k axis: all k tangents take the same cells
        bits &= ~m
        bits |= s & m
    return res


def _overlapping(kernel: tuple, stride: tuple, dilation: tuple) -> bool:
    return any(s < d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))


def _max_pool2d_vjp(g, ans, x, *, kernel, stride, pads, dilation):
    xp, arg = _xp(g), ans[1]
    if pool_kernels.usable(x, kernel, stride, pads, dilation):
        return pool_kernels.scatter(g, arg, x.shape, stride)
    hw = x.shape[-2:]
    if any(map(sum, pads)):
        gx = xp.zeros(x.shape[:-2] + (hw[0] + sum(pads[0]), hw[1] + sum(pads[1])), dtype=g.dtype)
    else:
        gx = xp.zeros_like(x, dtype=g.dtype)  # the input's memory layout
    gb = _bits(g)
    overlapping = _overlapping(kernel, stride, dilation)
    for n, (_, _, (rs, cs)) in enumerate(_offsets(kernel, stride, dilation, arg.shape[-2:])):
        picked = gb & _mask(arg, n, gb)  # g where offset n won, exact zeros elsewhere
        if overlapping:  # a cell in several windows collects from each
            gx[..., rs, cs] += picked.view(g.dtype)
        else:
            _bits(gx[..., rs, cs])[...] = picked
    return _unpad(gx, pads, hw)


def _max_pool2d_value(x, *, kernel, stride, pads, dilation):
    """The running maximum alone, for plain arrays: no rule needs the winners (their map took three more passes
    per window offset)."""
    return _max_pool2d_impl(x, kernel=kernel, stride=stride, pads=pads, dilation=dilation, winners=False)


_max_pool2d = Primitive("max_pool2d", _max_pool2d_impl, jvp=_max_pool2d_jvp, vjps=[_max_pool2d_vjp], has_aux=True,
                        plain_impl=_max_pool2d_value)


# -------------------------------------------------------------------------------------- avg_pool2d

def avg_pool2d(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Any:
    """Average pooling over the last two axes of (N, C, H, W) or (C, H, W) input (torch semantics, zero padding)."""
    xs = _check_input("avg_pool2d", input)
    k, s, pads, _, out_hw = _geometry("avg_pool2d", xs, kernel_size, stride, padding, 1, ceil_mode)
    # torch's divisor per output row/column: the window clipped to the padded input (count_include_pad)
    # or to the input itself
    counts = []
    for n, kk, ss, (pp, _), o in zip(xs[-2:], k, s, pads, out_hw):
        start = [a * ss - pp for a in range(o)]
        end = [min(b + kk, n + pp) for b in start]
        if count_include_pad:
            counts.append(tuple(e - b for b, e in zip(start, end)))
        else:
            counts.append(tuple(min(e, n) - max(b, 0) for b, e in zip(start, end)))
    uniform = len(set(counts[0])) == 1 and len(set(counts[1])) == 1
    scale = 1.0 / (counts[0][0] * counts[1][0]) if uniform else counts
    return _avg_pool2d(input, kernel=k, stride=s, pads=pads, scale=scale)


def _avg_scale(like: Any, scale: Any) -> Any:
    """1/count: a Python float, or an (Ho, Wo) array in the dtype of ``like``."""
    if isinstance(scale, float):
        return scale
    xp = _xp(like)
    ch, cw = (xp.asarray(c, dtype=like.dtype) for c in scale)
    return 1 / (ch[:, None] * cw[None, :])


def _avg_pool2d_impl(x, *, kernel, stride, pads, scale):
    xp_ = _pad(x, pads)
    out_hw = _windows(xp_, kernel, stride, (1, 1)).shape[-2:]
    out = None
    for _, _, (rs, cs) in _offsets(kernel, stride, (1, 1), out_hw):
        if out is None:
            out = xp_[..., rs, cs].copy()
        else:
            out += xp_[..., rs, cs]
    out *= _avg_scale(out, scale)
    return out


def _avg_pool2d_jvp(tangents, ans, x, *, kernel, stride, pads, scale):
    return _avg_pool2d_impl(tangents[0], kernel=kernel, stride=stride, pads=pads, scale=scale)  # linear, all k at once


def _avg_pool2d_vjp(g, ans, x, *, kernel, stride, pads, scale):
    xp = _xp(g)
    gs = g * _avg_scale(g, scale)
    dcols = xp.broadcast_to(gs[..., None, None, :, :], g.shape[:-2] + kernel + g.shape[-2:])
    hw = x.shape[-2:]
    gx = _col2im(dcols, (hw[0] + sum(pads[0]), hw[1] + sum(pads[1])), kernel, stride, (1, 1))
    return (_unpad(gx, pads, hw),)


_avg_pool2d = Primitive("avg_pool2d", _avg_pool2d_impl, jvp=_avg_pool2d_jvp, vjp=_avg_pool2d_vjp)


# ---------------------------------------------------------------------------- adaptive_avg_pool2d

def adaptive_avg_pool2d(input: Any, output_size: Any) -> Any:
    """Average pooling to a fixed (Oh, Ow) output with torch's adaptive windows (None keeps that input size)."""
    xs = _check_input("adaptive_avg_pool2d", input)
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
        size = tuple(n if o is None else o for o, n in zip(output_size, xs[-2:]))
    else:
        size = (output_size, output_size)
    size = _pair(size, "output_size", "adaptive_avg_pool2d", 1)
    if xs[-2] < 1 or xs[-1] < 1:
        raise ValueError(f"adaptive_avg_pool2d: input of shape {xs} has an empty spatial dimension")
    return _adaptive_avg_pool2d(input, size=size)


def _avg_matrix(xp: Any, n: int, o: int, dtype: Any) -> Any:
    """(o, n) matrix averaging torch's adaptive windows [floor(i*n/o), ceil((i+1)*n/o))."""
    rows = []
    for i in range(o):
        a, b = (i * n) // o, -((-(i + 1) * n) // o)
        rows.append([1.0 / (b - a) if a <= c < b else 0.0 for c in range(n)])
    return xp.asarray(rows, dtype=dtype)


def _divisible(shape: tuple, size: tuple) -> bool:
    return shape[-2] % size[0] == 0 and shape[-1] % size[1] == 0


def _adaptive_impl(x, *, size):
    xp = _xp(x)
    (h, w), (oh, ow) = x.shape[-2:], size
    if _divisible(x.shape, size):  # equal, disjoint windows
        blocks = x.reshape(x.shape[:-2] + (oh, h // oh, ow, w // ow))
        out = blocks.sum(axis=(-3, -1))
        out *= 1.0 / ((h // oh) * (w // ow))
        return out
    return _avg_matrix(xp, h, oh, x.dtype) @ x @ _avg_matrix(xp, w, ow, x.dtype).T


def _adaptive_jvp(tangents, ans, x, *, size):
    return _adaptive_impl(tangents[0], size=size)  # linear, all k at once


def _adaptive_vjp(g, ans, x, *, size):
    xp = _xp(g)
    (h, w), (oh, ow) = x.shape[-2:], size
    if _divisible(x.shape, size):
        gs = g * (1.0 / ((h // oh) * (w // ow)))
        return (xp.broadcast_to(gs[..., :, None, :, None], g.shape[:-2] + (oh, h // oh, ow, w // ow)).reshape(x.shape),)
    return (_avg_matrix(xp, h, oh, g.dtype).T @ g @ _avg_matrix(xp, w, ow, g.dtype),)


_adaptive_avg_pool2d = Primitive("adaptive_avg_pool2d", _adaptive_impl, jvp=_adaptive_jvp, vjp=_adaptive_vjp)

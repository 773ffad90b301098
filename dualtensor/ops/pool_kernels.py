"""Compiled max-pool kernels (numba, :mod:`dualtensor.jit`) for 2 x 2 windows that neither overlap nor pad.

One pass per map instead of the array code's passes per window offset: the maximum with its winning
offset, the selection of all k tangents at the winners, and the cotangent written into the winners'
cells (zero elsewhere). They give bit for bit what :mod:`.pool`'s array code gives (torch's tie rule:
a later cell wins when larger or NaN; values are copied, never computed) and run on
:func:`dualtensor.backend.run_parallel`'s threads over batch slices.

Arrays reach them channels last, as 4-d (N, H, W, C) (``k`` tangents: 5-d (k, N, H, W, C)) views of
the (N, C, H, W) arrays, so the inner loop runs along contiguous channels; callers take this path only
for channels-last memory (what oneDNN's convolutions give) and keep the array code for the rest.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import jit
from ..backend import cpu_threads, get_xp, is_cupy, run_parallel

__all__ = ["usable", "max_with_winners", "pick", "scatter"]

# pooled cells below which the array code runs (a compiled call costs more than it saves)
MIN_CELLS = 1 << 14


# The window is a 2 x 2 of compile-time offsets o = 2 di + dj: with the window size a run-time value the
# loops ran 13 times slower (no unrolling, an integer division per cell).
def _max_kernel(x, sh, sw, best, arg):  # x (N, H, W, C); best, arg (N, Ho, Wo, C)
    n_, ho_, wo_, c_ = best.shape
    for n in range(n_):
        for i in range(ho_):
            for j in range(wo_):
                for c in range(c_):
                    b = x[n, i * sh, j * sw, c]
                    a = 0
                    for o in range(1, 4):
                        s = x[n, i * sh + o // 2, j * sw + o % 2, c]
                        # the array code's winner (s > b or NaN) and its NaN-carrying maximum(b, s), which
                        # on a tie (+0 and -0) keeps the later cell's bits
                        nan = s != s
                        if nan or s > b:
                            a = o
                        if s >= b or (nan and b == b):
                            b = s
                    best[n, i, j, c] = b
                    arg[n, i, j, c] = a


def _pick_kernel(t, arg, sh, sw, out):  # t (N, H, W, C); arg, out (N, Ho, Wo, C)
    n_, ho_, wo_, c_ = out.shape
    for n in range(n_):
        for i in range(ho_):
            for j in range(wo_):
                for c in range(c_):
                    a = arg[n, i, j, c]  # a gather: 0.53x the time of reading all four cells and selecting
                    out[n, i, j, c] = t[n, i * sh + (a >> 1), j * sw + (a & 1), c]


def _scatter_kernel(g, arg, sh, sw, gx):  # g, arg (N, Ho, Wo, C); gx (N, H, W, C)
    n_, ho_, wo_, c_ = g.shape
    for n in range(n_):
        for i in range(ho_):
            for j in range(wo_):
                for c in range(c_):
                    a, v = arg[n, i, j, c], g[n, i, j, c]
                    for o in range(4):
                        gx[n, i * sh + o // 2, j * sw + o % 2, c] = v if a == o else 0


def _channels_last(a: Any) -> Any:
    """(..., N, C, H, W) as the (..., N, H, W, C) view."""
    return a.swapaxes(-3, -2).swapaxes(-2, -1)


def usable(x: Any, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> bool:
    """Whether the compiled kernels take this pooling: NumPy, numba there, 4-d channels-last input (the
    channel stride the smallest), 2 x 2 windows of dilation 1 with strides of at least 2 (no overlap) and
    no padding, and enough cells to pay for a call."""
    if is_cupy(x) or x.ndim != 4 or tuple(kernel) != (2, 2) or any(map(sum, pads)) or tuple(dilation) != (1, 1):
        return False
    if min(stride) < 2 or x.shape[1] < 2 or x.size < MIN_CELLS or not jit.available():
        return False
    st = [abs(s) for s in x.strides]
    return st[1] <= min(st[2], st[3])


def _in_slices(n: int, call: Callable[[int, int], None], lead: int = 1) -> None:
    """call(a, lo, hi) for a in range(lead) and batch slices lo:hi, on run_parallel's threads (about two
    tasks per thread)."""
    parts = max(1, min(n, -(-2 * cpu_threads() // lead)))
    bounds = [n * i // parts for i in range(parts + 1)]
    run_parallel(lambda a=a, lo=lo, hi=hi: call(a, lo, hi)
                 for a in range(lead) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo)


def _empty_channels_last(xp: Any, n: int, hw: tuple, c: int, dtype: Any, lead: tuple = ()) -> Any:
    """An uninitialised (*lead, N, H, W, C) array: channels-last memory for an (*lead, N, C, H, W) result."""
    return xp.empty(lead + (n,) + tuple(hw) + (c,), dtype=dtype)


def max_with_winners(x: Any, stride: tuple, out_hw: tuple, arg_dtype: Any) -> tuple:
    """The 2 x 2 window maxima of x (N, C, H, W) and each window's winning offset (``arg_dtype``), both
    (N, C, Ho, Wo) arrays in channels-last memory."""
    xp, (n, c) = get_xp(x), x.shape[:2]
    best = _empty_channels_last(xp, n, out_hw, c, x.dtype)
    arg = _empty_channels_last(xp, n, out_hw, c, arg_dtype)
    fn, xl, (sh, sw) = jit.compile(_max_kernel), _channels_last(x), stride
    _in_slices(n, lambda _, lo, hi: fn(xl[lo:hi], sh, sw, best[lo:hi], arg[lo:hi]))
    return best.transpose(0, 3, 1, 2), arg.transpose(0, 3, 1, 2)


def pick(t: Any, arg: Any, stride: tuple) -> Any:
    """The k tangents t (k, N, C, H, W) at the winners ``arg`` (N, C, Ho, Wo): (k, N, C, Ho, Wo), channels
    last in memory."""
    k, n, c = t.shape[:3]
    out = _empty_channels_last(get_xp(t), n, arg.shape[2:], c, t.dtype, (k,))
    fn, tl, al, (sh, sw) = jit.compile(_pick_kernel), _channels_last(t), _channels_last(arg), stride
    _in_slices(n, lambda a, lo, hi: fn(tl[a, lo:hi], al[lo:hi], sh, sw, out[a, lo:hi]), lead=k)
    return out.transpose(0, 1, 4, 2, 3)


def scatter(g: Any, arg: Any, x_shape: tuple, stride: tuple) -> Any:
    """The cotangent g (N, C, Ho, Wo) written into its winners' cells of an (N, C, H, W) array, zeros
    elsewhere (channels last in memory)."""
    n, c, h, w = x_shape
    (ho, wo), (sh, sw) = arg.shape[2:], stride
    gx = _empty_channels_last(get_xp(g), n, (h, w), c, g.dtype)
    if 2 * ho < h or 2 * wo < w or sh > 2 or sw > 2:  # cells in no window
        gx[...] = 0
    fn, gl, al = jit.compile(_scatter_kernel), _channels_last(g), _channels_last(arg)
    _in_slices(n, lambda _, lo, hi: fn(gl[lo:hi], al[lo:hi], sh, sw, gx[lo:hi]))
    return gx.transpose(0, 3, 1, 2)

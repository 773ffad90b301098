"""2-d convolution (fused primitive): a direct-convolution library, shifted GEMMs over channels-last rows, or
im2col + one GEMM.

Where backend.direct_conv offers a library (oneDNN, the ``onednn`` extra: float32 NumPy arrays), the primal,
both VJPs and the tangents (k input tangents folded into the batch, k weight tangents as k*O output channels)
are its calls on channels-last data (saved aux: a _Direct); geometries it declines keep the GEMMs below.

Stride-1, one-group convolutions (most of a CNN) run as kh*kw GEMMs over a channels-last, zero-padded copy
of the input flattened to rows (neighbouring rows and images share their padding), each reading a row block
shifted by its kernel offset and accumulating into the output by BLAS (see _SHIFT_MAX_WASTE): no im2col
copy, and the result is handed on
channels-last, so the next such convolution reads it without a transposing copy. The saved input (has_aux)
is those rows (a _Grid). Rules: input tangents are the same convolution with k folded into the batch;
weight tangents one more with the k weight tangents side by side as k*O output channels; the input VJP
adds every offset's g @ W_ij back into its shifted row block; the weight VJP is one GEMM per offset.

Other convolutions build the im2col columns of the input once and save them: (G, C/G*kh*kw, B*Ho*Wo)
(one GEMM per group for the whole batch) when Ho*Wo <= _FLAT_MAX_L, else (B, G, C/G*kh*kw, Ho*Wo) (a batched
matmul over B; a view for 1x1 kernels). Every rule follows the layout of the saved columns. Rules, for a
(k, ...) tangent stack:

* input tangents: the same convolution with k folded into the batch, (k, N, C, H, W) -> (k*N, C, H, W):
  im2col + GEMM over all k tangents together, in chunks of whole tangents whose columns stay under
  _IM2COL_BYTES (one chunk for small problems; bounded memory for large ones), written into one
  preallocated result;
* weight tangents: the saved primal columns times the weight tangents reshaped to (G, k*O/G, C/G*kh*kw),
  one GEMM for all k (in the batched layout with short reductions C/G*kh*kw <= 64, one batched matmul that
  writes the (k, N, O, Ho, Wo) result in place, which saves a transposed copy);
* bias tangents: broadcast over N, H, W.

The input VJP is one GEMM per group in a batch-last layout, (C/G*kh*kw, O/G) @ (O/G, Ho*Wo*N), and col2im (a
loop over the kh*kw kernel offsets adding strided slices, each over Wo*N contiguous numbers); the weight VJP is
``g @ cols^T`` and the bias VJP a sum. Measured on CPU (1 BLAS thread): ResNet18 backprop step at batch 128
922 -> 772 ms against the per-image layout, whose col2im adds ran over rows of only Wo numbers. The window
helpers here (``_windows``, ``_offsets``, ``_col2im``, ``_pad``) are shared with ``pool.py``.
"""
from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

from ..backend import direct_conv as _direct_conv
from ..backend import gemm as _gemm_into
from ..backend import get_xp as _xp
from ..backend import product as _product
from ..core import Primitive
from .shape import getitem

__all__ = ["conv2d"]


# ------------------------------------------------------------------------------ shared window helpers

def _out_size(n: int, k: int, s: int, d: int) -> int:
    """Number of windows of size k (dilation d, stride s) that fit in n (floor mode)."""
    return (n - d * (k - 1) - 1) // s + 1


def _pad(x: Any, pads: tuple, value: float = 0.0) -> Any:
    """Pad the last two axes of x by pads = ((top, bottom), (left, right)) with ``value`` (no copy if 0)."""
    (pt, pb), (pl, pr) = pads
    if not (pt or pb or pl or pr):
        return x
    xp = _xp(x)
    h, w = x.shape[-2:]
    shape = x.shape[:-2] + (h + pt + pb, w + pl + pr)
    out = xp.zeros(shape, dtype=x.dtype) if value == 0 else xp.full(shape, value, dtype=x.dtype)
    out[..., pt:pt + h, pl:pl + w] = x
    return out


def _unpad(x: Any, pads: tuple, hw: tuple) -> Any:
    """The (H, W) interior of a padded array (a view)."""
    (pt, _), (pl, _) = pads
    return x[..., pt:pt + hw[0], pl:pl + hw[1]]


def _windows(x: Any, kernel: tuple, stride: tuple, dilation: tuple) -> Any:
    """Strided view (..., kh, kw, Ho, Wo) of the kh x kw windows of x (..., H, W); no copy.

    ``view[..., i, j, a, b] == x[..., a*sh + i*dh, b*sw + j*dw]``. Reshaping it to
    (..., kh*kw*Ho*Wo) is the im2col copy (for 1x1 kernels with stride 1 it stays a view).
    """
    xp = _xp(x)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    h, w = x.shape[-2:]
    ho, wo = _out_size(h, kh, sh, dh), _out_size(w, kw, sw, dw)
    s = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, x.shape[:-2] + (kh, kw, ho, wo), s[:-2] + (s[-2] * dh, s[-1] * dw, s[-2] * sh, s[-1] * sw))


def _offsets(kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple):
    """For each kernel offset (i, j): the (rows, cols) slices of the padded input that it reads."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _col2im(dcols: Any, padded_hw: tuple, kernel: tuple, stride: tuple, dilation: tuple,
            batch_last: bool = False) -> Any:
    """Adjoint of im2col: sum dcols (..., kh, kw, Ho, Wo) back into a zero (..., Hp, Wp) array;
    with ``batch_last`` dcols is (..., kh, kw, Ho, Wo, N) and the result (..., Hp, Wp, N)."""
    xp = _xp(dcols)
    tail = dcols.shape[-1:] if batch_last else ()
    body = dcols.ndim - len(tail)
    lead, out_hw = dcols.shape[:body - 4], dcols.shape[body - 2:body]
    gx = xp.zeros(lead + tuple(padded_hw) + tail, dtype=dcols.dtype)
    rest = (slice(None),) * len(tail)
    for i, j, (rs, cs) in _offsets(kernel, stride, dilation, out_hw):
        gx[(..., rs, cs) + rest] += dcols[(..., i, j, slice(None), slice(None)) + rest]
    return gx


def _pair(v: Any, name: str, op: str, minimum: int) -> tuple:
    """An int or a pair of ints, each >= minimum, as a pair."""
    try:
        if isinstance(v, bool):
            raise TypeError
        if isinstance(v, (tuple, list)):
            if len(v) != 2:
                raise TypeError
            p = (operator.index(v[0]), operator.index(v[1]))
        else:
            p = (operator.index(v),) * 2
    except TypeError:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if min(p) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return p


def _shape_of(a: Any) -> tuple:
    return tuple(getattr(a, "shape", ()))


def _check_float(op: str, **arrays: Any) -> None:
    for name, a in arrays.items():
        dt = getattr(a, "dtype", None)
        if a is not None and (dt is None or getattr(dt, "kind", "") != "f"):
            raise TypeError(f"{op}: {name} must be a floating array, got {type(a).__name__} "
                            f"with dtype {dt} and shape {_shape_of(a)}")


# ------------------------------------------------------------------------------------------ conv2d

def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Any:
    """2-d cross-correlation of (N, C, H, W) or (C, H, W) input with (O, C/groups, kh, kw) weights (torch semantics)."""
    xs, ws = _shape_of(input), _shape_of(weight)
    shapes = f"(input shape {xs}, weight shape {ws})"
    if len(xs) not in (3, 4):
        raise ValueError(f"conv2d: input must be 4-d (N, C, H, W) or 3-d (C, H, W), got shape {xs}")
    if len(ws) != 4:
        raise ValueError(f"conv2d: weight must be 4-d (out_channels, in_channels/groups, kh, kw), got shape {ws}")
    _check_float("conv2d", input=input, weight=weight, bias=bias)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    c, h, w = xs[-3:]
    o, cg, kh, kw = ws
    if c % groups or o % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels ({c}) and the output "
                         f"channels ({o}) {shapes}")
    if cg * groups != c:
        raise ValueError(f"conv2d: input has {c} channels but weight expects {cg * groups} "
                         f"(= {cg} per group x groups={groups}) {shapes}")
    if kh < 1 or kw < 1:
        raise ValueError(f"conv2d: empty kernel {shapes}")
    if bias is not None and _shape_of(bias) != (o,):
        raise ValueError(f"conv2d: bias has shape {_shape_of(bias)}, expected ({o},) {shapes}")
    st = _pair(stride, "stride", "conv2d", 1)
    dil = _pair(dilation, "dilation", "conv2d", 1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if st != (1, 1):
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride!r})")
            tot = (dil[0] * (kh - 1), dil[1] * (kw - 1))
            # the odd unit of padding goes at the end, as torch
            pads = ((tot[0] // 2, tot[0] - tot[0] // 2), (tot[1] // 2, tot[1] - tot[1] // 2))
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        p = _pair(padding, "padding", "conv2d", 0)
        pads = ((p[0], p[0]), (p[1], p[1]))
    hp, wp = h + sum(pads[0]), w + sum(pads[1])
    ekh, ekw = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    if ekh > hp or ekw > wp:
        raise ValueError(f"conv2d: kernel size ({ekh}, {ekw}) (dilated) is larger than the padded input size "
                         f"({hp}, {wp}) {shapes}")
    taps = _live_taps((h, w), (kh, kw), st, pads, dil)
    if taps is not None:  # kernel rows/columns that read only padding: drop them (exact, fewer multiply-adds)
        (i0, i1, j0, j1), pads = taps
        weight = getitem(weight, (slice(None), slice(None), slice(i0, i1), slice(j0, j1)))
    out, _ = _conv2d(input, weight, bias, stride=st, pads=pads, dilation=dil, groups=groups)
    return out


def _live_taps(hw: tuple, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> tuple | None:
    """((i0, i1, j0, j1), new pads) when only kernel rows i0..i1-1 and columns j0..j1-1 ever read the input
    (not the padding), e.g. a 3x3 kernel with padding 1 on a 1x1 input, else None. Same output size."""
    spans, new_pads = [], []
    for n, k, s, (p0, p1), d in zip(hw, kernel, stride, pads, dilation):
        o = _out_size(n + p0 + p1, k, s, d)
        live = [i for i in range(k) if any(0 <= a * s + i * d - p0 < n for a in range(o))]
        if not live:  # every tap reads padding (the output is the bias): nothing to drop to
            return None
        lo, hi = live[0], live[-1] + 1
        q0 = p0 - lo * d
        q1 = (o - 1) * s + d * (hi - lo - 1) + 1 - n - q0
        if q0 < 0 or q1 < 0:
            return None
        spans += [lo, hi]
        new_pads.append((q0, q1))
    if spans == [0, kernel[0], 0, kernel[1]]:
        return None
    return tuple(spans), tuple(new_pads)


# Output sizes Ho*Wo up to which the columns use the flat layout (G, C/G*kh*kw, B*Ho*Wo): one GEMM per group
# over the whole batch instead of B small GEMMs that each re-read the weight (B matrix-vector products when
# Ho*Wo == 1), at the cost of one transposed copy of the output. Measured on CPU (1 BLAS thread, batch 64,
# 3x3 kernels, flat vs batched): 7-58x at Ho*Wo = 1 (512 channels), 2-5x at 4, 1.1-1.6x at 16; a wash at 64
# (0.86-1.12x) and slower for large outputs (0.63x for 16 input tangents at 784 and 1024).
_FLAT_MAX_L = 16


def _im2col(x: Any, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple, groups: int, flat: bool) -> Any:
    """Columns of x (B, C, H, W), rows ordered (c, i, j) like the weight: (G, C/G*kh*kw, B*Ho*Wo) if flat,
    else (B, G, C/G*kh*kw, Ho*Wo)."""
    b, c = x.shape[:2]
    v = _windows(_pad(x, pads), kernel, stride, dilation)  # (B, C, kh, kw, Ho, Wo) view
    ckk, length = (c // groups) * kernel[0] * kernel[1], v.shape[-2] * v.shape[-1]
    if flat:  # transpose the view before the copying reshape: the copy happens anyway
        v = v.reshape((b, groups, c // groups) + v.shape[2:]).transpose(1, 2, 3, 4, 0, 5, 6)
        return v.reshape(groups, ckk, b * length)
    return v.reshape(b, groups, ckk, length)


def _gemm(wm: Any, cols: Any, nb: int, length: int, out: Any = None) -> Any:
    """(G, R, C/G*kh*kw) @ columns of nb images in either layout -> (nb, G, R, L) (a view if flat).

    With ``out`` (a contiguous (nb, G, R, L) array) the result is written there: directly by the batched
    matmul in the B-batched layout, by one transposed copy in the flat one."""
    if out is not None and cols.ndim == 4:
        return _xp(cols).matmul(wm, cols, out=out)
    y = wm @ cols
    if cols.ndim == 3:
        y = y.reshape(y.shape[:2] + (nb, length)).transpose(2, 0, 1, 3)
    if out is not None:
        out[...] = y
        return out
    return y


def _grad_rows(g: Any, nb: int, groups: int, length: int, flat: bool) -> Any:
    """An output-shaped g as (G, O/G, B*L) if flat, else (B, G, O/G, L)."""
    og = g.shape[-3] // groups
    gm = g.reshape(nb, groups, og, length)
    return gm.transpose(1, 2, 0, 3).reshape(groups, og, nb * length) if flat else gm


# ------------------------------------------------------------------ stride 1: shifted GEMMs, no im2col

# A stride-1, one-group convolution runs as kh*kw GEMMs over a channels-last copy of the input flattened
# to rows (_Grid): the output whose window starts at grid row p is the sum over kernel offsets (i, j) of
# row p + i*dh*Wg + j*dw times W[:, :, i, j]^T, so every term reads a contiguous row block (no im2col
# copy) and accumulates into the output by BLAS (beta = 1). Neighbouring image rows share their zero
# padding (Wg = W + max(pl, pr) columns: row r's right padding is row r+1's left padding), and so do
# neighbouring images (H + max(pt, pb) rows each): for 3x3 kernels with padding 1 the GEMMs run over
# (H+1)(W+1) rows per image instead of (H+2)(W+2), e.g. 7% fewer on 28x28 and 12% on 14x14. The rows
# outside each image's (Ho, Wo) corner are computed and dropped, hence only when (H+gv)(W+g) <=
# _SHIFT_MAX_WASTE * Ho*Wo, and for more than _SHIFT_WIDE channels (where im2col's one GEMM with a 9x
# longer reduction gains most) when it is <= _SHIFT_MAX_WASTE_WIDE * Ho*Wo. Per-layer A/B: bench/kernels.py
# (bench/results/kernels-1t.md).
_SHIFT_MAX_WASTE = 1.8
_SHIFT_WIDE = 128
_SHIFT_MAX_WASTE_WIDE = 1.35
# ... and C input channels at least this (each term is a rank-C update: 1 channel runs 6.6x slower than im2col)
_SHIFT_MIN_CHANNELS = 8


class _Grid(NamedTuple):
    """The saved input of a shifted-GEMM convolution: channels-last rows (R*wg, C), R = top + B*hi grid
    rows of width wg; image n's input row h is grid row top + n*hi + h (columns W.. and rows H.. of each
    image zero). Output (n, ho, wo), whose window starts at flat row start + n*hi*wg + ho*wg + wo, is row
    n*hi*wg + ho*wg + wo of the output rows (B*hi*wg, O')."""
    rows: Any
    hi: int
    wg: int
    top: int
    start: int


def _gaps(pads: tuple, kernel: tuple, dilation: tuple) -> tuple:
    """Shared zero rows per image and zero columns per row: each side's padding, and room for the
    output's (Ho, Wo) corner."""
    return tuple(max(p0, p1, p0 + p1 - d * (k - 1)) for (p0, p1), k, d in zip(pads, kernel, dilation))


def _shift_out_hw(x_hw: tuple, kernel: tuple, pads: tuple, dilation: tuple) -> tuple:
    return tuple(n + p0 + p1 - d * (k - 1) for n, (p0, p1), k, d in zip(x_hw, pads, kernel, dilation))


def _shift_waste(x_hw: tuple, kernel: tuple, pads: tuple, dilation: tuple) -> float:
    """Grid rows per output of the shifted GEMMs."""
    gv, g = _gaps(pads, kernel, dilation)
    ho, wo = _shift_out_hw(x_hw, kernel, pads, dilation)
    return (x_hw[0] + gv) * (x_hw[1] + g) / (ho * wo)


def _use_shift(x_hw: tuple, channels: int, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple,
               groups: int) -> bool:
    if stride != (1, 1) or groups != 1 or kernel == (1, 1) or channels < _SHIFT_MIN_CHANNELS:
        return False
    limit = _SHIFT_MAX_WASTE if channels <= _SHIFT_WIDE else _SHIFT_MAX_WASTE_WIDE
    return _shift_waste(x_hw, kernel, pads, dilation) <= limit


def _embed(src: Any, out: Any) -> Any:
    """Write src (B, h, w, C) into the corner of out (B, H', W', C) and zero the rest of out."""
    h, w = src.shape[1:3]
    out[:, h:] = 0
    out[:, :h, w:] = 0
    out[:, :h, :w] = src
    return out


def _grid_rows(x4: Any, pads: tuple, kernel: tuple, dilation: tuple) -> _Grid:
    """(B, C, H, W) -> its _Grid: one transposing copy."""
    nb, c, h, w = x4.shape
    (pt, _), (pl, _) = pads
    gv, g = _gaps(pads, kernel, dilation)
    hi, wg = h + gv, w + g
    top = pt + (pl > 0)  # a zero row above the first window's left padding
    grid = _xp(x4).empty((top + nb * hi, wg, c), dtype=x4.dtype)
    grid[:top] = 0
    _embed(x4.transpose(0, 2, 3, 1), grid[top:].reshape(nb, hi, wg, c))
    return _Grid(grid.reshape(-1, c), hi, wg, top, (top - pt) * wg - pl)


def _shift_offsets(kernel: tuple, dilation: tuple, wg: int) -> list:
    return [i * dilation[0] * wg + j * dilation[1] for i in range(kernel[0]) for j in range(kernel[1])]


def _shift_span(grid: _Grid, offsets: list) -> int:
    """Output rows the GEMMs compute: all B*hi*wg but those whose last term would read past the grid
    (none of them valid)."""
    n = grid.rows.shape[0]
    return min(n - grid.top * grid.wg, n - grid.start - offsets[-1])


def _shift_conv(grid: _Grid, wmats: Any, kernel: tuple, dilation: tuple) -> Any:
    """Output rows (B*hi*wg, O') = sum over offsets of shifted row blocks @ wmats[n] (C, O')."""
    xp, rows = _xp(grid.rows), grid.rows
    offsets = _shift_offsets(kernel, dilation, grid.wg)
    m = _shift_span(grid, offsets)
    out = xp.empty((rows.shape[0] - grid.top * grid.wg, wmats.shape[-1]),
                   dtype=xp.result_type(rows.dtype, wmats.dtype))
    for n, off in enumerate(offsets):
        a = grid.start + off
        _gemm_into(rows[a:a + m], wmats[n], out[:m], accumulate=n > 0)
    return out
def _shift_weights(w: Any) -> Any:
    """(O, C, kh, kw) weights -> (kh*kw, C, O) GEMM operands; a stack (k, O, C, kh, kw) -> (kh*kw, C, k*O)."""
    nd = w.ndim
    perm = (nd - 2, nd - 1, nd - 3) + tuple(range(nd - 4)) + (nd - 4,)
    wt = _xp(w).ascontiguousarray(w.transpose(perm))
    return wt.reshape(w.shape[-2] * w.shape[-1], w.shape[-3], -1)


def _valid(out_rows: Any, lead: tuple, grid: _Grid, out_hw: tuple) -> Any:
    """The valid (*lead, Ho, Wo, O') corner of output rows, as a view."""
    return out_rows.reshape(lead + (grid.hi, grid.wg, -1))[..., :out_hw[0], :out_hw[1], :]


def _nchw(v: Any) -> Any:
    """A channels-last (..., H, W, C) array as the (..., C, H, W) view the rules hand on: conv and pool
    results stay channels-last in memory, so the next shifted convolution reads its input without a
    transposing copy (elementwise ops keep the layout)."""
    n = v.ndim
    return v.transpose(tuple(range(n - 3)) + (n - 1, n - 3, n - 2))


def _shift_conv2d(x4: Any, w: Any, b: Any, pads: tuple, dilation: tuple) -> tuple:
    xp, kernel = _xp(x4), w.shape[-2:]
    grid = _grid_rows(x4, pads, kernel, dilation)
    out_hw = _shift_out_hw(x4.shape[-2:], kernel, pads, dilation)
    y = _valid(_shift_conv(grid, _shift_weights(w), kernel, dilation), x4.shape[:1], grid, out_hw)
    if b is not None:  # the bias added in a compacting copy
        y = xp.add(y, b)
    return _nchw(y), grid


def _shift_conv2d_jvp(tangents: tuple, out: Any, grid: _Grid, x: Any, w: Any, pads: tuple, dilation: tuple) -> Any:
    """Input and weight tangent terms of a shifted-GEMM convolution as one (k, B, O, Ho, Wo) array
    (channels-last in memory)."""
    tx, tw, _ = tangents
    k = next(t.shape[0] for t in tangents if t is not None)
    xp, kernel, out_hw, o = _xp(out), w.shape[-2:], out.shape[-2:], w.shape[0]
    nb = math.prod(x.shape[:-3])
    res = None
    if tx is not None:  # conv(tx, W): k folded into the batch
        tgrid = _grid_rows(tx.reshape((k * nb,) + x.shape[-3:]), pads, kernel, dilation)
        res = _valid(_shift_conv(tgrid, _shift_weights(w), kernel, dilation), (k, nb), tgrid, out_hw)
    if tw is not None:  # conv(x, tW): the k weight tangents side by side, one (C, k*O) operand per offset
        y = _valid(_shift_conv(grid, _shift_weights(tw), kernel, dilation), (nb,), grid, out_hw)
        y = y.reshape(y.shape[:3] + (k, o)).transpose(3, 0, 1, 2, 4)  # (k, B, Ho, Wo, O) view
        if res is None:
            res = xp.empty(y.shape, dtype=y.dtype)
            res[...] = y
        else:
            res += y
    return _nchw(res)


def _shift_grad_rows(g: Any, grid: _Grid, out_hw: tuple) -> Any:
    """An output cotangent (..., O, Ho, Wo) as output rows (B*hi*wg, O), zero on the dropped rows."""
    o = g.shape[-3]
    gt = g.reshape((-1, o) + tuple(out_hw)).transpose(0, 2, 3, 1)
    out = _xp(g).empty((gt.shape[0], grid.hi, grid.wg, o), dtype=g.dtype)
    return _embed(gt, out).reshape(-1, o)


def _shift_vjp_x(g: Any, grid: _Grid, x: Any, w: Any, pads: tuple, dilation: tuple) -> Any:
    # the adjoint of the shifted sum: every term's cotangent added back into its shifted row block
    xp, kernel = _xp(g), w.shape[-2:]
    gr = _shift_grad_rows(g, grid, g.shape[-2:])
    offsets = _shift_offsets(kernel, dilation, grid.wg)
    m, a = _shift_span(grid, offsets), grid.start
    wm = xp.ascontiguousarray(_shift_weights(w).transpose(0, 2, 1))  # (kh*kw, O, C)
    gx = xp.empty((grid.rows.shape[0], w.shape[1]), dtype=xp.result_type(g.dtype, w.dtype))
    gx[a + m:] = 0  # offsets[0] == 0: the first term writes rows [a, a + m), the others add; rows < a are padding
    for n, off in enumerate(offsets):
        _gemm_into(gr[:m], wm[n], gx[a + off:a + off + m], accumulate=n > 0)
    h, wd = x.shape[-2:]
    gx = gx.reshape(-1, grid.wg, w.shape[1])[grid.top:].reshape(-1, grid.hi, grid.wg, w.shape[1])
    gx = _nchw(gx[:, :h, :wd])
    if x.flags.c_contiguous:  # the cotangent in its primal's layout: mixed layouts make elementwise rules slow
        gx = xp.ascontiguousarray(gx)
    return gx.reshape(x.shape)


def _shift_vjp_w(g: Any, grid: _Grid, w: Any, dilation: tuple) -> Any:
    xp, kernel = _xp(g), w.shape[-2:]
    gr = _shift_grad_rows(g, grid, g.shape[-2:])
    offsets = _shift_offsets(kernel, dilation, grid.wg)
    m, a = _shift_span(grid, offsets), grid.start
    gw = xp.empty((len(offsets), w.shape[1], w.shape[0]), dtype=xp.result_type(g.dtype, grid.rows.dtype))
    for n, off in enumerate(offsets):
        _gemm_into(grid.rows[a + off:a + off + m].T, gr[:m], gw[n])
    return xp.ascontiguousarray(gw.reshape(kernel + w.shape[1::-1]).transpose(3, 2, 0, 1))


# ------------------------------------------------------------------ a direct-convolution library

# Whether float32 NumPy convolutions go to the direct-convolution library where it is installed (tests and
# bench/kernels.py turn it off to reach the GEMM layouts). Measured per layer: bench/kernels.py.
_USE_DIRECT = True


class _Direct(NamedTuple):
    """The saved aux of a convolution run by the direct-convolution library (backend.direct_conv):
    nothing is kept beyond the primal inputs."""
    lib: Any


def _direct_rows(a: Any, n: int) -> Any:
    """(..., C, H, W) as (n, C, H, W) (a view where the layout allows)."""
    return a.reshape((n,) + a.shape[-3:])


def _direct_jvp(tangents, lib, x, w, *, stride, pads, dilation, groups):
    """Input and weight tangent terms (k, B, O, Ho, Wo), channels-last: conv(tx, W) with k folded into the
    batch; conv(x, tW) with the k weight tangents side by side as k*O output channels (one call per tangent
    for grouped convolutions, whose output channels are ordered by group). A term the library declines
    runs as GEMMs."""
    tx, tw, _ = tangents
    k = next(t.shape[0] for t in tangents if t is not None)
    nb, o = math.prod(x.shape[:-3]), w.shape[0]
    geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)

    def conv(a: Any, wt: Any) -> Any:
        y = lib.conv_forward(a, wt, None, stride, pads, dilation, groups)
        return _conv2d_gemm(a, wt, None, **geo)[0] if y is None else y

    res = None
    if tx is not None:
        y = conv(_direct_rows(tx, k * nb), w)
        res = y.reshape((k, nb) + y.shape[1:])
    if tw is not None:
        x4 = _direct_rows(x, nb)
        if groups == 1:
            y = conv(x4, tw.reshape((k * o,) + w.shape[1:]))
            y = y.reshape((nb, k, o) + y.shape[2:]).transpose(1, 0, 2, 3, 4)  # a view of a channels-last result
        else:
            y = _xp(x).stack([conv(x4, tw[i]) for i in range(k)])
        if res is None:
            res = _xp(x).empty((k, nb) + y.shape[-2:] + (o,), dtype=y.dtype).transpose(0, 1, 4, 2, 3)
            res[...] = y
        else:
            res += y
    return res


def _conv2d_impl(x, w, b, *, stride, pads, dilation, groups):
    lib = _direct_conv(x, w, b) if _USE_DIRECT else None
    if lib is not None:
        out = lib.conv_forward(x.reshape((-1,) + x.shape[-3:]), w, b, stride, pads, dilation, groups)
        if out is not None:
            return out.reshape(x.shape[:-3] + out.shape[1:]), _Direct(lib)
    return _conv2d_gemm(x, w, b, stride=stride, pads=pads, dilation=dilation, groups=groups)


def _conv2d_gemm(x, w, b, *, stride, pads, dilation, groups):
    """conv2d as shifted GEMMs or im2col + GEMM: (output, saved _Grid or columns)."""
    lead, o = x.shape[:-3], w.shape[0]
    x4 = x.reshape((-1,) + x.shape[-3:])
    if _use_shift(x.shape[-2:], x.shape[-3], w.shape[-2:], stride, pads, dilation, groups):
        out, grid = _shift_conv2d(x4, w, b, pads, dilation)
        return out.reshape(lead + out.shape[1:]), grid
    hp, wp = x.shape[-2] + sum(pads[0]), x.shape[-1] + sum(pads[1])
    out_hw = (_out_size(hp, w.shape[2], stride[0], dilation[0]), _out_size(wp, w.shape[3], stride[1], dilation[1]))
    length = out_hw[0] * out_hw[1]
    cols = _im2col(x4, w.shape[-2:], stride, pads, dilation, groups, length <= _FLAT_MAX_L)
    out = _gemm(w.reshape(groups, o // groups, -1), cols, x4.shape[0], length)
    out = out.reshape(lead + (o,) + out_hw)  # the one copy of the output in the flat layout
    if b is not None:
        out += b[:, None, None]
    return out, cols


# Bytes of input-tangent columns built at once: the k*B tangent images go through im2col + GEMM in chunks
# of whole tangents under this size (at least one tangent per chunk), written into one preallocated result.
# Bounds the peak memory, and the columns stay closer to cache. Measured on CPU (CNN on 28x28, batch 16,
# k=16, activity perturbation, 1 BLAS thread): step 2258 -> 950 ms, peak memory 625 -> 246 MB.
_IM2COL_BYTES = 32 << 20

# C/G*kh*kw up to which the weight-tangent term (B-batched layout) uses k*B small GEMMs written in place
# instead of one tall GEMM plus a transposed copy (measured on CPU: about 1.5x faster for 3x3 kernels on 3 channels)
_SMALL_CKK = 64


def _conv2d_jvp(tangents, ans, x, w, b, *, stride, pads, dilation, groups):
    tx, tw, tb = tangents
    out, cols = ans
    k = next(t.shape[0] for t in tangents if t is not None)
    if isinstance(cols, _Direct):
        res = None if tx is None and tw is None else _direct_jvp(
            tangents, cols.lib, x, w, stride=stride, pads=pads, dilation=dilation, groups=groups)
        return _add_bias_tangent(res, tb, out, k)
    if isinstance(cols, _Grid):
        res = None if tx is None and tw is None else _shift_conv2d_jvp(tangents, out, cols, x, w, pads, dilation)
        return _add_bias_tangent(res, tb, out, k)
    o, g, flat = w.shape[0], groups, cols.ndim == 3
    nb, length, ckk = math.prod(x.shape[:-3]), out.shape[-1] * out.shape[-2], math.prod(w.shape[1:])
    terms = []  # (k, B, G, O/G, L) arrays or views
    if tx is not None:  # conv(tx, W): k folded into the batch, im2col + GEMM per chunk of tangents
        xp, wm = _xp(out), w.reshape(g, o // g, ckk)
        res = xp.empty((k, nb, g, o // g, length), dtype=xp.result_type(tx.dtype, w.dtype))
        step = max(1, _IM2COL_BYTES // max(1, cols.size * tx.itemsize))  # tangents per chunk
        txs = tx.reshape((k * nb,) + x.shape[-3:])
        for s in range(0, k, step):
            e = min(k, s + step)
            tcols = _im2col(txs[s * nb:e * nb], w.shape[-2:], stride, pads, dilation, groups, flat)
            _gemm(wm, tcols, (e - s) * nb, length, out=res[s:e].reshape((e - s) * nb, g, o // g, length))
        terms.append(res)
    if tw is not None:  # conv(x, tW) from the saved primal columns, one matmul call for all k
        if ckk <= _SMALL_CKK and not flat:
            # short reduction: the GEMM is bound by writing its output, so write it in place as (k, B, G, O/G, L)
            terms.append(tw.reshape(k, 1, g, o // g, ckk) @ cols)
        else:
            # one GEMM with k*O/G rows per group (better blocking), then a transposed add/copy to (k, B, ...)
            twm = tw.reshape(k, g, o // g, ckk).transpose(1, 0, 2, 3).reshape(g, k * (o // g), ckk)
            y = _gemm(twm, cols, nb, length).reshape(nb, g, k, o // g, length)
            terms.append(y.transpose(2, 0, 1, 3, 4))
    res = None
    if terms:
        res = _xp(out).ascontiguousarray(terms[0])
        for y in terms[1:]:
            res += y
    return _add_bias_tangent(res, tb, out, k)


def _add_bias_tangent(res: Any, tb: Any, out: Any, k: int) -> Any:
    """The (k, *out.shape) tangent: res (any (k, ...) layout of it, or None) plus the bias tangents."""
    if res is not None:
        res = res.reshape((k,) + out.shape)
    if tb is not None:
        tbl = tb.reshape((k,) + (1,) * (out.ndim - 3) + (out.shape[-3], 1, 1))
        if res is None:
            res = _xp(tb).broadcast_to(tbl, (k,) + out.shape)
        else:
            res += tbl
    return res


def _conv2d_vjp_x(g, ans, x, w, b, *, stride, pads, dilation, groups):
    # batch-last layout: the columns of g are ordered (Ho, Wo, N), so one GEMM per group gives dcols as
    # (C, kh, kw, Ho, Wo, N) and every col2im add runs over Wo*N contiguous numbers (not Wo); costs a
    # transposed copy of g and of the result
    out = ans[0]
    if isinstance(ans[1], _Direct):
        nb = math.prod(x.shape[:-3])
        gx = ans[1].lib.conv_backward_data(_direct_rows(g, nb), w, (nb,) + x.shape[-3:], stride, pads, dilation,
                                           groups)
        if gx is None:  # declined by the library: the GEMM layouts' VJP of the same convolution
            geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
            return _conv2d_vjp_x(g, _conv2d_gemm(x, w, b, **geo), x, w, b, **geo)
        if x.flags.c_contiguous:  # the cotangent in its primal's layout (as the shifted GEMMs' VJP)
            gx = _xp(gx).ascontiguousarray(gx)
        return gx.reshape(x.shape)
    if isinstance(ans[1], _Grid):
        return _shift_vjp_x(g, ans[1], x, w, pads, dilation)
    o, cg, kh, kw = w.shape
    xp, ho, wo = _xp(g), out.shape[-2], out.shape[-1]
    nb = math.prod(x.shape[:-3])
    gt = xp.ascontiguousarray(g.reshape(nb, o, ho * wo).transpose(1, 2, 0)).reshape(groups, o // groups, -1)
    dcols = w.reshape(groups, o // groups, -1).swapaxes(-1, -2) @ gt  # (G, C/G*kh*kw, Ho*Wo*N)
    dcols = dcols.reshape(cg * groups, kh, kw, ho, wo, nb)
    hw = x.shape[-2:]
    gx = _col2im(dcols, (hw[0] + sum(pads[0]), hw[1] + sum(pads[1])), (kh, kw), stride, dilation, batch_last=True)
    gx = _unpad(gx.transpose(3, 0, 1, 2), pads, hw)  # (N, C, Hp, Wp) view -> interior
    return xp.ascontiguousarray(gx).reshape(x.shape)


def _conv2d_vjp_w(g, ans, x, w, b, *, stride, pads, dilation, groups):
    out, cols = ans
    if isinstance(cols, _Direct):
        if w.shape[-2:] == (1, 1) and max(stride) > 1 and groups == 1 and not any(map(any, pads)):
            return _pointwise_vjp_w(g, x, stride)  # (oneDNN's kernel for these is declined: onednn.py)
        nb = math.prod(x.shape[:-3])
        gw = cols.lib.conv_backward_weights(_direct_rows(g, nb), _direct_rows(x, nb), w.shape, stride, pads,
                                            dilation, groups)
        if gw is None:  # declined by the library: the GEMM layouts' VJP of the same convolution
            geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
            return _conv2d_vjp_w(g, _conv2d_gemm(x, w, b, **geo), x, w, b, **geo)
        return gw
    if isinstance(cols, _Grid):
        return _shift_vjp_w(g, cols, w, dilation)
    flat, length = cols.ndim == 3, out.shape[-1] * out.shape[-2]
    gm = _grad_rows(g, math.prod(x.shape[:-3]), groups, length, flat)
    gw = gm @ cols.swapaxes(-1, -2)
    return (gw if flat else gw.sum(axis=0)).reshape(w.shape)


def _pointwise_vjp_w(g, x, stride):
    """The weight cotangent (O, C, 1, 1) of an unpadded, one-group 1x1 convolution (strided: the downsampling
    shortcuts of ResNets) as one product, g's (O, N*Ho*Wo) rows against the strided input's pixels: no
    columns and no second forward pass, as the GEMM layouts' VJP would need."""
    xp, o, c = _xp(g, x), g.shape[-3], x.shape[-3]
    xs = x[..., ::stride[0], ::stride[1]][..., :g.shape[-2], :g.shape[-1]]
    gm = xp.moveaxis(g.reshape((-1,) + g.shape[-3:]), 1, -1).reshape(-1, o)  # (N*Ho*Wo, O), a view if NHWC
    xm = xp.ascontiguousarray(xp.moveaxis(xs.reshape((-1,) + xs.shape[-3:]), 1, -1)).reshape(-1, c)
    return _product(gm.T, xm).reshape(o, c, 1, 1)


def _conv2d_vjp_b(g, ans, x, w, b, *, stride, pads, dilation, groups):
    return g.sum(axis=tuple(range(g.ndim - 3)) + (-2, -1))


_conv2d = Primitive("conv2d", _conv2d_impl, jvp=_conv2d_jvp, has_aux=True,
                    vjps=[_conv2d_vjp_x, _conv2d_vjp_w, _conv2d_vjp_b])

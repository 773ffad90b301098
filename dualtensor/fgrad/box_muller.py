"""float32 N(0, 1) pairs from raw 32-bit words (Box-Muller), one algorithm run two ways.

:func:`transform_arrays` runs it as array passes (NumPy, or CuPy); :func:`transform` runs the same float32
operations, in the same order and without fused multiply-adds, compiled by numba (the ``numba`` extra) as
a few fused loops over cache-sized blocks for NumPy arrays, and falls back to the passes without it
(``bench/sampling.py --transform-ab`` times both). All give the same numbers bit for bit, so a seed draws
the same tangents whether numba is installed or not.

Word i of the first half gives a uniform U = 2 - f in (0, 1] (f on [1, 2) from its top 23 bits) and the
radius sqrt(-2 ln U) <= sqrt(46 ln 2) ~ 5.65; word i of the second half gives the angle: its top two bits
a quadrant q, the next 23 an offset x uniform on [-pi/4, pi/4). (cos, sin)(q pi/2 + x) is (cos x, sin x)
turned by q quarter turns, so only x needs cos and sin, with no argument reduction: Cephes' float32
polynomials for sin and cos on [-pi/4, pi/4] and for ln (Moshier, Cephes Math Library, 1984-1992).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .. import jit
from ..backend import get_xp, is_cupy

f32, u32, i32 = np.float32, np.uint32, np.int32

# Cephes logf: ln(1 + x) = x - x^2/2 + x^3 P(x) on [sqrt(1/2) - 1, sqrt(2) - 1]; ln 2 split as Q2 - Q1
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8 = (f32(c) for c in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
_Q1, _Q2 = f32(-2.12194440e-4), f32(0.693359375)
# Cephes sinf and cosf on [-pi/4, pi/4]
_S1, _S2, _S3 = f32(-1.9515295891e-4), f32(8.3321608736e-3), f32(-1.6666654611e-1)
_C1, _C2, _C3 = f32(2.443315711809948e-5), f32(-1.388731625493765e-3), f32(4.166664568298827e-2)
_HALF, _ONE, _TWO, _MINUS_TWO, _THREE_HALVES = f32(0.5), f32(1), f32(2), f32(-2), f32(1.5)
_SQRT_HALF, _HALF_PI = f32(math.sqrt(0.5)), f32(math.pi / 2)
_SHIFT, _EXP_SHIFT, _QUARTER_SHIFT, _TWO_BITS = u32(9), u32(23), u32(30), u32(2)
_ONE_BITS, _MANTISSA, _HALF_BITS, _SIGN_SHIFT, _BIAS = (
    u32(0x3F800000), u32(0x7FFFFF), u32(0x3F000000), u32(31), i32(126))

COMPILED_MIN = 1 << 14  # pairs below which numba is not even imported (the array passes are as fast)
_PASS_BLOCK = 1 << 14  # pairs per block of NumPy passes (64 KB temporaries, in cache and off mmap)


def transform_arrays(w: Any, out: Any) -> None:
    """The transform as array passes (NumPy, in cache-sized blocks, or CuPy, whole): ``out[..., :m]`` and
    ``out[..., m:]`` (float32) = the pairs of the uint32 words ``w`` (same shape (..., 2m), not modified):
    word i of a row and word m + i give the row's outputs i and m + i."""
    m = w.shape[-1] // 2
    w2, o2 = w.reshape(-1, 2 * m), out.reshape(-1, 2 * m)
    rows, cols = (len(w2), m) if is_cupy(w) else (max(1, _PASS_BLOCK // m), min(m, _PASS_BLOCK))
    for r in range(0, len(w2), rows):
        wb, ob = w2[r:r + rows], o2[r:r + rows]
        for c in range(0, m, cols):
            e = min(m, c + cols)
            _passes(wb[:, c:e], wb[:, m + c:m + e], ob[:, c:e], ob[:, m + c:m + e])


def _horner(x: Any, coefficients: tuple) -> Any:
    """(...(c0 x + c1) x + ...) x + cn, a new array, in the kernel's order of operations."""
    y = coefficients[0] * x
    for c in coefficients[1:-1]:
        y += c
        y *= x
    y += coefficients[-1]
    return y


def _passes(wr: Any, t: Any, o1: Any, o2: Any) -> None:
    xp = get_xp(wr, o1)
    # radius: U = 2 - f, then ln U = e ln 2 + ln x with x in [sqrt(1/2), sqrt(2))
    bits = o1.view(u32)
    xp.right_shift(wr, _SHIFT, out=bits)
    bits |= _ONE_BITS
    x = o1
    xp.subtract(_TWO, x, out=x)  # U in (0, 1], exact
    e = (bits >> _EXP_SHIFT).view(i32)
    e -= _BIAS  # U = m 2^e with m in [1/2, 1)
    bits &= _MANTISSA
    bits |= _HALF_BITS
    small = x < _SQRT_HALF
    e -= small
    twice = small.astype(f32)
    twice += _ONE
    x *= twice  # x + x where small: exact
    x -= _ONE
    z = x * x
    y = _horner(x, (_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8))
    y *= x
    y *= z
    ef = e.astype(f32)
    y += _Q1 * ef
    y -= _HALF * z
    y += x
    y += _Q2 * ef
    y *= _MINUS_TWO
    r = xp.sqrt(y, out=y)
    # angle: quadrant q and offset x on [-pi/4, pi/4)
    q = t >> _QUARTER_SHIFT
    g = t << _TWO_BITS
    g >>= _SHIFT
    g |= _ONE_BITS
    x = g.view(f32)
    x -= _THREE_HALVES
    x *= _HALF_PI
    z = x * x
    s = _horner(z, (_S1, _S2, _S3))
    s *= z
    s *= x
    s += x
    c = _horner(z, (_C1, _C2, _C3))
    c *= z
    c *= z
    c -= _HALF * z
    c += _ONE
    # (a, b) = (c, s) turned q quarter turns: swapped for odd q, signs flipped as bits (exact)
    sb, cb = s.view(u32), c.view(u32)
    swap = xp.negative(q & u32(1))  # all ones where q is odd
    diff = (sb ^ cb) & swap
    cb ^= diff
    sb ^= diff
    cb ^= (((q + u32(1)) >> u32(1)) & u32(1)) << _SIGN_SHIFT  # q = 1, 2: cos turns negative
    sb ^= (q >> u32(1)) << _SIGN_SHIFT  # q = 2, 3: sin turns negative
    xp.multiply(r, c, out=o1)
    xp.multiply(r, s, out=o2)


_BLOCK = 2048  # pairs per pass of the compiled kernel (its scratch stays in L1)


def _kernel(w, out):  # pragma: no cover - compiled by numba: _passes' operations, block by block
    m = w.shape[1] // 2
    bits = np.empty(_BLOCK, np.uint32)
    e = np.empty(_BLOCK, np.int32)
    x = bits.view(np.float32)
    for row in range(w.shape[0]):
        wrow, orow = w[row], out[row]
        for s0 in range(0, m, _BLOCK):
            n = min(_BLOCK, m - s0)
            # block views, indexed from 0: numba cannot prove s0 + i >= 0, and its wrap-around check blocks SIMD
            wr, wt, r1, r2 = wrow[s0:s0 + n], wrow[m + s0:m + s0 + n], orow[s0:s0 + n], orow[m + s0:m + s0 + n]
            for i in range(n):
                bits[i] = (wr[i] >> _SHIFT) | _ONE_BITS
            for i in range(n):
                x[i] = _TWO - x[i]
            for i in range(n):
                b = bits[i]
                e[i] = i32(b >> _EXP_SHIFT) - _BIAS
                bits[i] = (b & _MANTISSA) | _HALF_BITS
            for i in range(n):
                v = x[i]
                small = v < _SQRT_HALF
                ei = e[i] - i32(1) if small else e[i]
                v = (v + v - _ONE) if small else (v - _ONE)
                z = v * v
                y = _L0 * v + _L1
                y = y * v + _L2
                y = y * v + _L3
                y = y * v + _L4
                y = y * v + _L5
                y = y * v + _L6
                y = y * v + _L7
                y = y * v + _L8
                y = y * v * z
                ef = f32(ei)
                y = y + _Q1 * ef
                y = y - _HALF * z
                y = y + v
                y = y + _Q2 * ef
                r1[i] = np.sqrt(y * _MINUS_TWO)
            for i in range(n):
                bits[i] = ((wt[i] << _TWO_BITS) >> _SHIFT) | _ONE_BITS
            for i in range(n):
                q = wt[i] >> _QUARTER_SHIFT
                v = (x[i] - _THREE_HALVES) * _HALF_PI
                z = v * v
                sn = ((_S1 * z + _S2) * z + _S3) * z * v + v
                cs = ((_C1 * z + _C2) * z + _C3) * z * z - _HALF * z + _ONE
                odd = (q & u32(1)) != u32(0)
                a = sn if odd else cs
                b = cs if odd else sn
                a = -a if (q == u32(1) or q == u32(2)) else a
                b = -b if q >= u32(2) else b
                r = r1[i]
                r1[i] = r * a
                r2[i] = r * b


def compiled() -> Callable[[np.ndarray, np.ndarray], None] | None:
    """The numba-compiled transform of (R, 2m) words into (R, 2m) outputs, or None (:mod:`dualtensor.jit`)."""
    return jit.compile(_kernel)


def transform(w: Any, out: Any) -> None:
    """``out[..., :m]``, ``out[..., m:]`` = the normal pairs of the uint32 words ``w`` (..., 2m), as
    :func:`transform_arrays` says: compiled for NumPy arrays when numba is there, else array passes."""
    fn = compiled() if not is_cupy(w) and w.size >= 2 * COMPILED_MIN else None
    if fn is None:
        transform_arrays(w, out)
    else:
        m2 = w.shape[-1]
        fn(w.reshape(-1, m2), out.reshape(-1, m2))

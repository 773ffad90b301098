"""Keyed tangents: the tangents of one step as a pure function of (seed, step, tangent, position).

Every tangent ``j`` of step ``s`` has its own stream, keyed by a 64-bit key hashed from
``SeedSequence([seed, TAG, s, j, part])`` (``part`` 0: the weight tangent; ``i + 1``: block ``i``
of activity perturbation). Word ``w`` of a stream is SplitMix64's output for the counter ``w``
(the 64-bit finaliser of ``key + (w + 1) * golden``): counter-based, so any process computes any
word, or any sample rows of a tangent, without the rest and without moving it. This is what lets
MPI ranks split the tangents (or the batch) of a step and still use exactly the tangents of a
one-process run. The same array code runs on NumPy and CuPy (on a GPU the tangents are made on
the device); float32 normals go through :mod:`.box_muller` (compiled by numba on the CPU where it is
installed), the same numbers on both. Costs: ``bench/sampling.py`` (``normal (keyed)`` rows).

Layout (normal): outputs come in chunks of 8192; chunk ``c`` is made from 4096 words (float32:
two 32-bit halves per word, :mod:`.box_muller`'s transform of the chunk's 8192 of them) or 8192 words
(float64: one 53-bit uniform per word, Box-Muller with xp's log, cos and sin), the first 4096
outputs ``r cos t``, the next 4096 ``r sin t``. Rademacher: output ``e`` is bit
``e % 64`` of word ``e // 64``. Structured samplers (orthonormal, basis, cone, ...) couple the
tangents, so they draw the whole set from one generator seeded by ``(seed, TAG, s)`` and any
subset is sliced from it (every process draws everything: a cost the i.i.d. samplers avoid).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .. import jit
from ..backend import run_parallel
from . import box_muller
from .samplers import get_sampler, is_iid, normal, rademacher

__all__ = ["KeyedTangents", "BlockDraw", "keyed_entries", "stream_key", "parallel_keys", "TAG"]

TAG = 0x6B74  # separates keyed tangents from every other use of the run's seed
_CHUNK = 8192  # outputs per Box-Muller chunk (smaller chunks measured 1.5x slower: 4.5 against 3.0 ns a number)
_HALF = _CHUNK // 2
# chunks x tangents converted at a time: on the CPU the temporaries stay in cache (16 measured 1.2x faster
# than 8 or 32 for a k = 16 draw); on a GPU fewer, larger kernels
_BLOCK_CHUNKS = {"cpu": 16, "gpu": 1024}
_TWO_PI = 2 * math.pi
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2**64)."""
    x = ((x ^ (x >> 30)) * int(_M1)) & _MASK
    x = ((x ^ (x >> 27)) * int(_M2)) & _MASK
    return x ^ (x >> 31)


def stream_key(seed: int, step: int, tangent: int, part: int) -> int:
    """The 64-bit key of one tangent's stream: the words of (seed, TAG, step, tangent, part) folded
    in one at a time through SplitMix64 (8x cheaper than a SeedSequence, which mattered at 48 streams a step)."""
    h = 0
    for v in (seed, TAG, step, tangent, part):
        h = _mix((h + int(_GOLDEN) + (int(v) & _MASK)) & _MASK)
    return h


_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _words_kernel(keys, first, x):  # pragma: no cover - compiled by numba: _words' arithmetic, exact
    base = np.uint64(first + 1)
    for t in range(x.shape[0]):
        key, row = keys[t], x[t]
        for j in range(x.shape[1]):
            v = (base + np.uint64(j)) * _GOLDEN + key
            v = (v ^ (v >> _S30)) * _M1
            v = (v ^ (v >> _S27)) * _M2
            row[j] = v ^ (v >> _S31)


def _words(keys: Any, first: int, count: int, xp: Any) -> Any:
    """Words ``first .. first + count`` of the streams ``keys`` (uint64 (T,)): (T, count) uint64,
    SplitMix64 on the counter (compiled on NumPy where numba is there: integer arithmetic, the same words)."""
    x = xp.empty((len(keys), count), dtype=xp.uint64)
    kernel = jit.compile(_words_kernel) if xp is np and x.size >= 1 << 12 else None
    if kernel is not None:
        kernel(keys, first, x)
        return x
    x[...] = xp.arange(first + 1, first + 1 + count, dtype=xp.uint64)
    x *= _GOLDEN  # modulo 2**64
    x += keys[:, None]
    t = xp.empty_like(x)
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        xp.right_shift(x, np.uint64(shift), out=t)
        x ^= t
        if mult is not None:
            x *= mult
    return x


def _raw32(keys: Any, first: int, count: int, xp: Any) -> Any:
    """32-bit words ``first .. first + count`` of the streams ``keys`` (two from each 64-bit word): (T, count)."""
    w0 = first // 2
    u = _words(keys, w0, -(-(first + count) // 2) - w0, xp).view(xp.uint32)
    return u[:, first - 2 * w0:first - 2 * w0 + count]


def _uniforms64(keys: Any, first: int, count: int, xp: Any) -> Any:
    """53-bit uniforms on [0, 1), ``first .. first + count`` (T, count), one from each word of the streams."""
    f = (_words(keys, first, count, xp) >> np.uint64(11)).astype(xp.float64)
    f *= 2.0 ** -53
    return f


def _radius64(u: Any, xp: Any) -> Any:
    """The Rayleigh radius sqrt(-2 ln(1 - u)) of uniforms u on [0, 1), in place."""
    xp.subtract(1.0, u, out=u)  # (0, 1]
    xp.log(u, out=u)
    u *= -2.0
    return xp.sqrt(u, out=u)


def _pairs(keys: Any, first: int, count: int, dtype: np.dtype, xp: Any) -> tuple[Any, Any]:
    """(r cos t, r sin t) of ``count`` pairs from uniform ``first`` (radii) and ``first + _HALF`` (angles) on:
    float32 by :mod:`.box_muller` from the raw words, float64 with xp's log, cos and sin."""
    if dtype == np.float32:
        w = xp.concatenate([_raw32(keys, first, count, xp), _raw32(keys, first + _HALF, count, xp)], axis=1)
        out = xp.empty(w.shape, dtype=np.float32)
        box_muller.transform(w, out)
        return out[:, :count], out[:, count:]
    r = _radius64(_uniforms64(keys, first, count, xp), xp)
    t = _uniforms64(keys, first + _HALF, count, xp)
    t *= _TWO_PI  # angle on [0, 2 pi)
    return r * xp.cos(t), r * xp.sin(t)


def _whole_chunks(keys: Any, c: int, m: int, dtype: np.dtype, xp: Any) -> Any:
    """Chunks ``c .. c + m`` of the streams, every pair: (T, m * _CHUNK)."""
    if dtype == np.float32:
        w = _raw32(keys, c * _CHUNK, m * _CHUNK, xp).reshape(len(keys) * m, _CHUNK)
        out = xp.empty(w.shape, dtype=np.float32)
        box_muller.transform(w, out)
        return out.reshape(len(keys), -1)
    u = _uniforms64(keys, c * _CHUNK, m * _CHUNK, xp).reshape(len(keys), m, 2, _HALF)
    r, t = _radius64(u[:, :, 0], xp), u[:, :, 1]
    t *= _TWO_PI
    out = xp.empty((len(keys), m, 2, _HALF), dtype=dtype)
    xp.cos(t, out=out[:, :, 0])
    xp.sin(t, out=out[:, :, 1])
    out[:, :, 0] *= r
    out[:, :, 1] *= r
    return out.reshape(len(keys), -1)


def _normal(keys: Any, c: int, a: int, b: int, dtype: np.dtype, xp: Any) -> Any:
    """Outputs ``a .. b`` of chunks ``c, c + 1, ...`` (0 <= a < b, a < _CHUNK) of normal streams: (T, b - a).

    Pair q of chunk c (uniform q and _HALF + q of its block of uniforms) gives output q as r cos t
    and output _HALF + q as r sin t; only the pairs the outputs need are computed.
    """
    m = -(-b // _CHUNK)
    if m > 1 or (a == 0 and b == _CHUNK):  # whole chunks: every pair
        return _whole_chunks(keys, c, m, dtype, xp)[:, a:b]
    spans = ([(a, min(b, _HALF))] if a < _HALF else []) + ([(max(a, _HALF) - _HALF, b - _HALF)] if b > _HALF else [])
    lo, hi = min(x for x, _ in spans), max(y for _, y in spans)  # the pairs of the cosines and sines wanted
    cos, sin = _pairs(keys, c * _CHUNK + lo, hi - lo, dtype, xp)
    parts = []
    if a < _HALF:
        parts.append(cos[:, a - lo:min(b, _HALF) - lo])
    if b > _HALF:
        parts.append(sin[:, max(a, _HALF) - _HALF - lo:b - _HALF - lo])
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)


def _rademacher(keys: Any, c: int, a: int, b: int, dtype: np.dtype, xp: Any) -> Any:
    """Outputs ``a .. b`` of chunks ``c, ...`` of Rademacher streams (bit e % 64 of word e // 64): (T, b - a)."""
    first, last = (c * _CHUNK + a) // 64, -(-(c * _CHUNK + b) // 64)
    w = _words(keys, first, last - first, xp)
    bits = xp.unpackbits(w.reshape(-1).view(xp.uint8), bitorder="little").reshape(len(keys), -1)
    off = c * _CHUNK + a - 64 * first
    out = bits[:, off:off + b - a].astype(dtype)
    out *= dtype.type(-2)
    out += dtype.type(1)
    return out


_CORES = {normal: _normal, rademacher: _rademacher}


def keyed_entries(sampler: Any, keys: Any, start: int, count: int, dtype: Any, xp: Any = np,
                  out: Any = None) -> Any:
    """Outputs ``start .. start + count`` of the streams ``keys`` (:func:`stream_key` values, one per
    tangent) for an i.i.d. sampler (``"normal"`` or ``"rademacher"``): an array (len(keys), count) of
    ``xp``, written into ``out`` when given."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"tangent dtype must be float32 or float64, got {dtype}")
    draw = get_sampler(sampler)
    make = _CORES[getattr(draw, "func", draw)]
    keys = xp.asarray(np.asarray(keys, dtype=np.uint64).reshape(-1))
    out = xp.empty((len(keys), count), dtype=dtype) if out is None else out
    if not len(keys):
        return out
    per = max(1, _BLOCK_CHUNKS["cpu" if xp is np else "gpu"] // len(keys))

    def pieces() -> Any:
        pos, end = start, start + count
        while pos < end:  # a few chunks at a time: the temporaries stay in cache
            c, a = divmod(pos, _CHUNK)
            b = min(end - c * _CHUNK, per * _CHUNK)
            yield functools.partial(_fill, make, out[:, pos - start:pos - start + b - a], keys, c, a, b, dtype, xp)
            pos += b - a

    if xp is np:  # counter-based: every piece is independent, so CPU threads may compute them in any order
        run_parallel(pieces())
    else:
        for piece in pieces():
            piece()
    return out


def _fill(make: Any, out: Any, keys: Any, c: int, a: int, b: int, dtype: np.dtype, xp: Any) -> None:
    out[...] = make(keys, c, a, b, dtype, xp)


def parallel_keys(comm: Any, split: str, k: int, rng: Any, who: str) -> tuple[Any, tuple[int, int] | None]:
    """What an estimator split over ``comm`` needs: ``(rng, this rank's tangent range)``. With a
    communicator a seed becomes :class:`KeyedTangents` (at any size, so P ranks draw what one does) and
    anything else but keyed tangents is refused; the range is None unless ``split="tangents"`` over
    several ranks (then k >= ranks is required)."""
    if split not in ("tangents", "data"):
        raise ValueError(f"{who}: split must be 'tangents' or 'data', got {split!r}")
    if comm is None:
        return rng, None
    if isinstance(rng, (int, np.integer)):
        rng = KeyedTangents(int(rng))
    if not isinstance(rng, KeyedTangents):
        raise ValueError(f"{who} over several ranks needs tangents every rank can draw: pass "
                         f"rng=KeyedTangents(seed, step) or a seed, not a {type(rng).__name__}")
    if split == "data" or comm.size == 1:
        return rng, None
    if k < comm.size:
        raise ValueError(f"{who}: k={k} tangents cannot be split over {comm.size} ranks (need k >= ranks)")
    return rng, comm.split(k)


def _select(k: int, tangents: tuple[int, int] | None) -> range:
    lo, hi = (0, k) if tangents is None else tangents
    if not 0 <= lo <= hi <= k:
        raise ValueError(f"tangent range {lo}..{hi} is not within 0..{k}")
    return range(lo, hi)


class KeyedTangents:
    """The key of the tangents of step ``step`` of a run seeded with ``seed``.

    Pass it as the ``rng`` of :func:`~dualtensor.fgrad.forward_gradient` or
    :func:`~dualtensor.fgrad.activity_gradient` (the training API does, one per step): the
    estimator's sampler then draws from it. Unlike a generator it is not consumed: asking twice
    gives the same tangents, and :meth:`rows` and the ``tangents`` ranges pick parts of them
    without drawing the rest.
    """

    def __init__(self, seed: int, step: int = 0):
        self.seed, self.step = int(seed), int(step)
        self.row_range: tuple[int, int, int] | None = None  # (first, end, global batch)

    def __repr__(self) -> str:
        rows = "" if self.row_range is None else ", rows={}..{} of {}".format(*self.row_range)
        return f"KeyedTangents(seed={self.seed}, step={self.step}{rows})"

    def rows(self, first: int, end: int, batch: int) -> "KeyedTangents":
        """The same tangents restricted to sample rows ``first .. end`` of a ``batch``-sample step
        (data parallelism: each process draws only its shard's per-sample tangents)."""
        if not 0 <= first <= end <= batch:
            raise ValueError(f"rows {first}..{end} are not within a batch of {batch}")
        view = KeyedTangents(self.seed, self.step)
        view.row_range = (int(first), int(end), int(batch))
        return view

    def generator(self, xp: Any = np) -> Any:
        """The step's one generator (structured samplers draw the whole set from it)."""
        from ..backend import default_rng

        return default_rng(np.random.SeedSequence([self.seed, TAG, self.step]), xp)

    def weight(self, sampler: Any, k: int, n: int, *, dtype: Any, xp: Any = np,
               tangents: tuple[int, int] | None = None) -> Any:
        """Tangents ``tangents`` (a range ``(lo, hi)``, default all k) of the global weight
        tangent drawn by ``sampler``: ``(hi - lo, n)``."""
        sel = _select(k, tangents)
        if not is_iid(sampler):
            return get_sampler(sampler)(k, (n,), self.generator(xp), dtype=dtype, xp=xp)[sel.start:sel.stop]
        return keyed_entries(sampler, [stream_key(self.seed, self.step, j, 0) for j in sel], 0, n, dtype, xp)

    def activity(self, sampler: Any, k: int, batch: int, *, shared: bool = False, xp: Any = np,
                 tangents: tuple[int, int] | None = None) -> "BlockDraw":
        """A block-by-block draw of activity tangents ``(hi - lo, batch, n_i)`` by ``sampler`` for a
        step of ``batch`` samples (the :meth:`rows` shard, when set): call it once per block, in
        order (or :meth:`BlockDraw.whole` once, for structured samplers)."""
        return BlockDraw(self, sampler, k, batch, shared, xp, _select(k, tangents))


class BlockDraw:
    """Activity tangents of one step, drawn as the blocks' outputs appear (see
    :meth:`KeyedTangents.activity`). ``per_block`` is False for structured samplers, which draw
    the whole per-sample vector at once with :meth:`whole`."""

    def __init__(self, keys: KeyedTangents, sampler: Any, k: int, batch: int, shared: bool, xp: Any, sel: range):
        self.keys, self.sampler, self.k, self.shared, self.xp, self.sel = keys, sampler, k, shared, xp, sel
        first, end, total = keys.row_range or (0, batch, batch)
        if end - first != batch:
            raise ValueError(f"keyed tangents for rows {first}..{end} cannot serve a batch of {batch}")
        self.first, self.total, self.batch = first, total, batch
        self.per_block = is_iid(sampler)
        self.block = 0

    def __call__(self, n: int, dtype: Any) -> Any:
        """The next block's ``(len(sel), batch, n)`` tangents."""
        self.block += 1
        return self.part(self.block - 1, n, dtype)

    def part(self, block: int, n: int, dtype: Any) -> Any:
        """Block ``block``'s ``(len(sel), batch, n)`` tangents (any block, in any order)."""
        keys = self.keys
        rows, first = (1, 0) if self.shared else (self.batch, self.first)
        keys_ = [stream_key(keys.seed, keys.step, j, block + 1) for j in self.sel]
        out = keyed_entries(self.sampler, keys_, first * n, rows * n, dtype, self.xp).reshape(len(self.sel), rows, n)
        return self.xp.broadcast_to(out, (len(self.sel), self.batch, n)) if self.shared else out

    def whole(self, n: int, dtype: Any) -> Any:
        """All ``n`` per-sample entries at once (structured samplers): drawn for the whole batch
        from the step's generator, then this draw's tangents and rows are sliced out."""
        V = get_sampler(self.sampler)(self.k, (n,), self.keys.generator(self.xp), dtype=dtype, xp=self.xp,
                                      batch=self.total, shared=self.shared)
        return V[self.sel.start:self.sel.stop, self.first:self.first + self.batch]

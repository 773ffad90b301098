"""Keyed tangents: the tangents of one step as a pure function of (seed, step, tangent, position).

Every tangent ``j`` of step ``s`` has its own stream, keyed by a 64-bit key hashed from
``SeedSequence([seed, TAG, s, j, part])`` (``part`` 0: the weight tangent; ``i + 1``: block ``i``
of activity perturbation). Word ``w`` of a stream is SplitMix64's output for the counter ``w``
(the 64-bit finaliser of ``key + (w + 1) * golden``): counter-based, so any process computes any
word, or any sample rows of a tangent, without the rest and without moving it. This is what lets
MPI ranks split the tangents (or the batch) of a step and still use exactly the tangents of a
one-process run. The same array code runs on NumPy and CuPy (on a GPU the tangents are made on
the device); on the CPU a float32 normal costs 3.3 ns (NumPy's PCG64 bits + the same Box-Muller:
2.9 ns; one thread).

Layout (normal): outputs come in chunks of 8192; chunk ``c`` is made from 4096 words (float32:
two 23-bit uniforms per word) or 8192 words (float64: one 53-bit uniform per word) by Box-Muller,
the first 4096 outputs ``r cos t``, the next 4096 ``r sin t``. Rademacher: output ``e`` is bit
``e % 64`` of word ``e // 64``. Structured samplers (orthonormal, basis, cone, ...) couple the
tangents, so they draw the whole set from one generator seeded by ``(seed, TAG, s)`` and any
subset is sliced from it (every process draws everything: a cost the i.i.d. samplers avoid).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .samplers import get_sampler, is_iid, normal, rademacher

__all__ = ["KeyedTangents", "BlockDraw", "keyed_entries", "stream_key", "TAG"]

TAG = 0x6B74  # separates keyed tangents from every other use of the run's seed
_CHUNK = 8192  # outputs per Box-Muller chunk (smaller chunks measured 1.5x slower: 4.5 against 3.0 ns a number)
_HALF = _CHUNK // 2
# chunks converted at a time: on the CPU the temporaries stay in cache (8-16 measured 1.2-1.5x faster
# than 32-64); on a GPU fewer, larger kernels
_BLOCK_CHUNKS = {"cpu": 8, "gpu": 1024}
_TWO_PI = 2 * math.pi
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def stream_key(seed: int, step: int, tangent: int, part: int) -> int:
    """The 64-bit key of one tangent's stream."""
    return int(np.random.SeedSequence([seed, TAG, step, tangent, part]).generate_state(1, np.uint64)[0])


def _words(key: int, first: int, count: int, xp: Any) -> Any:
    """Words ``first .. first + count`` of stream ``key`` (uint64, SplitMix64 on the counter)."""
    x = xp.arange(first + 1, first + 1 + count, dtype=xp.uint64)
    x *= _GOLDEN  # modulo 2**64
    x += np.uint64(key)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _normal_chunks(key: int, c: int, m: int, dtype: np.dtype, xp: Any) -> Any:
    """Chunks ``c .. c + m`` of a normal stream, shape (m, 2, _HALF)."""
    if dtype == np.float32:
        u = _words(key, c * _HALF, m * _HALF, xp).view(xp.uint32)
        u >>= np.uint32(9)
        u |= np.uint32(0x3F800000)
        f = u.view(xp.float32).reshape(m, 2, _HALF)  # uniforms on [1, 2)
        r, t = f[:, 0], f[:, 1]
        xp.subtract(np.float32(2), r, out=r)  # (0, 1]
        t -= np.float32(1)
    else:
        w = _words(key, c * _CHUNK, m * _CHUNK, xp) >> np.uint64(11)
        f = w.astype(xp.float64).reshape(m, 2, _HALF)
        f *= 2.0 ** -53  # [0, 1)
        r, t = f[:, 0], f[:, 1]
        xp.subtract(1.0, r, out=r)  # (0, 1]
    xp.log(r, out=r)
    r *= dtype.type(-2)
    xp.sqrt(r, out=r)  # Rayleigh radius
    t *= dtype.type(_TWO_PI)  # angle on [0, 2 pi)
    out = xp.empty((m, 2, _HALF), dtype=dtype)
    xp.cos(t, out=out[:, 0])
    xp.sin(t, out=out[:, 1])
    out[:, 0] *= r
    out[:, 1] *= r
    return out


def _rademacher_chunks(key: int, c: int, m: int, dtype: np.dtype, xp: Any) -> Any:
    w = _words(key, c * (_CHUNK // 64), m * (_CHUNK // 64), xp)
    bits = (w[:, None] >> xp.arange(64, dtype=xp.uint64)) & np.uint64(1)
    out = bits.astype(dtype)
    out *= dtype.type(-2)
    out += dtype.type(1)
    return out


_CORES = {normal: _normal_chunks, rademacher: _rademacher_chunks}


def keyed_entries(sampler: Any, key: int, start: int, count: int, dtype: Any, xp: Any = np,
                  out: Any = None) -> Any:
    """Outputs ``start .. start + count`` of stream ``key`` (:func:`stream_key`) for an i.i.d.
    sampler (``"normal"`` or ``"rademacher"``): a 1-D array of ``xp``, written into ``out`` when given."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"tangent dtype must be float32 or float64, got {dtype}")
    draw = get_sampler(sampler)
    make = _CORES[getattr(draw, "func", draw)]
    out = xp.empty(count, dtype=dtype) if out is None else out
    c, end, pos = start // _CHUNK, start + count, start
    per = _BLOCK_CHUNKS["cpu" if xp is np else "gpu"]
    while pos < end:  # a few chunks at a time: the temporaries stay in cache
        m = min(per, -(-end // _CHUNK) - c)
        block = make(key, c, m, dtype, xp).reshape(-1)
        a, b = pos - c * _CHUNK, min(end, (c + m) * _CHUNK) - c * _CHUNK
        out[pos - start:pos - start + b - a] = block[a:b]
        pos += b - a
        c += m
    return out


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
        V = xp.empty((len(sel), n), dtype=dtype)
        for i, j in enumerate(sel):
            keyed_entries(sampler, stream_key(self.seed, self.step, j, 0), 0, n, dtype, xp, out=V[i])
        return V

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
        out = self.xp.empty((len(self.sel), rows, n), dtype=dtype)
        for i, j in enumerate(self.sel):
            keyed_entries(self.sampler, stream_key(keys.seed, keys.step, j, block + 1), first * n, rows * n, dtype,
                          self.xp, out=out[i].reshape(-1))
        return self.xp.broadcast_to(out, (len(self.sel), self.batch, n)) if self.shared else out

    def whole(self, n: int, dtype: Any) -> Any:
        """All ``n`` per-sample entries at once (structured samplers): drawn for the whole batch
        from the step's generator, then this draw's tangents and rows are sliced out."""
        V = get_sampler(self.sampler)(self.k, (n,), self.keys.generator(self.xp), dtype=dtype, xp=self.xp,
                                      batch=self.total, shared=self.shared)
        return V[self.sel.start:self.sel.stop, self.first:self.first + self.batch]

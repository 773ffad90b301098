"""Tangent samplers for forward gradients.

Every sampler has the signature ``sampler(k, shape, rng=None, *, dtype=None, xp=None, batch=None,
shared=False, **params)`` and returns ``k`` tangents:

* ``batch=None``: an array of shape ``(k, *shape)``;
* ``batch=B``: shape ``(k, B, *shape)``. With ``shared=False`` (default) every sample gets its own
  independent tangents; with ``shared=True`` ONE draw of ``(k, *shape)`` is broadcast over the B
  axis (a read-only view with stride 0 on that axis; aggregators detect it and factor the Gram
  matrix once).

Structured samplers (orthonormal, basis, cone, varying_length) act on the flattened feature
vector of length ``n = prod(shape)`` of each sample. ``rng`` is a seed, ``None`` or a NumPy/CuPy
``Generator``; ``xp`` (numpy or cupy) defaults to the generator's module, else numpy; ``dtype``
(float32 or float64) defaults to :func:`dualtensor.get_default_dtype`. Values are drawn directly
in ``dtype`` (no float64 temporaries for float32 tangents).
"""
from __future__ import annotations

import functools
import math
import types
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from ..backend import generator_for, get_default_dtype, is_cupy, rng_module, run_parallel
from . import box_muller

__all__ = ["is_iid", "normal", "rademacher", "orthonormal", "basis", "cone", "varying_length", "supplied",
           "validate_tangents", "as_generator", "get_sampler", "register_sampler", "SAMPLERS"]

Sampler = Callable[..., Any]

_CHUNK = 1 << 18  # Rademacher numbers converted per chunk (keeps the bit temporary in cache)


def as_generator(rng: Any = None, xp: types.ModuleType | None = None) -> Any:
    """A ``Generator`` of array module ``xp`` from a seed, ``None`` or an existing generator.

    ``xp`` defaults to the generator's module, else numpy. A generator of the other module seeds a
    fresh one from its stream (:func:`dualtensor.backend.generator_for`), so a single seeded NumPy
    generator can drive GPU sampling reproducibly. Seeding a CuPy generator sets up its whole bank of
    curand states, so to draw often on a GPU pass one CuPy generator
    (``dualtensor.backend.default_rng(seed, cupy)``), as training does once per epoch.
    """
    return generator_for(rng, xp or rng_module(rng) or np)


def _float_dtype(dtype: Any) -> np.dtype:
    d = np.dtype(get_default_dtype() if dtype is None else dtype)
    if d not in (np.float32, np.float64):
        raise TypeError(f"tangent dtype must be float32 or float64, got {d}")
    return d


def _shape(shape: Any) -> tuple:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


def _setup(k: int, shape: Any, rng: Any, dtype: Any, xp: Any) -> tuple:
    if int(k) != k or k < 1:
        raise ValueError(f"number of tangents k must be a positive integer, got {k!r}")
    shape = _shape(shape)
    xp = xp or rng_module(rng) or np
    return int(k), shape, math.prod(shape), as_generator(rng, xp), _float_dtype(dtype), xp


def _draw(core: Callable, k: int, shape: Any, rng: Any, dtype: Any, xp: Any, batch: int | None,
          shared: bool) -> Any:
    """Run ``core(gen, k, m, n, dtype, xp) -> (k, m, n)`` for m independent samples and shape it."""
    k, shape, n, gen, dtype, xp = _setup(k, shape, rng, dtype, xp)
    if batch is None:
        return core(gen, k, 1, n, dtype, xp).reshape((k, *shape))
    batch = int(batch)
    if batch < 0:
        raise ValueError(f"batch must be non-negative, got {batch}")
    if shared:
        one = core(gen, k, 1, n, dtype, xp).reshape((k, 1, *shape))
        return xp.broadcast_to(one, (k, batch, *shape))
    return core(gen, k, batch, n, dtype, xp).reshape((k, batch, *shape))


# ----------------------------------------------------------------------------- iid samplers

# Box-Muller pairs per chunk of float32 normals (each chunk's raw bits drawn in order, then transformed)
_BM_CHUNK = 1 << 18


def _normal_float32_numpy(gen: np.random.Generator, count: int) -> np.ndarray:
    """count float32 N(0, 1) numbers by Box-Muller from raw random bits, in chunks (:mod:`.box_muller`).

    Each chunk of m pairs takes m raw 64-bit words, viewed as 2m 32-bit ones. The raw bits are drawn in
    chunk order and the chunks transformed on :func:`run_parallel`'s threads, so the numbers depend
    neither on the thread count nor on whether numba (the compiled transform) is installed.
    """
    out = np.empty(count + 1, dtype=np.float32)  # +1: the last pair may overhang an odd count

    def chunks() -> Iterator[Callable[[], None]]:
        for s in range(0, count, 2 * _BM_CHUNK):
            m = (min(count, s + 2 * _BM_CHUNK) - s + 1) // 2  # pairs in this chunk
            u = gen.bit_generator.random_raw(m).view(np.uint32)  # 2m words, drawn in order
            yield functools.partial(box_muller.transform, u, out[s:s + 2 * m])

    # one chunk runs inline anyway (and a small one must not import numba); NumPy's short passes gain
    # nothing from threads (the GIL)
    if count <= 2 * _BM_CHUNK or box_muller.compiled() is None:
        for task in chunks():
            task()
    else:
        run_parallel(chunks())
    return out[:count]


def _normal_core(gen, k, m, n, dtype, xp):
    if xp is np and dtype == np.float32:
        return _normal_float32_numpy(gen, k * m * n).reshape(k, m, n)
    if xp is np:
        out = np.empty((k, m, n), dtype=dtype)
        gen.standard_normal(dtype=dtype, out=out)
        return out
    return gen.standard_normal(size=(k, m, n), dtype=dtype)


def normal(k: int, shape: Any, rng: Any = None, *, dtype: Any = None, xp: types.ModuleType | None = None,
           batch: int | None = None, shared: bool = False) -> Any:
    """k Gaussian tangents with i.i.d. N(0, 1) entries (drawn directly in ``dtype``).

    float32 on NumPy: Box-Muller over 23-bit uniforms built from raw random bits (:mod:`.box_muller`,
    compiled by numba where the ``numba`` extra is installed, the same numbers without it); the tails are
    truncated at |z| ~ 5.65 (probability ~1.6e-8 per entry beyond it). float64, and CuPy, use the
    generator's ``standard_normal``.
    """
    return _draw(_normal_core, k, shape, rng, dtype, xp, batch, shared)


def _rademacher_numpy(gen: np.random.Generator, count: int, dtype: np.dtype) -> np.ndarray:
    # ±1.0 is the bit pattern of 1.0 with a random sign bit: shift one random bit into the sign
    # position and OR in the exponent of 1.0 (no float arithmetic, no float temporaries).
    out = np.empty(count, dtype=dtype)
    if dtype == np.float32:
        u, utype, shift, one = out.view(np.uint32), np.uint32, 31, np.uint32(0x3F800000)
    else:
        u, utype, shift, one = out.view(np.uint64), np.uint64, 63, np.uint64(0x3FF0000000000000)
    for s in range(0, count, _CHUNK):
        e = min(count, s + _CHUNK)
        raw = gen.bit_generator.random_raw((e - s + 63) // 64)
        bits = np.unpackbits(raw.view(np.uint8), count=e - s)
        np.left_shift(bits, shift, out=u[s:e], dtype=utype, casting="unsafe")
        np.bitwise_or(u[s:e], one, out=u[s:e])
    return out


def _rademacher_core(gen, k, m, n, dtype, xp):
    if xp is np:
        return _rademacher_numpy(gen, k * m * n, dtype).reshape(k, m, n)
    u = gen.random(size=(k, m, n), dtype=dtype)  # U[0, 1) -> floor(2u) in {0, 1} -> {-1, +1}
    u *= 2
    xp.floor(u, out=u)
    u *= 2
    u -= 1
    return u


def rademacher(k: int, shape: Any, rng: Any = None, *, dtype: Any = None, xp: types.ModuleType | None = None,
               batch: int | None = None, shared: bool = False) -> Any:
    """k Rademacher tangents: i.i.d. entries ±1 with probability 1/2 each (from packed random bits)."""
    return _draw(_rademacher_core, k, shape, rng, dtype, xp, batch, shared)


# ----------------------------------------------------------------------- structured samplers

def _unit(x: Any, xp: types.ModuleType, axis: int = -1) -> tuple[Any, Any]:
    """x scaled to unit length along ``axis`` (in place) and the norms (keepdims)."""
    nrm = xp.sqrt((x * x).sum(axis=axis, keepdims=True))
    x /= xp.where(nrm == 0, 1, nrm)
    return x, nrm


def _orthonormal_core(gen, k, m, n, dtype, xp):
    if k > n:
        raise ValueError(f"orthonormal: cannot draw k={k} orthonormal tangents in dimension n={n} (need k <= n)")
    g = _normal_core(gen, m, n, k, dtype, xp)  # (m, n, k) Gaussian blocks
    q, r = xp.linalg.qr(g, mode="reduced")
    # fix the signs so that Q is Haar-distributed (QR's R has a positive diagonal then)
    sgn = xp.sign(xp.diagonal(r, axis1=-2, axis2=-1))
    q *= xp.where(sgn == 0, 1, sgn)[:, None, :].astype(dtype, copy=False)
    return xp.ascontiguousarray(q.transpose(2, 0, 1).astype(dtype, copy=False))


def orthonormal(k: int, shape: Any, rng: Any = None, *, dtype: Any = None, xp: types.ModuleType | None = None,
                batch: int | None = None, shared: bool = False) -> Any:
    """k orthonormal tangents (unit length, mutually orthogonal) spanning a uniformly random subspace.

    The rows of Q from the QR factorisation of an (n, k) Gaussian block (signs fixed so the
    distribution is Haar). Requires ``k <= n`` (``ValueError`` otherwise). With per-sample tangents
    CuPy factorises the B blocks one cuSOLVER call at a time (its batched QR loops over the batch),
    so on a GPU this sampler costs B small calls per step; ``shared=True`` needs one.
    """
    return _draw(_orthonormal_core, k, shape, rng, dtype, xp, batch, shared)


def _basis_core(gen, k, m, n, dtype, xp):
    if k > n:
        raise ValueError(f"basis: cannot choose k={k} distinct standard basis vectors in dimension n={n}")
    if xp is np and m == 1:
        idx = gen.choice(n, size=k, replace=False)[:, None]  # (k, 1), random order
    else:  # k smallest of n i.i.d. keys per sample: a uniformly random k-subset for every sample
        keys = gen.random(size=(m, n), dtype=np.float32)
        idx = xp.argpartition(keys, k - 1, axis=1)[:, :k].T if k < n else xp.argsort(keys, axis=1).T
    out = xp.zeros((k, m, n), dtype=dtype)
    out[xp.arange(k)[:, None], xp.arange(m)[None, :], idx] = 1
    return out


def basis(k: int, shape: Any, rng: Any = None, *, dtype: Any = None, xp: types.ModuleType | None = None,
          batch: int | None = None, shared: bool = False) -> Any:
    """k distinct standard basis vectors e_j (j chosen uniformly without replacement); needs ``k <= n``."""
    return _draw(_basis_core, k, shape, rng, dtype, xp, batch, shared)


def _cone_core(gen, k, m, n, dtype, xp, alpha, normalize):
    if n < 2 and k > 1:
        raise ValueError("cone: needs a feature dimension n >= 2 to place tangents at an angle")
    v = _normal_core(gen, k, m, n, dtype, xp)
    if k == 1:
        return _unit(v, xp)[0] if normalize else v
    u1 = v[0] / xp.sqrt((v[0] * v[0]).sum(axis=-1, keepdims=True))  # (m, n) unit first tangent
    w = v[1:]
    lengths = xp.sqrt((w * w).sum(axis=-1, keepdims=True))
    w -= (w * u1).sum(axis=-1, keepdims=True) * u1  # component orthogonal to v1 ...
    _unit(w, xp)  # ... made unit length
    # rotate in the plane span(v1, w_i): direction cos(alpha) u1 + sin(alpha) e_i, same span for alpha in (0, pi)
    w *= dtype.type(math.sin(alpha))
    w += dtype.type(math.cos(alpha)) * u1
    if normalize:
        v[0] = u1
    else:
        w *= lengths
    return v


def cone(k: int, shape: Any, rng: Any = None, *, alpha: float = math.pi / 4, normalize: bool = False, dtype: Any = None,
         xp: types.ModuleType | None = None, batch: int | None = None, shared: bool = False) -> Any:
    """k tangents at the fixed angle ``alpha`` (radians, default pi/4) to the first one.

    Draw k Gaussian vectors v1, w2, …, wk; each w_i is rotated within the plane span(v1, w_i) to
    angle ``alpha`` from v1. v1 keeps its length and each w_i keeps its own length (so lengths are
    distributed as for plain Gaussian tangents); ``normalize=True`` makes all k unit length.
    For 0 < alpha < pi the span equals span(v1, w2, …, wk), so with the same ``rng`` state the span
    (and hence the projection estimate) does not depend on alpha; alpha = pi/2 gives tangents
    orthogonal to v1 (not to each other); alpha = 0 makes all tangents parallel (rank 1).
    """
    if not 0 <= alpha <= math.pi:
        raise ValueError(f"cone: alpha must be in [0, pi] radians, got {alpha}")
    core = functools.partial(_cone_core, alpha=float(alpha), normalize=normalize)
    return _draw(core, k, shape, rng, dtype, xp, batch, shared)


def _varying_core(gen, k, m, n, dtype, xp, L, random_lengths):
    v = _unit(_normal_core(gen, k, m, n, dtype, xp), xp)[0]
    if random_lengths:
        expo = gen.random(size=(k, m, 1), dtype=dtype)
    else:
        expo = xp.asarray(np.linspace(0.0, 1.0, k).reshape(k, 1, 1).astype(dtype))
    v *= xp.asarray(L, dtype=dtype) ** expo
    return v


def varying_length(k: int, shape: Any, rng: Any = None, *, L: float = 10.0, random_lengths: bool = False,
                   dtype: Any = None, xp: types.ModuleType | None = None, batch: int | None = None,
                   shared: bool = False) -> Any:
    """k tangents with uniformly random directions and lengths spread over [1, L] (default L = 10).

    v_i = l_i u_i with u_i uniform on the unit sphere; lengths are geometrically spaced
    l_i = L^((i-1)/(k-1)) (so l_1 = 1 and l_k = L), or with ``random_lengths=True`` log-uniform
    l_i = L^U_i, U_i ~ U[0, 1] i.i.d. Lengths do not change the span, so ``projection`` and
    ``normalized`` estimates are length-invariant while ``sum``/``mean`` weight tangent i by l_i².
    """
    if not L >= 1:
        raise ValueError(f"varying_length: L must be >= 1, got {L}")
    core = functools.partial(_varying_core, L=float(L), random_lengths=random_lengths)
    return _draw(core, k, shape, rng, dtype, xp, batch, shared)


# ------------------------------------------------------------------------ user-supplied tangents

def validate_tangents(tangents: Any, k: int | None, shape: Any, *, batch: int | None = None, dtype: Any = None,
                      xp: types.ModuleType | None = None) -> Any:
    """Check user-supplied tangents: shape ``(k, *shape)`` (or ``(k, B, *shape)``), a floating dtype
    equal to ``dtype`` when given, and the array module ``xp`` when given. Returns them unchanged."""
    if not hasattr(tangents, "shape") or not hasattr(tangents, "dtype"):
        raise TypeError(f"tangents must be an array, got {type(tangents).__name__}")
    shape = _shape(shape)
    lead = (batch,) if batch is not None else ()
    kk = tangents.shape[0] if tangents.ndim else None
    want = (kk if k is None else k, *lead, *shape)
    if tuple(tangents.shape) != want:
        what = "(k, B, *shape)" if batch is not None else "(k, *shape)"
        raise ValueError(f"tangents must have shape {what} = {want}, got {tuple(tangents.shape)}")
    if tangents.dtype.kind != "f":
        raise TypeError(f"tangents must have a floating dtype, got {tangents.dtype}")
    if dtype is not None and tangents.dtype != np.dtype(dtype):
        raise TypeError(f"tangents have dtype {tangents.dtype} but {np.dtype(dtype)} is required")
    if xp is not None and (xp is np) == is_cupy(tangents):
        raise TypeError(f"tangents live on the wrong device: got {type(tangents).__module__} array, "
                        f"expected {xp.__name__}")
    return tangents


def supplied(tangents: Any) -> Sampler:
    """A sampler that always returns the given tangents (validated against each request)."""

    def sampler(k: int, shape: Any, rng: Any = None, *, dtype: Any = None, xp: Any = None,
                batch: int | None = None, shared: bool = False) -> Any:
        return validate_tangents(tangents, k, shape, batch=batch, dtype=dtype, xp=xp)

    sampler.__name__ = "supplied"
    return sampler


# ---------------------------------------------------------------------------------- registry

def is_iid(sampler: Any) -> bool:
    """True for the i.i.d. samplers (normal, rademacher, unparametrised): each entry is drawn on its
    own, so any part of a tangent can be drawn without the rest."""
    draw = get_sampler(sampler)
    return getattr(draw, "func", draw) in (normal, rademacher)


SAMPLERS: dict[str, Sampler] = {
    "normal": normal, "gaussian": normal, "rademacher": rademacher, "orthonormal": orthonormal,
    "basis": basis, "cone": cone, "varying_length": varying_length,
}


def register_sampler(name: str, fn: Sampler) -> None:
    """Make ``fn`` available to :func:`get_sampler` under ``name``."""
    SAMPLERS[name] = fn


def get_sampler(spec: Any = "normal", **params: Any) -> Sampler:
    """Resolve a sampler: a registered name (``"normal"``, ``"rademacher"``, ``"orthonormal"``,
    ``"basis"``, ``"cone"``, ``"varying_length"``), a callable, or an array of user tangents.
    ``params`` are bound to it (e.g. ``get_sampler("cone", alpha=0.5)``)."""
    if isinstance(spec, str):
        try:
            fn = SAMPLERS[spec]
        except KeyError:
            raise ValueError(f"unknown sampler {spec!r}; choose one of {sorted(SAMPLERS)}") from None
    elif hasattr(spec, "shape") and hasattr(spec, "dtype"):
        fn = supplied(spec)
    elif callable(spec):
        fn = spec
    else:
        raise TypeError(f"sampler must be a name, a callable or an array of tangents, got {type(spec).__name__}")
    return functools.partial(fn, **params) if params else fn

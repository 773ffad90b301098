"""Inverted dropout: one Bernoulli mask per call, drawn from the primal's shape and shared by the
primal and all k tangents (in forward mode dropout is multiplication by a constant scaled mask)."""
from __future__ import annotations

from typing import Any

from ..tensor import primal_of
from ..backend import default_generator, default_rng, get_xp as _xp
from ..core import Primitive
from ..tensor import DualTensor, Traced, describe

__all__ = ["dropout"]


def _draw_keep(xp: Any, rng: Any, shape: tuple, dtype: Any, p: float) -> Any:
    # a generator of the input's device draws there; one of the other device draws where it lives
    # (then the mask is copied), as seeding a new device generator per call would cost far more
    gen = rng if hasattr(rng, "random") else default_generator(xp) if rng is None else default_rng(rng, xp)
    try:
        u = gen.random(shape, dtype=dtype)
    except TypeError:  # e.g. a legacy RandomState without dtype support
        u = gen.random(shape)
    return xp.asarray(u) >= p  # a numpy generator may serve a cupy input


def dropout(input: Any, p: float = 0.5, training: bool = True, rng: Any = None, mask: Any = None) -> Any:
    """Zero each element with probability p and scale the rest by 1/(1-p) (torch.nn.functional.dropout).

    ``rng``: a seeded Generator (or a seed) for the mask; ``mask``: an explicit keep-mask (nonzero = keep)
    of the input's shape, for reproducibility. ``training=False`` or ``p=0``: identity; ``p=1``: zeros.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return input
    x0 = primal_of(input)
    if not hasattr(x0, "dtype") or x0.dtype.kind != "f":
        raise TypeError(f"dropout: input must be a floating array, got {describe(x0)}")
    xp, shape, dtype = _xp(x0), tuple(x0.shape), x0.dtype
    if mask is not None:
        if type(mask) in (DualTensor, Traced):
            raise TypeError(f"dropout: mask must be a constant array, got {describe(mask)}")
        ms = tuple(getattr(mask, "shape", ()))
        if ms != shape:
            raise ValueError(f"dropout: mask shape {ms} does not match input shape {shape}")
        keep = xp.asarray(mask) != 0
    elif p < 1:
        keep = _draw_keep(xp, rng, shape, dtype, p)
    if p == 1:
        scaled = xp.zeros(shape, dtype=dtype)
    else:
        scaled = keep.astype(dtype) * (1.0 / (1.0 - p))
    return _dropout(input, scaled)


_dropout = Primitive("dropout", lambda x, m: x * m, nondiff=(1,),
                     jvps=[lambda t, ans, x, m: t * m, None],  # the same mask for every tangent
                     vjps=[lambda g, ans, x, m: g * m, None])

"""How good is a gradient estimate? Cosine similarity and norm ratio against the exact gradient.

Inputs are arrays or pytrees of arrays with the same structure. With ``batched=True`` the leading
axis of every leaf indexes independent estimates and one value per batch entry is returned.
Reductions accumulate in float64 (scalars per leaf; no n-sized float64 copies).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_xp
from ..pytree import flatten

__all__ = ["inner_products", "cosine_similarity", "norm_ratio", "angle_degrees", "compare"]


def inner_products(est: Any, exact: Any, batched: bool = False) -> tuple[Any, Any, Any]:
    """(⟨est, exact⟩, ‖est‖², ‖exact‖²) summed over all leaves; float64 scalars or (B,) arrays."""
    a_leaves, a_def = flatten(est)
    b_leaves, b_def = flatten(exact)
    if a_def != b_def or len(a_leaves) != len(b_leaves):
        raise ValueError("diagnostics: estimate and exact gradient have different pytree structures")
    xp = get_xp(*a_leaves, *b_leaves, op="diagnostics")
    ab = aa = bb = 0.0
    for a, b in zip(a_leaves, b_leaves):
        a, b = xp.asarray(a), xp.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"diagnostics: leaf shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if batched:
            if a.ndim == 0:
                raise ValueError("diagnostics: batched=True needs a leading batch axis on every leaf")
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        else:
            a, b = a.reshape(-1), b.reshape(-1)
        ab = ab + (a * b).sum(axis=-1, dtype=np.float64)
        aa = aa + (a * a).sum(axis=-1, dtype=np.float64)
        bb = bb + (b * b).sum(axis=-1, dtype=np.float64)
    return ab, aa, bb


def _out(x: Any, batched: bool) -> Any:
    return x if batched else float(x)


def cosine_similarity(est: Any, exact: Any, batched: bool = False) -> Any:
    """⟨est, exact⟩ / (‖est‖ ‖exact‖) in [-1, 1] (a float, or (B,) array); 0 where either norm is 0."""
    ab, aa, bb = inner_products(est, exact, batched)
    xp = get_xp(ab, aa, bb)
    den = xp.sqrt(aa * bb)
    return _out(xp.where(den > 0, ab / xp.where(den > 0, den, 1), 0.0), batched)


def norm_ratio(est: Any, exact: Any, batched: bool = False) -> Any:
    """‖est‖ / ‖exact‖ (inf where the exact gradient is 0 and the estimate is not, 1 where both are 0)."""
    _, aa, bb = inner_products(est, exact, batched)
    xp = get_xp(aa, bb)
    return _out(xp.where(bb > 0, xp.sqrt(aa / xp.where(bb > 0, bb, 1)), xp.where(aa > 0, np.inf, 1.0)), batched)


def angle_degrees(est: Any, exact: Any, batched: bool = False) -> Any:
    """The angle between estimate and exact gradient in degrees (90° = orthogonal, no descent)."""
    cos = cosine_similarity(est, exact, batched)
    xp = get_xp(cos)
    return _out(xp.degrees(xp.arccos(xp.clip(xp.asarray(cos), -1.0, 1.0))), batched)


def compare(est: Any, exact: Any, batched: bool = False) -> dict[str, Any]:
    """``{"cosine": …, "norm_ratio": …, "angle_deg": …}`` in one pass over the arrays (floats, or (B,) arrays)."""
    ab, aa, bb = inner_products(est, exact, batched)
    xp = get_xp(ab, aa, bb)
    den = xp.sqrt(aa * bb)
    cos = xp.where(den > 0, ab / xp.where(den > 0, den, 1), 0.0)
    ratio = xp.where(bb > 0, xp.sqrt(aa / xp.where(bb > 0, bb, 1)), xp.where(aa > 0, np.inf, 1.0))
    ang = xp.degrees(xp.arccos(xp.clip(cos, -1.0, 1.0)))
    return {"cosine": _out(cos, batched), "norm_ratio": _out(ratio, batched), "angle_deg": _out(ang, batched)}

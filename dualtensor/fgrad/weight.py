"""Weight perturbation: forward gradients of a scalar loss w.r.t. a pytree of parameter arrays.

One global tangent over all parameters: k tangents of length n_total = Σ leaf sizes are drawn once
as a ``(k, n_total)`` array, split into per-leaf ``(k, *leaf.shape)`` views, and ONE ``dt.jvp``
pass yields the loss and its k directional derivatives. The aggregator then works on the global
``(k, n_total)`` tangent matrix (for ``projection``: one global k×k Gram matrix).

``batched=True`` treats the leading axis of every leaf as B independent problems (e.g. several
seeds or learning rates of a closed-form benchmark optimised at once): ``f`` returns B losses, the
tangents are ``(k, B, n)`` — independent per problem, or one draw shared by all with
``shared=True`` — and the aggregation runs per problem (a batched (B, k, k) Gram for projection).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..autodiff import jvp, vjp
from ..backend import get_xp
from ..pytree import flatten, unflatten
from .aggregators import get_aggregator
from .samplers import get_sampler
from .streams import KeyedTangents, parallel_keys

if TYPE_CHECKING:
    from ..distributed import Communicator

__all__ = ["forward_gradient", "simulated_forward_gradient", "tangent_tree", "flatten_params"]


def flatten_params(params: Any, batched: bool = False) -> tuple[list, Any, Any, Any, int]:
    """(leaves, treedef, xp, dtype, n_total) of a parameter pytree; n_total counts per problem when batched."""
    leaves, treedef = flatten(params)
    if not leaves:
        raise ValueError("forward_gradient: params has no arrays")
    leaves = [x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x) for x in leaves]
    for x in leaves:
        if x.dtype.kind != "f":
            raise TypeError(f"forward_gradient: parameters must be floating arrays, got dtype {x.dtype} "
                            f"(shape {tuple(x.shape)})")
    xp = get_xp(*leaves, op="forward_gradient")
    dtype = np.result_type(*[x.dtype for x in leaves])
    if batched:
        B = {x.shape[0] if x.ndim else None for x in leaves}
        if len(B) != 1 or None in B:
            raise ValueError("forward_gradient: with batched=True every leaf needs the same leading batch axis, "
                             f"got shapes {[tuple(x.shape) for x in leaves]}")
        n = int(np.sum([math.prod(x.shape[1:]) for x in leaves]))
    else:
        n = int(np.sum([x.size for x in leaves]))
    return leaves, treedef, xp, dtype, n


def _split(flat: Any, leaves: list, lead: int, batched: bool) -> list:
    """Cut the last axis of ``flat`` (…, n_total) into per-leaf views shaped like the leaves.

    ``lead`` leading axes of ``flat`` are kept in front (the k axis for tangents, none for gradients).
    """
    out, off = [], 0
    front = flat.shape[:lead]
    for x in leaves:
        size = math.prod(x.shape[1:]) if batched else x.size
        out.append(flat[..., off:off + size].reshape(front + tuple(x.shape)))
        off += size
    return out


def tangent_tree(V: Any, params: Any, batched: bool = False) -> Any:
    """Split global tangents ``(k, n_total)`` (or ``(k, B, n_total)``) into a pytree like ``params``
    whose leaves are ``(k, *leaf.shape)`` views."""
    leaves, treedef, *_ = flatten_params(params, batched)
    return unflatten(treedef, _split(V, leaves, 1, batched))


def _sample(leaves: list, xp: Any, dtype: Any, n: int, k: int, sampler: Any, rng: Any, batched: bool,
            shared: bool) -> Any:
    B = leaves[0].shape[0] if batched else None
    if isinstance(rng, KeyedTangents):
        if batched:
            raise ValueError("forward_gradient: keyed tangents (KeyedTangents) serve one problem, not batched=True")
        if not (hasattr(sampler, "shape") and hasattr(sampler, "dtype")):
            return rng.weight(sampler, k, n, dtype=dtype, xp=xp)
    return get_sampler(sampler)(k, (n,), rng, dtype=dtype, xp=xp, batch=B, shared=shared)


def _no_batched(comm: Any, batched: bool) -> None:
    if comm is not None and batched:
        raise ValueError("forward_gradient: batched=True problems cannot be split over ranks")


def _gather(comm: Any, split: str, loss: Any, d: Any, weight: float | None) -> tuple[Any, Any]:
    """The global loss and directional derivatives from this rank's: gathered over the tangents
    (``split="tangents"``), or for ``split="data"`` the ``weight``-ed sum over the ranks' shards
    (one Allreduce of k + 1 numbers)."""
    if comm is None or comm.size == 1:
        return loss, d
    if split == "tangents":
        return loss, comm.allgather(d)
    loss, d = comm.allreduce_many([loss, d], 1.0 / comm.size if weight is None else float(weight))
    return loss, d


def _check_loss(loss: Any, leaves: list, batched: bool) -> None:
    want = (leaves[0].shape[0],) if batched else ()
    if tuple(np.shape(loss)) != want:
        raise ValueError(f"forward_gradient: f must return {'B losses, shape ' + str(want) if batched else 'a scalar'}"
                         f", got shape {tuple(np.shape(loss))}")


def forward_gradient(f: Callable[[Any], Any], params: Any, k: int = 1, *, sampler: Any = "normal",
                     aggregate: Any = "projection", rng: Any = None, batched: bool = False, shared: bool = False,
                     return_tangents: bool = False, comm: Communicator | None = None, split: str = "tangents",
                     weight: float | None = None) -> tuple:
    """Multi-tangent forward gradient of ``f(params)`` by real forward-mode AD (weight perturbation).

    ``sampler``: a name (``"normal"``, ``"rademacher"``, ``"orthonormal"``, ``"basis"``, ...), a
    sampler callable (e.g. ``get_sampler("cone", alpha=0.5)``) or an array of tangents
    ``(k, n_total)`` / ``(k, B, n_total)``. ``aggregate``: a name (``"single"``, ``"sum"``,
    ``"mean"``, ``"normalized"``, ``"projection"``) or a callable ``(d, V) -> g``
    (e.g. ``get_aggregator("projection", scale=True)``). ``rng``: seed or Generator.
    ``batched``/``shared``: see the module docstring (``shared`` only matters with ``batched=True``;
    without a batch axis one tangent set serves the whole loss anyway).

    ``rng`` may be a :class:`~dualtensor.fgrad.streams.KeyedTangents` (tangents as a pure function of
    seed, step and tangent index). With ``comm`` (a :mod:`dualtensor.distributed` communicator of
    P ranks, every rank calling with the same arguments and a keyed ``rng`` or seed):
    ``split="tangents"`` makes each rank carry its share of the k tangents through ``f`` and gather
    the directional derivatives (every rank regenerates all k tangents to aggregate, so all get the
    same estimate); ``split="data"``: each rank's ``f`` is the loss of its own shard of the batch,
    every rank carries all k (the same) tangents, and the ``weight``-ed (default 1/P; use
    shard size / global batch) sum of the ranks' loss and directional derivatives (one Allreduce of
    k + 1 numbers) is the global one.

    Returns ``(loss, grad, d)``: the loss, the gradient estimate with the structure of ``params``,
    and the k directional derivatives ``d`` (``(k,)`` or ``(k, B)``); with ``return_tangents`` also
    the global tangent array V (split it with :func:`tangent_tree`).
    """
    leaves, treedef, xp, dtype, n = flatten_params(params, batched)
    _no_batched(comm, batched)
    rng, own = parallel_keys(comm, split, k, rng, "forward_gradient")
    V = _sample(leaves, xp, dtype, n, k, sampler, rng, batched, shared)
    carried = V if own is None else V[own[0]:own[1]]
    tangents = _split(carried, leaves, 1, batched)
    loss, d = jvp(lambda *ls: f(unflatten(treedef, list(ls))), tuple(leaves), tuple(tangents))
    _check_loss(loss, leaves, batched)
    loss, d = _gather(comm, split, loss, d, weight)
    g = get_aggregator(aggregate)(d, V)
    grads = unflatten(treedef, _split(g, leaves, 0, batched))
    return (loss, grads, d, V) if return_tangents else (loss, grads, d)


def simulated_forward_gradient(f: Callable[[Any], Any], params: Any, k: int = 1, *, sampler: Any = "normal",
                               aggregate: Any = "projection", rng: Any = None, batched: bool = False,
                               shared: bool = False, return_tangents: bool = False, comm: Communicator | None = None,
                               split: str = "tangents", weight: float | None = None) -> tuple:
    """The same estimator as :func:`forward_gradient`, computed from the exact gradient.

    The exact gradient comes from reverse mode (``dt.vjp``); the directional derivatives are
    ``d = V ∇f`` for tangents drawn exactly as :func:`forward_gradient` draws them (same ``rng``
    state → same tangents), then aggregated the same way. Useful to check forward mode, and
    cheaper when n is small. Same arguments and return value as :func:`forward_gradient`; with
    ``split="tangents"`` there is nothing to split (no tangent is carried), so every rank computes
    all of it.
    """
    leaves, treedef, xp, dtype, n = flatten_params(params, batched)
    _no_batched(comm, batched)
    rng, _ = parallel_keys(comm, "data" if split == "tangents" else split, k, rng,  # no tangent to split
                           "simulated_forward_gradient")
    V = _sample(leaves, xp, dtype, n, k, sampler, rng, batched, shared)
    loss, back = vjp(lambda *ls: f(unflatten(treedef, list(ls))), *leaves)
    _check_loss(loss, leaves, batched)
    gl = back(xp.ones_like(loss))
    if batched:
        B = leaves[0].shape[0]
        grad = xp.concatenate([g.reshape(B, -1) for g in gl], axis=1)  # (B, n)
        d = xp.einsum("kbn,bn->kb", V, grad)
    else:
        grad = xp.concatenate([g.reshape(-1) for g in gl])
        d = V @ grad
    if split == "data":
        loss, d = _gather(comm, split, loss, d, weight)
    g = get_aggregator(aggregate)(d, V)
    grads = unflatten(treedef, _split(g, leaves, 0, batched))
    return (loss, grads, d, V) if return_tangents else (loss, grads, d)

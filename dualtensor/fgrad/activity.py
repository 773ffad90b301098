"""Activity perturbation: forward gradients from tangents injected at every block's output.

One forward pass carries all k tangents. Block i's output a_i gets the tangent
``J_i(earlier tangents) + V_i``, so the per-sample loss's directional derivative is
``d[j, b] = sum_i <dl_b/da_i, V_i[j, b]>`` — the true activation gradient (the one backprop
would see) against the concatenated tangent. Each sample's activation gradient is estimated
from (d, V) by an aggregator (projection by default), and each block's parameter gradient
is the block-local VJP of its slice of that estimate: no global backward pass, and the primal
is computed once.

Two ways to get the block-local VJPs (``keep``):
* ``"tape"`` (default): the forward pass also records each block's primal computation on a
  reverse-mode tape (parameters are Traced), so the VJP needs no recomputation; memory holds
  each block's intermediates, as backprop does.
* ``"recompute"``: only block inputs are kept; each block is re-run on the tape afterwards
  (one extra primal forward per block; batch-norm buffers and dropout RNG state are restored
  so the re-run sees exactly what the forward pass saw).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..autodiff import backward, vjp
from ..backend import generator_state, get_xp, set_generator_state
from ..nn.models.blocked import probe_blocks
from ..tensor import DualTensor, Traced, Zero
from . import aggregators
from .aggregators import AGGREGATORS, get_aggregator
from .samplers import as_generator, get_sampler, is_iid, validate_tangents
from .streams import KeyedTangents, parallel_keys

if TYPE_CHECKING:
    from ..distributed import Communicator

__all__ = ["ActivityResult", "activity_gradient", "exact_activation_gradients", "activation_sizes",
           "activity_tangents", "draws_per_block", "ESTIMATORS", "OTHER_TANGENTS", "BatchNormCouplingWarning"]

#: activity perturbation's estimators (see :func:`activity_gradient`)
ESTIMATORS = ("per-sample", "batch")
#: how a tangent-parallel rank gets the other ranks' tangents for its samples (see :func:`activity_gradient`)
OTHER_TANGENTS = ("exchange", "draw")


class BatchNormCouplingWarning(UserWarning):
    """Per-sample activity perturbation met a train-mode batch norm downstream of an injection."""

def draws_per_block(sampler: Any) -> bool:
    """True for i.i.d. samplers (normal, rademacher): drawing each block's part separately is the same
    as drawing the whole vector, so activity perturbation draws each block's (k, B, n_i) part as that
    block's output appears, in block order (no pass to learn the sizes first). Other samplers draw
    all (k, B, n) at once."""
    return is_iid(sampler)


class _TangentDraw:
    """The one way activity perturbation draws tangents (see :func:`draws_per_block`)."""

    def __init__(self, sampler: Any, k: int, rng: Any, xp: Any, batch: int, shared: bool):
        self.draw, self.k, self.rng, self.xp, self.batch, self.shared = get_sampler(sampler), k, rng, xp, batch, shared
        self.per_block = draws_per_block(self.draw)

    def __call__(self, n: int, dtype: Any) -> Any:
        """(k, batch, n) tangents: one block's part, or (not per block) all n entries at once."""
        return self.draw(self.k, (n,), self.rng, dtype=dtype, xp=self.xp, batch=self.batch, shared=self.shared)

    whole = __call__


def _tangent_draw(sampler: Any, k: int, rng: Any, xp: Any, batch: int, shared: bool,
                  own: tuple[int, int] | None = None) -> Any:
    """The draw of tangents ``own`` (default all k): keyed (:class:`KeyedTangents`) or from a generator."""
    if isinstance(rng, KeyedTangents):
        return rng.activity(sampler, k, batch, shared=shared, xp=xp, tangents=own)
    return _TangentDraw(sampler, k, as_generator(rng, xp), xp, batch, shared)


_PER_SAMPLE = (aggregators.single, aggregators.sum, aggregators.mean, aggregators.normalized, aggregators.projection)


def _per_sample(aggregate: Any) -> bool:
    """True for the library's own aggregators, whose per-sample estimates depend on that sample's
    directional derivatives and tangents only (a user's may couple the samples)."""
    fn = AGGREGATORS.get(aggregate) if isinstance(aggregate, str) else aggregate
    return any(fn is f for f in _PER_SAMPLE)


def _split_plan(comm: Any, split: str, k: int, rng: Any, B: int, simulated: bool) -> tuple[Any, Any]:
    """(rng, this rank's tangent range or None) for an estimate over ``comm``: keyed tangents, and
    for ``split="data"`` restricted to this rank's rows of the global batch."""
    rng, own = parallel_keys(comm, split, k, rng, "activity_gradient")
    if split == "data" and comm is not None and comm.size > 1 and rng.row_range is None:
        counts = [int(c) for c in comm.allgather(np.array([B], dtype=np.int64))]
        first = sum(counts[:comm.rank])
        rng = rng.rows(first, first + B, sum(counts))
    return rng, None if simulated else own


def activity_tangents(sampler: Any, k: int, sizes: Sequence[int], rng: Any, *, dtype: Any, xp: Any, batch: int,
                      shared: bool = False) -> list:
    """The per-block tangent stacks ``(k, batch, n_i)`` that :func:`activity_gradient` draws from
    ``rng`` for blocks whose per-sample output sizes are ``sizes``: the same numbers in the same
    order (to reproduce its tangents, e.g. one tangent at a time); ``rng`` may be keyed
    (:class:`~dualtensor.fgrad.streams.KeyedTangents`), as in training."""
    draw = _tangent_draw(sampler, k, rng, xp, batch, shared)
    if draw.per_block:
        return [draw(n, dtype) for n in sizes]
    V = draw.whole(sum(sizes), dtype)
    offsets = np.cumsum([0, *sizes])
    return [V[:, :, a:b] for a, b in zip(offsets[:-1], offsets[1:])]


@dataclass
class ActivityResult:
    """What one activity-perturbation step produced."""

    loss: Any                           # mean per-sample loss (primal): a 0-d array on the input's device
    grads: dict                         # parameter name -> gradient estimate (same shape/dtype as the data)
    d: Any                              # directional derivatives, shape (k, B)
    sizes: list                         # per-sample activation size of each block
    estimate: Any = None                # per-sample activation-gradient estimate (B, n), when requested
    tangents: Any = None                # the (k, B, n) tangents, when requested


def _block_params(block: Any) -> list[tuple[str, Any]]:
    return list(block.named_parameters())


def _snapshot(block: Any) -> tuple[dict, list]:
    """Buffers and RNG states a re-run would change (batch-norm statistics, dropout masks)."""
    buffers = {name: b.copy() for name, b in block.named_buffers()}
    rngs = []
    for m in block.modules():
        rng = getattr(m, "rng", None)
        if rng is None or isinstance(rng, (int, np.integer)):
            continue
        try:
            rngs.append((rng, generator_state(rng)))
        except ValueError:
            raise ValueError(f"activity_gradient(keep='recompute'): {type(m).__name__} draws from a generator whose "
                             "state cannot be saved (CuPy's), so a re-run cannot repeat its masks; use "
                             "keep='tape'") from None
    return buffers, rngs


def _restore(block: Any, saved: tuple[dict, list]) -> None:
    buffers, rngs = saved
    if buffers:
        block.load_state_dict(buffers, strict=False)  # copied into the buffers in place
    for rng, state in rngs:
        set_generator_state(rng, state)


def exact_activation_gradients(blocks: Sequence[Any], loss_fn: Callable, x: Any, y: Any,
                               shapes: Sequence[tuple]) -> list:
    """Gradients of the summed per-sample loss w.r.t. every block output (reverse mode), a
    standalone reference: ``shapes`` are the block output shapes; the blocks run in their current
    mode (in train mode this advances batch-norm statistics and dropout generators once more)."""
    xp = get_xp(x)

    def f(*eps):  # the same forward, with a zero "perturbation" leaf added to every block output
        h = x
        for b, e in zip(blocks, eps):
            h = b(h) + e
        return loss_fn(h, y).sum()

    out, fn = vjp(f, *[xp.zeros(s, dtype=x.dtype) for s in shapes])
    return list(fn(xp.ones_like(out)))


def activation_sizes(blocks: Sequence[Any], x: Any) -> list[int]:
    """Per-sample output size of each block for inputs like ``x`` (one batch-1 forward pass on plain
    arrays in eval mode: no batch-norm statistics or dropout state change)."""
    return probe_blocks(list(blocks), x)[0]


def activity_gradient(model: Any, loss_fn: Callable, x: Any, y: Any, *, k: int | None = None,
                      sampler: Any = "normal", aggregate: Any = "projection", rng: Any = None,
                      shared: bool = False, scale: bool = False, simulated: bool = False, keep: str = "tape",
                      blocks: Sequence[Any] | None = None, tangents: Any = None,
                      return_estimate: bool = False, comm: Communicator | None = None,
                      split: str = "tangents", estimator: str = "per-sample",
                      other_tangents: str = "exchange") -> ActivityResult:
    """Activity-perturbed forward gradient of ``mean_b loss_fn(model(x), y)[b]`` w.r.t. the parameters.

    ``loss_fn(logits, y)`` must return per-sample losses of shape (B,) (e.g.
    ``cross_entropy(..., reduction="none")``). ``model.blocks()`` (or ``blocks``) gives the
    perturbed block partition. ``k`` tangents per sample are drawn with ``sampler`` (a name, a
    sampler callable as in :mod:`~dualtensor.fgrad.samplers`) from ``rng`` (seed or Generator),
    independently per sample unless ``shared``; i.i.d. samplers (normal, rademacher) are drawn
    block by block, structured ones (orthonormal, basis, cone, ...) over the whole per-sample
    activation vector of size n (found by :func:`activation_sizes`). ``tangents`` may supply the
    (k, B, n) tangents instead. ``aggregate``: a name or a callable ``(d, V) -> estimate``;
    ``scale=True`` asks the projection for its norm correction. ``simulated=True`` replaces the
    forward-mode directional derivatives by exact ones, ``d = V · g`` with g the per-sample
    gradients of the summed losses w.r.t. every block output from one reverse pass (the forward
    then carries no tangents; the same rng draws the same tangents; same aggregation; batch-norm
    statistics and dropout masks advance once, as in a real step), for analysis.
    ``rng`` may be a :class:`~dualtensor.fgrad.streams.KeyedTangents` (tangents as a pure
    function of seed, step, tangent, block and sample). With ``comm`` (a :mod:`dualtensor.distributed`
    communicator of P ranks, a keyed ``rng`` or a seed, the same arguments on every rank):
    ``split="tangents"``: each rank carries its share of the k tangents through the forward pass,
    the (k, B) directional derivatives are gathered and every rank gets the same estimate (with
    the library's aggregators and i.i.d. per-sample tangents each rank aggregates its B/P samples
    and one Allgather joins the (B, n) estimate; it gets the other ranks' tangents for those rows by
    one Alltoallv from the ranks that drew them (``other_tangents="exchange"``, the default) or draws
    them itself from the keyed stream (``"draw"``: no tangent moves, more work; the same numbers
    either way); otherwise every rank draws all k tangents and aggregates them all);
    ``split="data"``: ``x``, ``y`` are this rank's shard of the batch (the tangents are those of
    its rows of the global batch), and the loss and gradients are summed over the ranks weighted
    by shard size (one Allreduce), so every rank gets the gradient of the global batch mean
    (``d`` and ``estimate`` stay per shard).
    ``estimator``: ``"per-sample"`` (the default: a tangent per sample, per-sample directional
    derivatives and aggregation, block cotangent ``estimate_b / B``) or ``"batch"`` (the estimator
    of Flügel et al.'s reference code: the k tangents are shared by the batch, ``d`` is the
    directional derivative of the batch-mean loss, ``mean_b d[:, b]``, one estimate ê of the
    gradient w.r.t. the shared activation is aggregated from it and every sample's block
    cotangent is ê, so a block's gradient is ``sum_b J_b^T ê``; B times the scale of the mean
    objective, as in that code, so its learning rates apply; ``estimate`` is then (1, n)).
    In train mode batch norm couples the samples: ``batch`` is then exact for both real and
    simulated directional derivatives, while ``per-sample``'s real ``d[j, b]`` also holds the
    effect of the other samples' tangents on sample b's loss, which its simulated ``V · g`` does
    not (a :class:`BatchNormCouplingWarning` says so).
    Returns an :class:`ActivityResult`; ``grads`` is keyed by parameter
    name (every parameter of the blocks; a parameter used by several blocks gets the sum).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"activity_gradient: estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if other_tangents not in OTHER_TANGENTS:
        raise ValueError(f"activity_gradient: other_tangents must be one of {', '.join(OTHER_TANGENTS)}, "
                         f"got {other_tangents!r}")
    if estimator == "batch":
        if tangents is not None and tangents.shape[1] != 1 and bool(get_xp(tangents).any(tangents != tangents[:, :1])):
            raise ValueError("activity_gradient: estimator='batch' shares each tangent across the batch; the "
                             "supplied tangents differ between samples")
        shared = True
    res, weight = _estimate(model, loss_fn, x, y, k, sampler, aggregate, rng, shared, scale, simulated, keep, blocks,
                            tangents, return_estimate, comm, split, estimator, other_tangents)
    if split == "data" and comm is not None and comm.size > 1:  # after the step's temporaries are gone
        from ..distributed import allreduce_grads

        res.loss, res.grads = allreduce_grads(comm, res.loss, res.grads, weight)
    return res


def _estimate(model: Any, loss_fn: Callable, x: Any, y: Any, k: int | None, sampler: Any, aggregate: Any, rng: Any,
              shared: bool, scale: bool, simulated: bool, keep: str, blocks: Sequence[Any] | None, tangents: Any,
              return_estimate: bool, comm: Any, split: str, estimator: str,
              other_tangents: str) -> tuple[ActivityResult, float]:
    """This rank's estimate and its weight in the sum over the ranks (its share of the batch)."""
    if keep not in ("tape", "recompute"):
        raise ValueError(f"activity_gradient: keep must be 'tape' or 'recompute', got {keep!r}")
    blocks = list(model.blocks() if blocks is None else blocks)
    if not blocks:
        raise ValueError("activity_gradient: the model has no blocks to perturb")
    if estimator == "per-sample":
        _warn_batch_norm(blocks)
    names = {id(p): n for n, p in model.named_parameters()}
    xp = get_xp(x)
    B = x.shape[0]
    if tangents is not None:
        if k is None:
            k = tangents.shape[0]
        if tangents.ndim != 3:
            raise ValueError(f"activity_gradient: tangents must have shape (k, B, n), got {tuple(tangents.shape)}")
        validate_tangents(tangents, k, (tangents.shape[-1],), batch=B, xp=xp)
    elif k is None or int(k) != k or k < 1:
        raise ValueError(f"activity_gradient: k must be a positive integer (or pass tangents=), got {k!r}")
    k = int(k)
    agg = get_aggregator(aggregate, scale=True) if scale else get_aggregator(aggregate)
    rng, own = _split_plan(comm, split, k, rng, B, simulated)
    carried = k if own is None else own[1] - own[0]
    V = tangents if own is None or tangents is None else tangents[own[0]:own[1]]
    V_all = tangents  # all k tangents, where this rank has them (supplied, or a structured draw)
    draw = None
    if V is None:  # one generator for all blocks (a seed must not restart per block)
        draw = _tangent_draw(sampler, k, rng, xp, B, shared, own)
        if not draw.per_block:  # structured: draw the whole (k, B, n) at once
            probe_sizes, dtype = probe_blocks(blocks, x)  # costs 1/B of a primal forward pass
            if own is not None:  # every rank draws all k anyway (they are coupled): keep them to aggregate
                V_all = _tangent_draw(sampler, k, rng, xp, B, shared).whole(sum(probe_sizes), dtype)
                V, draw = V_all[own[0]:own[1]], None
            else:
                V, draw = draw.whole(sum(probe_sizes), dtype), None

    leaves: dict[int, tuple[str, Any]] = {}       # traced leaf id -> (name, parameter)
    traces, inputs, sizes, shapes, V_parts, sim_leaves = [], [], [], [], [], []
    h: Any = x
    offset = 0
    for i, block in enumerate(blocks):
        params = _block_params(block)
        if keep == "tape":
            subs = {}
            for n, p in params:
                t = Traced(p.data)
                subs[n] = t
                leaves[t.id] = (names.get(id(p), n), p)
            with block.substitute(subs):
                out = block(h)
        else:
            inputs.append((h.primal if type(h) is DualTensor else h.value if type(h) is Traced else h,
                           _snapshot(block)))
            out = block(h)
        primal = out.primal if type(out) is DualTensor else out.value if type(out) is Traced else out
        traces.append(out.trace if type(out) is DualTensor else out if type(out) is Traced else None)
        if primal.ndim < 1 or primal.shape[0] != B:
            raise ValueError(f"activity_gradient: block {i} returned shape {primal.shape}, expected batch {B} first")
        shapes.append(primal.shape)
        n_i = int(np.prod(primal.shape[1:]))
        sizes.append(n_i)
        if draw is not None:
            v_i = draw(n_i, primal.dtype)
            V_parts.append(v_i)
        else:
            if offset + n_i > V.shape[-1]:
                raise ValueError(f"activity_gradient: tangents have {V.shape[-1]} activation entries per sample, "
                                 f"but block {i} ends at entry {offset + n_i}")
            v_i = V[:, :, offset:offset + n_i]
        offset += n_i
        v_i = v_i.reshape(carried, *primal.shape)
        if v_i.dtype != primal.dtype:
            v_i = v_i.astype(primal.dtype)
        if simulated:  # reverse mode only: a tape leaf per block output gives its exact gradient
            h = Traced(primal)
            sim_leaves.append(h)
        else:
            t_in = out.tangent + v_i if type(out) is DualTensor and type(out.tangent) is not Zero else v_i
            h = DualTensor(primal, t_in)  # a fresh tape boundary: the next block sees a constant input
    if V is not None and offset != V.shape[-1]:
        raise ValueError(f"activity_gradient: tangents have {V.shape[-1]} activation entries per sample, "
                         f"the blocks produce {offset}")

    per_sample = loss_fn(h, y)
    if type(per_sample) is not (Traced if simulated else DualTensor) or per_sample.shape != (B,):
        raise ValueError(f"activity_gradient: loss_fn must return per-sample losses of shape ({B},) "
                         f"(e.g. reduction='none'), got {getattr(per_sample, 'shape', type(per_sample))}")
    loss = (per_sample.value if simulated else per_sample.primal).mean()  # stays on the device
    if V is None and own is None:  # a tangent split keeps the per-block parts
        V = V_parts[0] if len(V_parts) == 1 else _side_by_side(V_parts, xp)
    est = None
    if simulated:  # exact gradients of the summed per-sample losses w.r.t. every block output:
        # backprop block by block (block i's input is the tape leaf holding block i-1's output)
        def grad_of(got: dict, leaf: Any) -> Any:
            return got[leaf.id] if leaf.id in got else xp.zeros_like(leaf.value)

        exact = [None] * len(blocks)
        exact[-1] = grad_of(backward([per_sample], [xp.ones_like(per_sample.value)]), sim_leaves[-1])
        for i in range(len(blocks) - 1, 0, -1):
            tr = traces[i]
            got = backward([tr], [exact[i]]) if tr is not None else {}
            exact[i - 1] = grad_of(got, sim_leaves[i - 1])
        g_flat = xp.concatenate([e.reshape(B, -1) for e in exact], axis=1)
        d = xp.einsum("kbn,bn->kb", V, g_flat.astype(V.dtype, copy=False))
    else:
        d = per_sample.tangent_array()
        if own is not None:
            d = comm.allgather(d)  # (k, B): every rank's directional derivatives
            if tangents is None and not shared and is_iid(sampler) and _per_sample(aggregate):  # (not batch)
                est = _rows_estimate(agg, d, V_parts, own, rng, sampler, k, comm, other_tangents)
            if est is None or return_estimate:  # aggregate all k tangents: regenerate the other ranks' ones
                V = V_all if V_all is not None else _all_tangents(sampler, k, rng, xp, B, shared, own, V_parts)
    first, end, total = rng.row_range if split == "data" and isinstance(rng, KeyedTangents) and rng.row_range \
        else (0, B, B)
    if estimator == "batch":
        # data split: the mean over the global batch (k numbers summed over the ranks)
        d_mean = comm.allreduce(d.sum(axis=1)) * (1.0 / total) if total != B else d.mean(axis=1)
        est = agg(d_mean[:, None], V[:, :1])  # (1, n): the shared activation's gradient of the mean loss
        # every sample's cotangent is ê; scaled by total/B so the shard-weighted sum over the ranks is the sum
        cot = xp.broadcast_to(est * (total / B) if total != B else est, (B, est.shape[1]))
    else:
        if est is None:
            est = agg(d, V)  # (B, n): per-sample dl_b/da estimate
        cot = est * (1.0 / B)  # the objective is the batch mean

    grads: dict[str, Any] = {}

    def add(name: str, g: Any) -> None:
        grads[name] = grads[name] + g if name in grads else g

    off = 0
    if keep == "tape":
        outs, cots = [], []
        for tr, shape, n_i in zip(traces, shapes, sizes):
            if tr is not None:
                outs.append(tr)
                cots.append(cot[:, off:off + n_i].reshape(shape).astype(tr.value.dtype, copy=False))
            off += n_i
        got = backward(outs, cots) if outs else {}
        for lid, (name, p) in leaves.items():
            add(name, got[lid] if lid in got else xp.zeros_like(p.data))
    else:
        for block, (inp, saved), shape, n_i in zip(blocks, inputs, shapes, sizes):
            params = _block_params(block)
            c = cot[:, off:off + n_i].reshape(shape)
            off += n_i
            if not params:
                continue
            now = _snapshot(block)
            _restore(block, saved)
            pnames = [n for n, _ in params]

            def run(*vals, block=block, inp=inp, pnames=pnames):
                with block.substitute(dict(zip(pnames, vals))):
                    return block(inp)

            try:
                out_value, fn = vjp(run, *[p.data for _, p in params])
            finally:
                _restore(block, now)
            for (n, p), g in zip(params, fn(c.astype(out_value.dtype, copy=False))):
                add(names.get(id(p), n), g)
    return ActivityResult(loss, grads, d, sizes, est if return_estimate else None,
                          V if return_estimate else None), (end - first) / total


def _warn_batch_norm(blocks: Sequence[Any]) -> None:
    """Warn when a train-mode batch norm sits downstream of an injection (in a block after the first)."""
    from ..nn.layers import BatchNorm2d

    for i, block in enumerate(blocks[1:], start=2):
        if any(isinstance(m, BatchNorm2d) and m.training for m in block.modules()):
            warnings.warn(f"activity_gradient: block {i} holds a train-mode batch norm, which couples the samples: "
                          "per-sample activity perturbation's real directional derivatives then include the other "
                          "samples' tangents (not what its simulated estimate computes); use estimator='batch' "
                          "(--estimator batch), or eval-mode batch norm, for an exact match",
                          BatchNormCouplingWarning, stacklevel=4)
            return


def _rows_estimate(agg: Any, d: Any, parts: list, own: tuple[int, int], rng: Any, sampler: Any, k: int,
                   comm: Any, other_tangents: str) -> Any:
    """The per-sample estimate (B, n) over ``comm`` with the aggregation split by samples: each rank
    aggregates its B/P samples with all k tangents (the other ranks' ones for its rows received, or
    drawn again: the keyed stream gives any rows) and one Allgather of the B·n estimate joins the rows.
    ``parts``: this rank's tangents ``own``, block by block, (k_r, B, n_i)."""
    xp, B = get_xp(parts[0]), parts[0].shape[1]
    first, end = comm.split(B)
    if other_tangents == "exchange":
        V = _exchange_rows(parts, own, k, comm)
    else:
        V = _all_tangents(sampler, k, rng.rows(first, end, B), xp, end - first, False, own,
                          [p[:, first:end] for p in parts])
    return comm.allgather(xp.ascontiguousarray(agg(d[:, first:end], V)))


def _exchange_rows(parts: list, own: tuple[int, int], k: int, comm: Any) -> Any:
    """All k tangents (k, B_r, n) of this rank's rows B_r of the batch: its own ones copied from
    ``parts`` (block by block, (k_r, B, n_i)), every other rank's received from it (one Alltoallv:
    each rank sends each other rank its tangents for that rank's rows)."""
    from ..distributed import split_range

    xp, B, dtype = get_xp(parts[0]), parts[0].shape[1], np.result_type(*(p.dtype for p in parts))
    P, r, n = comm.size, comm.rank, sum(p.shape[-1] for p in parts)
    rows = [split_range(B, P, s) for s in range(P)]
    tangents = [split_range(k, P, s) for s in range(P)]
    k_r, (first, end) = own[1] - own[0], rows[r]
    out = xp.empty((k, end - first, n), dtype=dtype)
    sent = [0 if s == r else k_r * (e - f) * n for s, (f, e) in enumerate(rows)]
    send = xp.empty(sum(sent), dtype=dtype)
    offsets = np.cumsum([0, *sent[:-1]]).tolist()
    # where each rank's rows of this rank's tangents go: its part of the send buffer, or (this rank) out
    dest = [out[own[0]:own[1]] if s == r else send[o:o + m].reshape(k_r, e - f, n)
            for s, ((f, e), o, m) in enumerate(zip(rows, offsets, sent))]
    col = 0
    for p in parts:
        for (f, e), target in zip(rows, dest):
            target[:, :, col:col + p.shape[-1]] = p[:, f:e]
        col += p.shape[-1]
    got = [0 if s == r else (hi - lo) * (end - first) * n for s, (lo, hi) in enumerate(tangents)]
    comm.alltoallv(send, list(zip(offsets, sent)), out.reshape(-1),
                   [(lo * (end - first) * n, m) for (lo, _), m in zip(tangents, got)])
    return out


def _side_by_side(parts: list, xp: Any) -> Any:
    """The blocks' (k, B, n_i) tangents as one (k, B, n) array; tangents shared by the batch (broadcast
    over B) stay one broadcast row, which the projection factors once instead of per sample."""
    if all(aggregators.is_shared(p) for p in parts):
        row = xp.concatenate([p[:, :1] for p in parts], axis=-1)
        return xp.broadcast_to(row, (row.shape[0], parts[0].shape[1], row.shape[-1]))
    return xp.concatenate(parts, axis=-1)


def _all_tangents(sampler: Any, k: int, rng: Any, xp: Any, B: int, shared: bool, own: tuple[int, int],
                  own_parts: list) -> Any:
    """All k tangents (k, B, n) around this rank's tangents ``own`` (``own_parts``: block by block,
    (k_r, B, n_i)), the others drawn again (i.i.d. samplers: a structured draw is kept whole where it
    is made)."""
    dtype = np.result_type(*(p.dtype for p in own_parts))
    lo, hi = own
    before = _tangent_draw(sampler, k, rng, xp, B, shared, (0, lo))
    after = _tangent_draw(sampler, k, rng, xp, B, shared, (hi, k))
    rows = 1 if shared else B  # shared: one row, broadcast at the end
    V = xp.empty((k, rows, sum(p.shape[-1] for p in own_parts)), dtype=dtype)
    off = 0
    for i, part in enumerate(own_parts):
        n_i = part.shape[-1]
        V[:lo, :, off:off + n_i] = before.part(i, n_i, dtype)[:, :rows]
        V[lo:hi, :, off:off + n_i] = part[:, :rows]
        V[hi:, :, off:off + n_i] = after.part(i, n_i, dtype)[:, :rows]
        off += n_i
    return xp.broadcast_to(V, (k, B, V.shape[-1])) if shared else V

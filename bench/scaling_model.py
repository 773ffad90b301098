"""α–β model of one training step on P ranks, from the 1- and 2-rank measurements of bench/scaling.py.

Strategies (:data:`STRATEGIES`, gradient + how the step is split over the ranks):

* ``activity tangents`` (one of dualtensor's own aggregators — projection here, as bench/scaling.py
  runs it —, i.i.d. per-sample tangents: dualtensor's "split the samples" path of
  ``activity_gradient(..., comm=comm)`` with its default ``other_tangents="exchange"``): each
  rank draws its own k_r tangents (``split_range(k, P, r)``) for all B samples and carries them
  through its forward pass; (1) an Allgather of the directional derivatives (k×B numbers in all,
  k_r×B from each rank); (2) an Alltoallv in which each rank sends every other rank its k_r tangents
  for that rank's B_s = ``split_range(B, P, s)`` samples (k_r·(B − B_r)·n numbers sent by rank r,
  n = Σ sizes the per-sample activation size); each rank aggregates its B_r samples with all k
  tangents, and (3) an Allgather of the (B, n) estimate (B_r×n from each rank) gives every rank the
  whole estimate; every rank then runs the block-local VJPs on it. No Allreduce, whatever k and n.
  (``other_tangents="draw"``, user aggregators, structured samplers and shared tangents draw tangents
  again instead of receiving them: not modelled here.)
* ``weight tangents``: each rank carries ceil(k/P) of the k tangents through its forward pass, the
  ranks Allgather the k directional derivatives, every rank regenerates all tangents and aggregates.
* ``activity data``: each rank runs all k tangents on ceil(B/P) rows, then one Allreduce of the
  |θ| + 1 floats of its weighted gradient and loss.
* ``weight data``: each rank runs all k (shared, keyed) weight tangents on its rows; the ranks
  Allreduce the k + 1 numbers (loss, k directional derivatives), never a |θ|-sized buffer.
* ``backprop data``: each rank backpropagates its rows; Allreduce of |θ| + 1 floats.

Per-step time ``T(P) = s · f(P) + r + comm(P)``:

* ``s``: the measured one-rank compute that the split divides, ``r``: the part every rank repeats
  (activity tangents: the primal forward pass, the block-local VJPs on the whole estimate, Python
  overhead; weight tangents: the primal pass, the regeneration and the aggregation; data-parallel:
  the draw of the global weight tangents, the (k, |θ|) aggregation, Python overhead). ``f(P)`` is the
  largest rank's share: ceil(k/P)/k of the tangents, ceil(B/P)/B of the rows.
* Activity tangents: each rank draws only its own k_r tangents (for all B samples) and aggregates only
  its B_r samples, so both shrink as f(P) where P divides k and B and are extrapolated exactly
  (small-GEMM inefficiency on few rows aside).
* Split (:func:`split_compute`), from the 1-rank step time T1, the 2-rank step time T2, the time the
  2-rank step spent inside collectives c2, and the slowdown σ of independent work when two ranks
  share the machine (σ = 2-rank / 1-rank time of a step without communication, at least 1):
  compute on 2 ranks ``C2 = (T2 − c2) / σ`` = s·f(2) + r, so ``r = (C2 − f(2)·T1) / (1 − f(2))``
  (``= 2·C2 − T1`` when f(2) = 1/2), clamped to [0, T1], and ``s = T1 − r``. Whatever the 2-rank
  run does not speed up (load imbalance, shared-memory copies the collective timer misses) lands
  in ``r``: the model extrapolates what was measured, it does not assume perfect scaling.
* ``comm(P)``: the sum over the step's collectives (:func:`collectives`) of standard costs with
  latency α and bandwidth β (bytes/s) for n bytes: ring Allreduce ``2(P−1)α + 2(P−1)/P · n/β``;
  Allgather of n bytes in all ``(P−1)α + (P−1)/P · n/β``; Alltoallv of an n-byte array of which each
  rank keeps 1/P² and sends (P−1)/P² (pairwise exchanges) ``(P−1)α + (P−1)/P² · n/β``. Zero for P = 1.
  Activity tangents: the Allgather of k·B numbers, the Alltoallv of the k·B·n tangents and the
  Allgather of B·n numbers (the estimate's is activation-sized every step, whatever P; the tangents'
  part per rank shrinks as 1/P).

Bytes per rank (:func:`payload_bytes`, :func:`rank_payload_bytes`) follow ``Communicator.bytes_sent``:
an Allgather counts the rank's own part, an Allreduce the whole buffer, an Alltoallv what goes to
other ranks. For activity tangents rank r sends (k_r·B + k_r·(B − B_r)·n + B_r·n)·itemsize, with k_r
its tangent share and B_r its row share (``dualtensor.distributed.split_range``); the report gives the
largest rank's figure.

Feasibility: data-parallel needs at least one row per rank (P ≤ B), tangent-parallel at least one
tangent per rank (P ≤ k); :func:`step_time` returns None for an infeasible cell.
Not modelled: the loss of GEMM efficiency on few rows per rank (optimistic for data-parallel at
large P, and for the tangent split's aggregation of B_r rows), uneven parts of an Allgather (P not
dividing k or B: the largest part sets the time), overlap of communication with compute, the
optimizer update (not part of the timed step), and network contention beyond α and β.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

STRATEGIES = ("activity tangents", "activity data", "weight tangents", "weight data", "backprop data")
P_VALUES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Network:
    """A network for the α–β model: latency ``alpha`` (s) and bandwidth ``beta`` (bytes/s)."""

    name: str
    alpha: float
    beta: float


def networks(alpha_us: float = 5.0) -> tuple[Network, ...]:
    """The 10 Gb/s and 100 Gb/s networks of the report, both with latency ``alpha_us`` µs."""
    return (Network("10 Gb/s", alpha_us * 1e-6, 10e9 / 8), Network("100 Gb/s", alpha_us * 1e-6, 100e9 / 8))


@dataclass(frozen=True)
class Split:
    """One-rank compute split into the part the ranks share out (``scaled``) and the part every rank
    repeats (``repeated``), in seconds."""

    scaled: float
    repeated: float

    @property
    def total(self) -> float:
        return self.scaled + self.repeated


def allreduce_time(n_bytes: float, P: int, net: Network) -> float:
    """Ring Allreduce of ``n_bytes`` on ``P`` ranks: 2(P−1)α + 2(P−1)/P · n/β (0 for P = 1)."""
    if P <= 1:
        return 0.0
    return 2 * (P - 1) * net.alpha + 2 * (P - 1) / P * n_bytes / net.beta


def alltoall_time(n_bytes: float, P: int, net: Network) -> float:
    """Alltoallv of an ``n_bytes`` array split evenly in P × P blocks, block (r, s) sent from rank r to
    rank s, on ``P`` ranks: each rank sends its P − 1 off-diagonal blocks, (P−1)α + (P−1)/P² · n/β
    (0 for P = 1)."""
    if P <= 1:
        return 0.0
    return (P - 1) * net.alpha + (P - 1) / P ** 2 * n_bytes / net.beta


def allgather_time(n_bytes: float, P: int, net: Network) -> float:
    """Allgather of ``n_bytes`` in all (each rank contributes n/P) on ``P`` ranks:
    (P−1)α + (P−1)/P · n/β (0 for P = 1)."""
    if P <= 1:
        return 0.0
    return (P - 1) * net.alpha + (P - 1) / P * n_bytes / net.beta


_TIME = {"allreduce": allreduce_time, "allgather": allgather_time, "alltoall": alltoall_time}
# (latency hops, share of the bytes each rank moves) of each kind, the terms of _TIME
_TERMS = {"allreduce": (lambda P: 2 * (P - 1), lambda P: 2 * (P - 1) / P),
          "allgather": (lambda P: P - 1, lambda P: (P - 1) / P),
          "alltoall": (lambda P: P - 1, lambda P: (P - 1) / P ** 2)}


def _parts(strategy: str) -> tuple[str, str]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    grad, mode = strategy.split()
    return grad, mode


def feasible(strategy: str, P: int, k: int, batch: int) -> bool:
    """Whether ``strategy`` can run on ``P`` ranks: tangent-parallel needs P ≤ k, data-parallel P ≤ batch."""
    _, mode = _parts(strategy)
    return 1 <= P <= (k if mode == "tangents" else batch)


def work_fraction(strategy: str, P: int, k: int, batch: int) -> float:
    """The largest rank's share of the split work: ceil(k/P)/k (tangents) or ceil(B/P)/B (rows)."""
    _, mode = _parts(strategy)
    n = k if mode == "tangents" else batch
    return math.ceil(n / P) / n


def _activation_size(strategy: str, sizes: Sequence[int] | None) -> int:
    if sizes is None or not len(sizes):
        raise ValueError(f"{strategy}: needs the model's per-block activation sizes (sizes=...)")
    return int(sum(sizes))


def collectives(strategy: str, n_params: int, k: int, batch: int, itemsize: int = 4,
                sizes: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """The step's collectives and their sizes in bytes (all ranks' parts together for an Allgather).
    Activity tangents (``sizes``: the per-block activation sizes, n = Σ sizes): ("allgather", k·B),
    ("alltoall", k·B·n) and ("allgather", B·n) numbers (the directional derivatives, the tangents
    each rank sends the others for their samples, the estimate); weight tangents:
    ("allgather", k); data-parallel: ("allreduce", |θ| + 1 or k + 1 numbers, the gradient or the
    directional derivatives plus the loss)."""
    grad, mode = _parts(strategy)
    if mode == "tangents":
        if grad == "weight":
            return [("allgather", itemsize * k)]
        n = _activation_size(strategy, sizes)
        return [("allgather", itemsize * k * batch), ("alltoall", itemsize * k * batch * n),
                ("allgather", itemsize * batch * n)]
    return [("allreduce", itemsize * ((k if grad == "weight" else n_params) + 1))]


def rank_payload_bytes(strategy: str, P: int, n_params: int, k: int, batch: int, itemsize: int = 4,
                       sizes: Sequence[int] | None = None) -> list[int]:
    """Bytes each of the ``P`` ranks hands to collectives per step, as ``Communicator.bytes_sent``
    counts them (an Allgather: the rank's own part; an Allreduce: its whole buffer); [0] for P = 1.
    Activity tangents, rank r: (k_r·B + k_r·(B − B_r)·n + B_r·n)·itemsize (k_r: its tangents, B_r: its
    rows of the estimate)."""
    if P <= 1:
        return [0]
    from dualtensor.distributed import split_range

    grad, mode = _parts(strategy)
    if mode == "data":
        return [collectives(strategy, n_params, k, batch, itemsize)[0][1]] * P
    k_r = [hi - lo for lo, hi in (split_range(k, P, r) for r in range(P))]
    if grad == "weight":
        return [itemsize * kr for kr in k_r]
    n = _activation_size(strategy, sizes)
    B_r = [hi - lo for lo, hi in (split_range(batch, P, r) for r in range(P))]
    return [itemsize * (kr * batch + kr * (batch - br) * n + br * n) for kr, br in zip(k_r, B_r)]


def payload_bytes(strategy: str, P: int, n_params: int, k: int, batch: int, itemsize: int = 4,
                  sizes: Sequence[int] | None = None) -> int:
    """The largest rank's bytes per step (:func:`rank_payload_bytes`); 0 for P = 1."""
    return max(rank_payload_bytes(strategy, P, n_params, k, batch, itemsize, sizes))


def comm_time(strategy: str, P: int, n_params: int, k: int, batch: int, net: Network, itemsize: int = 4,
              sizes: Sequence[int] | None = None) -> float:
    """Seconds of communication per step on ``P`` ranks (:func:`collectives`, α–β costs, summed)."""
    return sum(_TIME[kind](n, P, net) for kind, n in collectives(strategy, n_params, k, batch, itemsize, sizes))


def comm_terms(strategy: str, P: int, n_params: int, k: int, batch: int, alpha: float,
               itemsize: int = 4, sizes: Sequence[int] | None = None) -> tuple[float, float]:
    """:func:`comm_time` as (latency seconds, bytes to divide by β): comm = latency + bytes / β."""
    if P <= 1:
        return 0.0, 0.0
    lat = nb = 0.0
    for kind, n in collectives(strategy, n_params, k, batch, itemsize, sizes):
        hops, share = _TERMS[kind]
        lat, nb = lat + hops(P) * alpha, nb + share(P) * n
    return lat, nb


def breakeven(strategy: str, rival: str, P: int, splits: dict[str, Split], n_params: int, k: int, batch: int,
              alpha: float, sizes: Sequence[int] | None = None) -> tuple[str, float | None]:
    """For which bandwidths β ``strategy`` is faster per step than ``rival`` on ``P`` ranks (both
    feasible): ("below", β*) or ("above", β*) in bytes/s, ("always", None) or ("never", None).
    Each time is A + B/β (A: compute and latency, B: the bytes term), so they cross at
    β* = (B_rival − B) / (A − A_rival)."""
    if not (feasible(strategy, P, k, batch) and feasible(rival, P, k, batch)):
        return "never", None

    def terms(s: str) -> tuple[float, float]:
        lat, nb = comm_terms(s, P, n_params, k, batch, alpha, sizes=sizes)
        sp = splits[s]
        return sp.scaled * work_fraction(s, P, k, batch) + sp.repeated + lat, nb

    (a, b), (a_r, b_r) = terms(strategy), terms(rival)
    if a <= a_r and b <= b_r:
        return ("never", None) if (a, b) == (a_r, b_r) else ("always", None)
    if a >= a_r and b >= b_r:
        return "never", None
    beta = (b_r - b) / (a - a_r)
    return ("below" if a > a_r else "above"), beta


def split_compute(t1: float, t2: float, comm2: float = 0.0, slowdown: float = 1.0, fraction2: float = 0.5) -> Split:
    """Split the 1-rank step time ``t1`` into scaled and repeated parts from the 2-rank step time
    ``t2``, of which ``comm2`` was spent in collectives; ``slowdown`` (clamped to ≥ 1) is how much
    slower independent work runs on two ranks than on one, ``fraction2`` the largest rank's share of
    the split work on two ranks (module docstring). The repeated part is clamped to [0, t1]."""
    if t1 <= 0 or not (0 < fraction2 < 1):
        raise ValueError(f"split_compute: need t1 > 0 and 0 < fraction2 < 1, got {t1}, {fraction2}")
    c2 = max(t2 - comm2, 0.0) / max(slowdown, 1.0)
    repeated = min(max((c2 - fraction2 * t1) / (1 - fraction2), 0.0), t1)
    return Split(t1 - repeated, repeated)


def k_intercept(t_a: float, k_a: int, t_b: float, k_b: int) -> float:
    """The k-independent part ``a`` of a step time ``a + b·k`` through (k_a, t_a) and (k_b, t_b): a
    lower bound of what tangent-parallelism repeats (the primal pass and the VJPs; for weight tangents
    the regeneration and the aggregation grow with k and are repeated too)."""
    if k_a == k_b:
        raise ValueError("k_intercept: need two different k")
    return (k_b * t_a - k_a * t_b) / (k_b - k_a)


def step_time(strategy: str, P: int, split: Split, n_params: int, k: int, batch: int, net: Network,
              itemsize: int = 4, sizes: Sequence[int] | None = None) -> float | None:
    """Modelled seconds per step on ``P`` ranks (None when infeasible): s·f(P) + r + comm(P)."""
    if not feasible(strategy, P, k, batch):
        return None
    compute = split.scaled * work_fraction(strategy, P, k, batch) + split.repeated
    return compute + comm_time(strategy, P, n_params, k, batch, net, itemsize, sizes)


def model_grid(splits: dict[str, Split], n_params: int, k: int, batch: int, nets: Iterable[Network],
               Ps: Iterable[int] = P_VALUES, sizes: Sequence[int] | None = None
               ) -> dict[str, dict[int, dict[str, float | None]]]:
    """{network: {P: {strategy: seconds or None}}} for the strategies in ``splits`` (``sizes``: the
    per-block activation sizes, needed for activity tangents)."""
    return {net.name: {P: {s: step_time(s, P, sp, n_params, k, batch, net, sizes=sizes) for s, sp in splits.items()}
                       for P in Ps} for net in nets}


def fastest(times: dict[str, float | None]) -> str | None:
    """The strategy with the smallest modelled time among the feasible ones (None if none is)."""
    ok = {s: t for s, t in times.items() if t is not None}
    return min(ok, key=ok.get) if ok else None


def wins(grid: dict[int, dict[str, float | None]], strategy: str, rivals: Iterable[str]) -> list[int]:
    """The P at which ``strategy`` is feasible and faster than every feasible rival."""
    out = []
    for P, times in grid.items():
        t = times.get(strategy)
        if t is not None and all(times.get(r) is None or t < times[r] for r in rivals if r != strategy):
            out.append(P)
    return out

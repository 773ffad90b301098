"""What a tangent-parallel rank pays to aggregate: regenerate every tangent, or split the samples.

Run under MPI with two ranks (one BLAS thread each)::

    mpiexec -n 2 python bench/tangent_split_cost.py    # writes bench/results/tangent_split_cost.md

For the MLP 784-1024-1024-10 at batch 64 with activity perturbation (per-sample tangents, k = 16,
projection), a rank that carries k/P tangents through its forward pass still needs ALL k tangents
of a sample to aggregate it (the per-sample k×k Gram matrix). Two ways:

* **regenerate** (dualtensor's way for the other aggregators): draw the other ranks' tangents again
  from the keyed stream (k - k/P tangents on all n coordinates) and aggregate locally; nothing moves
  but the k×B directional derivatives.
* **split the samples** (dualtensor's way for its own aggregators, chosen by this measurement):
  each rank aggregates its B/P samples only, and one Allgather of the B·n estimate gives every rank
  the whole estimate for its block VJPs. The other ranks' tangents for its samples ((k - k/P) · B/P · n
  numbers) it either draws itself (``other_tangents="draw"``: the keyed stream gives any rows) or
  receives from the ranks that drew them (``"exchange"``, the default: one Alltoallv).

The script times each piece (min of repeats, both ranks busy at once) and prints both totals, then
whole activity-perturbation steps (``activity_gradient``, keyed tangents; ``--steps``: the MLP at
k = 16 and 4, the CNN at k = 16) with the other ranks' tangents exchanged and drawn, interleaved.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import limit_threads  # noqa: E402

limit_threads(1)

from dualtensor import distributed  # noqa: E402
from dualtensor import nn  # noqa: E402
from dualtensor.allocator import heap_arrays  # noqa: E402
from dualtensor.fgrad import activity_gradient, get_aggregator  # noqa: E402
from dualtensor.files import atomic_write_text  # noqa: E402
from dualtensor.fgrad.streams import KeyedTangents  # noqa: E402
from runtime_cases import make_case  # noqa: E402

SIZES, B, K = (1024, 1024, 10), 64, 16


def best(fn, comm, repeats: int) -> float:
    """Min over repeats of ``fn()``'s time (ms), ranks started together, averaged over the ranks."""
    fn()
    times = []
    for _ in range(repeats):
        comm.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(comm.allreduce(np.array([min(times)]))[0]) / comm.size  # mean over ranks


def step_times(comm, model_name: str, k: int, repeats: int) -> dict:
    """Min time (ms, mean over the ranks) of a model's tangent-parallel activity step (bench/runtime_cases.py's
    MNIST-shaped batch of 64, keyed tangents) with each ``other_tangents``, the two interleaved."""
    case = make_case(model_name, "mnist", B, xp=np, dtype=np.float32)
    loss = lambda logits, target: nn.functional.cross_entropy(logits, target, reduction="none")  # noqa: E731
    times: dict = {"exchange": [], "draw": []}
    for step in range(repeats + 1):
        for other in times:
            comm.barrier()
            t = time.perf_counter()
            activity_gradient(case.model, loss, case.x, case.y, k=k, rng=KeyedTangents(0, step), comm=comm,
                              blocks=case.blocks, other_tangents=other)
            comm.barrier()
            if step:  # the first is a warm-up
                times[other].append(time.perf_counter() - t)
    return {o: 1e3 * float(comm.allreduce(np.array([min(t)]))[0]) / comm.size for o, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--steps", default="mlp:16,mlp:4,cnn:16", metavar="MODEL:K,...",
                   help="whole steps timed both ways (default mlp:16,mlp:4,cnn:16; the CNN's take ~1 s each)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "tangent_split_cost.md"))
    args = p.parse_args()
    heap_arrays()  # as training's --heap-arrays and bench/scaling.py
    comm = distributed.init(require=True)
    P, n = comm.size, sum(SIZES)
    if P != 2:
        sys.exit(f"tangent_split_cost.py: run it on 2 ranks (mpiexec -n 2), not {P}")
    lo, hi = comm.split(K)
    keys = KeyedTangents(0, 0)
    agg = get_aggregator("projection")
    d = np.random.default_rng(0).standard_normal((K, B)).astype(np.float32)

    def draw(tangents, sizes):
        dr = keys.activity("normal", K, B, tangents=tangents)
        return [dr(m, np.float32) for m in sizes]

    V = np.concatenate(draw(None, SIZES), axis=-1)
    first, end = comm.split(B)
    mine = keys.rows(first, end, B)
    others = (hi, K) if lo == 0 else (0, lo)
    Vr, dr = np.ascontiguousarray(V[:, first:end]), np.ascontiguousarray(d[:, first:end])
    est = agg(dr, Vr)

    def draw_rows():
        dr_ = mine.activity("normal", K, end - first, tangents=others)
        return [dr_(m, np.float32) for m in SIZES]

    rows = {
        "draw this rank's k/P tangents (the forward pass needs them either way)": best(lambda: draw((lo, hi), SIZES),
                                                                                       comm, args.repeats),
        "regenerate: draw the other (k - k/P) tangents, all B samples": best(lambda: draw(others, SIZES), comm,
                                                                             args.repeats),
        "regenerate: projection of all B samples": best(lambda: agg(d, V), comm, args.repeats),
        "split: draw the other tangents for this rank's B/P samples": best(draw_rows, comm, args.repeats),
        "split: projection of this rank's B/P samples": best(lambda: agg(dr, Vr), comm, args.repeats),
        "split: Allgather of the B·n estimate (float32)": best(lambda: comm.allgather(est), comm, args.repeats),
    }
    cases = [(m, int(k)) for m, k in (c.split(":") for c in args.steps.split(","))]
    steps = {(m, k): step_times(comm, m, k, args.repeats if m == "mlp" else max(2, args.repeats // 4))
             for m, k in cases}
    regen = sum(v for k, v in rows.items() if k.startswith("regenerate"))
    split = sum(v for k, v in rows.items() if k.startswith("split"))
    if comm.is_root:
        lines = [f"# Tangent-parallel aggregation: regenerate or split the samples (`mpiexec -n {P} python "
                 "bench/tangent_split_cost.py`)", "",
                 f"MLP 784-1024-1024-10, batch {B}, activity perturbation, k = {K}, projection, float32, {P} ranks, "
                 f"1 BLAS thread each; min of {args.repeats} repeats, mean over ranks (ms).", "",
                 "| piece | ms |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in rows.items()]
        lines += ["", f"regenerate: {regen:.2f} ms per step, {K * B * 4} bytes gathered (the k×B directional "
                  f"derivatives); split: {split:.2f} ms per step, plus {B * n * 4} bytes gathered (the estimate: "
                  "activation-sized traffic every step).", "",
                  f"The whole step (batch {B}, `activity_gradient(..., comm=comm)`, keyed tangents, projection; min of "
                  f"{args.repeats} interleaved pairs for the MLP, {max(2, args.repeats // 4)} for the CNN; ms), "
                  "the other ranks' tangents for a rank's samples exchanged or drawn:", "",
                  "| model | k | exchange | draw | exchange / draw |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {m} | {k} | {t['exchange']:.4g} | {t['draw']:.4g} | {t['exchange'] / t['draw']:.3f} |"
                  for (m, k), t in steps.items()]
        lines += ["", f"(For the MLP at k = {K} the exchange sends {(hi - lo) * (B - (end - first)) * n * 4} bytes "
                  "a rank.)"]
        text = "\n".join(lines) + "\n"
        atomic_write_text(args.out, text)
        print(text)


if __name__ == "__main__":
    main()

"""What a tangent-parallel rank pays to aggregate: regenerate every tangent, or assemble the Gram matrix.

Run under MPI with two ranks (one BLAS thread each)::

    mpiexec -n 2 python bench/tangent_split_cost.py    # writes bench/results/tangent_split_cost.md

For the MLP 784-1024-1024-10 at batch 64 with activity perturbation (per-sample tangents, k = 16,
projection), a rank that carries k/P tangents through its forward pass still needs, for the
per-sample k×k Gram matrices, the products of ALL k tangents on common coordinates. Two ways:

* **regenerate** (dualtensor's way for the other aggregators): draw the other ranks' tangents again
  from the keyed stream (k - k/P tangents on all n coordinates) and aggregate locally; nothing moves
  but the k×B directional derivatives.
* **assemble** (dualtensor's way for projection, chosen by this measurement): split the n
  coordinates (whole blocks) over the ranks; each draws all k tangents on its coordinates
  ((k - k/P) · n/P new numbers), computes a partial Gram, one Allreduce of B·k² numbers, solves,
  forms its part of the estimate and an Allgather of B·n numbers gives every rank the whole
  estimate for its block VJPs.

The script times each piece (min of repeats, both ranks busy at once) and prints both totals.
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
from dualtensor.files import atomic_write_text  # noqa: E402
from dualtensor.fgrad import get_aggregator  # noqa: E402
from dualtensor.fgrad.streams import KeyedTangents  # noqa: E402

SIZES, B, K = (1024, 1024, 10), 64, 16


def best(fn, comm, repeats: int) -> float:
    """Min over repeats of the slowest rank's time of ``fn()`` (ms), ranks started together."""
    fn()
    times = []
    for _ in range(repeats):
        comm.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(comm.allreduce(np.array([min(times)]))[0]) / comm.size  # mean over ranks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "tangent_split_cost.md"))
    args = p.parse_args()
    comm = distributed.init(require=True)
    P, n = comm.size, sum(SIZES)
    lo, hi = comm.split(K)
    keys = KeyedTangents(0, 0)
    agg = get_aggregator("projection")
    d = np.random.default_rng(0).standard_normal((K, B)).astype(np.float32)

    def draw(tangents, sizes):
        dr = keys.activity("normal", K, B, tangents=tangents)
        return [dr(m, np.float32) for m in sizes]

    V = np.concatenate(draw(None, SIZES), axis=-1)
    mine = SIZES[:1] if comm.rank == 0 else SIZES[1:]  # blocks split over 2 ranks: 1024 | 1034
    Vm = V[:, :, :sum(mine)]
    Vb = Vm.transpose(1, 0, 2)  # (B, k, n/P)
    G = Vb @ Vb.transpose(0, 2, 1)
    est = np.empty((B, sum(mine)), np.float32)
    rows = {
        "draw this rank's k/P tangents (the forward pass needs them either way)": best(lambda: draw((lo, hi), SIZES),
                                                                                       comm, args.repeats),
        "regenerate: draw the other (k - k/P) tangents, all n": best(lambda: draw((hi, K) if lo == 0 else (0, lo), SIZES),
                                                                     comm, args.repeats),
        "regenerate: projection over all n (Gram, solve, estimate)": best(lambda: agg(d, V), comm, args.repeats),
        "assemble: draw the other tangents on this rank's n/P": best(
            lambda: draw((hi, K) if lo == 0 else (0, lo), mine), comm, args.repeats),
        "assemble: partial Gram over n/P (batched GEMM)": best(lambda: Vb @ Vb.transpose(0, 2, 1), comm,
                                                                args.repeats),
        "assemble: Allreduce of the B·k² Gram (float32)": best(lambda: comm.allreduce(G), comm, args.repeats),
        "assemble: estimate on n/P (V^T c)": best(lambda: (d.T[:, None, :] @ Vb)[:, 0], comm, args.repeats),
        "assemble: Allgather of the B·n estimate (float32)": best(lambda: comm.allgather(est.T.copy()), comm,
                                                                 args.repeats),
    }
    regen = sum(v for k, v in rows.items() if k.startswith("regenerate"))
    assemble = sum(v for k, v in rows.items() if k.startswith("assemble"))
    if comm.is_root:
        lines = [f"# Tangent-parallel aggregation: regenerate or assemble (`mpiexec -n {P} python "
                 "bench/tangent_split_cost.py`)", "",
                 f"MLP 784-1024-1024-10, batch {B}, activity perturbation, k = {K}, projection, float32, {P} ranks, "
                 f"1 BLAS thread each; min of {args.repeats} repeats, mean over ranks (ms).", "",
                 "| piece | ms |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in rows.items()]
        lines += ["", f"regenerate: {regen:.2f} ms per step, {K * B * 4} bytes gathered (the k×B directional "
                  f"derivatives); assemble: {assemble:.2f} ms per step, plus {B * K * K * 4} bytes allreduced and "
                  f"{B * n * 4} gathered (the estimate: activation-sized traffic every step)."]
        text = "\n".join(lines) + "\n"
        atomic_write_text(args.out, text)
        print(text)


if __name__ == "__main__":
    main()

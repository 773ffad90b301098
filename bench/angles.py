"""Tangents at a fixed angle (Flügel et al. 2024, Fig. 5): mean vs projection on Styblinski-Tang.

    python bench/angles.py [--n 64] [--ks 16,64] [--angles 15,30,45,60,75,90] [--out DIR] [--plot] [--quick]

Tangents come from the ``cone`` sampler: every tangent at angle α to the first one (same span for
every α > 0 given the same random draws). For each k and α: (1) the cosine similarity to the exact
gradient at the start point x = 0, over ``--cos-seeds`` independent draws (one batched forward
pass); (2) the best Styblinski-Tang value reached by gradient descent (1000 steps, early stop,
per-method lr search in [1e-6, 1], ``--seeds`` seeds) for ``mean`` and ``projection``. A row with
plain Gaussian tangents is the reference. ``--out`` writes angles.csv, ``--plot`` angles.png.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings


import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import closed_form_functions as C  # noqa: E402

from dualtensor.fgrad import diagnostics as D  # noqa: E402
from dualtensor.fgrad.aggregators import get_aggregator  # noqa: E402
from dualtensor.fgrad.samplers import get_sampler  # noqa: E402
from dualtensor.fgrad.weight import forward_gradient  # noqa: E402


def _sampler(angle: float | None):
    return "normal" if angle is None else get_sampler("cone", alpha=math.radians(angle))


def cosines(n: int, k: int, angle: float | None, seeds: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cosine similarity of mean and projection at x = 0 for ``seeds`` independent tangent draws."""
    prob = C.PROBLEMS["styblinski_tang"]
    x = np.tile(prob.x0(n), (seeds, 1))
    _, exact = C.exact_value_and_grad(prob.f, x)
    _, _, d, V = forward_gradient(prob.f, x, k=k, sampler=_sampler(angle), aggregate="single", rng=rng,
                                  batched=True, return_tangents=True)
    out = {}
    for agg in ("mean", "projection"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="projection: Gram", category=RuntimeWarning)
            out[agg] = D.cosine_similarity(get_aggregator(agg)(d, V), exact, batched=True)
    return out


def run(n: int, ks: list[int], angles: list[float | None], seeds: int, cos_seeds: int, lrs: np.ndarray,
        seed: int, steps: int, log=print) -> list[dict]:
    prob = C.PROBLEMS["styblinski_tang"]
    rows = []
    exact = C.lr_search(prob, n, C.Method("exact"), lrs, 1, seed, max_steps=steps)
    rows.append({"k": 0, "angle": "", "aggregate": "exact", "cos_mean": 1.0, "cos_std": 0.0, "lr": exact["lr"],
                 "best_mean": exact["mean"], "best_std": 0.0, "seconds": exact["seconds"]})
    for k in ks:
        for angle in angles:
            # the same Gaussian draws for every angle: the span, hence the projection, is unchanged
            cos = cosines(n, k, angle, cos_seeds, np.random.default_rng([seed, k]))
            for agg in ("mean", "projection"):
                m = C.Method(f"{agg} k={k}", k, agg, _sampler(angle))
                r = C.lr_search(prob, n, m, lrs, seeds, seed, max_steps=steps)
                rows.append({"k": k, "angle": "gaussian" if angle is None else angle, "aggregate": agg,
                             "cos_mean": float(cos[agg].mean()), "cos_std": float(cos[agg].std()), "lr": r["lr"],
                             "best_mean": r["mean"], "best_std": r["std"], "seconds": r["seconds"]})
                log(f"  k={k:3d} angle={rows[-1]['angle']!s:9s} {agg:10s} cos={rows[-1]['cos_mean']:.3f} "
                    f"best={r['mean']:.4g} lr={r['lr']:.1e} ({r['seconds']:.1f}s)")
    return rows


def plot(rows: list[dict], n: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in sorted({r["k"] for r in rows if r["k"]}):
        for agg, ls in (("mean", "--"), ("projection", "-")):
            rs = [r for r in rows if r["k"] == k and r["aggregate"] == agg and r["angle"] != "gaussian"]
            ang = [r["angle"] for r in rs]
            a1.plot(ang, [r["cos_mean"] for r in rs], ls, marker="o", ms=3, label=f"{agg} k={k}")
            a2.plot(ang, [r["best_mean"] / n for r in rs], ls, marker="o", ms=3, label=f"{agg} k={k}")
    ex = next(r for r in rows if r["aggregate"] == "exact")
    a2.axhline(ex["best_mean"] / n, color="k", lw=0.8, label="exact gradient")
    a2.axhline(C.ST_MIN_PER_DIM, color="grey", lw=0.5)
    a1.set_ylabel("cosine similarity at x0")
    a2.set_ylabel("best value / n")
    for ax in (a1, a2):
        ax.set_xlabel("angle to the first tangent (degrees)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--ks", default="16,64")
    p.add_argument("--angles", default="15,30,45,60,75,90")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cos-seeds", type=int, default=1000)
    p.add_argument("--lr-per-decade", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--plot", action="store_true")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    threads = _timing.limit_threads(a.threads)
    if a.quick:
        a.n, a.ks, a.angles, a.seeds, a.cos_seeds, a.lr_per_decade, a.steps = 16, "4", "30,90", 2, 100, 1, 300
    angles: list[float | None] = [float(s) for s in a.angles.split(",")] + [None]
    lrs = C.lr_grid(1e-6, 1.0, a.lr_per_decade)
    t0 = time.perf_counter()
    rows = run(a.n, [int(k) for k in a.ks.split(",")], angles, a.seeds, a.cos_seeds, lrs, a.seed, a.steps,
               log=lambda s: print(s, file=sys.stderr))
    print(f"BLAS threads {_timing.blas_threads(_timing.blas_info())} ({threads})", file=sys.stderr)
    print(f"Fixed-angle tangents (Fig. 5): Styblinski-Tang n={a.n} (minimum {C.ST_MIN_PER_DIM * a.n:.2f}), "
          f"{a.seeds} seeds, {a.cos_seeds} draws for the cosine, {time.perf_counter() - t0:.1f}s\n")
    table = [[r["k"] or "-", r["angle"] or "-", r["aggregate"], f"{r['cos_mean']:.3f} ± {r['cos_std']:.2f}",
              f"{r['best_mean']:.2f} ± {r['best_std']:.2f}", f"{r['lr']:.1e}"] for r in rows]
    print(C.markdown_table(["k", "angle", "aggregate", "cosine at x0", "best value", "lr"], table))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "angles.csv"), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if a.plot:
            if C.have_matplotlib():
                plot(rows, a.n, os.path.join(a.out, "angles.png"))
            else:
                print("matplotlib is not installed: no plot (pip install 'dualtensor[plot]')", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

"""Approximation quality of multi-tangent forward gradients (Flügel et al. 2024, Fig. 3).

    python bench/approximation.py [--n 64] [--seeds 1000] [--out DIR] [--plot] [--quick]

For n = 64 and k = 1, 2, 4, …, 256 Gaussian tangents, draw ``seeds`` independent problems at once
(a random gradient per seed, f(x) = ⟨g, x⟩ per row, directional derivatives from ONE batched
forward-mode pass) and aggregate the same tangents with every aggregator: single (g_v), sum, mean,
normalized, projection and scaled projection. Reports the mean (± std) cosine similarity and norm
ratio ‖estimate‖/‖∇f‖ over seeds. ``--out`` writes approximation.csv, ``--plot`` approximation.png.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings


import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import closed_form_functions as C  # noqa: E402

import dualtensor as dt  # noqa: E402
from dualtensor.fgrad import diagnostics as D  # noqa: E402
from dualtensor.fgrad.aggregators import get_aggregator  # noqa: E402
from dualtensor.fgrad.weight import forward_gradient  # noqa: E402

AGGREGATES = [("single", "single", {}), ("sum", "sum", {}), ("mean", "mean", {}), ("normalized", "normalized", {}),
              ("projection", "projection", {}), ("projection (scaled)", "projection", {"scale": True})]


def measure(n: int, k: int, seeds: int, rng: np.random.Generator) -> list[dict]:
    """Cosine similarity and norm ratio per aggregator for one k, vectorised over seeds."""
    grad = rng.standard_normal((seeds, n))
    x = np.zeros((seeds, n))
    _, _, d, V = forward_gradient(lambda z: dt.sum(z * grad, axis=-1), x, k=k, aggregate="single", rng=rng,
                                  batched=True, return_tangents=True)
    rows = []
    for label, name, params in AGGREGATES:
        with warnings.catch_warnings():  # k > n: singular Gram, exact least-squares fallback
            warnings.filterwarnings("ignore", message="projection: Gram", category=RuntimeWarning)
            est = get_aggregator(name, **params)(d, V)
        c = D.compare(est, grad, batched=True)
        rows.append({"n": n, "k": k, "aggregate": label, "cos_mean": float(c["cosine"].mean()),
                     "cos_std": float(c["cosine"].std()), "ratio_mean": float(c["norm_ratio"].mean()),
                     "ratio_std": float(c["norm_ratio"].std()), "seeds": seeds})
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, _, _ in AGGREGATES:
        rs = [r for r in rows if r["aggregate"] == label]
        ks = [r["k"] for r in rs]
        a1.errorbar(ks, [r["cos_mean"] for r in rs], yerr=[r["cos_std"] for r in rs], marker="o", ms=3,
                    capsize=2, label=label)
        a2.plot(ks, [r["ratio_mean"] for r in rs], marker="o", ms=3, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
    a1.set_ylabel("cosine similarity")
    a2.set_ylabel("‖estimate‖ / ‖∇f‖")
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--ks", default=",".join(str(2**i) for i in range(9)))
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--plot", action="store_true")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    threads = _timing.limit_threads(a.threads)
    if a.quick:
        a.seeds, a.ks = 100, "1,4,16,64,128"
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    rows = [r for k in (int(s) for s in a.ks.split(",")) for r in measure(a.n, k, a.seeds, rng)]
    total = time.perf_counter() - t0
    print(f"Approximation quality (Fig. 3): n={a.n}, Gaussian tangents, {a.seeds} seeds, {total:.1f}s, "
          f"BLAS threads {_timing.blas_threads(_timing.blas_info())} ({threads})\n")
    labels = [lb for lb, _, _ in AGGREGATES]
    titles = (("cos", "cosine similarity (mean ± std)"), ("ratio", "norm ratio ‖g‖/‖∇f‖ (mean ± std)"))
    for key, title in titles:
        print(f"\n### {title}\n")
        table = []
        for k in dict.fromkeys(r["k"] for r in rows):
            by = {r["aggregate"]: r for r in rows if r["k"] == k}
            table.append([k] + [f"{by[lb][key + '_mean']:.3g} ± {by[lb][key + '_std']:.2g}" for lb in labels])
        print(C.markdown_table(["k"] + labels, table))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "approximation.csv"), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if a.plot:
            if C.have_matplotlib():
                plot(rows, os.path.join(a.out, "approximation.png"))
            else:
                print("matplotlib is not installed: no plot (pip install 'dualtensor[plot]')", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

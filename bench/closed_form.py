"""Closed-form functions (Flügel et al. 2024, Fig. 4): best value reached vs dimension n.

    python bench/closed_form.py [--out DIR] [--plot] [--quick] [--dims 1,2,4,...] [--ks 2,4,16]

Plain gradient descent x ← x − lr·g from fixed start points (Sphere: all −1, Rosenbrock:
(−1, 0, …, 0), Styblinski-Tang: 0, Beale: (1, 1)), up to 1000 steps (Rosenbrock 25,000), early stop
after 50 steps without improvement or on NaN. Methods: the exact gradient (reverse mode), the
single-tangent forward gradient (k = 1) and multi-tangent forward gradients with ``mean`` and
``projection`` aggregation for each k; Gaussian tangents; directional derivatives from ONE
forward-mode pass per step. Every method gets its own learning rate from a log-scale search in
[1e-6, 1] (see ``closed_form_functions.lr_search``); the reported value is the mean over seeds of
the best function value at the selected lr.
Prints a Markdown table per function; ``--out`` writes closed_form.csv and closed_form_lr_search.csv,
``--plot`` closed_form.png (needs matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time


import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import closed_form_functions as C  # noqa: E402


def methods(ks: list[int]) -> list[C.Method]:
    """exact, k=1, then mean and projection for each k (the lines of Fig. 4)."""
    out = [C.Method("exact"), C.Method("fg k=1", 1, "single")]
    out += [C.Method(f"mean k={k}", k, "mean") for k in ks]
    out += [C.Method(f"proj k={k}", k, "projection") for k in ks]
    return out


def run(functions: list[str], dims: list[int], ks: list[int], seeds: int, lrs: np.ndarray, seed: int,
        steps: dict[str, int], patience: int = 50, log=print) -> list[dict]:
    """All (function, n, method) lr searches; one result dict per combination."""
    results = []
    for name in functions:
        prob = C.PROBLEMS[name]
        ns = [prob.fixed_n] if prob.fixed_n else [n for n in dims if n >= prob.min_n]
        for n in ns:
            for m in methods(ks):
                r = C.lr_search(prob, n, m, lrs, seeds, seed, max_steps=steps.get(name), patience=patience)
                r.update(function=name, n=n, method=m.label, k=m.k, aggregate="exact" if m.exact else m.aggregate,
                         minimum=prob.minimum(n))
                results.append(r)
                log(f"  {name:16s} n={n:5d} {m.label:12s} lr={r['lr']:.1e} best={r['mean']:.4g} "
                    f"({r['seconds']:.1f}s)")
    return results


def tables(results: list[dict], ks: list[int]) -> str:
    labels = [m.label for m in methods(ks)]
    out = []
    for name in dict.fromkeys(r["function"] for r in results):
        rs = [r for r in results if r["function"] == name]
        out.append(f"\n### {name} (mean best value over seeds; minimum {rs[0]['minimum'] / rs[0]['n']:.5g}·n)\n")
        rows = []
        for n in dict.fromkeys(r["n"] for r in rs):
            by = {r["method"]: r for r in rs if r["n"] == n}
            rows.append([n] + [f"{by[lb]['mean']:.3g}" if lb in by else "" for lb in labels])
        out.append(C.markdown_table(["n"] + labels, rows))
    return "\n".join(out)


def write_csv(results: list[dict], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    cols = ["function", "n", "method", "k", "aggregate", "lr", "mean", "std", "min", "max", "minimum", "seeds",
            "median_steps", "hit_max_steps", "seconds"]
    with open(os.path.join(out, "closed_form.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in results:
            w.writerow([r["function"], r["n"], r["method"], r["k"], r["aggregate"], r["lr"], r["mean"], r["std"],
                        r["min"], r["max"], r["minimum"], len(r["values"]), int(np.median(r["steps"])),
                        r["hit_max_steps"], round(r["seconds"], 3)])
    with open(os.path.join(out, "closed_form_lr_search.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["function", "n", "method", "stage", "lr", "seed", "best", "steps"])
        for r in results:
            for rec in r["records"]:
                w.writerow([r["function"], r["n"], r["method"], *rec])


def plot(results: list[dict], ks: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [nm for nm in dict.fromkeys(r["function"] for r in results) if nm != "beale"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    colors = {k: f"C{i}" for i, k in enumerate([1] + ks)}  # one colour per k, line style per aggregator
    for ax, name in zip(axes[0], names):
        for m in methods(ks):
            rs = [r for r in results if r["function"] == name and r["method"] == m.label]
            ns = np.array([r["n"] for r in rs])
            if name == "styblinski_tang":
                y = np.array([r["mean"] / r["n"] for r in rs])
            else:
                y = np.maximum([r["mean"] for r in rs], 1e-30)
            style = "-" if m.exact or m.aggregate == "projection" else "--" if m.aggregate == "mean" else ":"
            ax.plot(ns, y, marker="o", ms=3, label=m.label, color="k" if m.exact else colors[m.k], linestyle=style)
        ax.set_xscale("log", base=2)
        if name == "styblinski_tang":
            ax.axhline(C.ST_MIN_PER_DIM, color="grey", lw=0.5)
            ax.set_ylabel("best value / n")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("best value (values < 1e-30 drawn at 1e-30)")
        ax.set_xlabel("n")
        ax.set_title(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    p.add_argument("--functions", default="sphere,rosenbrock,styblinski_tang,beale")
    p.add_argument("--dims", default=",".join(str(2**i) for i in range(11)))
    p.add_argument("--ks", default="2,4,16")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--lr-per-decade", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="max steps (default 1000)")
    p.add_argument("--rosenbrock-steps", type=int, default=None, help="max steps for Rosenbrock (default 25000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for CSV (and PNG) output")
    p.add_argument("--plot", action="store_true", help="write closed_form.png into --out (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="tiny configuration for CI smoke tests")
    a = p.parse_args(argv)
    threads = _timing.limit_threads(a.threads)
    if a.quick:
        a.dims, a.ks, a.seeds, a.lr_per_decade = "1,2,8", "2", 2, 1
        a.steps = a.steps or 300
        a.rosenbrock_steps = a.rosenbrock_steps or 300
    functions = [f for f in a.functions.split(",") if f]
    for f in functions:
        if f not in C.PROBLEMS:
            p.error(f"unknown function {f!r}; choose from {', '.join(C.PROBLEMS)}")
    dims = [int(d) for d in a.dims.split(",")]
    ks = [int(k) for k in a.ks.split(",")]
    steps = {name: prob.max_steps if a.steps is None else a.steps for name, prob in C.PROBLEMS.items()}
    if a.rosenbrock_steps is not None:
        steps["rosenbrock"] = a.rosenbrock_steps
    elif a.steps is not None:
        steps["rosenbrock"] = C.PROBLEMS["rosenbrock"].max_steps
    lrs = C.lr_grid(1e-6, 1.0, a.lr_per_decade)
    t0 = time.perf_counter()
    results = run(functions, dims, ks, a.seeds, lrs, a.seed, steps, log=lambda s: print(s, file=sys.stderr))
    total = time.perf_counter() - t0
    print(f"BLAS threads {_timing.blas_threads(_timing.blas_info())} ({threads})", file=sys.stderr)
    print(f"Closed-form functions (Fig. 4): seeds={a.seeds}, lr grid {len(lrs)} values in [1e-6, 1], "
          f"max steps {steps}, total {total:.1f}s")
    print(tables(results, ks))
    if a.out:
        write_csv(results, a.out)
        if a.plot:
            if C.have_matplotlib():
                plot(results, ks, os.path.join(a.out, "closed_form.png"))
            else:
                print("matplotlib is not installed: no plot (pip install 'dualtensor[plot]')", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()

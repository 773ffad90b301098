"""Reports of bench/runtime.py: Markdown tables of the measurements, issue 5's targets evaluated on
them, the figure (R_f vs k, runtime and memory vs depth) and the JSON file."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np

from runtime_cases import PERTURBATIONS


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
            return f"{v:.1e}"
        return f"{v:.{digits}g}"
    return str(v)


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` [(key, header), ...]."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" if i < 1 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_f(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


MAIN_COLUMNS = [("model", "model"), ("data", "data×B"), ("perturb", "perturb"), ("tangents", "tangents"),
                ("k", "k"), ("base_ms", "base ms"), ("bp_ms", "bp ms"), ("fg_ms", "fg ms"), ("loop_ms", "loop ms"),
                ("R_f", "R_f"), ("R_b", "R_b"), ("R_f_over_R_b", "R_f/R_b"), ("speedup", "loop/fg"),
                ("speedup_bound", "bound"),
                ("mem_bp_mb", "bp MB"), ("mem_fg_mb", "fg MB"), ("mem_loop_mb", "loop MB"), ("check", "check")]
DEPTH_COLUMNS = [("depth", "depth"), ("params_mb", "params MB"), ("base_ms", "base ms"), ("bp_ms", "bp ms"),
                 ("weight_ms", "fg-w ms"), ("activity_ms", "fg-a ms"), ("R_b", "R_b"), ("R_f_weight", "R_f w"),
                 ("R_f_activity", "R_f a"), ("mem_bp_mb", "bp MB"), ("mem_weight_mb", "fg-w MB"),
                 ("mem_activity_mb", "fg-a MB"), ("mem_bp_excess_mb", "bp − P"),
                 ("mem_weight_excess_mb", "fg-w − (k+1)P"), ("mem_activity_excess_mb", "fg-a − P")]
TARGET_COLUMNS = [("target", "target"), ("measured", "measured"), ("goal", "goal"), ("status", "status")]


def _slope(xs: list[float], ys: list[float]) -> float:
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def evaluate_targets(rows: list[dict], depth_rows: list[dict]) -> list[dict]:
    """Issue 5's targets, evaluated on whatever was measured (rows missing → not evaluated)."""
    out = []

    def add(target: str, measured: str, goal: str, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured, "goal": goal,
                    "status": "n/a" if ok is None else ("met" if ok else "MISSED")})

    for model in ("mlp", "cnn"):
        for perturb in PERTURBATIONS:
            sel = [r for r in rows if r["model"] == model and r["perturb"] == perturb and r["k"] == 16
                   and math.isfinite(r.get("speedup", float("nan")))]
            if sel:
                worst = min(r["speedup"] for r in sel)
                bound = sel[0].get("speedup_bound")
                add(f"batched vs loop, {model} {perturb} k=16",
                    f"{worst:.2f}x (worst over tangents)" + (f"; GEMM-count bound {bound:.2f}x" if bound else ""),
                    ">= 3x", worst >= 3)
    act = [r for r in rows if r["model"] == "mlp" and r["perturb"] == "activity"]
    for k in sorted({r["k"] for r in act}):
        worst = max(r["R_f"] / (2 + k) for r in act if r["k"] == k)
        add(f"activity MLP R_f(k={k}) / (2+k)", f"{worst:.2f}", "<= 1.5", worst <= 1.5)
    k1 = [r for r in act if r["k"] == 1]
    if k1:
        worst = max(r["R_f_over_R_b"] for r in k1)
        add("activity MLP R_f/R_b at k=1", f"{worst:.2f}", "<= 1.2", worst <= 1.2)
    for r in rows:
        if r["perturb"] == "weight" and r["k"] == 1 and "R_bound_weight" in r:
            ratio = r["R_f"] / r["R_bound_weight"]
            add(f"weight {r['model']} {r['tangents']} R_f(k=1) / (3 + draw/base)",
                f"{ratio:.2f} (R_f {r['R_f']:.2f}, bound {r['R_bound_weight']:.2f})", "<= 1.5", ratio <= 1.5)
    # depth 1 has no hidden-to-hidden layer (its largest leaf, hence the update's temporary, differs):
    # fit the slopes on depths >= 2 when there are two of them
    measured = [r for r in depth_rows if math.isfinite(r.get("mem_bp_excess_mb", float("nan")))]  # not --no-memory
    fit = [r for r in measured if r["depth"] >= 2]
    fit = fit if len(fit) >= 2 else measured
    if len(fit) >= 2:
        ds = [r["depth"] for r in fit]
        bp = _slope(ds, [r["mem_bp_excess_mb"] for r in fit])
        for p in PERTURBATIONS:
            key = f"mem_{p}_excess_mb"
            if all(math.isfinite(r.get(key, float("nan"))) for r in fit):
                s = _slope(ds, [r[key] for r in fit])
                lo, hi = min(r[key] for r in fit), max(r[key] for r in fit)
                flat = math.isfinite(s) and math.isfinite(bp) and abs(s) <= 0.1 * abs(bp)
                add(f"memory vs depth {ds[0]}..{ds[-1]}, fg-{p} (excess over params)",
                    f"{s:.3g} MB/layer (range {lo:.3g}..{hi:.3g} MB) vs bp {bp:.3g} MB/layer",
                    "flat (slope <= 10% of bp's)" if p == "weight" else "(activity holds per-layer tangents)",
                    flat if p == "weight" else None)
        add(f"memory vs depth {ds[0]}..{ds[-1]}, backprop (excess over params)", f"{bp:.3g} MB/layer", "linear (> 0)",
            bool(math.isfinite(bp) and bp > 0))
    return out


def plot(result: dict, path: str) -> bool:
    """R_f vs k per model (batched and loop), and R / memory vs depth; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no figure written", file=sys.stderr)
        return False
    rows, depth = result["runs"], result["depth"]
    panels = (["k"] if rows else []) + (["time", "memory", "excess"] if depth else [])
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    if rows:
        ax = axes["k"]
        keys = sorted({(r["model"], r["perturb"], r["tangents"]) for r in rows})
        for m, p, s in keys:
            sel = sorted((r for r in rows if (r["model"], r["perturb"], r["tangents"]) == (m, p, s)),
                         key=lambda r: r["k"])
            ks = [r["k"] for r in sel]
            line, = ax.plot(ks, [r["R_f"] for r in sel], "o-", label=f"{m} {p} {s}")
            if any(math.isfinite(r["R_loop"]) for r in sel):
                ax.plot(ks, [r["R_loop"] for r in sel], "x--", color=line.get_color(), alpha=0.6)
        kmax = max(r["k"] for r in rows)
        ax.plot([1, kmax], [3, 2 + kmax], "k:", label="2 + k")
        ax.set(xscale="log", yscale="log", xlabel="k (tangents)", ylabel="R_f = fg step / inference",
               title="forward-gradient step (solid: batched, dashed: loop)")
        ax.set_xticks(sorted({r["k"] for r in rows}), [str(k) for k in sorted({r["k"] for r in rows})])
        ax.legend(fontsize=6)
    if depth:
        ds = [r["depth"] for r in depth]
        ax = axes["time"]
        ax.plot(ds, [r["R_b"] for r in depth], "o-", label="backprop R_b")
        for p in PERTURBATIONS:
            if f"R_f_{p}" in depth[0]:
                ax.plot(ds, [r[f"R_f_{p}"] for r in depth], "s-", label=f"fg {p} R_f")
        ax.set(xscale="log", xlabel=f"hidden layers (width {depth[0]['width']})", ylabel="step / inference",
               title=f"runtime vs depth (k={depth[0]['k']})")
        ax.legend(fontsize=7)
        ax = axes["memory"]
        ax.plot(ds, [r["params_mb"] for r in depth], "k:", label="parameters P")
        ax.plot(ds, [r["mem_bp_mb"] for r in depth], "o-", label="backprop")
        for p in PERTURBATIONS:
            if f"mem_{p}_mb" in depth[0]:
                ax.plot(ds, [r[f"mem_{p}_mb"] for r in depth], "s-", label=f"fg {p}")
        ax.set(xscale="log", yscale="log", xlabel="hidden layers", ylabel="peak memory of a step (MB)",
               title="peak memory vs depth")
        ax.legend(fontsize=7)
        ax = axes["excess"]
        ax.plot(ds, [r["mem_bp_excess_mb"] for r in depth], "o-", label="backprop − P")
        for p in PERTURBATIONS:
            if f"mem_{p}_excess_mb" in depth[0]:
                lab = f"fg {p} − (k+1)P" if p == "weight" else f"fg {p} − P"
                ax.plot(ds, [r[f"mem_{p}_excess_mb"] for r in depth], "s-", label=lab)
        ax.set(xscale="log", xlabel="hidden layers", ylabel="MB",
               title="peak memory beyond parameter-sized arrays")
        ax.legend(fontsize=7)
        for key in ("time", "memory", "excess"):
            axes[key].set_xticks(ds, [str(d) for d in ds])
            axes[key].minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_json(result: dict, path: str) -> None:
    """Write ``result`` to ``path`` as JSON (NaN/inf as null), atomically (a temporary file, then a rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(_clean(result), fh, indent=1)
    os.replace(tmp, path)

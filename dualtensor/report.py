"""``python -m dualtensor report DIR...``: runs and sweeps as Table I (Markdown, CSV) and plots.

Rows are gradients (backprop, or aggregator / k / estimator / perturbation), columns model and dataset
(with the MLP's width); a cell is the best test error (the test error of each run's best-validation
epoch) as mean ± std over seeds, with the chosen learning rate and the epochs run. A sweep contributes
its seed runs (``sweep.json``); a plain run folder (``summary.json``) is grouped with the runs of the
same configuration that differ only in their seed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .files import atomic_write, atomic_write_text
from .metrics import mean_std, read_jsonl

__all__ = ["Entry", "collect", "table_rows", "markdown", "csv_text", "plot_curves", "plot_width",
           "add_report_arguments", "run_report_command", "ReportError"]

PROG = "dualtensor report"
_SIGNATURE = "<!-- written by dualtensor report -->"
CSV_COLUMNS = ("gradient", "model", "dataset", "grad", "perturb", "aggregate", "k", "estimator", "width", "seeds",
               "diverged", "test_error_mean", "test_error_std", "lr", "epochs_mean", "best_epoch_mean",
               "wall_time_s", "source")
# options that only say how a run was executed (or which seed), not what was computed
_NOT_IDENTITY = ("seed", "out", "data_dir", "download", "mirrors", "device", "threads", "heap_arrays",
                 "eval_batch_size", "quiet", "plot", "check_every", "init_from", "ranks", "parallel", "track_test",
                 "test")


class ReportError(UsageError):
    """Nothing to report, or a file the report would replace that it did not write."""


@dataclass
class Entry:
    """One cell's runs: a sweep's seed runs or plain runs of one configuration."""

    config: dict
    runs: list = field(default_factory=list)       # (summary, run folder)
    source: str = ""
    wall_time_s: float = 0.0                       # the whole sweep's (trials and seeds), else the runs'

    @property
    def row(self) -> str:
        c = self.config
        if c["grad"] == "backprop":
            return "backprop"
        label = f"{'forward' if c['grad'] == 'forward' else 'simulated'} {c['aggregate']} k={c['k']}"
        if c.get("perturb") == "activity":
            label += f" ({c.get('estimator', 'per-sample')})"
        else:
            label += " (weight)"
        return label

    @property
    def column(self) -> str:
        c = self.config
        model = {"mlp": f"mlp w={c.get('width')}", "vit": f"vit w={c.get('width')} d={c.get('depth')}"}.get(
            c["model"], c["model"])
        return f"{model} / {c['dataset']}"

    def errors(self) -> list[float]:
        return [1.0 - s["test_acc"] for s, _ in self.runs if s.get("test_acc") is not None]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect(dirs: Iterable[str | Path]) -> list[Entry]:
    """Every sweep and run under ``dirs`` as :class:`Entry` items (raises :class:`ReportError` when
    there are none)."""
    sweeps: list[Entry] = []
    plain: dict[str, Entry] = {}
    for d in dirs:
        d = Path(d).expanduser()
        if not d.is_dir():
            raise ReportError(f"{d}: no such folder")
        for marker in sorted([d / "sweep.json"] if (d / "sweep.json").is_file() else d.rglob("sweep.json")):
            res = _read_json(marker)
            if not isinstance(res, dict) or "sweep" not in res:
                continue
            e = Entry(res["sweep"]["train"], source=str(marker.parent))
            for s in res.get("seeds", []):
                summary = _read_json(Path(s["run_dir"]) / "summary.json")
                if summary is not None:
                    e.runs.append((summary, Path(s["run_dir"])))
            trial_times = [_read_json(Path(t["run_dir"]) / "summary.json") for t in res.get("trials", [])
                           if t.get("run_dir")]
            e.wall_time_s = sum((t or {}).get("wall_time_s") or 0 for t in trial_times) + \
                sum(s.get("wall_time_s") or 0 for s, _ in e.runs)
            if res.get("best"):
                e.config = {**e.config, **res["best"]}
            sweeps.append(e)
        for summary_path in sorted([d / "summary.json"] if (d / "summary.json").is_file() else d.rglob("summary.json")):
            if any(p.name in ("trials", "seeds") and (p.parent / ".dualtensor-sweep.json").is_file()
                   for p in summary_path.parents):
                continue  # part of a sweep
            s = _read_json(summary_path)
            if not isinstance(s, dict) or "config" not in s:
                continue
            key = json.dumps({k: v for k, v in s["config"].items() if k not in _NOT_IDENTITY}, sort_keys=True)
            e = plain.setdefault(key, Entry(s["config"], source=str(summary_path.parent)))
            e.runs.append((s, summary_path.parent))
            e.wall_time_s += s.get("wall_time_s") or 0
    entries = sweeps + list(plain.values())
    if not entries:
        raise ReportError(f"no runs or sweeps under {', '.join(map(str, dirs))}")
    return entries


def _row_order(label: str) -> tuple:
    if label == "backprop":
        return (0,)
    parts = label.split()
    return (1, parts[0], parts[1], int(parts[2][2:]), " ".join(parts[3:]))


def table_rows(entries: Sequence[Entry]) -> list[dict]:
    """One dict per entry with :data:`CSV_COLUMNS`."""
    out = []
    for e in entries:
        c = e.config
        mean, std = mean_std(e.errors())
        epochs = [s.get("epochs_run") for s, _ in e.runs if s.get("epochs_run") is not None]
        best = [s.get("best_epoch") for s, _ in e.runs if s.get("best_epoch") is not None]
        out.append({"gradient": e.row, "model": e.column.split(" / ")[0], "dataset": c["dataset"],
                    "grad": c["grad"], "perturb": c.get("perturb"), "aggregate": c.get("aggregate"),
                    "k": c.get("k"), "estimator": c.get("estimator"), "width": c.get("width"),
                    "seeds": len(e.errors()), "diverged": sum(s.get("status") == "diverged" for s, _ in e.runs),
                    "test_error_mean": mean, "test_error_std": std, "lr": c.get("lr"),
                    "epochs_mean": mean_std(epochs)[0], "best_epoch_mean": mean_std(best)[0],
                    "wall_time_s": e.wall_time_s, "source": e.source})
    return sorted(out, key=lambda r: (_row_order(r["gradient"]), r["model"], r["dataset"]))


def markdown(rows: Sequence[dict]) -> str:
    """Table I's shape: rows gradients, columns model / dataset, cells test error mean ± std (%),
    with lr and mean epochs; then the wall time of each cell."""
    columns = sorted({f"{r['model']} / {r['dataset']}" for r in rows}, key=_column_order)
    grads = sorted({r["gradient"] for r in rows}, key=_row_order)
    cell = {(r["gradient"], f"{r['model']} / {r['dataset']}"): r for r in rows}
    lines = [_SIGNATURE, "", "Best test error (%), mean ± std over seeds; lr; mean epochs run", "",
             "| gradient | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for g in grads:
        cells = []
        for col in columns:
            r = cell.get((g, col))
            if r is None or r["test_error_mean"] is None:
                cells.append("–")
                continue
            epochs = f"{r['epochs_mean']:.3g}" if r["epochs_mean"] is not None else "?"
            lr = f"{r['lr']:.2g}" if r["lr"] is not None else "?"
            diverged = f", {r['diverged']} diverged" if r["diverged"] else ""
            cells.append(f"{100 * r['test_error_mean']:.2f} ± {100 * r['test_error_std']:.2f} "
                         f"(n={r['seeds']}{diverged}; lr {lr}; {epochs} ep)")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time (s) of each cell: the whole sweep (trials and seeds) or the runs", "",
              "| gradient | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for g in grads:
        lines.append(f"| {g} | " + " | ".join(f"{cell[(g, c)]['wall_time_s']:.0f}" if (g, c) in cell else "–"
                                              for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _column_order(col: str) -> tuple:
    model, dataset = col.split(" / ")
    width = int(model.split("w=")[1].split()[0]) if "w=" in model else 0
    return (model.split()[0], width, dataset)


def csv_text(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else repr(r[k]) if isinstance(r[k], float) else r[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def _ours(path: Path, signature: str) -> bool:
    """True when ``path`` does not exist or its first line starts with ``signature`` (a file this report
    wrote; for CSV its first columns, so a report of an earlier version is replaced too)."""
    if not path.exists():
        return True
    try:
        with path.open("r", encoding="utf-8") as f:
            return f.readline().startswith(signature)
    except (OSError, UnicodeDecodeError):
        return False


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install 'dualtensor[plot]'") from None
    return plt


def plot_curves(entries: Sequence[Entry]) -> bytes:
    """Test loss against epoch (mean over seeds; validation loss where the runs did not track the
    test set), one panel per model / dataset, one line per gradient."""
    plt = _plt()
    columns = sorted({e.column for e in entries}, key=_column_order)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns) + 2.5, 4), squeeze=False)
    for ax, col in zip(axes[0], columns):
        which = "val_loss"
        for e in sorted((e for e in entries if e.column == col), key=lambda e: _row_order(e.row)):
            curves = [read_jsonl(d / "metrics.jsonl") for _, d in e.runs if (d / "metrics.jsonl").is_file()]
            if not curves:
                continue
            key = "test_loss" if all(r.get("test_loss") is not None for c in curves for r in c) else "val_loss"
            which = key if key == "test_loss" else which
            n = min(len(c) for c in curves)
            ys = [sum(c[i][key] for c in curves) / len(curves) for i in range(n)]
            ax.plot(range(1, n + 1), ys, label=e.row, **_style(e.row))
        ax.set(title=col, xlabel="epoch", ylabel=which.replace("_", " "), yscale="log")
    handles: dict = {}
    for ax in axes[0]:  # one legend for all panels, beside them
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / fig.get_figwidth(), 1))
    return _png(fig, plt)


def plot_width(rows: Sequence[dict]) -> bytes:
    """Fig. 6: test error (mean ± std over seeds) against MLP width, one line per gradient."""
    plt = _plt()
    mlp = [r for r in rows if r["model"].startswith("mlp") and r["test_error_mean"] is not None]
    if len({r["width"] for r in mlp}) < 2:
        raise ReportError("--plot: the width plot needs MLP results at two or more widths")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g in sorted({r["gradient"] for r in mlp}, key=_row_order):
        pts = sorted((r["width"], r["test_error_mean"], r["test_error_std"]) for r in mlp if r["gradient"] == g)
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], label=g,
                    marker="o", capsize=3, **_style(g))
    ax.set(xscale="log", xlabel="hidden width", ylabel="best test error (%)", title="test error against width")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig, plt)


def _style(row: str) -> dict:
    """One colour per aggregator and k, dashed for the batch estimator, black for backprop."""
    if row == "backprop":
        return {"color": "black", "linewidth": 2}
    parts = row.split()
    shade = {("mean", "k=1"): 0, ("mean", "k=2"): 1, ("mean", "k=4"): 2, ("mean", "k=16"): 3,
             ("projection", "k=2"): 4, ("projection", "k=4"): 5, ("projection", "k=16"): 6}.get((parts[1], parts[2]), 7)
    return {"color": f"C{shade}", "linestyle": "--" if "(batch)" in row else "-"}


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, sweep folders, or folders holding them")
    p.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.csv (and with --plot "
                                                   "PREFIX-curves.png, PREFIX-width.png)")
    p.add_argument("--plot", action="store_true", help="draw test-loss curves and, for MLPs of several widths, "
                                                       "test error against width (needs matplotlib and --out)")


def run_report_command(options: dict[str, Any]) -> int:
    """Run ``report``; returns the exit status (2 with one line for a user error)."""
    try:
        if options.get("plot") and not options.get("out"):
            raise ReportError("--plot needs --out PREFIX (where the images go)")
        entries = collect(options["dirs"])
        rows = table_rows(entries)
        md, table = markdown(rows), csv_text(rows)
        prefix = options.get("out")
        if prefix:
            files = {Path(f"{prefix}.md"): (md, _SIGNATURE), Path(f"{prefix}.csv"): (table, ",".join(CSV_COLUMNS[:4]))}
            images = {}
            if options.get("plot"):
                images[Path(f"{prefix}-curves.png")] = plot_curves(entries)
                if len({r["width"] for r in rows if r["model"].startswith("mlp")}) >= 2:
                    images[Path(f"{prefix}-width.png")] = plot_width(rows)
            for path, (_, sig) in files.items():
                if not _ours(path, sig):
                    raise ReportError(f"{path} exists and was not written by dualtensor report; choose another --out")
            for path in images:
                if path.exists() and not Path(f"{prefix}.md").exists():
                    raise ReportError(f"{path} exists and was not written by dualtensor report; choose another --out")
            for path, (text, _) in files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, text)
            for path, data in images.items():
                atomic_write(path, lambda f, data=data: f.write(data))
    except UsageError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2
    sys.stdout.write(md.split("\n", 2)[2])  # without the file signature
    return 0

"""Per-epoch training metrics: CSV and JSON Lines files, and loss/accuracy plots.

The files are rewritten (atomically) from the full history after every epoch, so a resumed run
continues them exactly where its checkpoint left off, and a crash never leaves a half line.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["FIELDS", "write_history", "read_jsonl", "plot_history", "clean_json"]

#: the columns of ``metrics.csv`` (and the keys of each ``metrics.jsonl`` record), in order
FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "steps", "time", "eval_time",
          "elapsed")


def clean_json(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (strict JSON) and NumPy scalars unwrapped."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "item") and not hasattr(obj, "__len__"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_history(history: Sequence[Mapping[str, Any]], csv_path: str | os.PathLike,
                  jsonl_path: str | os.PathLike) -> None:
    """Write ``history`` (one dict per epoch) to a CSV file and a JSON Lines file."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: _fmt(row.get(k)) for k in FIELDS})
    atomic_write_text(csv_path, buf.getvalue())
    lines = [json.dumps(clean_json({k: row.get(k) for k in FIELDS}), allow_nan=False) for row in history]
    atomic_write_text(jsonl_path, "".join(line + "\n" for line in lines))


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # exact round trip
    return "" if v is None else v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy curves (train and validation per epoch) as a PNG.

    Raises ``ImportError`` with an installation hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'dualtensor[plot]' "
                          "(or pip install matplotlib)") from e
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "validation", "-s")):
        ax_l.plot(epochs, [r.get(key) for r in history], style, label=label, markersize=3)
    for key, label, style in (("train_acc", "train", "-o"), ("val_acc", "validation", "-s")):
        ax_a.plot(epochs, [r.get(key) for r in history], style, label=label, markersize=3)
    ax_l.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)

    def write(f):
        fig.savefig(f, format="png", dpi=110)

    from .checkpoint import atomic_write

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return path

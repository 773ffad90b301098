"""Per-epoch training metrics as CSV and JSON Lines text, and loss/accuracy plots as PNG bytes.

The texts are rebuilt from the full history after every epoch (and written atomically by the
run folder), so a resumed run continues them exactly where its checkpoint left off and a crash
never leaves half a line.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FIELDS", "history_csv", "history_jsonl", "read_jsonl", "history_png", "clean_json", "mean_std"]

#: the columns of ``metrics.csv`` (and the keys of each ``metrics.jsonl`` record), in order
FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "steps", "time",
          "eval_time", "elapsed")


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation of ``xs`` ((None, None) when empty)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


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


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """``history`` (one dict per epoch) as CSV text with the columns :data:`FIELDS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: _fmt(row.get(k)) for k in FIELDS})
    return buf.getvalue()


def history_jsonl(history: Sequence[Mapping[str, Any]]) -> str:
    """``history`` as JSON Lines text, one strict-JSON record of :data:`FIELDS` per epoch."""
    return "".join(json.dumps(clean_json({k: row.get(k) for k in FIELDS}), allow_nan=False) + "\n"
                   for row in history)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # exact round trip
    return "" if v is None else v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def history_png(history: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """Loss and accuracy curves (train and validation per epoch) as PNG bytes.

    Raises ``ImportError`` with an installation hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'dualtensor[plot]' "
                          "(or pip install matplotlib)") from e
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, what, ylabel in ((ax_l, "loss", "cross-entropy loss"), (ax_a, "acc", "accuracy")):
            for split, label, style in (("train", "train", "-o"), ("val", "validation", "-s")):
                ax.plot(epochs, [r.get(f"{split}_{what}") for r in history], style, label=label, markersize=3)
            ax.set(xlabel="epoch", ylabel=ylabel, title="loss" if what == "loss" else "accuracy")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()
    finally:
        plt.close(fig)

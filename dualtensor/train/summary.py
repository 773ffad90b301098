"""``summary.json``: what a run did, in one place."""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import numpy as np

from .threads import blas_thread_count

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["summary"]


def summary(run: "Run", status: str, test: tuple[float, float] | None, error: str | None) -> dict:
    """The run's summary: status, configuration, data, best epoch, validation/test results (test with
    the best epoch's weights), learning-rate changes, BLAS threads, timings and versions."""
    from .. import __version__

    state, config = run.state, run.config
    last, best = (state.history[-1] if state.history else {}), state.best_record()
    out = {
        "status": status,
        "config": config.to_dict(),
        "lr": config.lr,
        "lr_changes": state.lr_changes,
        "dataset": {"name": run.splits.name, "train": len(run.splits.train), "val": len(run.splits.val),
                    "test": len(run.splits.test), "input_shape": list(run.splits.input_shape)},
        "parameters": run.model.num_parameters(),
        "epochs_run": state.epoch,
        "last_checkpoint_epoch": run.last_checkpoint[1] if run.last_checkpoint else None,
        "best_epoch": state.best_epoch or None,
        "best_val_acc": best.get("val_acc"),
        "best_val_loss": best.get("val_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "final_val_acc": last.get("val_acc"),
        "test_loss": None if test is None else test[0],
        "test_acc": None if test is None else test[1],
        "blas_threads": blas_thread_count(),
        "steps": state.step,
        "train_time_s": state.train_time,
        "wall_time_s": state.elapsed,
        "steps_per_s": state.step / state.train_time if state.train_time > 0 else None,
        "samples_per_s": state.samples / state.train_time if state.train_time > 0 else None,
        "versions": {"dualtensor": __version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    if error is not None:
        out["error"] = error
    return out

"""Side duties of a run as small pluggable parts (in the spirit of Chainer's trainer extensions).

:func:`dualtensor.train.fit` calls every callback's hooks in ascending ``order``:

* ``on_fit_start(run)`` once, after the run is built (or restored);
* ``on_epoch_start(run, epoch)``;
* ``on_step_end(run, out, stats)`` after every optimizer update;
* ``on_validation_end(run, row)`` with the epoch's record, before it is kept (may raise);
* ``on_epoch_end(run, row, improved)`` after it is kept (``improved``: a new best epoch); signals
  wait until every callback has handled it;
* ``on_train_end(run)`` once, after the last epoch (however the loop stopped), before the test;
* ``on_fit_end(run, summary)`` once, after the test evaluation and the summary;
* ``close()`` when fit returns or raises, however the run ended.

A callback stops a run cleanly with ``run.stop(status)`` and stops it as diverged by raising
:class:`TrainingDiverged`. ``Every(n)`` says on which counts a periodic duty runs.
"""
from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checkpoint import read_epoch
from ..metrics import history_csv, history_jsonl, history_png
from .errors import TrainingDiverged

if TYPE_CHECKING:
    from .runner import Run
    from .loop import EpochStats
    from .steps import StepOutput

__all__ = ["Callback", "Every", "FiniteCheck", "ReplicaCheck", "EarlyStopping", "MetricsWriter", "Checkpointer",
           "ProgressBar", "EpochLog", "Plotter"]


class Every:
    """A trigger: true on every ``n``-th count (1, 2, ... counted from 1)."""

    def __init__(self, n: int = 1):
        if int(n) < 1:
            raise ValueError(f"Every: n must be >= 1, got {n}")
        self.n = int(n)

    def __call__(self, count: int) -> bool:
        return count % self.n == 0


class Callback:
    """Base class: every hook does nothing; ``order`` sorts callbacks (lower runs first)."""

    order = 50

    def on_fit_start(self, run: "Run") -> None:
        pass

    def on_epoch_start(self, run: "Run", epoch: int) -> None:
        pass

    def on_step_end(self, run: "Run", out: "StepOutput", stats: "EpochStats") -> None:
        pass

    def on_validation_end(self, run: "Run", row: dict) -> None:
        pass

    def on_epoch_end(self, run: "Run", row: dict, improved: bool) -> None:
        pass

    def on_train_end(self, run: "Run") -> None:
        pass

    def on_fit_end(self, run: "Run", summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _finite(arrays: Any) -> Any:
    """A 0-d device bool: every array finite (no host sync)."""
    from ..backend import get_xp

    arrays = [a for a in arrays if a is not None]
    xp = get_xp(*arrays)
    return xp.stack([xp.isfinite(a).all() for a in arrays]).all()


class FiniteCheck(Callback):
    """Stops the run as diverged when the loss or a gradient (every step), the parameters or the
    validation loss (every epoch) turn non-finite, before anything is saved.

    The per-step test runs on the device and is read every ``every``-th step (and at the epoch's
    end): every step on the CPU, where reading it costs nothing; every 32nd on a GPU, where each read
    is a device-to-host sync (a divergence is then located within those steps).
    """

    order = 0

    def __init__(self, every: Every | None = None):
        self.every = every
        self._ok: Any = None
        self._since = 0

    def on_epoch_start(self, run: "Run", epoch: int) -> None:
        if self.every is None:
            self.every = Every(1 if run.config.device == "cpu" else 32)
        self._ok, self._since = None, 0

    def on_step_end(self, run: "Run", out: "StepOutput", stats: "EpochStats") -> None:
        ok = _finite([out.loss, *out.grads.values()])
        self._ok = ok if self._ok is None else self._ok & ok
        self._since = stats.steps
        if self.every(stats.steps):
            self._read(run, out, stats.steps)

    def _read(self, run: "Run", out: "StepOutput", step: int) -> None:
        if self._ok is None or bool(self._ok):
            self._ok = None
            return
        epoch = run.state.epoch + 1
        where = step if self.every.n == 1 else f"{max(1, step - self.every.n + 1)}-{step}"
        if self.every.n == 1:
            if not bool(_finite([out.loss])):
                raise TrainingDiverged(f"the training loss is {float(out.loss)}", epoch=epoch, step=where)
            bad = [n for n, g in out.grads.items() if not bool(_finite([g]))]
            raise TrainingDiverged(f"non-finite gradient for {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} "
                                   f"(loss {float(out.loss):.4g})", epoch=epoch, step=where)
        raise TrainingDiverged("the training loss or a gradient became non-finite", epoch=epoch, step=where)

    def on_validation_end(self, run: "Run", row: dict) -> None:
        if self._ok is not None and not bool(self._ok):
            self._read_at_epoch_end(row)
        if not bool(_finite([p.data for p in run.model.parameters()])):
            raise TrainingDiverged("the parameters became non-finite", epoch=row["epoch"], step=row["steps"])
        if not math.isfinite(row["val_loss"]):
            raise TrainingDiverged(f"the validation loss is {row['val_loss']}", epoch=row["epoch"], step=row["steps"])

    def _read_at_epoch_end(self, row: dict) -> None:
        start = self._since - (self._since - 1) % self.every.n
        raise TrainingDiverged("the training loss or a gradient became non-finite", epoch=row["epoch"],
                               step=f"{start}-{self._since}" if start != self._since else self._since)


class ReplicaCheck(Callback):
    """With several MPI ranks, every rank must hold the same parameters and buffers: at the start and
    every ``every``-th step, one Allgather of two float64 checksums per array (the sum and the sum
    of squares, compared bit for bit, so NaN equals NaN and is left to :class:`FiniteCheck`) compares
    them, and a mismatch stops every rank with a :class:`~dualtensor.distributed.DistributedError`
    naming the first differing array."""

    order = 1

    def __init__(self, every: Every | None = None):
        self.every = every or Every(100)

    def on_fit_start(self, run: "Run") -> None:
        self._check(run, run.state.step)

    def on_step_end(self, run: "Run", out: "StepOutput", stats: "EpochStats") -> None:
        step = run.state.step + stats.steps
        if self.every(step):
            self._check(run, step)

    def _check(self, run: "Run", step: int) -> None:
        from ..backend import get_xp, to_host
        from ..distributed import DistributedError

        state = [(n, p.data) for n, p in run.model.named_parameters()] + \
            [(n, b) for n, b in run.model.named_buffers() if b.dtype.kind == "f"]
        names, arrays = zip(*state)
        xp = get_xp(*arrays)
        sums = xp.stack([xp.stack([a.sum(dtype=np.float64), (a.astype(np.float64) ** 2).sum()]) for a in arrays])
        every = to_host(run.comm.allgather(sums[None])).reshape(run.comm.size, len(names), 2).view(np.uint64)
        bad = np.flatnonzero((every != every[:1]).any(axis=(0, 2)))
        if bad.size:
            ranks = np.flatnonzero((every[:, bad[0]] != every[0, bad[0]]).any(axis=1))
            raise DistributedError(f"the ranks' parameters differ at step {step}: {names[bad[0]]} on rank(s) "
                                   f"{', '.join(map(str, ranks))} is not rank 0's (a rank computed another "
                                   "update; check that every rank runs the same code, data and BLAS threads)")


class EarlyStopping(Callback):
    """Stops the run (status ``early_stopped``) once ``patience`` epochs passed without a better
    value of the monitored validation metric (``--monitor``)."""

    order = 10

    def __init__(self, patience: int):
        self.patience = int(patience)

    def _check(self, run: "Run") -> None:
        if run.state.best_epoch and run.state.epochs_since_best >= self.patience:
            run.stop("early_stopped")
            run.log(f"early stopping: no better {run.config.monitor} for {run.state.epochs_since_best} epochs "
                    f"(best epoch {run.state.best_epoch})")

    def on_fit_start(self, run: "Run") -> None:
        self._check(run)

    def on_epoch_end(self, run: "Run", row: dict, improved: bool) -> None:
        self._check(run)


class MetricsWriter(Callback):
    """``metrics.csv`` and ``metrics.jsonl``: the whole history, rewritten after every epoch."""

    order = 20

    def _write(self, run: "Run") -> None:
        run.rundir.write_text("metrics.csv", history_csv(run.state.history))
        run.rundir.write_text("metrics.jsonl", history_jsonl(run.state.history))

    def on_fit_start(self, run: "Run") -> None:
        self._write(run)

    def on_epoch_end(self, run: "Run", row: dict, improved: bool) -> None:
        self._write(run)


class Checkpointer(Callback):
    """``last.npz``: the state after the latest saved epoch (epoch 0 included), everything a resume
    needs, every ``every``-th epoch and at the end; ``best.npz``: the best epoch's checkpoint."""

    order = 30

    def __init__(self, every: Every | None = None):
        self.every = every or Every(1)

    def on_fit_start(self, run: "Run") -> None:
        if not run.rundir.has("last.npz"):
            run.save_checkpoint("last.npz")
            return
        run.last_checkpoint = (run.rundir.file("last.npz"), run.state.epoch)
        best = run.rundir.file("best.npz")
        if run.state.best_epoch and (not run.rundir.has("best.npz") or read_epoch(best) != run.state.best_epoch):
            run.save_checkpoint("best.npz")  # a run stopped between its two writes left it behind

    def on_epoch_end(self, run: "Run", row: dict, improved: bool) -> None:
        if self.every(run.state.epoch):
            run.save_checkpoint("last.npz")
        if improved:
            run.save_checkpoint("best.npz")

    def on_train_end(self, run: "Run") -> None:
        if run.last_checkpoint is None or run.last_checkpoint[1] != run.state.epoch:
            run.save_checkpoint("last.npz")


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr with the running loss and accuracy."""

    order = 40

    def __init__(self) -> None:
        self.bar: Any = None

    def on_epoch_start(self, run: "Run", epoch: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}/{run.config.epochs}", leave=False,
                        file=sys.stderr, dynamic_ncols=True, unit="step")

    def on_step_end(self, run: "Run", out: "StepOutput", stats: "EpochStats") -> None:
        if stats.steps % 16 == 1 or stats.steps == run.steps_per_epoch:  # reading them is a device sync
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{stats.acc:.3f}", refresh=False)
        self.bar.update()

    def on_validation_end(self, run: "Run", row: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLog(Callback):
    """One line per epoch on stdout (losses, accuracies, lr, time; ``*`` marks a new best)."""

    order = 5  # before the lines of other callbacks about the same epoch

    def on_epoch_end(self, run: "Run", row: dict, improved: bool) -> None:
        run.log(f"epoch {row['epoch']:3d}/{run.config.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
                f"lr {row['lr']:.3g}  {row['time']:.1f}s{'  *' if improved else ''}")


class Plotter(Callback):
    """``curves.png`` (loss and accuracy per epoch) at the end of the run; needs matplotlib."""

    order = 60

    def on_fit_end(self, run: "Run", summary: dict) -> None:
        try:
            title = f"{run.config.model} on {run.config.dataset}, {run.config.grad}"
            png = history_png(run.state.history, title=title)
        except ImportError as e:
            run.warn(f"--plot: {e}; no plot written")
            return
        run.log(f"plot: {run.rundir.write('curves.png', lambda f: f.write(png))}")

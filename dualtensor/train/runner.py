"""``fit``: build (or restore) a run from its configuration and train it, callbacks doing the rest."""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, checkpoint_arrays, write_npz
from ..distributed import DistributedError, abort_on_error, agreed, bind_device
from ..metrics import clean_json
from .build import RandomStreams, build_model, build_optimizer, build_schedule, model_blocks
from .callbacks import (Callback, Checkpointer, EarlyStopping, EpochLog, Every, FiniteCheck, MetricsWriter, Plotter,
                        ProgressBar, ReplicaCheck)
from .config import ConfigError, TrainConfig
from .errors import TrainingDiverged
from .loop import evaluate, reduce_stats, train_epoch
from .resume import initialise_from, restore, resume_checkpoint
from .rundir import RunDir
from .signals import deferred
from .state import TrainState
from .steps import Step, make_step
from .summary import summary as _summary
from .threads import blas_threads

__all__ = ["fit", "run_mode", "Run", "FitResult", "default_callbacks", "load_data"]


@dataclass
class Run:
    """What the loop and the callbacks share: the configuration, the objects being trained, the
    progress so far and the run folder (None for a run without files)."""

    config: TrainConfig
    splits: Any
    data: dict[str, tuple[Any, Any]]
    model: Any
    optimizer: Any
    scheduler: Any
    streams: RandomStreams
    step: Step
    state: TrainState
    rundir: RunDir | None
    comm: Any = None
    started: float = field(default_factory=time.perf_counter)
    best_weights: dict | None = None
    last_checkpoint: tuple[Path, int] | None = None
    stop_status: str | None = None
    elapsed_before: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        n, b = len(self.splits.train), self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self.stop_status is not None

    def stop(self, status: str) -> None:
        """End the run after the current epoch with ``status`` (e.g. ``"early_stopped"``)."""
        self.stop_status = status

    def log(self, msg: str) -> None:
        """A progress line on stdout (through tqdm, so bars stay intact); silent with ``quiet``."""
        if not self.config.quiet:
            from tqdm import tqdm

            tqdm.write(msg)

    def warn(self, msg: str) -> None:
        """A warning (``warnings.warn``; the CLI prints it as one line)."""
        warnings.warn(msg, stacklevel=2)

    def batches(self, epoch: int) -> Any:
        """The training batches of ``epoch`` (1-based), in the order fixed by ``(seed, epoch)``."""
        from ..data import batches

        x, y = self.data["train"]
        return batches(x, y, self.config.batch_size, shuffle=True, seed=self.config.seed, epoch=epoch - 1,
                       drop_last=self.config.drop_last, device=self.config.device)

    def save_checkpoint(self, name: str) -> Path:
        """Write the run's full state to run file ``name``. ``last.npz`` also holds the best epoch's
        weights when they are not the current ones, so it alone restores the run; ``best.npz`` is the
        best epoch's checkpoint, for use outside the run (written when that epoch ends)."""
        self.state.elapsed = self.elapsed_now()
        if name == "best.npz":
            weights, epoch, best = _Weights(self.best_weights), self.state.best_epoch, None
        else:
            weights, epoch = self.model, self.state.epoch
            best = self.best_weights if self.state.best_epoch not in (0, epoch) else None
        arrays = checkpoint_arrays(model=weights, optimizer=self.optimizer, scheduler=self.scheduler,
                                   epoch=epoch, config=self.config.to_dict(),
                                   train_state=self.state.to_dict(), best_state=best)
        path = self.rundir.write(name, lambda f: write_npz(f, arrays))
        if name == "last.npz":
            self.last_checkpoint = (path, self.state.epoch)
        return path

    def elapsed_now(self) -> float:
        """Seconds this run has taken so far, over all its resumes."""
        return self.elapsed_before + time.perf_counter() - self.started

    def end_epoch(self, row: dict, steps: int, samples: int, train_time: float) -> bool:
        """Keep the finished epoch: record it, remember the best weights, advance the schedule."""
        self.state.step += steps
        self.state.samples += samples
        self.state.train_time += train_time
        row["elapsed"] = self.elapsed_now()
        improved = self.state.record_epoch(row, self.config.monitor)
        if improved:
            self.best_weights = {k: v.copy() for k, v in self.model.state_dict().items()}
        self.scheduler.step()
        self.state.elapsed = self.elapsed_now()
        return improved

    def finish(self, status: str, *, test: bool = False, error: str | None = None) -> dict:
        """Evaluate the best epoch's weights on the test set (``test``) and write ``summary.json``."""
        result = None
        if test and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            result = evaluate(self.model, *self.data["test"], self.config.eval_batch_size)
            self.log(f"test (best epoch {self.state.best_epoch}): loss {result[0]:.4f}  accuracy {result[1]:.4f}")
        self.state.elapsed = self.elapsed_now()
        summary = _summary(self, status, result, error)
        if self.rundir is not None:
            self.rundir.write_text("summary.json", json.dumps(clean_json(summary), indent=2) + "\n")
        return summary


class _Weights:
    """A state dict in the guise of a model (for :func:`checkpoint_arrays`)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


@dataclass
class FitResult:
    """What :func:`fit` returns: the summary (as in ``summary.json``), the model holding the best
    epoch's weights, and the final :class:`TrainState`."""

    summary: dict
    model: Any
    state: TrainState


def default_callbacks(config: TrainConfig, with_files: bool) -> list[Callback]:
    """The callbacks :func:`fit` adds unless told not to: the finite check, the replica check
    (``ranks`` > 1), early stopping (``early_stopping``), metrics and checkpoints (with a run
    folder), progress bar and epoch lines (unless ``quiet``), the plot (``plot``)."""
    cbs: list[Callback] = [FiniteCheck()]
    if config.ranks > 1 and config.check_every:
        cbs.append(ReplicaCheck(Every(config.check_every)))
    if config.early_stopping:
        cbs.append(EarlyStopping(config.early_stopping))
    if with_files:
        cbs += [MetricsWriter(), Checkpointer()]
    if not config.quiet:
        cbs += [ProgressBar(), EpochLog()]
    if config.plot and with_files:
        cbs.append(Plotter())
    return cbs


def fit(config: TrainConfig, callbacks: Sequence[Callback] = (), *, resume: bool = False,
        overwrite: bool = False, use_default_callbacks: bool = True) -> FitResult:
    """Train the run ``config`` describes and return its :class:`FitResult`.

    With ``config.out`` the run lives in that folder (:class:`RunDir` rules): ``resume`` continues
    the run there from its ``last.npz`` (``config`` may differ from the stored one only in
    :data:`RESUME_MUTABLE`; see :func:`resume_config`), ``overwrite`` deletes that run's files and
    starts afresh. Without ``out`` nothing is written.

    Raises :class:`ConfigError`, :class:`RunDirError`, :class:`CheckpointError` and the data
    errors (all :class:`dualtensor.errors.UsageError`), :class:`TrainingDiverged` (after writing a
    summary with status ``diverged``; the last good checkpoint is kept) and ``KeyboardInterrupt``
    / :class:`RunInterrupted` (summary status ``interrupted``; the run is resumable).
    """
    started = time.perf_counter()
    mode = run_mode(resume, overwrite, config.out)
    comm = job_communicator(config)
    config = agreed(comm, lambda: _checked(config.replace(ranks=comm.size)))
    bind_device(comm, config.device)
    if config.heap_arrays and config.device == "cpu":
        from ..allocator import heap_arrays

        heap_arrays()  # reuse freed large arrays across steps instead of page-faulting them in again
    files = config.out if comm.is_root else None  # rank 0 alone writes the run folder
    opened = agreed(comm, lambda: RunDir.open(files, mode) if files else contextlib.nullcontext())
    with blas_threads(config.threads), opened as rundir:
        run = agreed(comm, lambda: _prepare(config if comm.is_root else _follower(config), rundir,
                                            _checkpoint(comm, rundir, config, resume), started, comm))
        cbs = sorted([*(default_callbacks(run.config, rundir is not None) if use_default_callbacks else []),
                      *callbacks], key=lambda c: c.order)
        try:  # an error on one rank only (not a divergence or a replica mismatch, which all ranks see) ends the job
            with abort_on_error(comm, (TrainingDiverged, DistributedError)):
                return _execute(run, cbs)
        finally:
            for c in cbs:
                c.close()


def _checked(config: TrainConfig) -> TrainConfig:
    if config.init_from is not None:
        config = config.replace(init_from=str(Path(config.init_from).expanduser().resolve()))
    config = config.resolved()
    config.validate()
    return config


def job_communicator(config: TrainConfig) -> Any:
    """The communicator of the job for ``config.parallel``: MPI's (:func:`dualtensor.distributed.init`)
    for ``tangents``/``data``, a one-process one for ``none``; raises :class:`ConfigError` when MPI
    is needed but missing."""
    from .. import distributed

    if config.parallel == "none":
        return distributed.init() if distributed.launched() else distributed.Serial()
    try:
        return distributed.init(require=True)
    except distributed.DistributedError as e:
        raise ConfigError(f"--parallel {config.parallel}: {e}") from None


def _follower(config: TrainConfig) -> TrainConfig:
    """What a rank other than 0 runs: the same run, silent and without files."""
    return config.replace(quiet=True, plot=False)


def _checkpoint(comm: Any, rundir: RunDir | None, config: TrainConfig, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from: rank 0 checks the run folder; the others read its
    ``last.npz`` too (the folder must be on a file system every rank sees)."""
    if not resume:
        return None
    if comm.is_root:
        return resume_checkpoint(rundir, config)
    from ..checkpoint import load_checkpoint

    return load_checkpoint(Path(config.out).expanduser() / "last.npz")


def run_mode(resume: bool, overwrite: bool, out: str | None) -> str:
    """The :class:`RunDir` mode for the flags (``new``, ``resume``, ``overwrite``); raises
    :class:`ConfigError` for ``resume`` with ``overwrite`` or without a run folder."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or delete its files "
                          "and start afresh")
    if resume and not out:
        raise ConfigError("--resume needs --out DIR (the run to continue)")
    return "resume" if resume else "overwrite" if overwrite else "new"


def _execute(run: Run, callbacks: list[Callback]) -> FitResult:
    def each(hook: str, *args: Any) -> None:
        for c in callbacks:
            getattr(c, hook)(run, *args)

    try:
        each("on_fit_start")
        while run.state.epoch < run.config.epochs and not run.stopping:
            epoch = run.state.epoch + 1
            run.streams.start_epoch(epoch, run.state.step)
            each("on_epoch_start", epoch)
            lr = float(run.optimizer.param_groups[0]["lr"])
            stats = train_epoch(run.model, run.optimizer, run.step, run.batches(epoch),
                                on_step=lambda out, s: each("on_step_end", out, s))
            if run.config.parallel == "data":
                stats = reduce_stats(run.comm, stats)
                average_buffers(run.model, run.comm)
            t0 = time.perf_counter()
            val_loss, val_acc = evaluate(run.model, *run.data["val"], run.config.eval_batch_size)
            test_loss, test_acc = (evaluate(run.model, *run.data["test"], run.config.eval_batch_size)
                                   if run.config.track_test else (None, None))
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val_loss,
                   "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "steps": stats.steps,
                   "time": stats.time, "eval_time": time.perf_counter() - t0, "elapsed": None}
            each("on_validation_end", row)
            with deferred():  # the epoch's record, metrics and checkpoints are kept whole
                improved = run.end_epoch(row, stats.steps, stats.seen, stats.time)
                each("on_epoch_end", row, improved)
        each("on_train_end")
    except TrainingDiverged as e:
        raise _diverged(run, e) from None
    except KeyboardInterrupt as e:
        run.finish("interrupted")
        e.checkpoint, e.checkpoint_epoch = run.last_checkpoint or (None, None)
        raise
    summary = run.finish(run.stop_status or "completed", test=run.config.test)
    each("on_fit_end", summary)
    return FitResult(summary, run.model, run.state)


def average_buffers(model: Any, comm: Any) -> None:
    """Make the ranks' floating buffers (batch-norm running statistics, which data-parallel ranks
    update from their own shards) their mean over the ranks, so every rank evaluates, checkpoints and
    decides alike."""
    buffers = [(n, b) for n, b in model.named_buffers() if b.dtype.kind == "f"]
    if comm.size == 1 or not buffers:
        return
    mean = comm.allreduce_many([b for _, b in buffers], 1.0 / comm.size)
    model.load_state_dict({n: m for (n, _), m in zip(buffers, mean)}, strict=False)


def _diverged(run: Run, e: TrainingDiverged) -> TrainingDiverged:
    msg = f"training diverged at epoch {e.epoch}, step {e.step}: {e.reason}."
    path, at = run.last_checkpoint or (None, None)
    if path is not None:
        msg += (f" The last good checkpoint {path} (epoch {at}) is kept; continue from it with a smaller "
                f"learning rate: python -m dualtensor train --resume --out {run.config.out} "
                f"--lr {run.config.lr / 10:g}")
    else:
        msg += f" Try a smaller learning rate than {run.config.lr:g}."
    run.finish("diverged", error=msg)
    return TrainingDiverged(e.reason, epoch=e.epoch, step=e.step, checkpoint=path, checkpoint_epoch=at, message=msg)


# ------------------------------------------------------------------------------------------ building

def load_data(config: TrainConfig) -> Any:
    """The configured dataset's splits (:func:`dualtensor.data.load`); warns when ``limit`` exceeds
    the training samples."""
    from .. import data

    splits = data.load(config.dataset, data_dir=config.data_dir, download=config.download,
                       mirrors=config.mirrors, val_size=config.val_size, seed=config.seed, dtype=config.dtype,
                       limit=config.limit)
    if config.limit is not None and config.limit > len(splits.train):
        warnings.warn(f"--limit {config.limit} exceeds the {len(splits.train)} training samples; all of them "
                      "are used", stacklevel=2)
    return splits


def _prepare(config: TrainConfig, rundir: RunDir | None, ckpt: Checkpoint | None, started: float,
             comm: Any = None) -> Run:
    from ..backend import to_device

    splits = load_data(config)
    model = build_model(config, splits.input_shape, splits.num_classes)
    if config.device != "cpu":
        model.to(config.device)
    optimizer = build_optimizer(config, model)
    scheduler = build_schedule(config, optimizer)
    streams = RandomStreams(config, model)
    data = {name: (to_device(s.x, config.device), to_device(s.y, config.device))
            for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    run = Run(config, splits, data, model, optimizer, scheduler, streams, make_step(model, config, streams, comm),
              TrainState(), rundir, comm, started=started)
    if ckpt is not None:
        restore(run, ckpt)
    elif config.init_from is not None:
        initialise_from(run, Path(config.init_from))
    if rundir is not None:
        rundir.write_text("config.json", json.dumps(clean_json(config.to_dict()), indent=2) + "\n")
    method = "" if config.grad == "backprop" else f" ({config.perturb}, k={config.k}, {config.aggregate})"
    if config.ranks > 1:
        method += f", {config.parallel}-parallel over {config.ranks} ranks"
    if config.grad != "backprop" and config.perturb == "activity":
        sizes = model.activation_sizes(splits.input_shape, model_blocks(model, config))
        method += f", per-sample activation dimension n = {sum(sizes):,} ({' + '.join(map(str, sizes))})"
    run.log(f"{config.model} ({model.num_parameters():,} parameters) on {splits.name} ({len(splits.train)} train / "
            f"{len(splits.val)} val / {len(splits.test)} test), {config.grad}{method}, {config.optimizer} "
            f"lr={config.lr:g}, batch {config.batch_size}" + (f", out {rundir.path}" if rundir else ""))
    return run

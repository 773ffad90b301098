"""``fit``: build (or restore) a run from its configuration and train it, callbacks doing the rest."""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import (Checkpoint, CheckpointError, check_arrays, checkpoint_arrays, load_checkpoint, read_config,
                          write_npz)
from ..metrics import clean_json
from .build import (build_model, build_optimizer, build_schedule, model_blocks, restore_rng, rng_state,
                    tangent_generator)
from .callbacks import (Callback, Checkpointer, EarlyStopping, EpochLog, FiniteCheck, MetricsWriter, Plotter,
                        ProgressBar)
from .config import RESUME_MUTABLE, ConfigError, TrainConfig, schedule_depends_on_epochs
from .errors import TrainingDiverged
from .loop import evaluate, train_epoch
from .rundir import RunDir
from .state import TrainState
from .steps import Step, make_step
from .threads import blas_thread_count, blas_threads

__all__ = ["fit", "resume_config", "run_mode", "Run", "FitResult", "default_callbacks", "load_data"]


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
    tangent_rng: Any
    step: Step
    state: TrainState
    rundir: RunDir | None
    started: float = field(default_factory=time.perf_counter)
    best_weights: dict | None = None
    last_checkpoint: tuple[Path, int] | None = None
    stop_status: str | None = None
    elapsed_before: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.splits.train), self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)

    @property
    def stopping(self) -> bool:
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
        warnings.warn(msg, stacklevel=2)

    def batches(self, epoch: int) -> Any:
        from ..data import batches

        x, y = self.data["train"]
        return batches(x, y, self.config.batch_size, shuffle=True, seed=self.config.seed, epoch=epoch - 1,
                       drop_last=self.config.drop_last, device=self.config.device)

    def save_checkpoint(self, name: str) -> Path:
        """Write the run's full state to run file ``name`` (``last.npz`` or ``best.npz``)."""
        self.state.elapsed = self.elapsed_now()
        arrays = checkpoint_arrays(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                   epoch=self.state.epoch, config=self.config.to_dict(),
                                   rng_state=rng_state(self.tangent_rng, self.model),
                                   train_state=self.state.to_dict())
        return self.rundir.write(name, lambda f: write_npz(f, arrays))

    def elapsed_now(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def end_epoch(self, row: dict, steps: int, samples: int, train_time: float) -> bool:
        """Keep the finished epoch: record it, remember the best weights, advance the schedule."""
        self.state.step += steps
        self.state.samples += samples
        self.state.train_time += train_time
        improved = self.state.record_epoch(row, self.config.monitor)
        if improved:
            self.best_weights = {k: v.copy() for k, v in self.model.state_dict().items()}
        self.scheduler.step()
        self.state.elapsed = row["elapsed"] = self.elapsed_now()
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


@dataclass
class FitResult:
    """What :func:`fit` returns: the summary (as in ``summary.json``), the model holding the best
    epoch's weights, and the final :class:`TrainState`."""

    summary: dict
    model: Any
    state: TrainState


def default_callbacks(config: TrainConfig, with_files: bool) -> list[Callback]:
    """The callbacks :func:`fit` adds unless told not to: the finite check, early stopping
    (``early_stopping``), metrics and checkpoints (with a run folder), progress bar and epoch lines
    (unless ``quiet``), the plot (``plot``)."""
    cbs: list[Callback] = [FiniteCheck()]
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
    if config.init_from is not None:
        config = config.replace(init_from=str(Path(config.init_from).expanduser().resolve()))
    config = config.resolved()
    config.validate()
    if config.heap_arrays and config.device == "cpu":
        from ..backend import heap_arrays

        heap_arrays()  # reuse freed large arrays across steps instead of page-faulting them in again
    opened = RunDir.open(config.out, mode) if config.out else contextlib.nullcontext()
    with blas_threads(config.threads), opened as rundir:
        ckpt = _resume_checkpoint(rundir, config) if resume else None
        run = _prepare(config, rundir, ckpt, started)
        cbs = sorted([*(default_callbacks(config, rundir is not None) if use_default_callbacks else []),
                      *callbacks], key=lambda c: c.order)
        try:
            return _execute(run, cbs)
        finally:
            for c in cbs:
                c.close()


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
            each("on_epoch_start", epoch)
            lr = float(run.optimizer.param_groups[0]["lr"])
            stats = train_epoch(run.model, run.optimizer, run.step, run.batches(epoch),
                                on_step=lambda out, s: each("on_step_end", out, s))
            t0 = time.perf_counter()
            val_loss, val_acc = evaluate(run.model, *run.data["val"], run.config.eval_batch_size)
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": lr, "steps": stats.steps, "time": stats.time,
                   "eval_time": time.perf_counter() - t0, "elapsed": None}
            each("on_validation_end", row)
            improved = run.end_epoch(row, stats.steps, stats.seen, stats.time)
            each("on_epoch_end", row, improved)
    except TrainingDiverged as e:
        raise _diverged(run, e) from None
    except KeyboardInterrupt:
        run.finish("interrupted")
        raise
    summary = run.finish(run.stop_status or "completed", test=True)
    each("on_fit_end", summary)
    return FitResult(summary, run.model, run.state)


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


# ------------------------------------------------------------------------------------------ resume

def resume_config(out: str | Path, changes: Mapping[str, Any] | None = None) -> TrainConfig:
    """The configuration stored in the run ``out`` with ``changes`` applied: what to pass to
    ``fit(..., resume=True)``. Only :data:`RESUME_MUTABLE` options may differ (checked by fit)."""
    RunDir.check(out, "resume")
    path = Path(out).expanduser() / "last.npz"
    saved = _stored_config(read_config(path), path)
    return saved.replace(**{**dict(changes or {}), "out": str(out)})


def _stored_config(stored: Mapping, path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(stored).resolved()
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored configuration is damaged ({e})") from None


def _resume_checkpoint(rundir: RunDir, config: TrainConfig) -> Checkpoint:
    ckpt = load_checkpoint(rundir.file("last.npz"))
    saved = _stored_config(ckpt.config, rundir.file("last.npz"))
    fixed = [k for k in saved.to_dict() if k not in RESUME_MUTABLE | {"out"} and getattr(saved, k) != getattr(config, k)]
    if fixed:
        pairs = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in fixed)
        raise ConfigError(f"--resume: {pairs}: only {', '.join(sorted(RESUME_MUTABLE))} may change when resuming "
                          f"(start a new run with --init-from {rundir.path} to change the rest)")
    if config.epochs < ckpt.epoch:
        raise ConfigError(f"--resume --epochs {config.epochs}: this run has done {ckpt.epoch} epochs already")
    why = schedule_depends_on_epochs(saved)
    if config.epochs != saved.epochs and why:
        raise ConfigError(f"--resume --epochs {config.epochs}: {why}, so resuming with another --epochs would not "
                          f"equal an uninterrupted {config.epochs}-epoch run; start a new run instead")
    if rundir.changed("config.json"):
        try:
            found = json.loads(rundir.file("config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        expected = clean_json(ckpt.config)
        if found != expected:
            keys = sorted(k for k in expected if not isinstance(found, dict) or found.get(k) != expected[k])
            raise ConfigError(f"{rundir.file('config.json')} was edited by hand ({', '.join(keys) or 'unreadable'}); "
                              "a run's configuration lives in its last.npz and changes only through options on "
                              "--resume (README: Runs and files): undo the edit and pass the change as an option")
    return ckpt


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


def _prepare(config: TrainConfig, rundir: RunDir | None, ckpt: Checkpoint | None, started: float) -> Run:
    from ..backend import to_device

    splits = load_data(config)
    model = build_model(config, splits.input_shape, splits.num_classes)
    if config.device != "cpu":
        model.to(config.device)
    optimizer = build_optimizer(config, model)
    scheduler = build_schedule(config, optimizer)
    rng = tangent_generator(config)
    data = {name: (to_device(s.x, config.device), to_device(s.y, config.device))
            for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    run = Run(config, splits, data, model, optimizer, scheduler, rng, make_step(model, config, rng), TrainState(),
              rundir, started=started)
    if ckpt is not None:
        _restore(run, ckpt)
    elif config.init_from is not None:
        _initialise_from(run, Path(config.init_from))
    if rundir is not None:
        rundir.write_text("config.json", json.dumps(clean_json(config.to_dict()), indent=2) + "\n")
    method = "" if config.grad == "backprop" else f" ({config.perturb}, k={config.k}, {config.aggregate})"
    if config.grad != "backprop" and config.perturb == "activity":
        sizes = model.activation_sizes(splits.input_shape, model_blocks(model, config))
        method += f", per-sample activation dimension n = {sum(sizes):,} ({' + '.join(map(str, sizes))})"
    run.log(f"{config.model} ({model.num_parameters():,} parameters) on {splits.name} ({len(splits.train)} train / "
            f"{len(splits.val)} val / {len(splits.test)} test), {config.grad}{method}, {config.optimizer} "
            f"lr={config.lr:g}, batch {config.batch_size}" + (f", out {rundir.path}" if rundir else ""))
    return run


def _restore(run: Run, ckpt: Checkpoint) -> None:
    """Load a checkpoint into the freshly built run; everything is checked against what it replaces."""
    from ..backend import to_device

    where = str(ckpt.path)
    check_arrays(ckpt.model_state, run.model.state_dict(), f"{where}: model")
    run.model.load_state_dict(ckpt.model_state)
    _load_optimizer_state(run, ckpt)
    try:
        restore_rng(ckpt.rng_state, run.tangent_rng, run.model)
        run.state = TrainState.from_dict(ckpt.train_state, ckpt.epoch)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    run.elapsed_before = run.state.elapsed
    if run.state.best_epoch:
        best_path = run.rundir.file("best.npz")
        best = load_checkpoint(best_path)
        if best.epoch != run.state.best_epoch:
            raise CheckpointError(f"{best_path} holds epoch {best.epoch}, the run's best epoch is {run.state.best_epoch}")
        check_arrays(best.model_state, run.model.state_dict(), f"{best_path}: model")
        run.best_weights = {k: to_device(v, run.config.device) for k, v in best.model_state.items()}
    saved_lr = float(run.scheduler.base_lrs[0])
    if saved_lr != run.config.lr:
        run.scheduler.set_base_lrs([run.config.lr] * len(run.optimizer.param_groups))
        run.state.lr_changes.append({"epoch": run.state.epoch, "from": saved_lr, "to": run.config.lr})
        run.log(f"learning rate changed from {saved_lr:g} to {run.config.lr:g} at epoch {run.state.epoch}")
    run.log(f"resuming {run.rundir.path} from epoch {run.state.epoch}")


def _load_optimizer_state(run: Run, ckpt: Checkpoint) -> None:
    where = str(ckpt.path)
    for what, saved, target in (("optimizer", ckpt.optimizer_state, run.optimizer),
                                ("schedule", ckpt.scheduler_state, run.scheduler)):
        if saved is None:
            raise CheckpointError(f"{where}: no {what} state")
        if what == "optimizer":
            _check_optimizer_arrays(saved, [p.data for p in run.model.parameters()], where)
        try:
            target.load_state_dict(saved)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            reason = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise CheckpointError(f"{where}: the {what} state does not fit this run ({reason})") from None


def _check_optimizer_arrays(saved: Any, params: list, where: str) -> None:
    state = saved.get("state") if isinstance(saved, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: the optimizer state has no per-parameter 'state'")
    found, expected = {}, {}
    for key, values in state.items():
        if not (isinstance(key, (int, str)) and str(key).isdigit() and int(key) < len(params)
                and isinstance(values, Mapping)):
            raise CheckpointError(f"{where}: the optimizer state names parameter {key!r}, the model has {len(params)}")
        for name, v in values.items():
            if hasattr(v, "dtype"):
                found[f"optim/state/{key}/{name}"] = v
                expected[f"optim/state/{key}/{name}"] = params[int(key)]
    check_arrays(found, expected, where)


def _initialise_from(run: Run, path: Path) -> None:
    source = path / "last.npz" if path.is_dir() else path
    ckpt = load_checkpoint(source)
    check_arrays(ckpt.model_state, run.model.state_dict(), f"--init-from {source}: model")
    run.model.load_state_dict(ckpt.model_state)
    run.log(f"weights from {source} (epoch {ckpt.epoch})")


def _summary(run: Run, status: str, test: tuple[float, float] | None, error: str | None) -> dict:
    import platform

    import numpy as np

    from .. import __version__

    state, config = run.state, run.config
    last, best = (state.history[-1] if state.history else {}), state.best_record()
    summary = {
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
        summary["error"] = error
    return summary

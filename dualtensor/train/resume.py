"""Continuing a run: what may change, and loading its checkpoint into the freshly built objects.

Everything a checkpoint holds is checked against what it replaces (names, shapes, dtypes,
finiteness, the optimizer's and schedule's state, the RNG states, the progress) and a mismatch
raises :class:`dualtensor.checkpoint.CheckpointError` naming the entry.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpoint, CheckpointError, check_arrays, load_checkpoint, read_config
from ..metrics import clean_json
from .config import RESUME_MUTABLE, ConfigError, TrainConfig, option, schedule_depends_on_epochs
from .rundir import RunDir
from .state import TrainState

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["resume_config", "resume_checkpoint", "restore", "initialise_from"]


def resume_config(out: str | Path, changes: Mapping[str, Any] | None = None) -> TrainConfig:
    """The configuration stored in the run ``out`` with ``changes`` applied: what to pass to
    ``fit(..., resume=True)``. Only :data:`RESUME_MUTABLE` options may differ (checked by fit)."""
    RunDir.check(out, "resume")
    path = Path(out).expanduser() / "last.npz"
    saved = stored_config(read_config(path), path)
    return saved.replace(**{**dict(changes or {}), "out": str(out)})


def stored_config(stored: Mapping, path: Path) -> TrainConfig:
    """The resolved configuration a checkpoint holds; one that is not a valid configuration raises
    :class:`CheckpointError` (not an option error: the user gave no such option)."""
    try:
        config = TrainConfig.from_dict(stored).resolved()
        config.validate(machine=False)
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored configuration is damaged ({e})") from None
    return config


def resume_checkpoint(rundir: RunDir, config: TrainConfig) -> Checkpoint:
    """Check that the run in ``rundir`` may continue as ``config`` says and return its ``last.npz``:
    every run file as written, only :data:`RESUME_MUTABLE` options changed, ``epochs`` allowed."""
    ckpt = load_checkpoint(rundir.file("last.npz"))
    saved = stored_config(ckpt.config, rundir.file("last.npz"))
    if saved.ranks != config.ranks:
        raise ConfigError(f"--resume: this run was trained on {saved.ranks} MPI rank(s) and this job has "
                          f"{config.ranks}; continue it with the same number (mpiexec -n {saved.ranks} ...), which "
                          "repeats the uninterrupted run exactly")
    fixed = [k for k in saved.to_dict()
             if k not in RESUME_MUTABLE | {"out"} and getattr(saved, k) != getattr(config, k)]
    if fixed:
        pairs = ", ".join(f"{option(k)} {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in fixed)
        allowed = ", ".join(option(k) for k in sorted(RESUME_MUTABLE))
        raise ConfigError(f"--resume: {pairs}: only {allowed} may change when resuming (start a new run with "
                          f"--init-from {rundir.path} to change the rest)")
    if config.epochs < ckpt.epoch:
        raise ConfigError(f"--resume --epochs {config.epochs}: this run has done {ckpt.epoch} epochs already")
    why = schedule_depends_on_epochs(saved)
    if config.epochs != saved.epochs and why:
        raise ConfigError(f"--resume --epochs {config.epochs}: {why}, so resuming with another --epochs would not "
                          f"equal an uninterrupted {config.epochs}-epoch run; start a new run instead")
    changed = rundir.changed_files()
    if "config.json" in changed:
        try:
            found = json.loads(rundir.file("config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        expected = clean_json(ckpt.config)
        keys = sorted(k for k in expected if not isinstance(found, dict) or found.get(k) != expected[k])
        raise ConfigError(f"{rundir.file('config.json')} was edited by hand ({', '.join(keys) or 'formatting'}); "
                          "a run's configuration lives in its last.npz and changes only through options on "
                          "--resume (README: Runs and files): undo the edit and pass the change as an option")
    if changed:
        raise CheckpointError(f"--resume: {', '.join(str(rundir.file(n)) for n in changed)} changed since dualtensor "
                              "wrote them; put back what it wrote (or move them away) to continue the run")
    return ckpt


def restore(run: "Run", ckpt: Checkpoint) -> None:
    """Load ``ckpt`` (a run's ``last.npz``) into the freshly built ``run``."""
    from ..backend import to_device

    where = str(ckpt.path)
    check_arrays(ckpt.model_state, run.model.state_dict(), f"{where}: model")
    run.model.load_state_dict(ckpt.model_state)
    _load_state(ckpt.optimizer_state, run.optimizer, "optimizer", where,
                check=lambda s: _check_optimizer_arrays(s, [p.data for p in run.model.parameters()], where))
    _load_state(ckpt.scheduler_state, run.scheduler, "schedule", where)
    try:
        run.state = TrainState.from_dict(ckpt.train_state, ckpt.epoch)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    run.elapsed_before = run.state.elapsed
    if run.state.best_epoch == ckpt.epoch:  # the model's own weights are the best ones
        run.best_weights = {k: v.copy() for k, v in run.model.state_dict().items()}
    elif run.state.best_epoch:
        if ckpt.best_state is None:
            raise CheckpointError(f"{where}: no best/ weights for the best epoch {run.state.best_epoch}")
        check_arrays(ckpt.best_state, run.model.state_dict(), f"{where}: best")
        run.best_weights = {k: to_device(v, run.config.device) for k, v in ckpt.best_state.items()}
    saved_lr = float(run.scheduler.base_lrs[0])
    if saved_lr != run.config.lr:
        run.scheduler.set_base_lrs([run.config.lr] * len(run.optimizer.param_groups))
        run.state.lr_changes.append({"epoch": run.state.epoch, "from": saved_lr, "to": run.config.lr})
        run.log(f"learning rate changed from {saved_lr:g} to {run.config.lr:g} at epoch {run.state.epoch}")
    run.log(f"resuming {ckpt.path.parent} from epoch {run.state.epoch}")


def _load_state(saved: Any, target: Any, what: str, where: str, check: Any = None) -> None:
    if saved is None:
        raise CheckpointError(f"{where}: no {what} state")
    if check is not None:
        check(saved)
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


def initialise_from(run: "Run", path: Path) -> None:
    """Load the model weights of ``path`` (a run folder's ``last.npz``, or a checkpoint file)."""
    source = path / "last.npz" if path.is_dir() else path
    ckpt = load_checkpoint(source)
    check_arrays(ckpt.model_state, run.model.state_dict(), f"--init-from {source}: model")
    run.model.load_state_dict(ckpt.model_state)
    run.log(f"weights from {source} (epoch {ckpt.epoch})")

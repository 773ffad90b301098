"""The Optuna side of a sweep: the study, its pruner and sampler, one trial as one training run."""
from __future__ import annotations

import datetime
import json
import time
import warnings
from pathlib import Path
from typing import Any

from ..train import Callback, RunDirBusy, TrainingDiverged, fit
from .config import SweepConfig, SweepError
from .folder import SweepDir, worker_id

__all__ = ["open_study", "run_trial", "reclaim", "wait_for", "counts", "PruneOnPlateau", "run_mode_of",
           "load_summary", "TrialInUse"]

# how often a trial's worker tells an RDB storage it lives, and after how long without word its trial
# counts as dead (then Optuna fails it and the sweep runs it again)
HEARTBEAT_S, GRACE_S = 20, 120
ORPHAN_S = 60


class TrialInUse(Exception):
    """The trial's run folder is live in another process (two workers took the same queued trial)."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps need Optuna: pip install 'dualtensor[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a trial that fails is reported by the sweep
    # the heartbeat API is marked experimental; it is what finds the dead workers of other machines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_study(config: SweepConfig, sampler_seed: int | None = None) -> Any:
    """The sweep's study (created on first use, else loaded): maximise the best validation accuracy."""
    optuna = _optuna()
    url = config.storage_url
    kwargs: dict = {}
    if config.local:  # several local workers share the file: wait for locks, and write-ahead logging
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # so readers never block a writer
        _wal(Path(url[len("sqlite:///"):]))
    for attempt in range(6):  # workers starting together race to create the tables: the loser retries
        try:
            beat = {} if config.local else {  # SQLite: local workers, their locks say who lives
                "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
            storage = optuna.storages.RDBStorage(url, **beat, **kwargs)
            break
        except ImportError as e:
            raise SweepError(f"--storage {url}: a database driver is missing ({e}); for PostgreSQL: "
                             "pip install 'dualtensor[postgres]'") from None
        except Exception as e:  # SQLAlchemy's connection errors carry the server's reason
            raced = any(w in type(e).__name__ + str(e) for w in ("Unique", "Duplicate", "already exists"))
            if attempt == 5 or not raced:
                raise SweepError(f"--storage {url}: cannot open the study's storage: "
                                 f"{str(e).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
              "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
              "none": lambda: optuna.pruners.NopPruner()}[config.pruner]()
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=min(10, max(2, config.trials // 3)))
    return optuna.create_study(study_name=config.study_name, storage=storage, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (a setting the file keeps), creating it if needed."""
    import sqlite3

    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def counts(study: Any) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, RUNNING, WAITING, FAIL)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


class PruneOnPlateau(Callback):
    """Reports each epoch's validation accuracy to the trial and stops the run when Optuna's pruner
    says so (earlier epochs of a resumed run are reported again first)."""

    def __init__(self, trial: Any):
        self.trial, self.pruned = trial, False

    def on_fit_start(self, run: Any) -> None:
        for row in run.state.history:
            self.trial.report(float(row["val_acc"]), int(row["epoch"]))

    def on_epoch_end(self, run: Any, row: dict, improved: bool) -> None:
        self.trial.report(float(row["val_acc"]), int(row["epoch"]))
        if self.trial.should_prune():
            self.pruned = True
            run.stop("pruned")


def run_mode_of(path: Path) -> str:
    """How to (re)start the run in ``path``: ``new``, ``resume`` (it has a checkpoint) or ``overwrite``
    (it started but saved nothing to resume from)."""
    if not path.exists() or not any(path.iterdir()):
        return "new"
    return "resume" if (path / "last.npz").is_file() else "overwrite"


def load_summary(path: Path) -> dict | None:
    """A run folder's ``summary.json`` (None when it has none)."""
    try:
        return json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_trial(trial: Any, config: SweepConfig, folder: SweepDir, study: Any = None) -> float:
    """One trial: the training run at the trial's values, in its own run folder (a trial that an
    interrupted worker left is continued from its checkpoint); returns the best validation accuracy."""
    optuna = _optuna()
    values = {"lr": trial.suggest_float("lr", config.lr_min, config.lr_max, log=True)}
    for space in config.search:
        values[space.name] = space.suggest(trial)
    resumes = trial.user_attrs.get("resumes")
    if resumes is not None and study is not None and any(
            t.user_attrs.get("resumes") == resumes and t.number < trial.number and t.state.name != "FAIL"
            for t in study.get_trials(deepcopy=False)):
        raise TrialInUse(f"trial {resumes} is continued by another trial already")
    earlier = trial.user_attrs.get("run_dir")
    out = Path(earlier) if earlier and Path(earlier).parent.parent == folder.path else folder.trial_dir(trial.number)
    trial.set_user_attr("run_dir", str(out))
    trial.set_user_attr("worker", worker_id())
    run = config.train.replace(**values, out=str(out), quiet=True, plot=False, test=False)  # selection: val
    prune = PruneOnPlateau(trial)
    mode = run_mode_of(out)
    try:
        result = fit(run, [prune], resume=mode == "resume", overwrite=mode == "overwrite")
        summary = result.summary
    except RunDirBusy as e:
        raise TrialInUse(str(e)) from None
    except TrainingDiverged:  # a learning rate too high: its best epoch before the divergence counts
        summary = load_summary(out) or {}
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    trial.set_user_attr("status", summary.get("status"))
    trial.set_user_attr("epochs", summary.get("epochs_run"))
    trial.set_user_attr("test_acc", summary.get("test_acc"))
    if prune.pruned:
        raise optuna.TrialPruned()
    return float(summary.get("best_val_acc") or 0.0)


def reclaim(study: Any, folder: SweepDir, interrupted: bool = True, local: bool = False) -> int:
    """Queue again, with their run folders, the trials this machine's workers left unfinished (killed:
    still RUNNING with a dead worker; interrupted: FAIL marked ``interrupted``), so each continues from
    its checkpoint. Returns how many. (A dead worker of another machine is found by Optuna's heartbeat.)
    A killed trial is claimed by marking it failed, which only one worker can do; interrupted ones
    (already failed) are queued only with ``interrupted``, which :func:`run_sweep` passes once before
    its workers start. ``local``: the storage is the folder's SQLite file (no heartbeat), so a trial
    that never got a worker's name within :data:`ORPHAN_S` seconds is dead too."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    optuna.storages.fail_stale_trials(study)  # other machines' workers whose heartbeat stopped
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("resumes") for t in trials}
    n = 0
    for t in trials:
        worker, run_dir = t.user_attrs.get("worker"), t.user_attrs.get("run_dir")
        here = run_dir is not None and Path(run_dir).parent.parent == folder.path  # a worker of this folder
        dead = t.state == state.RUNNING and here and worker is not None and folder.worker_alive(worker) is False
        # (killed between taking the trial and naming its worker: only local SQLite workers lack a heartbeat)
        orphan = (t.state == state.RUNNING and worker is None and local and t.datetime_start is not None
                  and (datetime.datetime.now() - t.datetime_start).total_seconds() > ORPHAN_S)
        dead = dead or orphan
        stopped = (interrupted and here and t.state == state.FAIL and t.user_attrs.get("interrupted")
                   and t.number not in retried)
        if not (dead or stopped):
            continue
        if dead:
            try:
                study.tell(t.number, state=state.FAIL)
            except (ValueError, RuntimeError):
                continue  # another worker was quicker
        study.enqueue_trial(t.params, user_attrs={"resumes": t.number, "run_dir": t.user_attrs.get("run_dir")})
        n += 1
    return n


def wait_for(study: Any, states: tuple[str, ...], folder: SweepDir, local: bool, poll_s: float = 2.0) -> None:
    """Block while the study has trials in ``states`` (reclaiming dead workers' trials meanwhile)."""
    while any(counts(study).get(s, 0) for s in states):
        reclaim(study, folder, interrupted=False, local=local)
        time.sleep(poll_s)

"""Running a sweep: worker processes take trials from the study, then the final seed runs."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from typing import Any

from ..metrics import mean_std
from ..train import RunDirBusy, RunDirError, TrainingDiverged, fit
from .config import SweepConfig
from .folder import SweepDir, worker_id
from .study import (TrialInUse, counts, load_summary, open_study, reclaim, run_mode_of, run_trial, wait_for)

__all__ = ["run_sweep", "work", "best_values", "seed_list", "Progress"]

_OPEN = ("RUNNING", "WAITING")
#: the statuses of a finished final run (a diverged seed is reported as such, not run again)
FINAL = ("completed", "early_stopped", "diverged")


def seed_list(config: SweepConfig) -> list[int]:
    """The final runs' seeds: the ``seeds`` seeds after the search's (``seed + 1`` ...)."""
    return [config.train.seed + 1 + i for i in range(config.seeds)]


def best_values(study: Any) -> tuple[dict, Any]:
    """The best complete trial's values (lr and searched options) and the trial."""
    best = study.best_trial
    return dict(best.params), best


def _best_number(study: Any) -> int | None:
    """The best complete trial's number (None before the first)."""
    return best_values(study)[1].number if counts(study).get("COMPLETE") else None


def _search(study: Any, config: SweepConfig, folder: SweepDir, progress: "Progress | None") -> None:
    """Run trials until the study holds ``trials`` finished or running ones (queued ones first)."""
    done = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    callbacks = [lambda s, t: progress.update(s)] if progress is not None else []

    def spent() -> bool:
        c = counts(study)
        return not c.get("WAITING") and sum(c.get(s, 0) for s in done) >= config.trials

    while True:
        reclaim(study, folder, interrupted=False, local=config.local)  # killed workers' (interrupted: run_sweep)
        if spent():
            return
        if config.local:
            if not _one_trial(study, config, folder, spent):
                return
            for cb in callbacks:
                cb(study, None)
        else:  # a server's row locks hand each queued trial to one worker; Optuna's heartbeat runs alongside
            study.optimize(lambda t: run_trial(t, config, folder, study), n_trials=1, catch=(TrialInUse,),
                           callbacks=callbacks, gc_after_trial=False)


def _one_trial(study: Any, config: SweepConfig, folder: SweepDir, spent: Any) -> bool:
    """Ask (under the folder's ask lock, unless the budget is ``spent()`` by then), run and tell one
    trial (SQLite: local workers only, exactly ``trials`` of them); False when there was none to ask."""
    import optuna

    state = optuna.trial.TrialState
    with folder.ask_lock():
        if spent():
            return False
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())  # at once: a trial without a live worker is reclaimed
    try:
        value = run_trial(trial, config, folder, study)
    except optuna.TrialPruned:
        study.tell(trial, state=state.PRUNED)
    except TrialInUse:
        study.tell(trial, state=state.FAIL)
    except BaseException:
        study.tell(trial, state=state.FAIL, skip_if_finished=True)
        raise
    else:
        study.tell(trial, value)
    return True


def _final_runs(study: Any, config: SweepConfig, folder: SweepDir, progress: "Progress | None",
                share: tuple[int, int] = (0, 1)) -> None:
    """The seed runs at the best values: local worker i of n runs seeds i, i + n, ... (``share``)."""
    values, best = best_values(study)
    for seed in seed_list(config)[share[0]::share[1]]:
        out = folder.seed_dir(seed, best.number)
        summary = load_summary(out)
        if summary is not None and summary.get("status") in FINAL:
            continue
        run = config.train.replace(**values, seed=seed, out=str(out), quiet=True, plot=False)
        mode = run_mode_of(out)
        try:
            fit(run, resume=mode == "resume", overwrite=mode == "overwrite")
        except RunDirBusy:  # another worker runs this seed
            pass
        except RunDirError as e:  # another worker made this seed's folder first
            if "already holds a run" not in str(e):
                raise
        except TrainingDiverged:
            pass  # recorded in its summary (status diverged); the report shows it
        if progress is not None:
            progress.update(study)


def work(config: SweepConfig, index: int = 0, progress: "Progress | None" = None, workers: int = 1) -> None:
    """One worker: trials until the budget is spent, then the seed runs. Any number of workers, on
    any machines sharing the storage, may run this at once."""
    folder = SweepDir(config.folder)
    lock = folder.hold_worker_lock()
    try:
        seed = config.train.seed * 1000 + index  # each worker (and each restart) samples its own proposals
        study = open_study(config, sampler_seed=(seed * 7919 + len(open_study(config).trials)) % 2**31)
        while True:
            _search(study, config, folder, progress)
            wait_for(study, ("RUNNING",), folder, config.local)  # the best trial is known once no trial runs
            if not counts(study).get("WAITING"):
                break
        if config.seeds and counts(study).get("COMPLETE"):
            _final_runs(study, config, folder, progress, (index, workers))
    finally:
        os.close(lock)  # releases the flock


def _worker_main(config: dict, index: int, parent: int, workers: int) -> None:
    """Entry of a worker process (``--workers N``): quiet, and gone when the parent is."""
    from ..train import interrupt_on_signals

    def watch() -> None:  # a parent killed with SIGKILL cannot stop us: notice it and stop ourselves
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), 15)

    threading.Thread(target=watch, daemon=True).start()
    with interrupt_on_signals():
        try:
            work(SweepConfig.from_dict(config), index, workers=workers)
        except KeyboardInterrupt:
            sys.exit(130)


class Progress:
    """One line per finished trial or seed run, and a bar over the whole sweep (trials + seeds)."""

    def __init__(self, config: SweepConfig, folder: SweepDir, quiet: bool = False):
        from tqdm import tqdm

        self.config, self.folder, self.quiet = config, folder, quiet
        self.seen: set = set()
        self.bar = None if quiet else tqdm(total=config.trials + config.seeds, desc="sweep", unit="run",
                                           dynamic_ncols=True, file=sys.stderr)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        tqdm.write(text)

    def update(self, study: Any) -> None:
        """Report what finished since the last call."""
        for t in study.get_trials(deepcopy=False):
            key = ("trial", t.number)
            if key in self.seen or t.state.name not in ("COMPLETE", "PRUNED"):
                continue
            self.seen.add(key)
            a = t.user_attrs
            what = (f"val_acc {t.value:.4f}" if t.state.name == "COMPLETE" else "pruned") + \
                   (" (diverged)" if a.get("status") == "diverged" else "")
            extra = "".join(f" {k}={v}" for k, v in t.params.items() if k != "lr")
            if a.get("resumes") is not None:
                extra += f" (continues trial {a['resumes']})"
            self.line(f"trial {t.number}: lr={t.params['lr']:.3g}{extra} {what}, {a.get('epochs')} epochs")
            self._tick()
        best = _best_number(study)
        for seed in seed_list(self.config) if best is not None else []:
            key = ("seed", seed, best)
            s = load_summary(self.folder.seed_dir(seed, best))
            if key in self.seen or s is None or s.get("status") == "interrupted":
                continue
            self.seen.add(key)
            acc = s.get("test_acc")
            self.line(f"seed {seed}: " + (f"test_acc {acc:.4f}" if acc is not None else s.get("status", "")) +
                      f", best epoch {s.get('best_epoch')} of {s.get('epochs_run')}")
            self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(min(1, self.bar.total - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(config: SweepConfig, quiet: bool = False) -> dict:
    """Run (or continue) the sweep ``config`` describes and return its result (also ``sweep.json``).

    ``workers`` > 1 starts that many local worker processes (BLAS threads split between them unless
    ``train.threads`` is set); the study may be shared with workers elsewhere (``storage``)."""
    config.validate()
    # a given storage is opened first, so one that cannot be opened leaves no sweep folder behind
    study = open_study(config) if config.storage is not None else None
    folder = SweepDir.open(config)
    study = study or open_study(config)
    reclaim(study, folder, local=config.local)  # queue the interrupted trials before workers count the budget
    progress = Progress(config, folder, quiet)
    try:
        if config.workers == 1:
            progress.update(study)
            work(config, 0, progress)
        else:
            _run_workers(config, study, progress)
            if config.seeds and counts(study).get("COMPLETE"):  # a seed whose worker failed
                _final_runs(study, config, folder, progress)
        progress.update(study)
    finally:
        progress.close()
    return _result(config, folder, study)


def _run_workers(config: SweepConfig, study: Any, progress: Progress) -> None:
    threads = config.train.threads or max(1, (os.cpu_count() or 1) // config.workers)
    spec = SweepConfig(**{**config.__dict__, "train": config.train.replace(threads=threads)}).to_dict()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(spec, i, os.getpid(), config.workers), daemon=True)
             for i in range(config.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            progress.update(study)
            time.sleep(1)
    except KeyboardInterrupt:
        for p in procs:
            p.join(30)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        from .config import SweepError

        raise SweepError(f"{len(bad)} of {config.workers} workers failed (exit {bad[0]}); run the same command "
                         "again to continue the sweep")


def _result(config: SweepConfig, folder: SweepDir, study: Any) -> dict:
    """The sweep's outcome: the trials, the best values, the seed runs and their mean test accuracy."""
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "epochs": t.user_attrs.get("epochs"), "status": t.user_attrs.get("status"),
               "run_dir": t.user_attrs.get("run_dir"), "worker": t.user_attrs.get("worker")}
              for t in study.get_trials(deepcopy=False)]
    c = counts(study)
    result: dict = {"sweep": config.to_dict(), "study": config.study_name, "counts": c, "trials": trials}
    best = None
    if c.get("COMPLETE"):
        values, trial = best_values(study)
        best = trial.number
        result.update(best_trial=best, best_val_acc=trial.value, best=values)
    seeds = []
    for seed in seed_list(config) if best is not None else []:
        s = load_summary(folder.seed_dir(seed, best))
        if s is not None:
            seeds.append({"seed": seed, "status": s.get("status"), "test_acc": s.get("test_acc"),
                          "test_loss": s.get("test_loss"), "best_epoch": s.get("best_epoch"),
                          "epochs_run": s.get("epochs_run"), "wall_time_s": s.get("wall_time_s"),
                          "run_dir": str(folder.seed_dir(seed, best))})
    result["seeds"] = seeds
    accs = [s["test_acc"] for s in seeds if s["test_acc"] is not None]
    if accs:
        result["test_acc_mean"], result["test_acc_std"] = mean_std(accs)
    result["complete"] = (not any(c.get(s) for s in _OPEN) and len(seeds) == config.seeds
                          and all(s["status"] in FINAL for s in seeds))
    folder.write_result(result)
    return result

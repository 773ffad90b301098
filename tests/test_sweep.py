"""``python -m dualtensor sweep`` (Optuna studies over the training API) and its presets."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="sweeps need the sweep extra: pip install 'dualtensor[sweep]'")

from dualtensor.__main__ import main  # noqa: E402
from dualtensor.metrics import read_jsonl  # noqa: E402
from dualtensor.sweep import SweepConfig, expand_preset, parse_search, preset_grid  # noqa: E402
from dualtensor.sweep.folder import SweepDir  # noqa: E402
from dualtensor.sweep.study import run_trial  # noqa: E402
from dualtensor.train import TrainConfig  # noqa: E402

# digits, 300 training samples: a trial takes well under a second
TINY = ["--limit", "300", "--epochs", "2", "--width", "32", "--k", "4", "--quiet"]
TIME_FIELDS = ("time", "eval_time", "elapsed")


def sweep(*args: str) -> int:
    return main(["sweep", *args])


def load(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def study_of(out: Path):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def no_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def test_a_sweep_searches_the_lr_then_trains_the_seeds_and_continues(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep(*TINY, "--trials", "3", "--seeds", "2", "--out", str(out)) == 0
    res = load(out)
    assert res["complete"] and res["counts"].get("COMPLETE", 0) + res["counts"].get("PRUNED", 0) == 3
    trials = study_of(out).trials
    for t in trials:
        assert 1e-6 <= t.params["lr"] <= 1.0
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["config"]["lr"] == t.params["lr"] and summary["config"]["test"] is False
        assert summary["test_acc"] is None  # trials select on validation only
        if t.state.name == "COMPLETE":
            assert t.value == summary["best_val_acc"]
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert res["best"] == {"lr": best.params["lr"]} and res["best_trial"] == best.number
    assert [s["seed"] for s in res["seeds"]] == [1, 2]
    for s in res["seeds"]:
        summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
        assert summary["config"]["lr"] == best.params["lr"] and summary["config"]["seed"] == s["seed"]
        assert summary["test_acc"] == s["test_acc"] is not None
    accs = [s["test_acc"] for s in res["seeds"]]
    assert res["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    seeds = out / "seeds" / f"best-trial-{best.number:04d}"
    stamp = [(seeds / f"seed-{s}" / "summary.json").stat().st_mtime_ns for s in (1, 2)]
    # the same command again: nothing left to do, nothing rerun
    assert sweep(*TINY, "--trials", "3", "--seeds", "2", "--out", str(out)) == 0
    assert len(study_of(out).trials) == 3
    assert stamp == [(seeds / f"seed-{s}" / "summary.json").stat().st_mtime_ns for s in (1, 2)]
    # a bigger budget continues the same study; a better trial gets its own final runs, the old ones stay
    assert sweep(*TINY[:-1], "--trials", "5", "--seeds", "2", "--out", str(out)) == 0
    study = study_of(out)
    assert len(study.trials) == 5
    res = load(out)
    assert res["best_trial"] == study.best_trial.number and res["complete"]
    assert all(f"best-trial-{study.best_trial.number:04d}" in s["run_dir"] for s in res["seeds"])
    assert stamp == [(seeds / f"seed-{s}" / "summary.json").stat().st_mtime_ns for s in (1, 2)]
    printed = capsys.readouterr().out
    assert "trial 4: lr=" in printed and f"best lr {study.best_trial.params['lr']:.3g}" in printed


def test_a_sweep_folder_keeps_its_options(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep(*TINY, "--trials", "2", "--seeds", "0", "--out", str(out)) == 0
    capsys.readouterr()
    assert sweep(*TINY[:-1], "--k", "8", "--quiet", "--trials", "2", "--seeds", "0", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another sweep" in err and "--k 4 (now 8)" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert sweep(*TINY, "--out", str(foreign)) == 2
    err = capsys.readouterr().err
    assert "was not made by a dualtensor sweep" in err and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert sweep("--preset", "fig6", "--only", "width=256", "--only", "grad=backprop", "--out", str(foreign)) == 2
    assert "was not made by a dualtensor preset" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args, message", [
    (["--search", "k"], "expected NAME=V1,V2,... or NAME=LOW:HIGH[:log]"),
    (["--search", "lr=1:2"], "--lr cannot be searched"),
    (["--search", "k=2,two"], "expected --k as distinct integers"),
    (["--search", "momentum=0.9:0.1"], "LOW < HIGH"),
    (["--search", "k=0,4"], "--k must be >= 1"),
    (["--lr-min", "1", "--lr-max", "0.1"], "need 0 < lr-min < lr-max"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--scale", "0.5"], "--scale applies to --preset only"),
    (["--preset", "fig6", "--only", "depth=2"], "--only depth: not a grid key"),
    (["--preset", "fig6", "--scale", "2"], "--scale must be in (0, 1]"),
    (["--storage", "nowhere"], "expected an SQLAlchemy URL"),
    (["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/x"],
     "--storage postgresql+psycopg://nobody@127.0.0.1:1/x:"),
    (["--parallel", "data"], "a sweep runs each trial in one process"),
    (["--lr", "0.1"], "--lr: a sweep searches the learning rate; bound it with --lr-min and --lr-max"),
])
def test_bad_sweep_options_are_one_line(tmp_path, capsys, args, message):
    assert sweep(*TINY, *args, "--out", str(tmp_path / "sw")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "sw").exists()


def test_searched_options_reach_the_runs(tmp_path):
    out = tmp_path / "sw"
    assert sweep(*TINY, "--trials", "3", "--seeds", "1", "--search", "k=2,3", "--search", "momentum=0:0.5",
                 "--out", str(out)) == 0
    for t in study_of(out).trials:
        config = json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["k"] == t.params["k"] in (2, 3) and config["momentum"] == t.params["momentum"]
    res = load(out)
    seed_config = json.loads((Path(res["seeds"][0]["run_dir"]) / "config.json").read_text())
    assert seed_config["k"] == res["best"]["k"] and seed_config["momentum"] == res["best"]["momentum"]


def test_the_pruner_stops_a_trial_after_its_epoch(tmp_path):
    """Optuna's pruner (here a real ThresholdPruner that no accuracy can pass) ends the run early."""
    config = SweepConfig(train=TrainConfig(dataset="digits", limit=300, epochs=5, width=32, k=4, quiet=True),
                         out=str(tmp_path / "sw"), trials=1)
    folder = SweepDir.open(config)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        run_trial(trial, config, folder)
    summary = json.loads((folder.trial_dir(0) / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] == 1


def _wait_for(path: Path, row: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if len(read_jsonl(path)) >= row:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {row} rows")


SLOW = ["--limit", "600", "--epochs", "25", "--width", "32", "--k", "4", "--pruner", "none", "--trials", "3",
        "--seeds", "1", "--quiet"]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_sweep_continues_its_interrupted_trial(tmp_path, how):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "dualtensor", "sweep", *SLOW, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "trials" / "trial-0001" / "metrics.jsonl"
    _wait_for(metrics, 3, proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-9 if how == "SIGKILL" else 130), err
    before = read_jsonl(metrics)
    assert 3 <= len(before) < 25
    if how == "SIGINT":
        assert "run the same command again to continue" in err
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = study_of(out).trials
    assert trials[1].state.name == "FAIL"
    again = [t for t in trials if t.user_attrs.get("resumes") == 1]
    assert len(again) == 1 and again[0].state.name == "COMPLETE" and again[0].params == trials[1].params
    assert again[0].user_attrs["run_dir"] == str(out / "trials" / "trial-0001")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    after = read_jsonl(metrics)
    assert [r["epoch"] for r in after] == list(range(1, 26)) and no_times(after[:len(before)]) == no_times(before)
    # the continued trial equals an uninterrupted run of its configuration
    config = json.loads((out / "trials" / "trial-0001" / "config.json").read_text())
    ref = tmp_path / "ref"
    flags = ["--dataset", "digits", "--limit", "600", "--epochs", "25", "--width", "32", "--k", "4", "--lr",
             repr(config["lr"]), "--no-test", "--quiet", "--out", str(ref)]
    assert main(["train", *flags]) == 0
    assert no_times(read_jsonl(ref / "metrics.jsonl")) == no_times(after)
    assert load(out)["complete"]


def test_two_local_workers_share_the_study(tmp_path):
    out = tmp_path / "sw"
    assert sweep(*TINY[:2], "--epochs", "6", *TINY[4:], "--trials", "4", "--seeds", "2", "--workers", "2",
                 "--out", str(out)) == 0
    trials = study_of(out).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    res = load(out)
    assert res["complete"] and [s["status"] for s in res["seeds"]] == ["completed"] * 2
    assert json.loads((out / "trials" / "trial-0000" / "config.json").read_text())["threads"] >= 1


# ----------------------------------------------------------------------------------- presets

def test_presets_expand_to_the_papers_grids():
    t1 = preset_grid("table1")
    assert len(t1) == 2 * 2 * (1 + 7 * 2)  # models x datasets x (backprop + 7 forward variants x 2 estimators)
    assert {(e.get("aggregate"), e.get("k")) for e in t1} == {
        (None, None), ("mean", 1), ("mean", 2), ("mean", 4), ("mean", 16), ("projection", 2), ("projection", 4),
        ("projection", 16)}
    assert len(preset_grid("fig6")) == 3 * (1 + 7 * 2)
    full = expand_preset("table1")
    by_name = {n: (t, s) for n, t, s in full}
    train, counts = by_name["resnet18-cifar10-forward-k16-projection-batch"]
    assert train["batch_size"] == 128 and train["epochs"] == 200 and train["early_stopping"] == 10
    assert train["val_size"] == 10000 and train["optimizer"] == "sgd" and train["momentum"] == 0.0
    assert train["estimator"] == "batch" and counts == {"trials": 20, "seeds": 3} and "limit" not in train
    assert by_name["vit-mnist-backprop"][0]["batch_size"] == 64
    # scale: subset, validation, epoch cap, patience, trials; explicit options win
    name, train, counts = expand_preset("fig6", 0.05, {"width": ("256",), "k": ("4",), "aggregate": ("mean",)},
                                        {"dataset": "fashion-mnist", "trials": 6})[1]
    assert name == "mlp-w256-fashion-mnist-forward-k4-mean-batch"
    assert train["limit"] == 2975 and train["val_size"] == 500 and train["epochs"] == 10
    assert train["early_stopping"] == 2 and counts == {"trials": 6, "seeds": 3}
    assert [n for n, _, _ in expand_preset("fig6", only={"width": ("1024",), "grad": ("backprop",)})] == [
        "mlp-w1024-mnist-backprop"]
    # the reference code's default simulated mode: gradient options change the forward entries only
    sim = expand_preset("fig6", only={"width": ("256",), "estimator": ("per-sample",)},
                        given={"grad": "simulated", "shared_tangents": True})
    assert [n for n, _, _ in sim][:2] == ["mlp-w256-mnist-backprop", "mlp-w256-mnist-simulated-k1-mean-per-sample"]
    assert len(sim) == 8 and sim[0][1]["grad"] == "backprop" and "shared_tangents" not in sim[0][1]
    assert all(t["grad"] == "simulated" and t["shared_tangents"] for _, t, _ in sim[1:])


def test_parse_search():
    assert parse_search("k=1,4,16").choices == (1, 4, 16)
    s = parse_search("weight_decay=1e-6:1e-2:log")
    assert (s.low, s.high, s.log) == (1e-6, 1e-2, True)
    assert parse_search("aggregate=mean,projection").choices == ("mean", "projection")


def test_killing_the_parent_of_local_workers_ends_them_and_the_sweep_continues(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "dualtensor", "sweep", *SLOW[:-5], "--trials", "4", "--seeds", "1", "--workers",
           "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "trials" / "trial-0001" / "metrics.jsonl", 2, proc)
    workers = [int(p.stem.rsplit("-", 1)[1]) for p in (out / ".workers").glob(f"{socket.gethostname()}-*.lock")]
    assert len(workers) == 2
    proc.kill()
    proc.communicate()
    end = time.time() + 30
    while time.time() < end and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its killed parent"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    res = load(out)
    extra = [(t.number, t.state.name, t.user_attrs) for t in study_of(out).trials]
    assert res["complete"] and sum(t["state"] == "COMPLETE" for t in res["trials"]) == 4, extra
    assert any(t.user_attrs.get("resumes") is not None for t in study_of(out).trials)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False

"""The training API (dualtensor.train) and the ``python -m dualtensor train`` command line.

Run-folder rules, signals and file modes: test_rundir.py / test_signals.py; one-line errors for
every user mistake: test_cli_errors.py.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dualtensor.train as T
import dualtensor.train.runner as R
from dualtensor.__main__ import main
from dualtensor.checkpoint import CheckpointError, load_checkpoint, save_npz_atomic
from dualtensor.files import atomic_write, atomic_write_text
from dualtensor.metrics import FIELDS, read_jsonl

# a quick digits configuration: 600 training samples, 3 epochs of 30 steps
QUICK = ["--dataset", "digits", "--limit", "600", "--epochs", "3", "--batch-size", "20", "--width", "64",
         "--k", "16", "--quiet"]
WEIGHT = ["--width", "16", "--depth", "1", "--lr", "10"]  # weight perturbation needs a small net, a big lr
TIME_FIELDS = ("time", "eval_time", "elapsed")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def no_temp_files(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], list(out.iterdir())


def check_run_files(out: Path, epochs: int) -> dict:
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz", "summary.json"):
        assert (out / name).is_file(), name
    no_temp_files(out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(set(r) == set(FIELDS) for r in rows)
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == epochs and list(table[0]) == list(FIELDS)
    assert float(table[-1]["val_acc"]) == rows[-1]["val_acc"]
    for name in ("last.npz", "best.npz"):
        z = npz(out / name)
        assert "optim/__meta__" in z and "sched/__meta__" in z
        assert any(k.startswith("model/") for k in z)
        assert "rng_state" not in z  # the generators are seeded by (seed, epoch): no state to save
    ck = load_checkpoint(out / "last.npz")
    assert ck.epoch == epochs and len(ck.train_state["history"]) == epochs
    summary = json.loads((out / "summary.json").read_text())
    for key in ("config", "best_epoch", "best_val_acc", "test_acc", "wall_time_s", "steps_per_s", "status",
                "blas_threads"):
        assert key in summary, key
    return summary


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def same_checkpoints(a: Path, b: Path, skip=("config", "train_state")) -> None:
    za, zb = npz(a), npz(b)
    assert set(za) == set(zb)
    for key in za:
        if key not in skip:
            assert np.array_equal(za[key], zb[key]), key  # bit-exact weights, optimizer state, RNG states


# ------------------------------------------------------------------------------------ smoke runs

@pytest.mark.parametrize("extra", [
    ["--grad", "backprop", "--lr", "0.1"],
    ["--grad", "forward", "--perturb", "activity", "--aggregate", "projection"],
    ["--grad", "forward", "--perturb", "weight", "--aggregate", "projection", *WEIGHT],
    ["--grad", "simulated", "--perturb", "activity", "--aggregate", "mean", "--lr", "0.1"],
    ["--grad", "simulated", "--perturb", "weight", "--aggregate", "normalized", *WEIGHT],
    ["--grad", "forward", "--perturb", "activity", "--aggregate", "sum", "--tangents", "rademacher",
     "--lr", "0.005", "--optimizer", "adam"],
    ["--grad", "forward", "--tangents", "cone", "--cone-alpha", "0.5", "--keep", "recompute", "--threads", "1",
     "--heap-arrays"],
], ids=["backprop", "fwd-activity-projection", "fwd-weight-projection", "sim-activity-mean",
        "sim-weight-normalized", "fwd-activity-sum-adam", "fwd-cone-recompute"])
def test_cli_smoke(capsys, tmp_path, extra):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *QUICK, *extra, "--out", str(out))
    assert code == 0, err
    summary = check_run_files(out, 3)
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert summary["test_acc"] > 0.3, summary  # chance is 0.1
    assert "test accuracy" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["grad"] == extra[1] and cfg == summary["config"]
    assert cfg["heap_arrays"] is ("--heap-arrays" in extra)
    assert cfg["width"] == (16 if "--width" in extra else 64) and cfg["depth"] == (1 if "--depth" in extra else 2)


def test_progress_output_and_plot(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *[a for a in QUICK if a != "--quiet"], "--epochs", "1", "--plot",
                            "--out", str(out))
    assert code == 0, err
    assert "epoch   1/1" in stdout and "test (best epoch 1)" in stdout
    assert "per-sample activation dimension n = 138 (64 + 64 + 10)" in stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in err and not (out / "curves.png").exists()
    else:
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------ divergence

def test_divergence_exits_3_keeps_the_last_good_checkpoint_and_names_the_way_on(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--grad", "backprop", "--lr", "1e30", "--out", str(out))
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no RuntimeWarning burst before the message
    assert "diverged" in err and "last good checkpoint" in err and "last.npz" in err
    assert f"--resume --out {out} --lr 1e+29" in err
    ck = load_checkpoint(out / "last.npz")  # intact and loadable (epoch 0: the initial weights)
    assert ck.epoch == 0
    assert all(np.isfinite(v).all() for v in ck.model_state.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "diverged" in summary["error"]
    no_temp_files(out)
    # the advice works: a smaller learning rate continues the same run from the kept checkpoint
    code, _, err = run(capsys, "--resume", "--out", str(out), "--lr", "0.1", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["lr"] == 0.1
    assert summary["lr_changes"] == [{"epoch": 0, "from": 1e30, "to": 0.1}]
    assert [r["lr"] for r in read_jsonl(out / "metrics.jsonl")] == [0.1] * 3
    assert json.loads((out / "config.json").read_text())["lr"] == 0.1


def poison_gradients(monkeypatch, at_call: int):
    """Make the step function return a NaN gradient on its ``at_call``-th call."""
    real = R.make_step

    def poisoned(model, config, rng, comm=None):
        step = real(model, config, rng, comm)
        calls = {"n": 0}

        def f(x, y):
            calls["n"] += 1
            out = step(x, y)
            if calls["n"] == at_call:
                name = next(iter(out.grads))
                out.grads[name] = out.grads[name] * np.nan
            return out
        return f

    monkeypatch.setattr(R, "make_step", poisoned)


def test_divergence_after_good_epochs_keeps_that_epoch(capsys, tmp_path, monkeypatch):
    poison_gradients(monkeypatch, 2 * 30 + 5)  # 5th step of the 3rd epoch
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--epochs", "4", "--out", str(out))
    assert code == 3 and "epoch 3, step 5" in err and "non-finite gradient" in err
    assert "(epoch 2) is kept" in err
    assert load_checkpoint(out / "last.npz").epoch == 2
    assert len(read_jsonl(out / "metrics.jsonl")) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["last_checkpoint_epoch"] == 2


def test_init_from_starts_a_new_run_from_the_weights_of_another(capsys, tmp_path):
    src, new = tmp_path / "src", tmp_path / "new"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(src))[0] == 0
    source = load_checkpoint(src / "last.npz")
    for init_from in (src, src / "last.npz"):  # a run folder (its last.npz) or a checkpoint file
        seen: dict = {}

        class Grab(T.Callback):
            def on_fit_start(self, run):
                seen.update({k: v.copy() for k, v in run.model.state_dict().items()})

        config = T.TrainConfig(dataset="digits", limit=100, epochs=1, width=64, k=16, quiet=True, lr=0.3,
                               init_from=str(init_from), out=str(new))
        T.fit(config, callbacks=[Grab()], overwrite=True)
        assert set(seen) == set(source.model_state)
        assert all(np.array_equal(seen[k], v) for k, v in source.model_state.items())
        start = load_checkpoint(new / "last.npz")
        assert start.epoch == 1 and start.config["init_from"] == str(init_from.resolve())
    code, _, err = run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--init-from", str(src),
                       "--out", str(tmp_path / "cli"))
    assert code == 0, err
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["init_from"] == str(src.resolve())
    code, _, err = run(capsys, *QUICK, "--width", "32", "--init-from", str(src), "--out", str(tmp_path / "bad"))
    assert code == 2 and "--init-from" in err and "shape" in err


# ------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("extra", [
    ["--grad", "forward", "--perturb", "activity"],
    ["--grad", "forward", "--perturb", "weight", "--tangents", "rademacher", *WEIGHT],
], ids=["activity", "weight"])
def test_resume_reproduces_the_uninterrupted_run(capsys, tmp_path, extra):
    common = [*QUICK, *extra, "--momentum", "0.9", "--lr", "0.05", "--schedule", "step", "--step-size", "1",
              "--gamma", "0.5", "--limit", "200"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert run(capsys, *common, "--epochs", "2", "--out", str(a))[0] == 0
    assert run(capsys, *common, "--epochs", "1", "--out", str(b))[0] == 0
    assert load_checkpoint(b / "last.npz").epoch == 1
    code, _, err = run(capsys, "--resume", "--out", str(b), "--epochs", "2", "--quiet")
    assert code == 0, err
    same_checkpoints(a / "last.npz", b / "last.npz")
    assert comparable(read_jsonl(a / "metrics.jsonl")) == comparable(read_jsonl(b / "metrics.jsonl"))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc", "steps"):
        assert sa[key] == sb[key], key


@pytest.mark.parametrize("schedule", [["--schedule", "cosine"], ["--schedule", "step"]], ids=["cosine", "step"])
def test_resume_refuses_new_epochs_when_the_schedule_depends_on_them(capsys, tmp_path, schedule):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, *schedule, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    before = (out / "config.json").read_bytes()
    code, _, err = run(capsys, "--resume", "--out", str(out), "--epochs", "2")
    assert code == 2 and "--epochs" in err and "uninterrupted" in err and len(err.strip().splitlines()) == 1
    assert (out / "config.json").read_bytes() == before


def test_resume_with_more_epochs_equals_the_longer_run_when_the_schedule_is_fixed(capsys, tmp_path):
    common = [*QUICK, "--limit", "100", "--schedule", "cosine", "--t-max", "4", "--lr", "0.5"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert run(capsys, *common, "--epochs", "4", "--out", str(a))[0] == 0
    assert run(capsys, *common, "--epochs", "2", "--out", str(b))[0] == 0
    assert run(capsys, "--resume", "--out", str(b), "--epochs", "4", "--quiet")[0] == 0
    lrs = [r["lr"] for r in read_jsonl(b / "metrics.jsonl")]
    assert lrs == [r["lr"] for r in read_jsonl(a / "metrics.jsonl")] and lrs == pytest.approx([0.5, 0.4268, 0.25,
                                                                                              0.0732], abs=1e-4)
    same_checkpoints(a / "last.npz", b / "last.npz")


def test_resume_below_the_epochs_done_is_refused_and_changes_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "2", "--limit", "100", "--out", str(out))[0] == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != T.rundir.LOCK}  # the lock names its holder
    code, _, err = run(capsys, "--resume", "--out", str(out), "--epochs", "1")
    assert code == 2 and "done 2 epochs" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != T.rundir.LOCK} == files


def test_resume_of_a_finished_run_trains_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    before = npz(out / "last.npz")
    code, stdout, err = run(capsys, "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert all(np.array_equal(v, npz(out / "last.npz")[k]) for k, v in before.items() if k != "train_state")
    assert len(read_jsonl(out / "metrics.jsonl")) == 1 and "test accuracy" in stdout


def test_resume_rejects_a_changed_configuration(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    code, _, err = run(capsys, "--resume", "--out", str(out), "--k", "4")
    assert code == 2 and "k 16 -> 4" in err and "may change when resuming" in err and "--init-from" in err


def test_resume_refuses_a_hand_edited_config_json(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["lr"] = 0.5
    (out / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "--resume", "--out", str(out), "--epochs", "2")
    assert code == 2 and "edited by hand (lr)" in err and "--resume" in err
    assert json.loads((out / "config.json").read_text())["lr"] == 0.5  # the user's file is left as it is


def test_resume_needs_a_run(capsys, tmp_path):
    code, _, err = run(capsys, "--resume")
    assert code == 2 and "--resume needs --out" in err
    code, _, err = run(capsys, "--resume", "--out", str(tmp_path / "nothing"))
    assert code == 2 and "no run to resume" in err


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    code, _, err = run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))
    assert code == 2 and "already holds a run" in err
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out), "--overwrite")[0] == 0


def test_limit_beyond_the_dataset_warns(capsys, tmp_path):
    code, _, err = run(capsys, *QUICK, "--epochs", "1", "--limit", "5000", "--out", str(tmp_path / "run"))
    assert code == 0
    assert err.strip() == ("dualtensor train: warning: --limit 5000 exceeds the 1258 training samples; all of "
                           "them are used")


# ------------------------------------------------------------------------------------ early stopping

def fake_validation(monkeypatch, losses=None, accs=None):
    real = T.evaluate  # the real one, even when an earlier fake is in place
    it_l, it_a = iter(losses or []), iter(accs or [])

    def fake(model, x, y, batch_size=1000):
        loss, acc = real(model, x, y, batch_size)
        if len(y) != 180:  # digits' validation set has 180 images
            return loss, acc
        return (next(it_l) if losses else loss), (next(it_a) if accs else acc)

    monkeypatch.setattr(R, "evaluate", fake)


def test_early_stopping_on_val_loss(capsys, tmp_path, monkeypatch):
    fake_validation(monkeypatch, losses=[1.0, 0.9, 1.2, 1.1, 0.95, 0.5, 0.4])
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--epochs", "10", "--limit", "100", "--early-stopping", "3",
                       "--monitor", "val_loss", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # best val loss at epoch 2; epochs 3, 4, 5 do not improve it -> stop before epoch 6
    assert summary["status"] == "early_stopped" and summary["epochs_run"] == 5
    assert summary["best_epoch"] == 2 and load_checkpoint(out / "best.npz").epoch == 2
    assert len(read_jsonl(out / "metrics.jsonl")) == 5


def test_early_stopping_counts_the_monitored_metric(capsys, tmp_path, monkeypatch):
    # accuracy improves at epoch 4 while the loss gets worse every epoch: --monitor val_acc must keep going
    fake_validation(monkeypatch, losses=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
                    accs=[0.5, 0.4, 0.4, 0.6, 0.5, 0.5, 0.5, 0.5])
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--epochs", "10", "--limit", "100", "--early-stopping", "3",
                       "--monitor", "val_acc", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["best_epoch"] == 4 and summary["epochs_run"] == 7


# ------------------------------------------------------------------------------------ files

def test_atomic_write_to_a_pipe_or_device_writes_through_it(tmp_path):
    """A FIFO (like /dev/null or /dev/stdout) stays what it is (renaming over it would replace it with a file) and
    gets the bytes."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary left beside it
    with pytest.raises(ValueError, match="device or pipe"):  # a write that must be recorded has no file to record
        atomic_write(fifo, lambda f: f.write(b"x"), before_replace=lambda tmp: None)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    class Boom(Exception):
        pass

    def failing(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    save_npz_atomic(tmp_path / "a.npz", {"x": np.arange(3), "s": np.array("text")})
    assert npz(tmp_path / "a.npz")["s"][()] == "text"
    with pytest.raises(TypeError, match="pickle"):
        save_npz_atomic(tmp_path / "b.npz", {"o": np.array([object()])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "f.txt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        load_checkpoint(tmp_path / "junk.npz")
    save_npz_atomic(tmp_path / "other.npz", {"x": np.zeros(2)})
    with pytest.raises(CheckpointError, match="not a dualtensor checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


# ------------------------------------------------------------------------------------ arguments

@pytest.mark.parametrize("args, message", [
    (["--model", "lenet"], "invalid choice: 'lenet'"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--k", "two"], "argument --k: expected an integer"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--aggregate", "median"], "invalid choice: 'median'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to sgd only"),
    (["--cone-alpha", "0.5"], "--cone-alpha applies to --tangents cone only"),
    (["--estimator", "batch", "--perturb", "weight"], "--estimator batch applies to activity perturbation only"),
    (["--estimator", "batch", "--grad", "backprop"], "--estimator batch applies to activity perturbation only"),
    (["--batch-size", "5000"], "--batch-size 5000 exceeds the 1258 training samples"),
    (["--model", "vit", "--patch-size", "3"], "--patch-size 3 does not divide the image size 8"),
    (["--model", "resnet18", "--depth", "3"], "--depth applies to --model mlp or vit only"),
    (["--t-max", "3"], "--t-max applies to --schedule cosine only"),
    (["--schedule", "expdecay"], "--schedule expdecay"),
])
def test_argument_errors(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "x").exists()  # nothing is created for a run that never starts


def test_missing_dataset_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "--dataset", "mnist", "--no-download", "--data-dir", str(tmp_path / "empty"),
                       "--out", str(tmp_path / "x"))
    assert code == 2 and "dataset 'mnist' not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"))
    assert code == 2 and err.strip().endswith(f"--data-dir {tmp_path / 'none'}: no such folder")


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "dualtensor", "train", "--k", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--k must be >= 1" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dualtensor", "train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--perturb" in proc.stdout and "--init-from" in proc.stdout


# ------------------------------------------------------------------------------------ threads

def test_blas_threads_default_to_the_library_and_are_recorded(capsys, tmp_path):
    from dualtensor.train.threads import blas_thread_count

    assert T.TrainConfig().threads is None
    default = blas_thread_count()
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(tmp_path / "a"))[0] == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["blas_threads"] == default
    code = run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--threads", "2", "--out", str(tmp_path / "b"))[0]
    assert code == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["blas_threads"] in (2, None)
    assert blas_thread_count() == default  # the limit ends with the run


# ------------------------------------------------------------------------------------ the pieces

def tiny_config(**kw) -> T.TrainConfig:
    base = dict(dataset="digits", limit=60, epochs=2, batch_size=20, width=16, k=4, quiet=True)
    return T.TrainConfig(**{**base, **kw}).resolved()


def test_config_resolves_per_model_defaults_from_one_table():
    mlp = T.TrainConfig().resolved()
    assert (mlp.width, mlp.depth) == (T.MODEL_OPTIONS["mlp"]["width"], T.MODEL_OPTIONS["mlp"]["depth"])
    vit = T.TrainConfig(model="vit", width=64).resolved()
    assert (vit.depth, vit.heads, vit.patch_size, vit.mlp_dim) == (6, 4, 4, 128)
    res = T.TrainConfig(model="resnet18").resolved()
    assert res.width is None and res.stem == "imagenet" and res.fine_blocks is False
    assert mlp.lr == T.DEFAULT_LR[("forward", "sgd")] and mlp.val_size == 180
    for field, value, message in [("k", "16", "--k: expected an integer"), ("lr", True, "--lr: expected a number"),
                                  ("quiet", 1, "--quiet: expected true/false"),
                                  ("mirrors", "http://x/", "--mirror: expected a list of strings")]:
        with pytest.raises(T.ConfigError, match=message):
            T.TrainConfig(**{field: value}).resolved()
    with pytest.raises(T.ConfigError, match="unknown configuration keys"):
        T.TrainConfig.from_dict({"kk": 1})
    with pytest.raises(T.ConfigError, match="must be a mapping"):
        T.TrainConfig.from_dict([1, 2])
    assert T.CHOICES["tangents"] == tuple(__import__("dualtensor").fgrad.SAMPLERS)


def test_train_state_tracks_the_best_epoch_and_validates_what_it_loads():
    s = T.TrainState()
    assert s.record_epoch({"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}, "val_acc")
    assert not s.record_epoch({"epoch": 2, "val_acc": 0.4, "val_loss": 0.9}, "val_acc")
    assert (s.best_epoch, s.best_metric, s.epochs_since_best) == (1, 0.5, 1)
    t = T.TrainState(history=[], epoch=0)
    assert t.record_epoch({"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}, "val_loss")
    again = T.TrainState.from_dict(json.loads(json.dumps(s.to_dict())), 2)
    assert again == s
    for bad, message in [({**s.to_dict(), "step": -1}, "step"), ({**s.to_dict(), "epoch": 3}, "epoch"),
                         ({**s.to_dict(), "history": [{"epoch": 2}]}, "history"), ({**s.to_dict(), "x": 1}, "unknown"),
                         ({**s.to_dict(), "best_epoch": 0}, "best epoch"), ([], "object")]:
        with pytest.raises(CheckpointError, match=message):
            T.TrainState.from_dict(bad, 2)


def test_train_epoch_and_evaluate_are_plain_functions():
    from dualtensor import optim

    config = tiny_config(grad="backprop", lr=0.5)
    model = T.build_model(config, (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    opt = optim.SGD(list(model.parameters()), lr=0.5)
    step = T.make_step(model, config, T.tangent_generator(config))
    before = T.evaluate(model, x, y, batch_size=7)[0]
    seen = []
    for _ in range(5):
        stats = T.train_epoch(model, opt, step, [(x[:20], y[:20]), (x[20:], y[20:])],
                              on_step=lambda out, s: seen.append(s.steps))
    assert stats.steps == 2 and stats.seen == 40 and seen == [1, 2] * 5 and stats.time > 0
    after = T.evaluate(model, x, y, batch_size=7)[0]
    assert after < before and model.training


@pytest.mark.parametrize("grad, perturb", [("backprop", "activity"), ("forward", "activity"), ("forward", "weight"),
                                           ("simulated", "activity"), ("simulated", "weight")])
def test_make_step_gives_a_gradient_for_every_parameter(grad, perturb):
    config = tiny_config(grad=grad, perturb=perturb)
    model = T.build_model(config, (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)).astype(np.float32), np.arange(6)
    out = T.make_step(model, config, T.tangent_generator(config))(x, y)
    params = dict(model.named_parameters())
    assert isinstance(out, T.StepOutput) and np.isfinite(out.loss) and out.logits.shape == (6, 10)
    assert set(out.grads) == set(params)
    assert all(g.shape == params[n].data.shape and np.isfinite(g).all() for n, g in out.grads.items())


def test_fit_without_a_run_folder_writes_nothing_and_returns_the_best_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = []

    class Record(T.Callback):
        order = 99

        def on_fit_start(self, run):
            events.append("start")

        def on_epoch_start(self, run, epoch):
            events.append(f"epoch {epoch}")

        def on_validation_end(self, run, row):
            events.append("validated")

        def on_epoch_end(self, run, row, improved):
            events.append(f"end {row['epoch']} {improved}")

        def on_fit_end(self, run, summary):
            events.append(summary["status"])

        def close(self):
            events.append("closed")

    result = T.fit(tiny_config(), callbacks=[Record()])
    assert list(tmp_path.iterdir()) == []
    assert events[:3] == ["start", "epoch 1", "validated"] and events[-2:] == ["completed", "closed"]
    assert result.summary["status"] == "completed" and result.state.epoch == 2
    assert result.summary["test_acc"] is not None and result.summary["best_epoch"] == result.state.best_epoch


def test_a_callback_can_stop_the_run(tmp_path):
    class StopAfterOne(T.Callback):
        def on_epoch_end(self, run, row, improved):
            run.stop("stopped_by_me")

    result = T.fit(tiny_config(epochs=5, out=str(tmp_path / "run")), callbacks=[StopAfterOne()])
    assert result.summary["status"] == "stopped_by_me" and result.state.epoch == 1
    assert load_checkpoint(tmp_path / "run" / "last.npz").epoch == 1


def test_fit_raises_training_diverged_with_the_checkpoint(tmp_path):
    with pytest.raises(T.TrainingDiverged) as e:
        T.fit(tiny_config(grad="backprop", lr=1e30, out=str(tmp_path / "run")))
    assert e.value.checkpoint == tmp_path / "run" / "last.npz" and e.value.checkpoint_epoch == 0
    assert e.value.epoch == 1


def test_resume_config_reads_the_stored_configuration(tmp_path):
    T.fit(tiny_config(epochs=1, out=str(tmp_path / "run")))
    config = T.resume_config(tmp_path / "run", {"epochs": 2})
    assert config.epochs == 2 and config.width == 16 and config.out == str(tmp_path / "run")
    result = T.fit(config, resume=True)
    assert result.state.epoch == 2


# ------------------------------------------------------------------------------------ other datasets and models

def test_fashion_mnist_tiny_run(capsys, tmp_path):
    from dualtensor import data

    spec = data.get_spec("fashion-mnist")
    if not any(all((d / f.name).is_file() or (d / f.name[:-3]).is_file() for f in spec.files)
               for d in data.search_dirs("fashion-mnist")):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "run"
    code, _, err = run(capsys, "--dataset", "fashion-mnist", "--no-download", "--limit", "2000", "--val-size", "500",
                       "--epochs", "1", "--batch-size", "20", "--k", "16", "--quiet", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["input_shape"] == [1, 28, 28] and summary["dataset"]["test"] == 10000
    assert summary["test_acc"] > 0.25


def test_vit_trains_through_the_cli(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "--model", "vit", "--width", "32", "--depth", "2", "--heads", "2", "--patch-size", "4",
                       "--dataset", "digits", "--limit", "16", "--batch-size", "8", "--epochs", "1", "--k", "4",
                       "--quiet", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["test_acc"] is not None
    assert summary["config"]["mlp_dim"] == 64


@pytest.mark.parametrize("grad", ["forward", "backprop"])
def test_resnet18_gradient_step(grad):
    config = T.TrainConfig(model="resnet18", grad=grad, k=2, fine_blocks=True).resolved()
    model = T.build_model(config, (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.arange(4)
    running = model.body[0][1].running_mean.copy()
    out = T.make_step(model, config, rng)(x, y)
    assert np.isfinite(out.loss) and out.logits.shape == (4, 10)
    params = dict(model.named_parameters())
    assert set(out.grads) == set(params)
    assert all(g.shape == params[n].data.shape and np.isfinite(g).all() for n, g in out.grads.items())
    assert not np.array_equal(model.body[0][1].running_mean, running)  # batch norm ran in train mode
    loss_e, acc = T.evaluate(model, x, y, batch_size=3)  # eval mode, batched
    assert np.isfinite(loss_e) and 0 <= acc <= 1 and model.training


def test_random_streams_depend_on_seed_step_and_epoch_only():
    from dualtensor import nn

    def tangent(keys):
        return keys.weight("normal", 1, 4, dtype=np.float32)[0]

    config = T.TrainConfig(width=8, depth=1, seed=3).resolved()
    model = T.build_model(config, (1, 8, 8), 10)
    model.drop = nn.Dropout(0.5)  # a module with its own generator, like a ViT with dropout
    streams = T.RandomStreams(config, model)
    streams.start_epoch(1, 0)
    first = tangent(streams.next_tangents()), model.drop.rng.random(4)
    streams.start_epoch(2, 7)
    second = tangent(streams.next_tangents()), model.drop.rng.random(4)
    assert streams.step == 8
    again = T.RandomStreams(config, model)
    again.start_epoch(2, 7)  # a resumed run: the same epoch and step draw the same numbers
    assert all(np.array_equal(a, b) for a, b in zip(second, (tangent(again.next_tangents()), model.drop.rng.random(4))))
    assert not any(np.array_equal(a, b) for a, b in zip(first, second))
    other = T.RandomStreams(config.replace(seed=4), model)
    assert not np.array_equal(first[0], tangent(other.next_tangents()))


def test_build_model_is_seeded():
    a = T.build_model(T.TrainConfig(seed=1, width=8).resolved(), (1, 8, 8), 10).state_dict()
    b = T.build_model(T.TrainConfig(seed=1, width=8).resolved(), (1, 8, 8), 10).state_dict()
    c = T.build_model(T.TrainConfig(seed=2, width=8).resolved(), (1, 8, 8), 10).state_dict()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not all(np.array_equal(a[n], c[n]) for n in a)


def test_memory_stays_flat_over_epochs():
    import resource  # noqa: F401  (POSIX; the suite runs on Linux)

    def rss_kb() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (__import__("os").sysconf("SC_PAGE_SIZE") // 1024)

    seen: list[int] = []

    class Measure(T.Callback):
        def on_epoch_end(self, run, row, improved):
            seen.append(rss_kb())

    T.fit(tiny_config(epochs=14, limit=200, width=256), callbacks=[Measure()])
    growth = seen[-1] - seen[3]  # after a few epochs of warm-up: caches, allocator pools
    assert growth < 1024 * 2, seen  # < 2 MB over 10 epochs; keeping one copy of the weights per epoch is 3.4 MB


# ------------------------------------------------------------------------------------ review regressions

def test_test_accuracy_comes_from_the_best_epochs_weights(tmp_path, monkeypatch):
    fake_validation(monkeypatch, accs=[0.5, 0.9, 0.4, 0.3])  # epoch 2 is the best by far
    result = T.fit(tiny_config(epochs=4, out=str(tmp_path / "run"), lr=0.5))
    assert result.summary["best_epoch"] == 2
    best, last = load_checkpoint(tmp_path / "run" / "best.npz"), load_checkpoint(tmp_path / "run" / "last.npz")
    assert best.epoch == 2 and last.epoch == 4
    assert set(last.best_state) == set(best.model_state)  # last.npz alone restores the run, best weights too
    assert all(np.array_equal(last.best_state[k], v) for k, v in best.model_state.items())
    model = T.build_model(T.TrainConfig(**result.summary["config"]), (1, 8, 8), 10)
    from dualtensor import data
    splits = data.load("digits", val_size=180)
    accs = {}
    for name, ck in (("best", best), ("last", last)):
        model.load_state_dict(ck.model_state)
        accs[name] = T.evaluate(model, splits.test.x, splits.test.y)[1]
    assert result.summary["test_acc"] == accs["best"] != accs["last"]


def test_metrics_record_the_elapsed_time(capsys, tmp_path):
    assert run(capsys, *QUICK, "--limit", "100", "--out", str(tmp_path / "run"))[0] == 0
    elapsed = [r["elapsed"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert all(e is not None and e > 0 for e in elapsed) and elapsed == sorted(elapsed)


def test_checkpoints_every_other_epoch_resume_exactly(tmp_path, monkeypatch):
    """With last.npz written every 2nd epoch, best.npz can be newer than last.npz: resume needs only last.npz."""
    fake_validation(monkeypatch, accs=[0.1, 0.2, 0.3, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1])
    cbs = lambda: [T.FiniteCheck(), T.MetricsWriter(), T.Checkpointer(every=T.Every(2))]  # noqa: E731
    T.fit(tiny_config(epochs=5, out=str(tmp_path / "run")), callbacks=cbs(), use_default_callbacks=False)
    assert load_checkpoint(tmp_path / "run" / "last.npz").epoch == 5  # the end is saved whatever the period
    # stop at epoch 3 by hand: last.npz holds epoch 2, best.npz epoch 3
    fake_validation(monkeypatch, accs=[0.1, 0.2, 0.3, 0.9, 0.5, 0.4, 0.3])

    class StopAt3(T.Callback):
        order = 99

        def on_epoch_end(self, run, row, improved):
            if row["epoch"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.fit(tiny_config(epochs=5, out=str(tmp_path / "cut")), callbacks=[*cbs(), StopAt3()],
              use_default_callbacks=False)
    assert load_checkpoint(tmp_path / "cut" / "last.npz").epoch == 2
    assert load_checkpoint(tmp_path / "cut" / "best.npz").epoch == 3
    result = T.fit(T.resume_config(tmp_path / "cut"), resume=True)
    assert result.state.epoch == 5 and result.summary["status"] == "completed"


def test_overwrite_keeps_the_old_run_until_the_new_one_writes(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    before = npz(out / "last.npz")
    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "cache"))
    code, _, err = run(capsys, "--dataset", "mnist", "--no-download", "--overwrite", "--out", str(out))
    assert code == 2 and "not found" in err
    assert all(np.array_equal(v, npz(out / "last.npz")[k]) for k, v in before.items())
    # a new run from the weights of the very run it replaces
    code, _, err = run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--overwrite", "--init-from", str(out),
                       "--out", str(out))
    assert code == 0, err
    assert load_checkpoint(out / "last.npz").config["init_from"] == str(out.resolve())


def test_a_copied_run_folder_resumes(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(a))[0] == 0
    subprocess.run(["cp", "-a", str(a), str(b)], check=True)
    code, _, err = run(capsys, "--resume", "--out", str(b), "--epochs", "2", "--quiet")
    assert code == 0, err
    assert load_checkpoint(b / "last.npz").epoch == 2


def test_a_changed_checkpoint_stops_the_resume_before_any_training(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    entries = npz(out / "last.npz")
    key = next(k for k in entries if k.startswith("model/"))
    entries[key] = entries[key] + np.float32(1e-3)
    np.savez(out / "other.npz", **entries)
    (out / "other.npz").replace(out / "last.npz")  # other weights: not what the run wrote
    metrics = (out / "metrics.jsonl").read_bytes()
    code, _, err = run(capsys, "--resume", "--out", str(out), "--epochs", "3")
    assert code == 2 and "last.npz changed since dualtensor wrote" in err
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_a_stored_configuration_with_an_invalid_value_is_blamed_on_the_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    entries = npz(out / "last.npz")
    config = json.loads(str(entries["config"][()]))
    config["model"] = "resnet9"
    entries["config"] = np.array(json.dumps(config))
    np.savez(out / "last.npz", **entries)
    import hashlib
    marker = out / ".dualtensor-run.json"
    manifest = json.loads(marker.read_text())
    st = (out / "last.npz").stat()
    manifest["files"]["last.npz"] = [[st.st_size, st.st_mtime_ns, st.st_ino,
                                      hashlib.sha256((out / "last.npz").read_bytes()).hexdigest()]]
    marker.write_text(json.dumps(manifest))  # as a faulty disk would: the marker still matches
    code, _, err = run(capsys, "--resume", "--out", str(out))
    assert code == 2 and "last.npz: the stored configuration is damaged" in err and "resnet9" in err


def test_the_early_stopping_line_follows_its_epoch_line(capsys, tmp_path, monkeypatch):
    fake_validation(monkeypatch, accs=[0.5, 0.4, 0.3, 0.2])
    code, stdout, _ = run(capsys, *[a for a in QUICK if a != "--quiet"], "--limit", "100", "--epochs", "4",
                          "--early-stopping", "2", "--out", str(tmp_path / "run"))
    assert code == 0
    lines = [line for line in stdout.splitlines() if line.startswith(("epoch", "early"))]
    assert lines[-1].startswith("early stopping") and lines[-2].startswith("epoch   3/4")


def test_every_and_the_writers_on_their_own(tmp_path):
    every = T.Every(3)
    assert [n for n in range(1, 10) if every(n)] == [3, 6, 9]
    with pytest.raises(ValueError):
        T.Every(0)
    result = T.fit(tiny_config(epochs=2, out=str(tmp_path / "run")), use_default_callbacks=False,
                   callbacks=[T.MetricsWriter()])
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "run" / "last.npz").exists() and result.state.epoch == 2


def test_blas_threads_follow_the_library_default_outside_the_tests(tmp_path):
    code = ("import json, sys; from dualtensor.__main__ import main; from dualtensor.train.threads import "
            "blas_thread_count as c; before = c(); rc = main(['train', '--limit', '100', '--epochs', '1', "
            "'--width', '16', '--k', '4', '--quiet', '--out', sys.argv[1]]); "
            "s = json.load(open(sys.argv[1] + '/summary.json')); print(json.dumps([rc, before, s['blas_threads']]))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=120)
    rc, before, recorded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and recorded == before  # no pinning: whatever the BLAS library chose

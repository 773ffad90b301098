"""The training loop and the ``python -m dualtensor train`` command line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualtensor.__main__ import main
from dualtensor.checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, save_npz_atomic)
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
        json.loads(str(z["rng_state"][()]))["tangent"]
    ck = load_checkpoint(out / "last.npz")
    assert ck.epoch == epochs and len(ck.train_state["history"]) == epochs
    summary = json.loads((out / "summary.json").read_text())
    for key in ("config", "best_epoch", "best_val_acc", "test_acc", "wall_time_s", "steps_per_s", "status"):
        assert key in summary, key
    return summary


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
    assert cfg["grad"] == extra[1]
    assert cfg["heap_arrays"] is ("--heap-arrays" in extra)


def test_progress_output_and_plot(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *[a for a in QUICK if a != "--quiet"], "--epochs", "1", "--plot",
                            "--out", str(out))
    assert code == 0, err
    assert "epoch   1/1" in stdout and "test (best epoch 1)" in stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in err and not (out / "curves.png").exists()
    else:
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------ divergence

def test_divergence_exits_nonzero_and_keeps_last_good_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--grad", "backprop", "--lr", "1e30", "--out", str(out))
    assert code == 3
    assert "diverged" in err and "last good checkpoint" in err and "last.npz" in err
    ck = load_checkpoint(out / "last.npz")  # intact and loadable (epoch 0: the initial weights)
    assert ck.epoch == 0
    assert all(np.isfinite(v).all() for v in ck.model_state.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "diverged" in summary["error"]
    no_temp_files(out)


def test_divergence_after_good_epochs_keeps_that_epoch(capsys, tmp_path, monkeypatch):
    import dualtensor.train as T

    real = T.make_gradient_fn

    def poisoned(model, config, rng):  # a NaN gradient in the 3rd epoch
        step = real(model, config, rng)
        calls = {"n": 0}

        def f(x, y):
            calls["n"] += 1
            loss, grads, logits = step(x, y)
            if calls["n"] == 2 * 30 + 5:
                name = next(iter(grads))
                grads[name] = grads[name] * np.nan
            return loss, grads, logits
        return f

    monkeypatch.setattr(T, "make_gradient_fn", poisoned)
    out = tmp_path / "run"
    code, _, err = run(capsys, *QUICK, "--epochs", "4", "--out", str(out))
    assert code == 3 and "epoch 3, step 5" in err and "non-finite gradient" in err
    assert load_checkpoint(out / "last.npz").epoch == 2
    assert len(read_jsonl(out / "metrics.jsonl")) == 2


# ------------------------------------------------------------------------------------ resume

def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIME_FIELDS}


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
    za, zb = npz(a / "last.npz"), npz(b / "last.npz")
    assert set(za) == set(zb)
    for key in za:
        if key in ("config", "train_state"):
            continue
        assert np.array_equal(za[key], zb[key]), key  # bit-exact weights, optimizer state, RNG states
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [_comparable(r) for r in ra] == [_comparable(r) for r in rb]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc", "steps"):
        assert sa[key] == sb[key], key


def test_resume_rejects_a_changed_configuration(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    code, _, err = run(capsys, "--resume", "--out", str(out), "--lr", "0.5")
    assert code == 2 and "differs from the checkpoint" in err and "lr" in err


def test_resume_needs_a_run(capsys, tmp_path):
    code, _, err = run(capsys, "--resume")
    assert code == 2 and "--resume needs --out" in err
    code, _, err = run(capsys, "--resume", "--out", str(tmp_path / "nothing"))
    assert code == 2 and "no checkpoint" in err


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))[0] == 0
    code, _, err = run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out))
    assert code == 2 and "already holds a run" in err
    assert run(capsys, *QUICK, "--epochs", "1", "--limit", "100", "--out", str(out), "--overwrite")[0] == 0


# ------------------------------------------------------------------------------------ early stopping

def test_early_stopping(capsys, tmp_path, monkeypatch):
    import dualtensor.train as T

    real = T.evaluate
    val_losses = iter([1.0, 0.9, 1.2, 1.1, 0.95, 0.5, 0.4])

    def fake(model, x, y, batch_size=1000):
        loss, acc = real(model, x, y, batch_size)
        return (next(val_losses), acc) if len(y) == 180 else (loss, acc)  # digits' val set has 180 images

    monkeypatch.setattr(T, "evaluate", fake)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *QUICK, "--epochs", "10", "--limit", "100", "--early-stopping", "3",
                            "--monitor", "val_loss", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # best val loss at epoch 2; epochs 3, 4, 5 do not improve it -> stop before epoch 6
    assert summary["status"] == "early_stopped" and summary["epochs_run"] == 5
    assert summary["best_epoch"] == 2 and load_checkpoint(out / "best.npz").epoch == 2
    assert len(read_jsonl(out / "metrics.jsonl")) == 5


# ------------------------------------------------------------------------------------ files

def test_atomic_writes_leave_no_temp_files(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    class Boom(Exception):
        pass

    from dualtensor.checkpoint import atomic_write

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
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.npz")
    save_npz_atomic(tmp_path / "other.npz", {"x": np.zeros(2)})
    with pytest.raises(CheckpointError, match="not a dualtensor checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


# ------------------------------------------------------------------------------------ arguments

@pytest.mark.parametrize("args, message", [
    (["--model", "lenet"], "invalid choice: 'lenet'"),
    (["--k", "0"], "argument --k: must be >= 1, got 0"),
    (["--k", "two"], "argument --k: expected an integer"),
    (["--lr", "-1"], "argument --lr: must be a positive number"),
    (["--aggregate", "median"], "invalid choice: 'median'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to sgd only"),
    (["--cone-alpha", "0.5"], "--cone-alpha applies to --tangents cone only"),
    (["--batch-size", "5000"], "--batch-size 5000 exceeds the 1258 training samples"),
    (["--model", "vit", "--patch-size", "3"], "--patch-size 3 does not divide the image size 8"),
])
def test_argument_errors(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "x"))
    assert code == 2
    assert message in err


def test_missing_dataset_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "cache"))
    code, _, err = run(capsys, "--dataset", "mnist", "--no-download", "--data-dir", str(tmp_path / "none"),
                       "--out", str(tmp_path / "x"))
    assert code == 2 and "dataset 'mnist' not found" in err


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "dualtensor", "train", "--k", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--k: must be >= 1" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dualtensor", "train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--perturb" in proc.stdout


# ------------------------------------------------------------------------------------ other datasets and models

def test_fashion_mnist_tiny_run(capsys, tmp_path):
    from dualtensor import data

    spec = data.get_spec("fashion-mnist")
    if not any(all((d / f.name).is_file() or (d / f.name[:-3]).is_file() for f in spec.files)
               for d in data.search_dirs("fashion-mnist")):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "run"
    code, _, err = run(capsys, "--dataset", "fashion-mnist", "--no-download", "--limit", "600", "--val-size", "500",
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


@pytest.mark.parametrize("grad, perturb", [("forward", "activity"), ("backprop", "activity")])
def test_resnet18_gradient_step(grad, perturb):
    from dualtensor.train import TrainConfig, build_model, evaluate, make_gradient_fn

    config = TrainConfig(model="resnet18", grad=grad, perturb=perturb, k=2, fine_blocks=True)
    model = build_model(config, (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.arange(4)
    running = model.body[0][1].running_mean.copy()
    loss, grads, logits = make_gradient_fn(model, config, rng)(x, y)
    assert np.isfinite(loss) and logits.shape == (4, 10)
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    assert all(g.shape == params[n].data.shape and np.isfinite(g).all() for n, g in grads.items())
    assert not np.array_equal(model.body[0][1].running_mean, running)  # batch norm ran in train mode
    loss_e, acc = evaluate(model, x, y, batch_size=3)  # eval mode, batched
    assert np.isfinite(loss_e) and 0 <= acc <= 1 and model.training


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    from dualtensor import nn
    from dualtensor.checkpoint import save_checkpoint
    from dualtensor.train import TrainConfig, _restore_rng, _rng_state, build_model

    config = TrainConfig(width=8, depth=1, seed=3)
    model = build_model(config, (1, 8, 8), 10)
    model.drop = nn.Dropout(0.5)  # a module with its own generator, like a ViT with dropout
    model.drop.rng = np.random.default_rng(5)
    tangent = np.random.default_rng(7)
    tangent.random(3), model.drop.rng.random(2)  # advance both
    save_checkpoint(tmp_path / "c.npz", model=model, epoch=1, best_metric=0.5, config=config.to_dict(),
                    rng_state=_rng_state(tangent, model))
    expect = tangent.random(4), model.drop.rng.random(4)
    ck = load_checkpoint(tmp_path / "c.npz")
    fresh_t, fresh_model = np.random.default_rng(0), build_model(config, (1, 8, 8), 10)
    fresh_model.drop = nn.Dropout(0.5)
    fresh_model.drop.rng = np.random.default_rng(0)
    _restore_rng(ck.rng_state, fresh_t, fresh_model)
    got = fresh_t.random(4), fresh_model.drop.rng.random(4)
    assert all(np.array_equal(a, b) for a, b in zip(expect, got))
    assert ck.optimizer_state is None and ck.epoch == 1 and ck.config["seed"] == 3


def test_build_model_is_seeded():
    from dualtensor.train import TrainConfig, build_model

    a = build_model(TrainConfig(seed=1, width=8), (1, 8, 8), 10).state_dict()
    b = build_model(TrainConfig(seed=1, width=8), (1, 8, 8), 10).state_dict()
    c = build_model(TrainConfig(seed=2, width=8), (1, 8, 8), 10).state_dict()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not all(np.array_equal(a[n], c[n]) for n in a)

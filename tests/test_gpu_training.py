"""Training on the device: the CLI with ``--device gpu`` in every mode, checkpoints and resume of device
arrays, ResNet18 and the ViT, the benchmark, and the host-sync budget of a training step. On a
machine without a GPU this runs on the CuPy stand-in (tests/cupy_standin)."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import dualtensor.train as T
from dualtensor.__main__ import main
from dualtensor.checkpoint import load_checkpoint

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu
STANDIN = "standin" in getattr(cupy, "__version__", "")

QUICK = ["--device", "gpu", "--dataset", "digits", "--limit", "100", "--epochs", "2", "--batch-size", "25",
         "--width", "32", "--k", "4", "--quiet"]
WEIGHT = ["--perturb", "weight", "--width", "16", "--depth", "1", "--lr", "10"]


def npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("extra", [
    ["--grad", "backprop", "--lr", "0.1"],
    ["--grad", "forward"],
    ["--grad", "forward", *WEIGHT],
    ["--grad", "simulated"],
    ["--grad", "simulated", *WEIGHT],
    ["--keep", "recompute"],
    ["--tangents", "rademacher"],
    ["--tangents", "orthonormal"],
    ["--tangents", "basis"],
    ["--tangents", "cone", "--cone-alpha", "0.5"],
    ["--tangents", "varying_length", "--tangent-length", "4"],
    ["--shared-tangents"],
    ["--tangents", "rademacher", "--shared-tangents", *WEIGHT],
    ["--optimizer", "adam", "--lr", "0.003", "--schedule", "cosine"],
    ["--momentum", "0.9", "--lr", "0.3", "--schedule", "step", "--step-size", "1"],
    ["--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.01", "--schedule", "exponential"],
    ["--aggregate", "mean", "--lr", "0.1"],
], ids=lambda e: "-".join(a.lstrip("-") for a in e[:4]))
def test_cli_trains_on_the_device(capsys, tmp_path, extra):
    out = tmp_path / "run"
    code = main(["train", *QUICK, *extra, "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["device"] == "gpu"
    assert 0 <= summary["test_acc"] <= 1 and np.isfinite(summary["final_train_loss"])
    ck = load_checkpoint(out / "last.npz")  # device arrays were copied to the host
    assert ck.epoch == 2 and all(isinstance(v, np.ndarray) for v in ck.model_state.values())


def test_resume_on_the_device_is_bit_exact(capsys, tmp_path):
    common = [*QUICK, "--momentum", "0.9", "--lr", "0.1", "--schedule", "step", "--step-size", "1"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *common, "--epochs", "3", "--out", str(a)]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(b)]) == 0
    assert main(["train", "--resume", "--out", str(b), "--epochs", "3", "--quiet"]) == 0
    capsys.readouterr()
    za, zb = npz(a / "last.npz"), npz(b / "last.npz")
    assert set(za) == set(zb)
    for key in za:
        if key not in ("config", "train_state"):
            assert np.array_equal(za[key], zb[key]), key


def test_a_cpu_run_resumes_on_the_device(capsys, tmp_path):
    out = tmp_path / "run"
    cpu = [a for a in QUICK if a not in ("--device", "gpu")]
    assert main(["train", *cpu, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--device", "gpu", "--quiet"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["device"] == "gpu" and summary["epochs_run"] == 2


@pytest.mark.parametrize("model, extra", [
    ("resnet18", {"stem": "cifar", "fine_blocks": True}),
    ("vit", {"width": 32, "depth": 2, "heads": 2}),
])
def test_resnet18_and_vit_train_on_the_device(model, extra, tmp_path):
    for grad in ("forward", "backprop"):
        config = T.TrainConfig(model=model, dataset="digits", limit=16, batch_size=8, epochs=1, k=2, quiet=True,
                               device="gpu", grad=grad, lr=1e-3, optimizer="adam", **extra)
        result = T.fit(config)
        assert result.summary["status"] == "completed" and np.isfinite(result.summary["final_train_loss"])
        params = list(result.model.parameters())
        assert params and all(type(p.data).__module__.startswith("cupy") for p in params)


@pytest.mark.parametrize("grad, perturb, per_step", [("forward", "activity", 2), ("forward", "weight", 2),
                                                     ("simulated", "activity", 2), ("backprop", "activity", 1)])
def test_host_sync_budget_of_a_training_step(grad, perturb, per_step):
    """Device-to-host syncs per step: cross_entropy's target check, plus for forward gradients the
    projection's test for a fallback; loss, accuracy and the finite check stay on the device and are
    read a few times per epoch (the finite check every 32 steps)."""
    if not STANDIN:
        pytest.skip("syncs are counted by the CuPy stand-in")
    import cupy_standin

    extra = {"width": 16, "depth": 1, "lr": 10.0} if perturb == "weight" else {"width": 32}
    config = T.TrainConfig(dataset="digits", limit=1024, epochs=1, k=4, quiet=True, device="gpu", batch_size=16,
                           grad=grad, perturb=perturb, **extra)
    counts = []

    class Count(T.Callback):
        def on_epoch_start(self, run, epoch):
            self.start = cupy_standin.host_syncs()

        def on_epoch_end(self, run, row, improved):
            counts.append((cupy_standin.host_syncs() - self.start, row["steps"]))

    T.fit(config, callbacks=[Count()])
    (syncs, steps), = counts
    assert steps == 64
    assert syncs <= per_step * steps + 10, f"{syncs} syncs in {steps} steps"


def test_the_runtime_benchmark_runs_on_the_device():
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    sys.path.insert(0, bench)
    try:
        import runtime
        res = runtime.main(["--device", "gpu", "--quick", "--size", "tiny", "--models", "logreg,mlp", "--ks", "1,3",
                            "--perturb", "weight,activity", "--repeats", "1", "--warmup", "0", "--depths", "1,2",
                            "--no-progress"])
    finally:
        sys.path.remove(bench)
    assert res["meta"]["environment"]["backend"] == "cupy" and res["runs"]


def test_the_gpu_check_script_parses_and_its_commands_exist():
    import re
    import shlex
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "bench", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read()
    from dualtensor.__main__ import build_parser

    train = re.search(r'part "train-\$model-\$grad" python -m dualtensor train (.*?)--overwrite', text, re.S).group(1)
    args = shlex.split(train.replace("\\\n", " ").replace('"$model"', "mlp").replace('"$grad"', "forward")
                       .replace('"$LOG/run-$model-$grad"', "x"))
    build_parser().parse_args(["train", *args, "--overwrite"])  # every option exists
    sys.path.insert(0, os.path.join(root, "bench"))
    try:
        import runtime
        line = re.search(r"part runtime python bench/runtime.py (.*?)--json", text, re.S).group(1)
        runtime.parse_args(shlex.split(line.replace("\\\n", " ")))
    finally:
        sys.path.pop(0)


def test_no_device_generator_is_seeded_per_step(monkeypatch):
    """Seeding a CuPy generator sets up its bank of curand states: the keyed tangents need none (they
    are computed on the device from counters), dropout seeds one per epoch."""
    from dualtensor import nn

    made = []
    real = cupy.random.default_rng
    monkeypatch.setattr(cupy.random, "default_rng", lambda seed=None: made.append(seed) or real(seed))
    build = T.runner.build_model

    def with_dropout(*a):
        model = build(*a)
        model.blocks()[0].append(nn.Dropout(0.1))
        return model

    monkeypatch.setattr(T.runner, "build_model", with_dropout)
    counts = []
    for limit, steps in ((320, 40), (160, 20)):
        made.clear()
        config = T.TrainConfig(dataset="digits", limit=limit, epochs=2, batch_size=16, width=16, k=4, quiet=True,
                               device="gpu")
        assert T.fit(config).state.step == steps
        counts.append(len(made))
    assert counts[0] == counts[1] >= 2  # the dropout module's: per epoch, not per step


@pytest.mark.parametrize("at, expect", [(40, "epoch 1, step 33-64"), (73, "epoch 1, step 65-78")])
def test_the_device_finite_check_locates_a_divergence_within_its_window(tmp_path, monkeypatch, at, expect):
    """On a GPU the finite check is read every 32 steps and at the epoch's end (78 steps here)."""
    import dualtensor.train.runner as R

    real = R.make_step

    def poisoned(model, config, tangents, comm=None):
        step, calls = real(model, config, tangents, comm), [0]

        def f(x, y):
            calls[0] += 1
            out = step(x, y)
            if calls[0] == at:
                name = next(iter(out.grads))
                out.grads[name] = out.grads[name] * float("nan")
            return out
        return f

    monkeypatch.setattr(R, "make_step", poisoned)
    config = T.TrainConfig(dataset="digits", limit=1248, epochs=1, batch_size=16, width=16, k=4, quiet=True,
                           device="gpu", out=str(tmp_path / "run"))
    with pytest.raises(T.TrainingDiverged) as e:
        T.fit(config)
    assert expect in str(e.value) and load_checkpoint(tmp_path / "run" / "last.npz").epoch == 0

"""Scale-out over MPI: 2-rank jobs (mpiexec -n 2, one BLAS thread per rank) equal one-process runs in
both modes, rank 0 alone writes, a rank that fails or dies ends the job promptly with the last good
checkpoint intact, resume needs the same number of ranks. Skipped without mpi4py and mpiexec."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualtensor import distributed
from dualtensor.checkpoint import load_checkpoint, read_epoch

MPIEXEC = distributed.mpiexec()
pytestmark = pytest.mark.skipif(not (distributed.available() and MPIEXEC),
                                reason="needs mpi4py and mpiexec (pip install -e '.[mpi]')")
HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN = ["--dataset", "digits", "--limit", "240", "--epochs", "2", "--batch-size", "30", "--width", "16",
       "--threads", "1", "--quiet", "--no-drop-last"]


def launch(n, *args, timeout=120):
    cmd = [*([MPIEXEC, "-n", str(n)] if n else []), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def train(tmp_path, name, n, *extra):
    out = tmp_path / name
    p = launch(n, "-m", "dualtensor", "train", *RUN, *extra, "--out", str(out))
    return p, out


def curves(out):
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    return np.array([[float(r[c]) for c in ("train_loss", "train_acc", "val_loss", "val_acc")] for r in rows]), summary


@pytest.mark.parametrize("ranks", [2, 3])
def test_split_estimators_equal_one_process_ones(ranks):
    p = launch(ranks, str(HERE / "mpi" / "estimators.py"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(": ok") == ranks


@pytest.mark.parametrize("mode, extra", [
    ("tangents", ["--k", "4"]),
    ("tangents", ["--k", "3", "--aggregate", "mean", "--lr", "0.1"]),  # 3 tangents over 2 ranks: an uneven split
    ("tangents --other-tangents draw", ["--k", "4"]),  # the other ranks' tangents drawn again, not sent
    ("tangents", ["--k", "4", "--perturb", "weight", "--lr", "0.5", "--tangents", "orthonormal"]),
    ("data", ["--k", "4"]),
    ("data", ["--k", "4", "--perturb", "weight", "--lr", "0.5"]),
    ("data", ["--grad", "backprop"]),
    ("data", ["--grad", "simulated", "--k", "4", "--tangents", "rademacher"]),
])
def test_a_two_rank_run_equals_the_one_process_run(tmp_path, mode, extra):
    one, out1 = train(tmp_path, "one", 0, *extra)
    two, out2 = train(tmp_path, "two", 2, *extra, "--parallel", *mode.split())
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    (c1, s1), (c2, s2) = curves(out1), curves(out2)
    assert c1.shape == c2.shape == (2, 4)
    np.testing.assert_allclose(c2, c1, rtol=1e-5, atol=1e-6)
    assert s2["test_acc"] == pytest.approx(s1["test_acc"], abs=1e-9)
    assert s2["test_loss"] == pytest.approx(s1["test_loss"], rel=1e-5)
    assert two.stdout.count("test accuracy") == 1 and two.stderr == ""  # rank 0 alone prints
    config = json.loads((out2 / "config.json").read_text())
    assert config["parallel"] == mode.split()[0] and config["ranks"] == 2
    w1, w2 = load_checkpoint(out1 / "last.npz"), load_checkpoint(out2 / "last.npz")
    for name, value in w1.model_state.items():
        np.testing.assert_allclose(w2.model_state[name], value, rtol=1e-4, atol=1e-6)


def test_resume_needs_the_same_number_of_ranks(tmp_path):
    first, out = train(tmp_path, "run", 2, "--k", "4", "--parallel", "tangents", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    alone = launch(0, "-m", "dualtensor", "train", "--resume", "--out", str(out), "--epochs", "2")
    assert alone.returncode == 2
    assert alone.stderr.count("\n") == 1 and "trained on 2 MPI rank(s) and this job has 1" in alone.stderr
    again = launch(2, "-m", "dualtensor", "train", "--resume", "--out", str(out), "--epochs", "2")
    assert again.returncode == 0, again.stderr
    whole, out2 = train(tmp_path, "whole", 2, "--k", "4", "--parallel", "tangents")
    assert whole.returncode == 0, whole.stderr
    np.testing.assert_array_equal(curves(out)[0], curves(out2)[0])  # resumed == uninterrupted


def test_bad_options_print_one_line_from_one_rank(tmp_path):
    p, _ = train(tmp_path, "bad", 2, "--lr", "-1", "--parallel", "tangents")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--lr must be a positive number" in p.stderr
    p, _ = train(tmp_path, "bad2", 2, "--grad", "backprop", "--parallel", "tangents")
    assert p.returncode == 2 and "use --parallel data" in p.stderr and p.stderr.strip().count("\n") == 0
    p, _ = train(tmp_path, "bad3", 2, "--k", "4")
    assert p.returncode == 2 and "has 2 MPI ranks but --parallel none" in p.stderr
    p, _ = train(tmp_path, "bad4", 2, "--parallel", "rows")  # argparse's own errors: once too
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "invalid choice: 'rows'" in p.stderr
    p, _ = train(tmp_path, "bad5", 2, "--parallel", "data", "--batch-size", "239")  # 240 samples: a last batch of 1
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "fewer than the 2 ranks" in p.stderr


def test_a_diverging_job_stops_on_every_rank_with_one_line(tmp_path):
    p, out = train(tmp_path, "div", 2, "--k", "3", "--aggregate", "mean", "--lr", "1e6", "--parallel", "tangents")
    assert p.returncode == 3 and p.stderr.strip().count("\n") == 0 and "training diverged at epoch 1" in p.stderr
    assert load_checkpoint(out / "last.npz").epoch == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_a_folder_only_rank_0_refuses_stops_every_rank(tmp_path):
    mine = tmp_path / "theirs"
    mine.mkdir()
    (mine / "notes.txt").write_text("not dualtensor's\n")
    p = launch(2, "-m", "dualtensor", "train", *RUN, "--k", "4", "--parallel", "data", "--out", str(mine),
               timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and str(mine) in p.stderr
    assert sorted(x.name for x in mine.iterdir()) == ["notes.txt"]


def test_replicas_that_drift_apart_stop_with_a_clear_error():
    p = launch(2, str(HERE / "mpi" / "replica.py"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("parameters differ at step 4") == 2


def test_a_rank_that_raises_ends_the_job_at_once(tmp_path):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    p = launch(2, str(HERE / "mpi" / "fails_on_rank.py"), str(out), timeout=60)
    took = time.perf_counter() - t0
    assert p.returncode != 0 and "rank 1 of 2 failed" in p.stderr and "rank 1 broke" in p.stderr
    assert took < 30
    assert load_checkpoint(out / "last.npz").epoch == 1  # the last good checkpoint, intact


def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "dualtensor", "train", "--dataset", "digits", "--epochs", "200",
           "--batch-size", "16", "--width", "64", "--k", "8", "--threads", "1", "--quiet", "--parallel", "data",
           "--out", str(out)]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 60
        while _epoch(out) < 1 and time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert _epoch(out) >= 1, "no epoch's checkpoint within a minute"
        victim = _rank_pid(1, str(out))
        os.kill(victim, signal.SIGKILL)
        t0 = time.perf_counter()
        job.wait(timeout=30)
        assert time.perf_counter() - t0 < 15
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate()
    assert job.returncode != 0
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.epoch >= 1 and set(ckpt.model_state)


def _epoch(out):
    try:
        return read_epoch(out / "last.npz")
    except Exception:  # not written yet
        return 0


def _rank_pid(rank, marker):
    """The pid of the job's process whose MPI rank is ``rank`` (from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = {f"{v}={rank}".encode() for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")}
        if marker.encode() in cmdline and b"dualtensor" in b" ".join(cmdline) and ranks & set(environ):
            return int(d.name)
    raise AssertionError(f"no process of rank {rank}")


def test_the_tangent_split_cost_benchmark_runs_on_two_ranks(tmp_path):
    """bench/tangent_split_cost.py (README's exchange-or-draw figures), one repeat, the MLP's step at k = 2."""
    out = tmp_path / "cost.md"
    p = launch(2, str(HERE.parent / "bench" / "tangent_split_cost.py"), "--repeats", "1", "--steps", "mlp:2",
               "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    text = out.read_text()
    assert "| split: projection of this rank's B/P samples |" in text
    row = next(line for line in text.splitlines() if line.startswith("| mlp | 2 |"))
    exchange, draw, ratio = (float(c) for c in row.strip("|").split("|")[2:])
    assert exchange > 0 and draw > 0 and ratio == pytest.approx(exchange / draw, rel=0.01)

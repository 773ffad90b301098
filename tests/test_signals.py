"""The command line under signals and failures: SIGTERM/SIGINT end a run resumably (exit 143/130),
SIGKILL leaves a resumable folder, divergence exits 3 with one line of advice that works, and every
file a run creates has the mode the umask asks for."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dualtensor
from dualtensor.__main__ import main
from dualtensor.checkpoint import load_checkpoint
from dualtensor.train.rundir import LOCK, MARKER, RUN_FILES, RunDir

QUICK = ["--dataset", "digits", "--limit", "100", "--epochs", "1", "--batch-size", "20", "--width", "16", "--k", "4",
         "--quiet", "--threads", "1"]
# a run that lasts far longer than any test waits for it: it is always stopped by a signal
LONG = ["--dataset", "digits", "--epochs", "5000", "--limit", "600", "--batch-size", "20", "--width", "64", "--k", "16",
        "--quiet", "--threads", "1"]

DEADLINE_S = 60
# subprocesses import the dualtensor under test (this checkout), not whichever one is installed
ROOT = Path(dualtensor.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
EXIT_WITHIN_S = 15


def train(*args: str) -> list[str]:
    return [sys.executable, "-m", "dualtensor", "train", *args]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    return lines[0]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=DEADLINE_S)


def wait_until_an_epoch_is_done(proc: subprocess.Popen, out: Path) -> None:
    """Poll (with a deadline) until ``out/last.npz`` exists and metrics.jsonl holds a row."""
    deadline = time.monotonic() + DEADLINE_S

    def ready() -> bool:
        try:
            return (out / "last.npz").is_file() and len(jsonl(out / "metrics.jsonl")) >= 1
        except (OSError, ValueError):
            return False

    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before its first epoch: "
                                 f"{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run's first epoch")
        time.sleep(0.02)


def resume_one_more_epoch(tmp_path: Path, out: Path, before: list[dict]) -> None:
    """``--resume --epochs N+1`` exits 0 and trains exactly the one epoch after last.npz's."""
    done = load_checkpoint(out / "last.npz").epoch
    r = subprocess.run(train("--resume", "--out", str(out), "--epochs", str(done + 1)), cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=DEADLINE_S)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert load_checkpoint(out / "last.npz").epoch == done + 1
    rows = jsonl(out / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == list(range(1, done + 2))
    assert rows[:done] == before[:done]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == done + 1
    assert temporaries(out) == []


# ------------------------------------------------------------------------------------------ SIGTERM / SIGINT

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_ends_it_resumably(tmp_path, signum, status):
    out = tmp_path / "out"
    proc = subprocess.Popen(train(*LONG, "--out", str(out)), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until_an_epoch_is_done(proc, out)
        proc.send_signal(signum)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=DEADLINE_S)
        took = time.monotonic() - t0
    finally:
        stop(proc)
    assert proc.returncode == status, stderr
    assert took < EXIT_WITHIN_S
    line = one_line(stderr)
    assert "interrupted" in line and signal.Signals(signum).name in line
    assert "--resume" in line and str(out) in line
    assert stdout == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert temporaries(out) == []
    ckpt = load_checkpoint(out / "last.npz")
    assert 0 <= ckpt.epoch < 5000
    assert summary["epochs_run"] >= ckpt.epoch
    with RunDir.open(out, "resume") as rd:  # the lock is free and no run file looks hand-edited
        assert [n for n in RUN_FILES if rd.changed(n)] == []
    resume_one_more_epoch(tmp_path, out, jsonl(out / "metrics.jsonl"))


# A run that gets ``SIGNAL`` (or is SIGKILLed) right after the rename that puts run file ``NAME`` in
# place, the ``NTH`` time: the moment between a run file and the marker recording it.
_SIGNAL_AFTER_RENAME = """
import os, signal, sys
name, nth, signum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
real_replace, seen = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if os.path.basename(dst) == name:
        seen[0] += 1
        if seen[0] == nth:
            if signum == signal.SIGKILL:
                os.kill(os.getpid(), signal.SIGKILL)
            signal.raise_signal(signum)

os.replace = replace
from dualtensor.__main__ import main
sys.exit(main(["train", *sys.argv[4:]]))
"""


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("name, nth", [("metrics.csv", 2), ("last.npz", 2), ("best.npz", 2)])
def test_a_signal_right_after_a_run_file_is_renamed_into_place_leaves_it_resumable(
        tmp_path, signum, status, name, nth):
    out = tmp_path / "out"
    # best.npz is written again only when the monitored metric improves: validation loss moves every epoch,
    # accuracy on these few samples may stall (whether it does depends on the tangents drawn)
    monitor = ["--monitor", "val_loss"] if name == "best.npz" else []
    r = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_RENAME, name, str(nth), str(int(signum)),
                        *QUICK, "--epochs", "3", *monitor, "--out", str(out)],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=DEADLINE_S)
    assert r.returncode == status, r.stderr
    assert load_checkpoint(out / "last.npz").epoch in (0, 1, 2, 3)  # written before or after NAME's second write
    resume_one_more_epoch(tmp_path, out, jsonl(out / "metrics.jsonl"))


# ------------------------------------------------------------------------------------------ SIGKILL

def test_sigkill_mid_run_leaves_a_loadable_checkpoint_a_free_lock_and_a_resumable_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(train(*LONG, "--out", str(out)), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until_an_epoch_is_done(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE_S)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.epoch >= 0 and ckpt.config["epochs"] == 5000
    with RunDir.open(out, "resume") as rd:  # the dead run's lock was released by the kernel
        assert rd.has("last.npz")
    resume_one_more_epoch(tmp_path, out, jsonl(out / "metrics.jsonl"))


# ------------------------------------------------------------------------------------------ divergence

def test_divergence_exits_3_with_one_line_and_its_advice_works(capsys, tmp_path):
    d = tmp_path / "run"
    code = main(["train", *QUICK, "--grad", "backprop", "--lr", "1e30", "--out", str(d)])
    out, err = capsys.readouterr()
    assert code == 3
    line = one_line(err)
    assert "RuntimeWarning" not in err and "warning" not in err
    assert line.startswith("dualtensor train: error: training diverged")
    assert "--resume" in line and "--lr" in line and str(d) in line
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["lr_changes"] == []
    assert load_checkpoint(d / "last.npz").epoch == 0
    code = main(["train", "--resume", "--out", str(d), "--lr", "0.1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["lr_changes"] == [{"epoch": 0, "from": 1e30, "to": 0.1}]
    assert summary["lr"] == 0.1
    assert load_checkpoint(d / "last.npz").epoch == 1


def test_divergence_prints_no_numpy_warnings_in_a_fresh_process(tmp_path):
    d = tmp_path / "run"
    r = subprocess.run(train(*QUICK, "--grad", "backprop", "--lr", "1e30", "--out", str(d)), cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=DEADLINE_S)
    assert r.returncode == 3
    line = one_line(r.stderr)
    assert "diverged" in line and "--resume" in line and "--lr" in line
    assert r.stdout == ""


# ------------------------------------------------------------------------------------------ file modes

@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def test_every_file_of_a_cli_run_gets_the_umask_mode(tmp_path, mask, mode):
    d = tmp_path / "run"
    r = subprocess.run(train(*QUICK, "--out", str(d)), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=DEADLINE_S, preexec_fn=lambda: os.umask(mask))
    assert r.returncode == 0, r.stderr
    found = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    assert {MARKER, LOCK, "config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz",
            "summary.json"} <= set(found)
    assert found == dict.fromkeys(found, mode)
    # and a resume, replacing every file, keeps to the umask too
    r = subprocess.run(train("--resume", "--epochs", "2", "--out", str(d)), cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=DEADLINE_S, preexec_fn=lambda: os.umask(mask))
    assert r.returncode == 0, r.stderr
    found = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    assert found == dict.fromkeys(found, mode)


def test_files_in_process_get_the_umask_mode(capsys, tmp_path):
    previous = os.umask(0o022)
    try:
        d = tmp_path / "run"
        assert main(["train", *QUICK, "--out", str(d)]) == 0
        found = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
        assert len(found) >= 8 and found == dict.fromkeys(found, 0o644)
    finally:
        os.umask(previous)

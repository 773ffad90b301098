"""The run folder (``--out``): what dualtensor may write, replace and delete there, its lock, its
stale temporaries and the modes of the files it creates (dualtensor.train.rundir, dualtensor.files),
checked directly and through the command line."""
from __future__ import annotations

import hashlib
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
from dualtensor.errors import UsageError
from dualtensor.files import atomic_write_text, file_mode, new_temp_file, stale_temporaries
from dualtensor.train.rundir import LOCK, MARKER, RUN_FILES, RunDir, RunDirError

QUICK = ["--dataset", "digits", "--limit", "100", "--epochs", "1", "--batch-size", "20", "--width", "16", "--k", "4",
         "--quiet", "--threads", "1"]
# the same run, long enough to still be going while a second one tries the folder (it is terminated)
QUICK_SLOW = [*QUICK[:4], "--epochs", "100000", *QUICK[6:]]

DEADLINE_S = 60
# subprocesses import the dualtensor under test (this checkout), not whichever one is installed
ROOT = Path(dualtensor.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# ------------------------------------------------------------------------------------------ helpers

def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file in ``folder`` (hidden ones included) with its bytes, size, mtime_ns and inode."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = (p.read_bytes(), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def marker_files(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]


def make_run(folder: Path, files=("config.json", "last.npz")) -> None:
    """A folder holding a (fake) run: RunDir wrote ``files`` into it and was closed."""
    with RunDir.open(folder, "new") as rd:
        for name in files:
            rd.write_text(name, f"{name} written by the run\n")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    return lines[0]


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one comes back afterwards."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


# ------------------------------------------------------------------------------------------ folders

def test_open_creates_a_missing_folder_and_close_removes_it_when_nothing_was_written(tmp_path):
    path = tmp_path / "a" / "b"
    rd = RunDir.open(path, "new")
    assert path.is_dir() and {MARKER, LOCK} <= names(path)
    assert marker_files(path) == {}
    rd.close()
    assert not path.exists()
    assert (tmp_path / "a").is_dir()
    rd.close()  # closing twice is harmless


def test_an_empty_existing_folder_is_adopted_and_left_empty_when_nothing_was_written(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with RunDir.open(path, "new"):
        assert names(path) == {MARKER, LOCK}
    assert path.is_dir() and names(path) == set()


def test_close_keeps_the_marker_once_a_run_file_was_written(tmp_path):
    path = tmp_path / "run"
    with RunDir.open(path, "new") as rd:
        rd.write_text("config.json", "{}\n")
        assert rd.has("config.json") and not rd.has("summary.json")
    assert names(path) == {MARKER, LOCK, "config.json"}
    st = (path / "config.json").stat()
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    assert marker_files(path) == {"config.json": [[st.st_size, st.st_mtime_ns, st.st_ino, digest]]}
    with pytest.raises(RuntimeError, match="closed"):
        rd.write_text("config.json", "{}\n")


def test_a_folder_a_run_was_killed_in_before_its_first_marker_is_adopted(tmp_path):
    """SIGKILL while the first marker was being written leaves only the marker's temporary (and the lock file):
    that folder is the killed run's, so it is taken (the temporary removed), not refused as someone else's."""
    path = tmp_path / "trial"
    path.mkdir()
    (path / LOCK).write_text("")
    (path / f".{MARKER}.k1l2m3.tmp").write_text('{"format"')
    with pytest.raises(RunDirError, match="holds no run to resume"):
        RunDir.open(path, "resume")
    with RunDir.open(path, "new") as rd:
        rd.write_text("config.json", "{}\n")
    assert names(path) == {MARKER, LOCK, "config.json"}
    other = tmp_path / "mine"  # beside a file of the user's the folder is still not dualtensor's
    other.mkdir()
    (other / f".{MARKER}.k1l2m3.tmp").write_text("")
    (other / "notes.txt").write_text("mine\n")
    with pytest.raises(RunDirError, match="not made by dualtensor"):
        RunDir.open(other, "new")
    assert names(other) == {f".{MARKER}.k1l2m3.tmp", "notes.txt"}


@pytest.mark.parametrize("mode", ["new", "resume", "overwrite"])
def test_a_folder_not_made_by_dualtensor_is_refused_in_every_mode_and_left_untouched(tmp_path, mode):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "config.json").write_text('{"mine": true}\n')
    (path / "metrics.csv").write_text("a,b\n1,2\n")
    (path / ".last.npz.abc123.tmp").write_bytes(b"not a stale temporary of dualtensor's")
    before = snapshot(path)
    with pytest.raises(RunDirError, match="not made by dualtensor") as err:
        RunDir.check(path, mode)
    assert isinstance(err.value, UsageError)
    with pytest.raises(RunDirError, match="not made by dualtensor"):
        RunDir.open(path, mode)
    assert snapshot(path) == before
    assert names(path) == set(before)


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    path = tmp_path / "run"
    make_run(path)
    before = snapshot(path)
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir.check(path, "new")
    with pytest.raises(RunDirError, match="already holds a run"):
        RunDir.open(path, "new")
    assert snapshot(path) == before
    RunDir.check(path, "resume")
    RunDir.check(path, "overwrite")
    with RunDir.open(path, "resume") as rd:
        assert rd.has("last.npz") and not rd.changed("last.npz")
    assert (path / "last.npz").read_bytes() == before["last.npz"][0]


def test_resume_needs_a_last_npz_written_by_the_run(tmp_path):
    path = tmp_path / "run"
    make_run(path, files=("config.json",))
    with pytest.raises(RunDirError, match="no run to resume"):
        RunDir.open(path, "resume")
    with pytest.raises(RunDirError, match="no run to resume"):
        RunDir.check(tmp_path / "missing", "resume")


def test_a_damaged_marker_is_refused(tmp_path):
    path = tmp_path / "run"
    make_run(path)
    (path / MARKER).write_text("{not json")
    before = snapshot(path)
    for mode in ("new", "resume", "overwrite"):
        with pytest.raises(RunDirError, match="damaged"):
            RunDir.open(path, mode)
    assert snapshot(path) == before


def test_overwrite_deletes_only_the_files_the_run_wrote(tmp_path):
    path = tmp_path / "run"
    make_run(path, files=("config.json", "last.npz", "metrics.csv"))
    (path / "notes.txt").write_text("my notes\n")
    (path / ".hidden_user_file").write_text("mine\n")
    with RunDir.open(path, "overwrite") as rd:
        # nothing is deleted until the new run writes: a run that fails first leaves the old one
        assert names(path) == {MARKER, LOCK, "notes.txt", ".hidden_user_file", "config.json", "last.npz",
                               "metrics.csv"}
        rd.write_text("config.json", "new\n")
        assert names(path) == {MARKER, LOCK, "notes.txt", ".hidden_user_file", "config.json"}
    assert (path / "notes.txt").read_text() == "my notes\n"
    assert (path / ".hidden_user_file").read_text() == "mine\n"
    assert (path / "config.json").read_text() == "new\n"
    assert set(marker_files(path)) == {"config.json"}


def _append(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"edited by hand\n")


def _replace_with_a_copy(p: Path) -> None:  # same bytes, another file (inode)
    data = p.read_bytes()
    tmp = p.with_name("copy")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def _touch(p: Path) -> None:  # same bytes, same inode, another mtime
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_overwrite_that_never_writes_leaves_the_old_run(tmp_path):
    path = tmp_path / "run"
    make_run(path, files=("config.json", "last.npz"))
    before = {k: v for k, v in snapshot(path).items() if k != LOCK}
    with RunDir.open(path, "overwrite"):
        pass  # e.g. the new run's data failed to load
    assert {k: v for k, v in snapshot(path).items() if k != LOCK} == before
    with RunDir.open(path, "resume") as rd:
        assert rd.has("last.npz")


@pytest.mark.parametrize("edit", [_replace_with_a_copy, _touch], ids=["replaced", "touched"])
def test_a_copy_with_the_same_content_is_the_same_file(tmp_path, edit):
    """cp -a, rsync or a restored backup change inodes and mtimes, not content."""
    path = tmp_path / "run"
    make_run(path, files=("config.json", "last.npz", "metrics.csv"))
    edit(path / "metrics.csv")
    with RunDir.open(path, "resume") as rd:
        assert not rd.changed("metrics.csv") and rd.changed_files() == []
        rd.write_text("metrics.csv", "next\n")
    assert (path / "metrics.csv").read_text() == "next\n"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(path), str(copy)], check=True)
    with RunDir.open(copy, "resume") as rd:
        assert rd.changed_files() == []
    with RunDir.open(copy, "overwrite") as rd:
        rd.write_text("config.json", "{}\n")
    assert names(copy) == {MARKER, LOCK, "config.json"}


@pytest.mark.parametrize("edit", [_append], ids=["appended"])
def test_overwrite_refuses_and_deletes_nothing_when_a_run_file_was_changed(tmp_path, edit):
    path = tmp_path / "run"
    make_run(path, files=("config.json", "last.npz", "metrics.csv"))
    (path / "notes.txt").write_text("my notes\n")
    edit(path / "metrics.csv")
    before = snapshot(path)
    with pytest.raises(RunDirError, match="metrics.csv changed since"):
        RunDir.open(path, "overwrite")
    assert snapshot(path) == before
    # the lock was released again: the folder can still be resumed
    with RunDir.open(path, "resume") as rd:
        assert rd.changed("metrics.csv") and not rd.changed("config.json")


def test_overwrite_accepts_a_run_file_the_user_deleted(tmp_path):
    path = tmp_path / "run"
    make_run(path, files=("config.json", "last.npz"))
    (path / "config.json").unlink()
    with RunDir.open(path, "overwrite") as rd:
        rd.write_text("metrics.csv", "x\n")
        assert names(path) == {MARKER, LOCK, "metrics.csv"}


@pytest.mark.parametrize("edit", [_append], ids=["appended"])
def test_write_refuses_to_replace_a_run_file_changed_since_the_run_wrote_it(tmp_path, edit):
    path = tmp_path / "run"
    with RunDir.open(path, "new") as rd:
        rd.write_text("summary.json", "first\n")
        rd.write_text("summary.json", "second\n")  # its own file: replaced
        assert (path / "summary.json").read_text() == "second\n"
        edit(path / "summary.json")
        edited = (path / "summary.json").read_bytes()
        assert rd.changed("summary.json")
        with pytest.raises(RunDirError, match="was changed since dualtensor wrote it"):
            rd.write_text("summary.json", "third\n")
        with pytest.raises(RunDirError, match="was changed since dualtensor wrote it"):
            rd.write("summary.json", lambda f: f.write(b"third\n"))
        assert (path / "summary.json").read_bytes() == edited
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def test_write_refuses_to_replace_a_file_the_run_did_not_write(tmp_path):
    path = tmp_path / "run"
    with RunDir.open(path, "new") as rd:
        (path / "summary.json").write_text("the user's\n")
        assert not rd.has("summary.json") and rd.changed("summary.json")
        with pytest.raises(RunDirError, match="not written by it"):
            rd.write_text("summary.json", "the run's\n")
        assert (path / "summary.json").read_text() == "the user's\n"
        with pytest.raises(ValueError, match="not a run file"):
            rd.write_text("notes.txt", "x")
    assert (path / "summary.json").read_text() == "the user's\n"


# ------------------------------------------------------------------------------------------ the lock

def test_a_second_open_in_the_same_process_is_refused_naming_the_pid(tmp_path):
    path = tmp_path / "run"
    make_run(path)
    first = RunDir.open(path, "resume")
    try:
        holder = json.loads((path / LOCK).read_text())
        assert holder["pid"] == os.getpid()
        before = snapshot(path)
        for mode in ("resume", "overwrite"):
            with pytest.raises(RunDirError, match="in use") as err:
                RunDir.open(path, mode)
            assert f"pid {os.getpid()}" in str(err.value)
        assert snapshot(path) == before  # overwrite deleted nothing of the live run
    finally:
        first.close()
    with RunDir.open(path, "resume") as again:
        assert again.has("last.npz")


def test_a_new_run_into_a_locked_empty_folder_is_refused(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with RunDir.open(path, "new"):
        with pytest.raises(RunDirError, match="in use"):
            RunDir.open(path, "new")
    assert names(path) == set()
    with RunDir.open(path, "new"):
        pass


_HOLD_LOCK = """
import sys, time
from dualtensor.train.rundir import RunDir
rd = RunDir.open(sys.argv[1], "new")
rd.write_text("last.npz", "x")
time.sleep(120)
"""


def test_the_lock_of_a_process_killed_with_sigkill_is_released(tmp_path):
    path = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], cwd=tmp_path, env=ENV)
    try:
        def locked() -> bool:
            try:
                return json.loads((path / LOCK).read_text()).get("pid") == proc.pid and (path / "last.npz").is_file()
            except (OSError, ValueError):
                return False

        wait_for(locked, "the child to take the lock", proc)
        with pytest.raises(RunDirError, match=f"in use by another run \\(pid {proc.pid} "):
            RunDir.open(path, "resume")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    finally:
        stop(proc)
    with RunDir.open(path, "resume") as rd:
        assert rd.has("last.npz")


# ------------------------------------------------------------------------------------------ temporaries

def test_open_removes_stale_temporaries_of_run_files_but_no_other_hidden_file(tmp_path):
    path = tmp_path / "run"
    make_run(path)
    stale = [".last.npz.abc123.tmp", ".summary.json.x1y2z3.tmp", f".{MARKER}.q_w1e2.tmp", ".curves.png.Z9.tmp"]
    kept = [".hidden_user_file", ".notes.txt.abc123.tmp", ".last.npz.tmp", ".last.npz.abc123.tmp.bak",
            "last.npz.abc123.tmp", ".unknown.npz.abc123.tmp"]
    for name in stale + kept:
        (path / name).write_bytes(b"leftover " + name.encode())
    (path / ".config.json.dir123.tmp").mkdir()  # a folder, not a temporary file
    assert [p.name for p in stale_temporaries(path, {*RUN_FILES, MARKER})] == sorted(stale)
    with RunDir.open(path, "resume"):
        pass
    left = names(path)
    assert not left & set(stale)
    assert set(kept) | {".config.json.dir123.tmp"} <= left
    for name in kept:
        assert (path / name).read_bytes() == b"leftover " + name.encode()


def test_new_temp_file_is_named_for_its_target_and_recognised_as_stale(tmp_path):
    fd, tmp = new_temp_file(tmp_path, "last.npz")
    os.close(fd)
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.npz.") and tmp.name.endswith(".tmp")
    assert stale_temporaries(tmp_path, {"last.npz"}) == [tmp]
    assert stale_temporaries(tmp_path, {"best.npz"}) == []


# ------------------------------------------------------------------------------------------ check

def test_check_only_reads(tmp_path):
    missing = tmp_path / "new" / "deep"
    RunDir.check(missing, "new")
    RunDir.check(missing, "overwrite")
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    make_run(run)
    before = snapshot(run)
    RunDir.check(run, "resume")
    RunDir.check(run, "overwrite")
    assert snapshot(run) == before
    with pytest.raises(ValueError, match="mode"):
        RunDir.check(run, "append")


@pytest.mark.parametrize("where", ["the file", "under the file", "deep under the file"])
def test_an_out_that_is_a_file_or_lies_under_one_is_refused(tmp_path, where):
    f = tmp_path / "data.txt"
    f.write_text("precious\n")
    out = {"the file": f, "under the file": f / "run", "deep under the file": f / "a" / "b"}[where]
    for mode in ("new", "overwrite"):
        with pytest.raises(RunDirError, match="is a file, not a folder"):
            RunDir.check(out, mode)
        with pytest.raises(RunDirError, match="is a file, not a folder"):
            RunDir.open(out, mode)
    assert f.read_text() == "precious\n" and names(tmp_path) == {"data.txt"}


# ------------------------------------------------------------------------------------------ file modes

@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_new_files_get_the_mode_the_umask_asks_for(tmp_path, umask, mask, mode):
    umask(mask)
    assert file_mode() == mode
    fd, tmp = new_temp_file(tmp_path, "x")
    os.close(fd)
    assert tmp.stat().st_mode & 0o777 == mode
    atomic_write_text(tmp_path / "plain.txt", "x")
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode
    path = tmp_path / "run"
    with RunDir.open(path, "new") as rd:
        rd.write_text("config.json", "{}\n")
        rd.write("last.npz", lambda f: f.write(b"npz"))
    for name in (MARKER, LOCK, "config.json", "last.npz"):
        assert (path / name).stat().st_mode & 0o777 == mode, name


# ------------------------------------------------------------------------------------------ the command line

@pytest.mark.parametrize("mode", [[], ["--overwrite"], ["--resume"]], ids=["new", "overwrite", "resume"])
def test_cli_refuses_a_users_folder_and_keeps_its_files(capsys, tmp_path, mode):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.json").write_bytes(b'{"learning": "my own"}\n')
    (d / "metrics.csv").write_bytes(b"epoch,acc\n1,0.5\n")
    before = snapshot(d)
    code, _, err = cli(capsys, *QUICK, "--out", str(d), *mode)
    assert code == 2
    line = one_line(err)
    assert line.startswith("dualtensor train: error:") and str(d) in line
    assert snapshot(d) == before
    assert names(d) == {"config.json", "metrics.csv"}


def test_cli_refuses_an_out_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "results.txt"
    f.write_bytes(b"precious\n")
    for out in (f, f / "run"):
        code, _, err = cli(capsys, *QUICK, "--out", str(out))
        assert code == 2 and "is a file, not a folder" in one_line(err)
    assert f.read_bytes() == b"precious\n" and names(tmp_path) == {"results.txt"}


def test_cli_overwrite_keeps_the_users_notes_and_rewrites_the_run_files(capsys, tmp_path):
    d = tmp_path / "run"
    assert cli(capsys, *QUICK, "--out", str(d))[0] == 0
    (d / "notes.txt").write_text("lr sweep, first try\n")
    assert load_checkpoint(d / "last.npz").epoch == 1
    code, _, err = cli(capsys, *QUICK, "--epochs", "2", "--out", str(d), "--overwrite")
    assert code == 0, err
    assert (d / "notes.txt").read_text() == "lr sweep, first try\n"
    assert load_checkpoint(d / "last.npz").epoch == 2
    assert json.loads((d / "config.json").read_text())["epochs"] == 2
    assert json.loads((d / "summary.json").read_text())["epochs_run"] == 2
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 2
    assert "notes.txt" not in marker_files(d)
    assert set(marker_files(d)) == {"config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz",
                                    "summary.json"}


def test_cli_overwrite_refuses_a_run_file_edited_by_hand(capsys, tmp_path):
    d = tmp_path / "run"
    assert cli(capsys, *QUICK, "--out", str(d))[0] == 0
    _append(d / "metrics.csv")
    before = snapshot(d)
    code, _, err = cli(capsys, *QUICK, "--out", str(d), "--overwrite")
    assert code == 2 and "metrics.csv changed since" in one_line(err)
    assert snapshot(d) == before


@pytest.mark.parametrize("mode", [["--resume"], [*QUICK, "--overwrite"]], ids=["resume", "overwrite"])
def test_cli_refuses_a_run_folder_in_use(capsys, tmp_path, mode):
    d = tmp_path / "run"
    assert cli(capsys, *QUICK, "--out", str(d))[0] == 0
    held = RunDir.open(d, "resume")
    try:
        before = snapshot(d)
        code, _, err = cli(capsys, *mode, "--out", str(d))
        assert code == 2
        line = one_line(err)
        assert "in use" in line and f"pid {os.getpid()}" in line
        assert snapshot(d) == before
    finally:
        held.close()
    assert cli(capsys, "--resume", "--out", str(d))[0] == 0


def test_cli_refuses_a_new_run_into_a_locked_empty_folder(capsys, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    held = RunDir.open(d, "new")
    try:
        code, _, err = cli(capsys, *QUICK, "--out", str(d))
        assert code == 2 and "in use" in one_line(err)
        assert names(d) == {MARKER, LOCK}
    finally:
        held.close()
    assert names(d) == set()
    assert cli(capsys, *QUICK, "--out", str(d))[0] == 0
    assert load_checkpoint(d / "last.npz").epoch == 1


def test_two_processes_cannot_run_into_one_folder(tmp_path):
    d = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dualtensor", "train", *QUICK_SLOW, "--out", str(d)],
                             cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (d / "last.npz").is_file(), "the first run's last.npz", first)
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "dualtensor", "train", "--resume", "--out", str(d)],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=DEADLINE_S)
        took = time.monotonic() - t0
        assert second.returncode == 2, second.stderr
        line = one_line(second.stderr)
        assert "in use" in line and f"pid {first.pid}" in line
        assert took < 20
        assert first.poll() is None, "the first run ended before the second was refused"
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=DEADLINE_S)
        assert first.returncode == 143, err
    finally:
        stop(first)
    # the first run's folder is intact and resumable
    assert load_checkpoint(d / "last.npz").epoch >= 0
    with RunDir.open(d, "resume") as rd:
        assert not [n for n in RUN_FILES if rd.changed(n)]


def test_cli_resume_removes_stale_temporaries_and_keeps_the_users_hidden_file(capsys, tmp_path):
    d = tmp_path / "run"
    assert cli(capsys, *QUICK, "--out", str(d))[0] == 0
    (d / ".last.npz.abc123.tmp").write_bytes(b"half a checkpoint")
    (d / ".summary.json.x1y2z3.tmp").write_bytes(b'{"status": ')
    (d / ".hidden_user_file").write_bytes(b"keep me\n")
    code, _, err = cli(capsys, "--resume", "--epochs", "2", "--out", str(d))
    assert code == 0, err
    left = names(d)
    assert ".last.npz.abc123.tmp" not in left and ".summary.json.x1y2z3.tmp" not in left
    assert not [n for n in left if n.endswith(".tmp")]
    assert (d / ".hidden_user_file").read_bytes() == b"keep me\n"
    assert load_checkpoint(d / "last.npz").epoch == 2
    assert json.loads((d / "summary.json").read_text())["status"] == "completed"

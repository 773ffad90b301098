"""Workers started independently (as on several machines) share one study in PostgreSQL.

CI (``.ci/run``) starts a throwaway cluster on 127.0.0.1 and sets ``DUALTENSOR_TEST_POSTGRES``;
elsewhere the test starts one itself when PostgreSQL's programs are installed, and skips otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="sweeps need the sweep extra: pip install 'dualtensor[sweep]'")
pytest.importorskip("psycopg", reason="PostgreSQL storage needs the postgres extra: pip install "
                                      "'dualtensor[postgres]'")
sys.path.insert(0, str(Path(__file__).parent))
import pg_cluster  # noqa: E402


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("DUALTENSOR_TEST_POSTGRES")
    if url:
        yield url
        return
    if pg_cluster.find_bin() is None:
        pytest.skip("no PostgreSQL found: install it (Debian: apt-get install postgresql) or set "
                    "DUALTENSOR_TEST_POSTGRES to a database URL")
    folder = tempfile.mkdtemp(prefix="dualtensor-pg-")
    try:
        yield pg_cluster.start(folder)
    finally:
        pg_cluster.stop(folder)
        subprocess.run(["rm", "-rf", folder], check=False)


def test_two_independent_workers_share_one_study(tmp_path, postgres_url):
    study = f"shared-{os.getpid()}"
    args = ["--limit", "600", "--epochs", "12", "--width", "32", "--k", "4", "--pruner", "none", "--trials", "6",
            "--seeds", "0", "--quiet", "--storage", postgres_url, "--study", study]
    procs = [subprocess.Popen([sys.executable, "-m", "dualtensor", "sweep", *args, "--out", str(tmp_path / name)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("machine-a", "machine-b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name=study, storage=postgres_url).trials
    # two workers may both start a last trial at once: at most one more than asked
    assert 6 <= len(trials) <= 7 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both contributed
    for name in ("machine-a", "machine-b"):  # each worker's runs are in its own folder
        mine = [t for t in trials if str(tmp_path / name) in t.user_attrs["run_dir"]]
        assert mine and all((Path(t.user_attrs["run_dir"]) / "summary.json").is_file() for t in mine)
        assert json.loads((tmp_path / name / "sweep.json").read_text())["counts"]["COMPLETE"] == len(trials)

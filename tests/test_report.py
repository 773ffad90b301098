"""``python -m dualtensor report``: runs and sweeps as Table I (Markdown, CSV) and plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dualtensor.__main__ import main

RUN = ["--dataset", "digits", "--limit", "300", "--epochs", "2", "--width", "32", "--k", "4", "--quiet",
       "--track-test"]


def train(out: Path, *args: str) -> dict:
    assert main(["train", *RUN, *args, "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    got = {}
    for seed in (0, 1):  # one configuration, two seeds: one cell with n=2
        got["fwd", seed] = train(base / f"fwd-{seed}", "--seed", str(seed), "--lr", "0.5")
    got["bp"] = train(base / "bp", "--grad", "backprop", "--lr", "0.1")
    got["batch"] = train(base / "batch", "--estimator", "batch", "--lr", "0.001", "--aggregate", "mean", "--k", "1")
    got["w64"] = train(base / "w64", "--width", "64", "--lr", "0.5")
    return base, got


def test_report_groups_seeds_into_table_cells(runs, tmp_path, capsys):
    base, got = runs
    prefix = tmp_path / "table"
    assert main(["report", str(base), "--out", str(prefix)]) == 0
    md = capsys.readouterr().out
    errors = [1 - got["fwd", s]["test_acc"] for s in (0, 1)]
    mean = sum(errors) / 2
    std = (sum((e - mean) ** 2 for e in errors) / 2) ** 0.5
    assert "| forward projection k=4 (per-sample) | " in md
    assert f"{100 * mean:.2f} ± {100 * std:.2f} (n=2; lr 0.5; 2 ep)" in md
    assert "| backprop |" in md and "forward mean k=1 (batch)" in md
    assert "mlp w=32 / digits" in md and "mlp w=64 / digits" in md
    rows = list(csv.DictReader(open(f"{prefix}.csv")))
    assert len(rows) == 4
    fwd = next(r for r in rows if r["gradient"] == "forward projection k=4 (per-sample)" and r["width"] == "32")
    assert int(fwd["seeds"]) == 2 and float(fwd["test_error_mean"]) == pytest.approx(mean)
    assert Path(f"{prefix}.md").read_text().startswith("<!-- written by dualtensor report -->")
    # its own files may be written again; a file it did not write is refused
    assert main(["report", str(base), "--out", str(prefix)]) == 0
    foreign = tmp_path / "notes.md"
    foreign.write_text("my notes\n")
    capsys.readouterr()
    assert main(["report", str(base), "--out", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not written by dualtensor report" in err
    assert foreign.read_text() == "my notes\n"


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no runs or sweeps" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--plot"]) == 2
    assert "--plot needs --out" in capsys.readouterr().err


def test_report_plots_curves_and_width(runs, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra: pip install 'dualtensor[plot]'")
    base, _ = runs
    prefix = tmp_path / "fig"
    assert main(["report", str(base), "--out", str(prefix), "--plot"]) == 0
    for name in ("fig-curves.png", "fig-width.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_reads_a_sweep(tmp_path, capsys):
    pytest.importorskip("optuna", reason="sweeps need the sweep extra: pip install 'dualtensor[sweep]'")
    out = tmp_path / "sw"
    assert main(["sweep", *RUN, "--trials", "2", "--seeds", "2", "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    errors = [1 - s["test_acc"] for s in res["seeds"]]
    mean = sum(errors) / 2
    assert f"{100 * mean:.2f} ± " in md and f"lr {res['best']['lr']:.2g}" in md
    assert md.count("| forward projection k=4 (per-sample) |") == 2  # the error table and the wall times

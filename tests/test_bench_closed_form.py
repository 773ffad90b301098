"""Smoke tests of the paper-experiment scripts in bench/ (their --quick modes) and the closed-form functions."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import closed_form_functions as C  # noqa: E402


def _run(script, *args, timeout=120):
    r = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_functions_minima_and_gradients():
    assert float(C.sphere(np.zeros((1, 5)))[0]) == 0.0
    assert float(C.rosenbrock(np.ones((1, 6)))[0]) == 0.0
    assert float(C.beale(np.array([[3.0, 0.5]]))[0]) == pytest.approx(0.0, abs=1e-15)
    x_st = np.full((1, 4), -2.903534027771178)
    assert float(C.styblinski_tang(x_st)[0]) == pytest.approx(C.ST_MIN_PER_DIM * 4, rel=1e-12)
    assert C.ST_MIN_PER_DIM == pytest.approx(-39.16599, abs=2e-4)
    rng = np.random.default_rng(0)
    for name, prob in C.PROBLEMS.items():
        x = rng.standard_normal((3, prob.fixed_n or 5))
        vals, g = C.exact_value_and_grad(prob.f, x)
        assert vals.shape == (3,)
        eye = np.eye(x.shape[1]) * 1e-6
        fd = np.stack([(prob.f(x + e) - prob.f(x - e)) / 2e-6 for e in eye], axis=1)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5, err_msg=name)


def test_gradient_descent_stops_on_nan_and_patience():
    prob = C.PROBLEMS["sphere"]
    x0 = np.tile(prob.x0(4), (4, 1))
    res = C.gradient_descent(prob.f, x0, np.array([0.25, 10.0, 1e10, 1e-9]), C.Method("exact"),
                             np.random.default_rng(0), max_steps=500, patience=50)
    assert res.best[0] < 1e-100  # converges
    assert res.steps[1] == 50 and not res.diverged[1] and res.best[1] == 4.0  # never improves: patience
    assert res.diverged[2] and res.steps[2] < 50  # blows up to inf and stops at once
    assert res.steps[3] == 500 and res.best[3] < 4.0  # a tiny lr keeps improving until max_steps


def test_closed_form_quick(tmp_path):
    out = _run("closed_form.py", "--quick", "--out", str(tmp_path))
    assert "### sphere" in out and "| n | exact | fg k=1 | mean k=2 | proj k=2 |" in out
    rows = _rows(tmp_path / "closed_form.csv")
    by = {(r["function"], int(r["n"]), r["method"]): r for r in rows}
    for n in (1, 2, 8):
        assert float(by["sphere", n, "exact"]["mean"]) < 1e-12  # the exact gradient reaches the minimum
    for n in (1, 2):  # k >= n: the projection is the exact gradient direction
        assert float(by["sphere", n, "proj k=2"]["mean"]) < 1e-12
    assert float(by["sphere", 8, "fg k=1"]["mean"]) < 8.0  # below the start value
    assert float(by["styblinski_tang", 1, "exact"]["mean"]) == pytest.approx(C.ST_MIN_PER_DIM, abs=1e-6)
    for (fn, n, _), r in by.items():
        start = float(C.PROBLEMS[fn].f(C.PROBLEMS[fn].x0(n)[None])[0])
        assert math.isfinite(float(r["mean"])) and float(r["mean"]) <= start + 1e-12, (fn, n, r)
        assert 1e-6 <= float(r["lr"]) <= 1.0
    assert {r["function"] for r in rows} == {"sphere", "rosenbrock", "styblinski_tang", "beale"}
    assert not any(r["function"] == "rosenbrock" and int(r["n"]) == 1 for r in rows)
    assert len(_rows(tmp_path / "closed_form_lr_search.csv")) > len(rows)


def test_approximation_quick(tmp_path):
    out = _run("approximation.py", "--quick", "--out", str(tmp_path))
    assert "cosine similarity" in out and "| k | single | sum | mean | normalized | projection |" in out
    rows = _rows(tmp_path / "approximation.csv")
    get = {(r["aggregate"], int(r["k"])): r for r in rows}
    assert float(get["projection", 64]["cos_mean"]) == pytest.approx(1.0, abs=1e-6)  # k = n
    assert float(get["projection", 128]["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
    cos_mean = [float(get["mean", k]["cos_mean"]) for k in (1, 4, 16, 64, 128)]
    assert cos_mean == sorted(cos_mean)
    assert 0.05 < float(get["single", 16]["cos_mean"]) < 0.2  # ≈ E|cos| of a random direction in R^64
    for k in (4, 16):
        assert float(get["projection", k]["cos_mean"]) >= float(get["mean", k]["cos_mean"])
        assert float(get["projection (scaled)", k]["ratio_mean"]) == pytest.approx(1.0, abs=0.15)
        assert float(get["sum", k]["ratio_mean"]) == pytest.approx(k * float(get["mean", k]["ratio_mean"]))


def test_angles_quick(tmp_path):
    out = _run("angles.py", "--quick", "--out", str(tmp_path))
    assert "Fixed-angle tangents" in out
    rows = _rows(tmp_path / "angles.csv")
    proj = [r for r in rows if r["aggregate"] == "projection"]
    mean = {r["angle"]: r for r in rows if r["aggregate"] == "mean"}
    # same draws, same span for every angle: identical projection cosines and optimisation results
    np.testing.assert_allclose([float(r["best_mean"]) for r in proj], float(proj[0]["best_mean"]), rtol=1e-12)
    np.testing.assert_allclose([float(r["cos_mean"]) for r in proj], float(proj[0]["cos_mean"]), rtol=1e-12)
    assert float(mean["30.0"]["cos_mean"]) < float(mean["90.0"]["cos_mean"])
    assert float(proj[0]["cos_mean"]) >= float(mean["90.0"]["cos_mean"])
    exact = next(r for r in rows if r["aggregate"] == "exact")
    assert float(exact["best_mean"]) == pytest.approx(C.ST_MIN_PER_DIM * 16, rel=1e-6)


def test_sampling_quick(tmp_path):
    out = _run("sampling.py", "--quick", "--json", str(tmp_path / "s.json"))
    assert "| sampler | dtype |" in out
    data = json.loads((tmp_path / "s.json").read_text())
    names = {(r["sampler"], r["dtype"]) for r in data["rows"]}
    for s in ("normal", "rademacher", "orthonormal", "basis", "cone", "varying_length"):
        assert (s, "float32") in names and (s, "float64") in names
    assert all(r["ns_per_number"] > 0 for r in data["rows"])


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    _run("approximation.py", "--quick", "--out", str(tmp_path), "--plot")
    _run("angles.py", "--quick", "--out", str(tmp_path), "--plot")
    _run("closed_form.py", "--quick", "--functions", "sphere,styblinski_tang", "--dims", "1,4",
         "--out", str(tmp_path), "--plot")
    for name in ("approximation.png", "angles.png", "closed_form.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_sampling_thread_ab(tmp_path):
    out = _run("sampling.py", "--thread-ab", "1,2", "--k", "2", "--n", "600000", "--repeats", "2", "--heap-arrays",
               "--json", str(tmp_path / "t.json"))
    assert "| sampler | threads |" in out
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    want = {(s, c) for s in ("normal", "normal (keyed)") for c in (1, 2)}
    assert {(r["sampler"], r["threads"]) for r in rows} == want
    assert all(r["ms_min"] > 0 and r["ms_median"] >= r["ms_min"] for r in rows)


def test_sampling_transform_ab(tmp_path):
    pytest.importorskip("numba", reason="the A/B times the numba-compiled transform")
    out = _run("sampling.py", "--transform-ab", "--k", "2", "--n", "600000", "--repeats", "2",
               "--json", str(tmp_path / "t.json"))
    assert "| transform | ms min |" in out
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["transform"] for r in rows] == ["numba", "numpy"]
    assert all(r["chunks"] == 3 and r["ms_median"] >= r["ms_min"] > 0 for r in rows)

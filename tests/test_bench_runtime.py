"""Smoke tests of bench/runtime.py (the harness, not the speed): tiny configurations, the table and
JSON layout, positive ratios, and that the k-separate-passes loop and the batched forward-gradient
step produce the same estimate for the same tangents."""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import _timing as T  # noqa: E402
import runtime as R  # noqa: E402
import runtime_cases as cases  # noqa: E402
import runtime_report as report  # noqa: E402



def _run(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(BENCH, "runtime.py"), *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_cli_quick_tiny(tmp_path):
    out_json, out_png = tmp_path / "rt.json", tmp_path / "rt.png"
    args = ["--quick", "--size", "tiny", "--models", "logreg,mlp,cnn,resnet18,vit", "--ks", "1,3",
            "--perturb", "weight,activity", "--tangents", "normal,rademacher", "--repeats", "2", "--warmup", "0",
            "--depths", "1,2,3", "--no-progress", "--json", str(out_json)]
    try:
        import matplotlib  # noqa: F401
        args += ["--plot", str(out_png)]
    except ImportError:
        out_png = None
    stdout = _run(*args)
    # the Markdown tables and their columns
    for _, header in report.MAIN_COLUMNS:
        assert f" {header} |" in stdout
    for header in ("depth", "params MB", "R_b", "R_f w", "R_f a", "fg-w − (k+1)P"):
        assert f" {header} |" in stdout
    assert "## targets (issue 5)" in stdout
    assert "BLAS threads" in stdout and "backend numpy" in stdout

    res = json.loads(out_json.read_text())
    assert set(res) == {"meta", "runs", "depth", "targets", "steps"}
    meta = res["meta"]
    assert meta["environment"]["backend"] == "numpy"
    assert "blas" in meta["environment"] and meta["args"]["threads"] == 1
    runs = res["runs"]
    assert len(runs) == 5 * 2 * 2 * 2  # models x perturbations x samplers x ks
    assert {r["model"] for r in runs} == set(cases.MODELS)
    for r in runs:
        for key in ("base_ms", "bp_ms", "fg_ms", "loop_ms", "R_f", "R_b", "R_f_over_R_b", "R_loop", "speedup",
                    "mem_base_mb", "mem_bp_mb", "mem_fg_mb", "mem_loop_mb", "check", "n_params", "fg_iqr_ms"):
            assert key in r, key
        for key in ("base_ms", "bp_ms", "fg_ms", "loop_ms", "R_f", "R_b", "R_f_over_R_b", "speedup"):
            assert r[key] > 0 and math.isfinite(r[key]), (key, r)
        assert r["R_f"] == pytest.approx(r["fg_ms"] / r["base_ms"])
        assert r["R_f_over_R_b"] == pytest.approx(r["R_f"] / r["R_b"])
        assert r["mem_fg_mb"] > 0 and r["mem_bp_mb"] > 0
        assert r["check"] < 1e-4, r  # float32: loop and batched estimates agree
        if r["perturb"] == "weight" and r["k"] == 1:
            assert r["R_bound_weight"] > 3
    depth = res["depth"]
    assert [d["depth"] for d in depth] == [1, 2, 3]
    for d in depth:
        for key in ("R_b", "R_f_weight", "R_f_activity", "mem_bp_mb", "mem_weight_mb", "mem_activity_mb",
                    "mem_weight_excess_mb", "params_mb"):
            assert d[key] > 0 or key.endswith("excess_mb"), (key, d)
    assert all(t["status"] in ("met", "MISSED", "n/a") for t in res["targets"])
    steps = res["steps"]["mlp/mnist/4"]
    assert steps["base"]["n"] == 2 and len(steps["base"]["raw_ms"]) == 2
    if out_png is not None:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", cases.MODELS)
def test_loop_equals_batched_for_the_same_tangents(model, global_state):
    """The harness's k-single-tangent loop must reproduce the batched estimate exactly (float64)."""
    ds = cases.MODEL_DATA[model]
    case = cases.make_case(model, ds, 3, xp=np, dtype=np.float64, size="tiny")
    for perturb in cases.PERTURBATIONS:
        for sampler in ("normal", "rademacher"):
            k = 3
            fg = case.step("fg", perturb, sampler, k)(rng=[5, 1], update=False)
            loop = case.step("loop", perturb, sampler, k)(rng=[5, 1], update=False)
            assert set(fg) == set(loop) == set(case.names)
            for n in fg:
                assert fg[n].shape == case.params[n].data.shape and fg[n].dtype == np.float64
            assert cases.relative_difference(fg, loop, np) < 1e-9, (model, perturb, sampler)
            # a negative control: other tangents give another estimate, so the check can fail
            other = case.step("loop", perturb, sampler, k)(rng=[6, 1], update=False)
            assert cases.relative_difference(fg, other, np) > 1e-3


def test_steps_update_parameters_and_memory_pass_restores(global_state):
    case = cases.make_case("mlp", "mnist", 4, xp=np, dtype=np.float32, size="tiny", lr=0.1)
    before = case.snapshot()
    case.step("fg", "activity", "normal", 2)(rng=0)
    assert any(not np.array_equal(before[n], case.params[n].data) for n in before)
    case.restore(before)
    peak, grads = cases.measure_memory(case, case.step("bp"), lambda: None, 0)
    assert peak > 0 and set(grads) == set(case.names)
    assert all(np.array_equal(before[n], case.params[n].data) for n in before)


def test_cnn_layout():
    m = cases.baydin_cnn(1, 28, 10)
    assert len(m.blocks()) == 6
    convs = [p for n, p in m.named_parameters() if p.data.ndim == 4]
    assert [tuple(p.data.shape) for p in convs] == [(64, 1, 3, 3)] + [(64, 64, 3, 3)] * 3
    x = np.zeros((2, 1, 28, 28), np.float32)
    h, shapes = x, []
    for b in m.blocks():
        h = b(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(64, 28, 28), (64, 14, 14), (64, 14, 14), (64, 7, 7), (1024,), (10,)]


def test_timing_helpers():
    s = T.summarize([0.004, 0.001, 0.002, 0.003, 0.005])
    assert s["median"] == pytest.approx(3.0) and s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(5.0)
    assert s["q25"] == pytest.approx(2.0) and s["q75"] == pytest.approx(4.0) and s["n"] == 5
    assert T.summarize([0.002])["q25"] == pytest.approx(2.0)
    assert T.summarize([])["n"] == 0

    order = []
    steps = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = T.interleaved(steps, repeats=3, warmup=1, progress=None)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc" "bca" "cab" "abc")  # one warm-up round, then rotated rounds

    calls = []
    times = T.interleaved({"a": lambda: calls.append(1)}, repeats=2, warmup=1, min_time=0.001)
    assert len(times["a"]) == 2 and len(calls) > 3 and (len(calls) - 1) % 2 == 0  # repeated per sample

    # settle: a sleep after every step, outside the timed span
    t0 = time.perf_counter()
    times = T.interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=1, settle=0.05)
    assert time.perf_counter() - t0 >= 6 * 0.05 and max(times["a"] + times["b"]) < 0.04

    peak, out = T.peak_memory(lambda: np.ones(1_000_000), np)
    assert out.shape == (1_000_000,) and 8_000_000 <= peak < 12_000_000
    peak, _ = T.peak_memory(lambda: (np.ones(2_000_000).sum(), None)[1], np)
    assert 16_000_000 <= peak < 20_000_000  # freed inside the step, still counted at its peak

    t = T.time_once(lambda: time.sleep(0.01), lambda: None)
    assert 0.009 < t < 1.0
    info = T.blas_info()
    assert "env" in info and isinstance(T.blas_threads(info), str)


def test_evaluate_targets():
    def row(model, perturb, k, R_f, R_b, speedup, bound=None):
        r = {"model": model, "perturb": perturb, "k": k, "tangents": "normal", "R_f": R_f, "R_b": R_b,
             "R_f_over_R_b": R_f / R_b, "speedup": speedup}
        if bound is not None:
            r["R_bound_weight"] = bound
        return r

    rows = [row("mlp", "activity", 16, 20.0, 3.0, 3.5), row("mlp", "activity", 1, 3.3, 3.0, 1.0),
            row("cnn", "weight", 16, 100.0, 3.0, 1.2), row("mlp", "weight", 1, 9.0, 3.0, 1.0, bound=4.0)]
    depth = [{"depth": d, "mem_bp_excess_mb": 1.0 * d, "mem_weight_excess_mb": 4.0, "mem_activity_excess_mb": 2.0 * d}
             for d in (1, 2, 4, 8)]
    got = {t["target"]: t["status"] for t in report.evaluate_targets(rows, depth)}
    assert got["batched vs loop, mlp activity k=16"] == "met"
    assert got["batched vs loop, cnn weight k=16"] == "MISSED"
    assert got["activity MLP R_f(k=16) / (2+k)"] == "met"        # 20 / 18
    assert got["activity MLP R_f(k=1) / (2+k)"] == "met"         # 3.3 / 3
    assert got["activity MLP R_f/R_b at k=1"] == "met"           # 1.1
    assert got["weight mlp normal R_f(k=1) / (3 + draw/base)"] == "MISSED"  # 9 / 4
    assert got["memory vs depth 2..8, fg-weight (excess over params)"] == "met"
    assert got["memory vs depth 2..8, backprop (excess over params)"] == "met"
    assert report.evaluate_targets([], []) == []
    unmeasured = [dict(r, mem_bp_excess_mb=float("nan"), mem_weight_excess_mb=float("nan")) for r in depth]
    assert not any("memory" in t["target"] for t in report.evaluate_targets([], unmeasured))  # --no-memory: no verdict


def test_bad_arguments():
    with pytest.raises(SystemExit):
        R.parse_args(["--models", "lenet"])
    with pytest.raises(SystemExit):
        R.parse_args(["--perturb", "gradient"])
    with pytest.raises(SystemExit):
        R.parse_args(["--tangents", "uniform"])
    a = R.parse_args(["--quick"])
    assert a.models == ["logreg", "mlp", "cnn"] and a.ks == [1, 4, 16] and a.threads == 1
    a = R.parse_args(["--models", "vit", "--ks", "2", "--depths", ""])
    assert a.models == ["vit"] and a.ks == [2] and a.depths == [] and a.threads is None


def test_gemm_count_bound(global_state):
    case = cases.make_case("mlp", "mnist", 8, xp=np, dtype=np.float32, size="tiny")
    per_block = cases.gemm_macs(case)
    dims = [(m.in_features, m.out_features) for m in case.model.modules() if type(m).__name__ == "Linear"]
    assert per_block == [[(8 * i * o, True)] for i, o in dims]  # one linear per block, batch 8
    # hand-made: blocks of 10, 20, 30 multiply-adds, one weighted GEMM each
    pb = [[(10, True)], [(20, True)], [(30, True)]]
    P, Ta, W = 60, 50, 60
    assert cases.loop_speedup_bound(pb, "activity", 16) == pytest.approx((16 * (P + Ta) + W) / (P + 16 * Ta + W))
    Tw = 10 + 2 * 50  # the first GEMM reads the data: weight-tangent term only
    assert cases.loop_speedup_bound(pb, "weight", 16) == pytest.approx(16 * (P + Tw) / (P + 16 * Tw))
    assert cases.loop_speedup_bound(pb, "weight", 1) == pytest.approx(1.0)
    # an attention-like matmul between activations carries two tangent terms
    # (and two gradient GEMMs in the local VJP); a second weighted GEMM in a block adds its input gradient
    assert cases.loop_speedup_bound([[(10, True)], [(20, False)]], "activity", 2) == pytest.approx(
        (2 * (30 + 40) + 50) / (30 + 2 * 40 + 50))
    assert cases.loop_speedup_bound([[(10, True), (5, True)]], "activity", 4) == pytest.approx(
        (4 * 15 + 20) / (15 + 20))

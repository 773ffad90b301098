"""Tests of bench/scaling_model.py (the α–β model: collective costs, feasibility, the compute split,
the grid) and of bench/scaling.py (pooling, targets, and one short end-to-end run over mpiexec on
tiny models, skipped without mpi4py or mpiexec)."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from dualtensor.distributed import split_range

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import scaling as S  # noqa: E402
import scaling_model as M  # noqa: E402

NET = M.Network("test", alpha=5e-6, beta=1.25e9)  # 10 Gb/s
MLP = 1_863_690  # |θ| of the MLP 784-1024-1024-10
SIZES = [1024, 1024, 10]  # its per-sample activation sizes (n = 2058)
CNN_SIZES = [50176, 12544, 12544, 3136, 1024, 10]  # Baydin et al.'s CNN on MNIST (n = 79434)


# ------------------------------------------------------------------------------------ α–β model

def test_collective_costs_known_values():
    assert M.allreduce_time(1e6, 1, NET) == 0.0
    assert M.allgather_time(1e6, 1, NET) == 0.0
    assert M.allreduce_time(1e6, 2, NET) == pytest.approx(2 * 5e-6 + 1e6 / 1.25e9)  # 2(P−1)α + 2(P−1)/P·n/β
    assert M.allreduce_time(1e6, 4, NET) == pytest.approx(6 * 5e-6 + 1.5 * 1e6 / 1.25e9)
    assert M.allgather_time(4096, 4, NET) == pytest.approx(3 * 5e-6 + 0.75 * 4096 / 1.25e9)
    assert M.alltoall_time(1e6, 1, NET) == 0.0
    assert M.alltoall_time(1e6, 2, NET) == pytest.approx(5e-6 + 0.25 * 1e6 / 1.25e9)  # (P−1)α + (P−1)/P²·n/β
    assert M.alltoall_time(1e6, 4, NET) == pytest.approx(3 * 5e-6 + 3 / 16 * 1e6 / 1.25e9)
    ten, hundred = M.networks(5.0)
    assert (ten.beta, hundred.beta, ten.alpha) == pytest.approx((1.25e9, 12.5e9, 5e-6))


def test_collective_costs_grow_with_ranks_and_size():
    for fn in (M.allreduce_time, M.allgather_time):
        ts = [fn(1e6, P, NET) for P in M.P_VALUES]
        assert all(a < b for a, b in zip(ts, ts[1:]))
        assert fn(2e6, 8, NET) > fn(1e6, 8, NET)
    # an Alltoallv's bytes per rank shrink as (P−1)/P²: a large exchange gets cheaper with P, a small one dearer
    assert M.alltoall_time(2e6, 8, NET) > M.alltoall_time(1e6, 8, NET)
    assert M.alltoall_time(1e8, 16, NET) < M.alltoall_time(1e8, 2, NET)
    assert M.alltoall_time(1e3, 16, NET) > M.alltoall_time(1e3, 2, NET)
    # the ring's bandwidth term approaches 2n/β: a fast network's allreduce is cheaper
    fast = M.Network("fast", 5e-6, 12.5e9)
    assert M.allreduce_time(7.45e6, 64, fast) < M.allreduce_time(7.45e6, 64, NET) < 2 * 7.45e6 / NET.beta + 126 * 5e-6


def test_payload_bytes_match_the_communicator_convention():
    # comm.bytes_sent on 2 ranks (MLP, k=16, B=64): Allgather = own part, Allreduce = whole buffer.
    # activity tangents (split the samples): the rank's 8×64 derivatives, its 8 tangents for the other rank's
    # 32 samples, and its 32 rows of the (64, 2058) estimate
    assert M.rank_payload_bytes("activity tangents", 2, MLP, 16, 64, sizes=SIZES) == \
        [4 * (8 * 64 + 8 * 32 * 2058 + 32 * 2058)] * 2 == [2372864, 2372864]
    assert M.payload_bytes("activity tangents", 2, MLP, 16, 64, sizes=SIZES) == 2372864
    # the tiny MLP of the end-to-end test (sizes 16, 16, 10): k=4 and k=16
    assert M.rank_payload_bytes("activity tangents", 2, 1482, 4, 64, sizes=[16, 16, 10]) == [16640, 16640]
    assert M.rank_payload_bytes("activity tangents", 2, 1482, 16, 64, sizes=[16, 16, 10]) == [50432, 50432]
    # uneven shares (split_range: the first ranks one more): k=16, B=64 on 3 ranks -> k_r 6, 5, 5; B_r 22, 21, 21
    assert M.rank_payload_bytes("activity tangents", 3, MLP, 16, 64, sizes=SIZES) == \
        [4 * (6 * 64 + 6 * 42 * 2058 + 22 * 2058), 4 * (5 * 64 + 5 * 43 * 2058 + 21 * 2058),
         4 * (5 * 64 + 5 * 43 * 2058 + 21 * 2058)]
    assert M.payload_bytes("activity tangents", 3, MLP, 16, 64, sizes=SIZES) == 4 * (6 * 64 + 6 * 42 * 2058 + 22 * 2058)
    # P = 16: one tangent and 4 rows each; k > n is no special case any more (every collective whatever k, n)
    assert M.rank_payload_bytes("activity tangents", 16, MLP, 16, 64, sizes=SIZES) == \
        [4 * (64 + 60 * 2058 + 4 * 2058)] * 16
    assert M.rank_payload_bytes("activity tangents", 2, MLP, 16, 64, sizes=[3, 4]) == \
        [4 * (8 * 64 + 8 * 32 * 7 + 32 * 7)] * 2
    with pytest.raises(ValueError):  # the activation sizes are needed
        M.payload_bytes("activity tangents", 2, MLP, 16, 64)
    assert M.payload_bytes("activity data", 2, MLP, 16, 64) == 4 * (MLP + 1)
    assert M.payload_bytes("backprop data", 2, MLP, 16, 64) == 4 * (MLP + 1)
    assert M.payload_bytes("weight tangents", 2, MLP, 16, 64) == 32
    assert M.payload_bytes("weight tangents", 3, MLP, 16, 64) == 4 * 6  # ceil(16/3) tangents on the first rank
    assert M.payload_bytes("activity tangents", 1, MLP, 16, 64, sizes=SIZES) == 0
    assert M.rank_payload_bytes("weight tangents", 3, MLP, 16, 64) == [24, 20, 20]
    # weight data-parallel: k + 1 numbers whatever |θ|
    assert M.payload_bytes("weight data", 2, MLP, 16, 64) == M.payload_bytes("weight data", 8, 10 * MLP, 16, 64) == 68


def test_rank_bytes_sum_to_the_collectives():
    # every rank's parts of the two Allgathers together are the k·B derivatives and the B·n estimate; of the
    # Alltoallv of the k·B·n tangents each rank sends the other ranks' rows of its own tangents
    for sizes in (SIZES, CNN_SIZES):
        n = sum(sizes)
        for P in (2, 3, 4, 5, 8, 16):
            for k, B in ((16, 64), (5, 7)):
                if P > k:
                    continue
                total = sum(M.rank_payload_bytes("activity tangents", P, MLP, k, B, sizes=sizes))
                kept = sum(4 * (hi - lo) * (e - f) * n for (lo, hi), (f, e) in
                           ((split_range(k, P, r), split_range(B, P, r)) for r in range(P)))
                assert total == sum(b for _, b in M.collectives("activity tangents", MLP, k, B, sizes=sizes)) - kept \
                    == 4 * (k * B + k * B * n + B * n) - kept


def test_collectives():
    assert M.collectives("activity tangents", MLP, 16, 64, sizes=SIZES) == [
        ("allgather", 4 * 16 * 64), ("alltoall", 4 * 16 * 64 * 2058), ("allgather", 4 * 64 * 2058)]
    assert M.collectives("activity tangents", MLP, 16, 64, sizes=[3, 4]) == [
        ("allgather", 4 * 16 * 64), ("alltoall", 4 * 16 * 64 * 7), ("allgather", 4 * 64 * 7)]
    assert M.collectives("weight tangents", MLP, 16, 64) == [("allgather", 64)]
    assert M.collectives("backprop data", MLP, 16, 64) == [("allreduce", 4 * (MLP + 1))]
    assert M.collectives("weight data", MLP, 16, 64, itemsize=8) == [("allreduce", 8 * 17)]
    # the estimate's Allgather is activation-sized whatever P; the derivatives' k-sized
    want = M.allgather_time(4 * 16 * 64, 4, NET) + M.alltoall_time(4 * 16 * 64 * 2058, 4, NET) \
        + M.allgather_time(4 * 64 * 2058, 4, NET)
    assert M.comm_time("activity tangents", 4, MLP, 16, 64, NET, sizes=SIZES) == pytest.approx(want)
    assert M.comm_time("activity tangents", 4, MLP, 16, 64, NET, sizes=SIZES) > \
        M.comm_time("activity tangents", 4, MLP, 16, 64, NET, sizes=[3, 4])


def test_feasibility_and_work_fraction():
    assert M.feasible("activity tangents", 16, 16, 64) and not M.feasible("activity tangents", 32, 16, 64)
    assert M.feasible("activity data", 64, 16, 64) and not M.feasible("activity data", 128, 16, 64)
    assert M.feasible("backprop data", 64, 16, 64)
    assert M.work_fraction("weight tangents", 3, 16, 64) == 6 / 16
    assert M.work_fraction("weight data", 3, 16, 64) == 22 / 64
    with pytest.raises(ValueError):
        M.feasible("activity everything", 2, 16, 64)


def test_split_compute():
    perfect = M.split_compute(1.0, 0.5)
    assert (perfect.scaled, perfect.repeated) == (pytest.approx(1.0), pytest.approx(0.0))
    none = M.split_compute(1.0, 1.0)
    assert none.repeated == pytest.approx(1.0) and none.scaled == pytest.approx(0.0)
    half = M.split_compute(1.0, 0.75)
    assert half.repeated == pytest.approx(0.5) and half.total == pytest.approx(1.0)
    # time in collectives and the machine's slowdown are taken out before splitting
    assert M.split_compute(1.0, 0.85, comm2=0.1).repeated == pytest.approx(0.5)
    assert M.split_compute(1.0, 0.9, slowdown=1.2).repeated == pytest.approx(0.5)
    # uneven shares: f(2) = 17/32 with 33 rows... r = (C2 − f·T1) / (1 − f)
    assert M.split_compute(1.0, 0.6, fraction2=17 / 32).repeated == pytest.approx((0.6 - 17 / 32) / (15 / 32))
    # clamped: super-linear (r < 0) and slower on two ranks (r > T1)
    assert M.split_compute(1.0, 0.4).repeated == 0.0
    assert M.split_compute(1.0, 1.5).repeated == 1.0
    assert M.split_compute(1.0, 0.9, slowdown=0.5).repeated == pytest.approx(0.8)  # slowdown below 1 ignored
    with pytest.raises(ValueError):
        M.split_compute(0.0, 0.5)


def test_k_intercept():
    a, b = 0.004, 0.002
    assert M.k_intercept(a + 4 * b, 4, a + 16 * b, 16) == pytest.approx(a)
    with pytest.raises(ValueError):
        M.k_intercept(1.0, 4, 2.0, 4)


def test_step_time_and_grid():
    sp = M.Split(scaled=0.032, repeated=0.008)
    assert M.step_time("activity tangents", 1, sp, MLP, 16, 64, NET, sizes=SIZES) == pytest.approx(0.040)
    assert M.step_time("activity tangents", 32, sp, MLP, 16, 64, NET, sizes=SIZES) is None  # k < P
    t4 = M.step_time("activity tangents", 4, sp, MLP, 16, 64, NET, sizes=SIZES)
    assert t4 == pytest.approx(0.008 + 0.032 / 4 + M.allgather_time(4 * 16 * 64, 4, NET)
                               + M.alltoall_time(4 * 16 * 64 * 2058, 4, NET) + M.allgather_time(4 * 64 * 2058, 4, NET))
    # tangent-parallel: non-increasing while the tangents split, never below the repeated part
    ts = [M.step_time("activity tangents", P, sp, MLP, 16, 64, NET, sizes=SIZES) for P in (1, 2, 4, 8, 16)]
    assert all(b <= a for a, b in zip(ts, ts[1:])) and min(ts) > sp.repeated
    # data-parallel activity pays the |θ| Allreduce: on 10 Gb/s it cannot go below its bandwidth term
    dp = M.step_time("activity data", 64, M.Split(0.04, 0.0), MLP, 16, 64, NET)
    assert dp > 2 * 63 / 64 * 4 * (MLP + 1) / NET.beta
    grid = M.model_grid({"activity tangents": sp, "activity data": M.Split(0.04, 0.0)}, MLP, 16, 64, [NET],
                        sizes=SIZES)
    assert list(grid["test"]) == list(M.P_VALUES)
    assert grid["test"][64]["activity tangents"] is None and grid["test"][64]["activity data"] is not None


def test_comm_terms_and_breakeven():
    for s in M.STRATEGIES:
        lat, nb = M.comm_terms(s, 8, MLP, 16, 64, NET.alpha, sizes=SIZES)
        assert lat + nb / NET.beta == pytest.approx(M.comm_time(s, 8, MLP, 16, 64, NET, sizes=SIZES))
    # activity tangents: 3 latencies (two Allgathers, one Alltoallv) per extra rank
    assert M.comm_terms("activity tangents", 8, MLP, 16, 64, NET.alpha, sizes=SIZES)[0] == pytest.approx(3 * 7 * 5e-6)
    splits = {"activity tangents": M.Split(0.012, 0.0216), "activity data": M.Split(0.0264, 0.0072),
              "backprop data": M.Split(0.0034, 0.005)}
    kind, beta = M.breakeven("activity tangents", "activity data", 16, splits, MLP, 16, 64, NET.alpha, SIZES)
    assert kind == "below"
    # at β* the two modelled times agree, a bit below it the tangent split is faster, a bit above slower
    at = [M.step_time(s, 16, splits[s], MLP, 16, 64, M.Network("x", NET.alpha, beta), sizes=SIZES)
          for s in ("activity tangents", "activity data")]
    assert at[0] == pytest.approx(at[1])
    for f, faster in ((0.9, True), (1.1, False)):
        net = M.Network("x", NET.alpha, f * beta)
        t, d = (M.step_time(s, 16, splits[s], MLP, 16, 64, net, sizes=SIZES)
                for s in ("activity tangents", "activity data"))
        assert (t < d) == faster
    assert M.breakeven("activity tangents", "activity data", 32, splits, MLP, 16, 64, NET.alpha, SIZES) == \
        ("never", None)
    cheap = {"activity tangents": M.Split(0.001, 0.0), "activity data": M.Split(0.04, 0.0)}
    assert M.breakeven("activity tangents", "activity data", 2, cheap, MLP, 16, 64, NET.alpha, SIZES) == \
        ("always", None)
    assert M.breakeven("activity data", "activity tangents", 2, cheap, MLP, 16, 64, NET.alpha, SIZES) == \
        ("never", None)
    # the CNN's activations are large (n = 79,434): on 4 ranks each sends 3/16 of the k·B·n tangents (61 MB) and
    # its quarter of the 20.3 MB estimate, 3.8x the bytes term of backprop's |θ| ring Allreduce (13.3 MB, twice)
    _, nb = M.comm_terms("activity tangents", 4, 3_333_962, 16, 64, NET.alpha, sizes=CNN_SIZES)
    assert nb == pytest.approx(0.75 * 4 * 16 * 64 + 3 / 16 * 4 * 16 * 64 * 79434 + 0.75 * 4 * 64 * 79434)
    assert nb / M.comm_terms("backprop data", 4, 3_333_962, 16, 64, NET.alpha)[1] == pytest.approx(3.81, abs=1e-2)
    cnn = {"activity tangents": M.Split(1.3, 0.9), "backprop data": M.Split(0.286, 0.0)}
    kind, beta = M.breakeven("activity tangents", "backprop data", 4, cnn, 3_333_962, 16, 64, NET.alpha, CNN_SIZES)
    assert (kind, beta) == ("never", None)  # slower on compute and more bytes


def test_fastest_and_wins():
    grid = {1: {"a": 2.0, "b": 1.0}, 2: {"a": 1.0, "b": 1.5}, 4: {"a": None, "b": 1.2}, 8: {"a": None, "b": None}}
    assert [M.fastest(t) for t in grid.values()] == ["b", "a", "b", None]
    assert M.wins(grid, "a", ["b"]) == [2]
    assert M.wins(grid, "b", ["a"]) == [1, 4]  # an infeasible rival does not stop a win


# --------------------------------------------------------------------------------- bench/scaling.py

def test_configs():
    one = S.configs("mlp", 1, [4, 16])
    assert [c.mode for c in one] == ["serial"] * 5 + ["half"] * 5
    two = S.configs("mlp", 2, [1, 4])
    keys = [c.key for c in two]
    assert "mlp activity k=1 tangents" not in keys and "mlp activity k=4 tangents" in keys  # needs k >= P
    assert "mlp backprop independent" in keys and "mlp backprop data" in keys
    assert S.Config("mlp", "forward", "weight", 4, "data").strategy == "weight data"
    assert S.Config("mlp", "backprop", None, None, "data").strategy in M.STRATEGIES


def _record(key, times, bytes_, comm=(0.1,)):
    return {"key": key, "model": "mlp", "times_ms": list(times), "comm_ms": list(comm) * len(times),
            "bytes_per_rank": bytes_, "bytes_constant": True, "warmup_ms": 9.0, "n_params": 10, "batch": 4}


def test_pool_merges_rounds():
    runs = [{"records": [_record("x", [5.0, 4.0], [8, 4])]}, {"records": [_record("x", [3.0, 6.0], [4, 8])]}]
    p = S.pool(runs)["x"]
    assert (p["min_ms"], p["median_ms"], p["n"]) == (3.0, 4.5, 4)
    assert p["bytes_per_rank"] == [8, 8] and p["comm_ms"] == pytest.approx(0.1)


def _row(mode, speedup, gradient="activity", k=16, bytes_p2=0, model="mlp"):
    return {"model": model, "gradient": gradient, "k": k, "mode": mode, "speedup": speedup,
            "speedup_median": speedup, "bytes_p2": bytes_p2, "backprop_bytes": 4 * MLP}


def test_evaluate_targets():
    rows = [_row("tangents", 1.72), _row("data", 1.79), _row("data", 1.0, "weight", 4, 20),
            _row("data", 1.0, "weight", 16, 68, "cnn")]
    got = {t["target"]: t["status"] for t in S.evaluate_targets(rows)}
    assert list(got.values()) == ["met", "missed", "met"]
    rows[2]["bytes_p2"] = 4 * (MLP + 1)  # a |θ|-sized exchange fails the O(k) target
    assert S.evaluate_targets(rows)[2]["status"] == "missed"
    assert S.evaluate_targets([])[0]["status"] == "not measured"


def test_bad_arguments():
    for argv in (["--models", "vit"], ["--k", "0"], ["--repeats", "1"], ["--k", "a"]):
        with pytest.raises(SystemExit):
            S.parse_args(argv)
    q = S.parse_args(["--quick"])
    assert (q.models, q.rounds, q.repeats) == (["mlp"], 2, 3)


def _mpi_ready() -> str | None:
    if shutil.which("mpiexec") is None:
        return "mpiexec not found"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed"
    return None


@pytest.mark.skipif(_mpi_ready() is not None, reason=f"needs MPI: {_mpi_ready()}")
def test_end_to_end_tiny(tmp_path):
    out = tmp_path / "scaling"
    args = ["--quick", "--size", "tiny", "--models", "mlp,cnn", "--k", "4,16", "--rounds", "1", "--repeats", "2",
            "--out", str(out)]
    r = subprocess.run([sys.executable, os.path.join(BENCH, "scaling.py"), *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "scaling.json").read_text())
    text = (tmp_path / "scaling.md").read_text()
    rows = res["rows"]
    assert len(rows) == 2 * (2 * 2 * 2 + 1)  # models × (perturb × k × split + backprop)
    for row in rows:  # what the ranks really sent (dualtensor's counter, every rank) is what the model charges
        assert row["bytes_p2"] == row["bytes_model"] > 0 and row["bytes_constant"], row
        assert row["bytes_ranks_p2"] == row["bytes_model_ranks"], row
        assert row["p1_ms"] > 0 and row["p2_ms"] > 0 and math.isclose(row["efficiency"], row["speedup"] / 2)
    n = {m: next(r["n_params"] for r in rows if r["model"] == m) for m in ("mlp", "cnn")}
    assert n["mlp"] != n["cnn"]
    for row in rows:
        if row["mode"] == "data" and row["gradient"] != "weight":
            assert row["bytes_p2"] == 4 * (n[row["model"]] + 1)
    # activity tangents, written out: rank r sends (k_r·B + k_r·(B − B_r)·n + B_r·n)·4, k_r and B_r its shares
    from dualtensor.distributed import split_range
    sizes = {mr["inputs"]["model"]: mr["inputs"]["activation_sizes"] for mr in res["model"]}
    assert sizes["mlp"] == [16, 16, 10] and sum(sizes["cnn"]) > 0
    for row in rows:
        if (row["gradient"], row["mode"]) == ("activity", "tangents"):
            k, n = row["k"], sum(sizes[row["model"]])
            want = [4 * (len(range(*split_range(k, 2, r))) * (64 + (64 - len(range(*split_range(64, 2, r)))) * n)
                         + len(range(*split_range(64, 2, r))) * n) for r in range(2)]
            assert row["bytes_ranks_p2"] == want, row
            assert row["bytes_ranks_p2"] == [4 * (k // 2 * 64 + k // 2 * 32 * n + 32 * n)] * 2, row
    assert [t["status"] for t in res["targets"]][2] == "met"  # weight data-parallel: 4(k+1) bytes
    assert all(t["status"] in ("met", "missed") for t in res["targets"])
    for mr in res["model"]:
        grid = mr["results"]["grid"]["10 Gb/s"]
        assert grid["32"]["activity tangents"] is None and grid["64"]["activity data"] is not None
        bp = mr["inputs"]["splits"]["backprop data"]
        assert grid["1"]["backprop data"] == pytest.approx(bp["scaled_s"] + bp["repeated_s"])
    assert {j["P"] for j in res["meta"]["jobs"]} == {1, 2}
    assert res["meta"]["machine"]["rank_cpus"] and "MPI" in res["meta"]["machine"]["mpi_library"].upper()
    assert all(r["data_ceiling"] > 0 for r in rows if r["mode"] == "data")
    assert all(r["data_ceiling"] is None for r in rows if r["mode"] == "tangents")
    pairs = {"activity tangents vs activity data", "activity tangents vs backprop data",
             "weight tangents vs weight data", "weight tangents vs backprop data"}
    assert set(res["model"][0]["results"]["breakeven"]) == pairs
    assert "## Targets" in text and "| mlp | activity | 16 | tangents |" in text and "n/a" in text
    assert "\\|θ\\|" in text  # escaped inside Markdown tables
    # the report again from the JSON's records, with a 10x latency: same rows, slower modelled steps
    again = S.main(["--from-json", str(tmp_path / "scaling.json"), "--alpha-us", "50",
                    "--out", str(tmp_path / "re")])
    assert [r["p2_ms"] for r in again["rows"]] == [r["p2_ms"] for r in rows]
    assert again["meta"]["date"] == res["meta"]["date"] and again["meta"]["alpha_us"] == 50
    slow = again["model"][0]["results"]["grid"]["10 Gb/s"][64]["backprop data"]
    assert slow > res["model"][0]["results"]["grid"]["10 Gb/s"]["64"]["backprop data"]
    assert (tmp_path / "re.md").read_text().count("\n") > 20


def test_model_results_where_tangents_win():
    # a step whose tangent split repeats little: on 10 Gb/s the |θ| Allreduce makes it beat both data splits
    splits = {"activity tangents": M.Split(0.032, 0.002), "activity data": M.Split(0.036, 0.0),
              "backprop data": M.Split(0.006, 0.003)}
    inp = {"model": "m", "k": 16, "batch": 64, "n_params": MLP, "splits": splits, "activation_sizes": SIZES}
    res = S.model_results(inp, M.networks(5.0))
    beats = res["summary"]["10 Gb/s"]["beats"]["activity tangents"]
    assert beats == {"activity data": [2, 4, 8, 16], "backprop data": [4, 8, 16]}  # P = 1 is never a win
    assert res["summary"]["10 Gb/s"]["fastest"][1] == "backprop data"
    # beyond k tangents: activity data (1.1 + 11.6 ms) ahead of backprop (3.2 + 11.6 ms)
    assert res["summary"]["10 Gb/s"]["fastest"][32] == "activity data"
    line = S.conclusions(inp, res)[0]
    assert line.startswith("- m, 10 Gb/s: fastest P = 1–2: backprop data; P = 4–16: activity tangents; "
                           "P = 32–64: activity data.")
    assert S._by_range({1: "a", 2: None}) == "P = 1: a; P = 2: none feasible"

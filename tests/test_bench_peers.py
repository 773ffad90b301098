"""Tests of bench/peers.py: the PyTorch and JAX copies of the four models compute dualtensor's losses,
directional derivatives, estimates and gradients for the same tangents (float64, tiny models), the
agreement check fails on tampered tangents, and the command line works with peers missing.
The peers are optional (the ``peers`` extra): their tests skip when torch / jax is not installed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import peers as P  # noqa: E402
import runtime_cases as cases  # noqa: E402


if "jax" not in sys.modules and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + P.XLA_ONE_THREAD).strip()  # before jax loads

# torch's forward-AD decompositions load through torch.jit.script, deprecated in torch 2.13 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TOL64 = 1e-10  # float64: the frameworks agree to ~1e-13 on these models


def _case(model, aggregate="projection", dtype=np.float64, batch=3):
    return cases.make_case(model, cases.MODEL_DATA[model], batch, xp=np, dtype=dtype, size="tiny",
                           aggregate=aggregate)


def _peer(name, case):
    pytest.importorskip(name)
    mod = P.import_peer(name)
    return (mod.TorchPeer if name == "torch" else mod.JaxPeer)(case, 0)


def _assert_agree(case, peer, wls, tol=TOL64):
    for i, w in enumerate(wls):
        recs = P.check_workload(case, [peer], w, [3, i], tol)
        if w.kind == "draw":  # each framework has its own generator: timed, not compared
            assert recs == []
            continue
        assert [r["framework"] for r in recs] == (["dualtensor"] if w.perturb else []) + [peer.name]
        for r in recs:
            assert r["ok"], r
        want = {"inference": {"loss"}, "backprop": {"loss", "grads"}}.get(w.kind, {"d", "grads"})
        if w.perturb == "activity":
            want = want | {"est"}
        assert set(recs[-1]["diffs"]) == want, recs[-1]


@pytest.mark.parametrize("model", P.MODELS)
def test_torch_agrees_with_dualtensor(model, global_state):
    case = _case(model)
    _assert_agree(case, _peer("torch", case), P.workloads([2], ["projection"]))
    if model == "mlp":
        case = _case(model, "mean")
        _assert_agree(case, _peer("torch", case), P.workloads([1, 3], ["mean"])[2:])


@pytest.mark.parametrize("model", P.MODELS)
def test_jax_agrees_with_dualtensor(model, global_state):
    """Every step on the MLP; on the others (XLA compiles each step, seconds for ResNet18) the
    forward, backprop and the one-pass activity step (jvp, vmap and the block-local VJPs)."""
    case = _case(model)
    peer = _peer("jax", case)
    wls = P.workloads([2], ["projection"])
    if model != "mlp":
        wls = [w for w in wls if w.kind == "backprop" or (w.kind == "fg" and w.perturb == "activity")]
    _assert_agree(case, peer, wls)
    if model == "mlp":
        case = _case(model, "mean")
        _assert_agree(case, _peer("jax", case), [P.Workload("fg", "weight", 3, "mean")])


class FakePeer:
    """dualtensor itself posing as a peer, with the tangents passed through ``tamper``."""

    name, variants = "fake", {k: k for k in P.KINDS}
    to_numpy = staticmethod(np.asarray)

    def __init__(self, case, tamper=lambda V: V):
        self.case, self.tamper = case, tamper

    def run(self, kind, perturb=None, k=1, agg="mean", V=None):
        return P.reference(self.case, P.Workload(kind, perturb, k, agg), None if V is None else self.tamper(V))


def _scale_first(V):
    V = V.copy()
    V[0] *= 1.01  # one tangent 1% longer: d moves by 1%, a projection estimate not at all
    return V


@pytest.mark.parametrize("agg", ["mean", "projection"])
def test_check_catches_tampered_tangents(agg, global_state):
    case = _case("mlp", agg, dtype=np.float32, batch=4)
    for w in (P.Workload("fg", "weight", 3, agg), P.Workload("loop", "activity", 3, agg)):
        ok = P.check_workload(case, [FakePeer(case)], w, 5, 1e-4)
        assert all(r["ok"] for r in ok) and ok[-1]["max"] == 0.0
        bad = P.check_workload(case, [FakePeer(case, _scale_first)], w, 5, 1e-4)[-1]
        assert not bad["ok"] and bad["diffs"]["d"] > 1e-3, bad
        if agg == "mean":
            assert bad["diffs"]["grads"] > 1e-3


def test_check_catches_a_wrong_torch_model(global_state):
    case = _case("cnn")
    peer = _peer("torch", case)
    bad = P.check_workload(case, [FakePeer(case, _scale_first), peer], P.Workload("fg", "activity", 2, "projection"),
                           1, TOL64)
    assert [r["ok"] for r in bad] == [True, False, True]
    peer.params["body.0.0.bias"][0] += 1e-3  # the torch copy's first conv bias, off by 1e-3
    bad = P.check_workload(case, [peer], P.Workload("inference"), 1, TOL64)[-1]
    assert not bad["ok"], bad


def _hide_peers(monkeypatch):
    for name in ("torch", "jax"):
        monkeypatch.setitem(sys.modules, name, None)  # `import torch` now raises ImportError
        monkeypatch.delitem(sys.modules, f"peers_{name}", raising=False)


def test_cli_without_peers(monkeypatch, capsys, tmp_path, global_state):
    _hide_peers(monkeypatch)
    out = tmp_path / "peers.json"
    res = P.main(["--models", "mlp", "--size", "tiny", "--batch", "4", "--ks", "2", "--aggregates", "mean",
                  "--perturb", "activity", "--repeats", "2", "--warmup", "0", "--threads", "default", "--settle", "0",
                  "--json", str(out)])
    text = capsys.readouterr().out
    assert "peers: torch not installed — skipped" in text and "peers: jax not installed — skipped" in text
    assert "| workload | dualtensor | dualtensor / fastest peer |" in text
    assert "| mlp activity loop k=2 mean |" in text
    saved = json.loads(out.read_text())
    assert saved["runs"][0]["model"] == "mlp" and res["runs"][0]["rows"]
    rows = saved["runs"][0]["rows"]
    assert [r["workload"] for r in rows] == ["mlp inference", "mlp backprop", "mlp activity draw k=2",
                                             "mlp activity k=2 mean", "mlp activity loop k=2 mean"]
    for r in rows:
        assert set(r["times"]) == {"dualtensor"} and "ratio_min" not in r
        assert r["times"]["dualtensor"]["n"] == 2 and 0 < r["times"]["dualtensor"]["min"] <= r["times"][
            "dualtensor"]["median"]
    assert saved["meta"]["environment"]["threads"]["requested"] == "default"


def test_cli_fails_loudly_on_disagreement(monkeypatch, capsys, tmp_path, global_state):
    _hide_peers(monkeypatch)
    stub = type(sys)("peers_stub")
    stub.VARIANTS, stub.set_threads, stub.versions = FakePeer.variants, lambda n: {}, lambda: {}
    monkeypatch.setattr(P, "import_peer", lambda name: stub)
    monkeypatch.setattr(P, "build_peers", lambda mods, case, seed: [FakePeer(case, _scale_first)])
    with pytest.raises(SystemExit) as e:
        P.main(["--models", "mlp", "--size", "tiny", "--batch", "4", "--ks", "2", "--aggregates", "mean",
                "--perturb", "weight", "--threads", "default", "--json", str(tmp_path / "p.json")])
    assert "agreement check FAILED" in str(e.value.code)
    text = capsys.readouterr().out
    assert " FAIL |" in text and "times in ms" not in text  # stopped before timing
    assert not json.loads((tmp_path / "p.json").read_text())["runs"][0]["rows"]


def test_cli_subprocess_pinned(tmp_path):
    """The script as run: one thread, pinned; the peers that are installed agree and are timed."""
    out = tmp_path / "p.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, os.path.join(BENCH, "peers.py"), "--models", "mlp,vit", "--size", "tiny",
                        "--batch", "4", "--ks", "2", "--aggregates", "projection", "--perturb", "weight",
                        "--repeats", "2", "--threads", "1", "--settle", "0.01", "--json", str(out)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    env_ = res["meta"]["environment"]
    th = env_["threads"]
    assert th["requested"] == "1" and (th.get("affinity") is None or len(th["affinity"]) == 1)
    assert env_["cpu_model"] and "blas" in env_
    have = [n for n in ("torch", "jax") if n in env_["peers"]]
    if "torch" in have:
        assert th["torch"]["intra_op"] == 1
    if "jax" in have:
        assert P.XLA_ONE_THREAD in th["jax"]["xla_flags"]
    for run in res["runs"]:
        assert all(c["ok"] for c in run["checks"])
        assert len(run["rows"]) == 5  # inference, backprop, draw, one-pass step, loop
        for row in run["rows"]:
            assert set(row["times"]) == {"dualtensor", *have}
            if have:
                assert row["fastest_min"] in have and row["ratio_min"] > 0
    for line in ("| mlp weight k=2 projection |", "| vit weight loop k=2 projection |"):
        assert line in r.stdout


def test_arguments():
    a = P.parse_args([])
    assert a.models == list(P.MODELS) and a.ks == [1, 4, 16] and a.aggregates == ["mean", "projection"]
    assert a.threads == "1" and a.json.endswith(os.path.join("results", "peers-1.json"))
    assert P.parse_args(["--threads", "default"]).json.endswith("peers-default.json")
    for bad in (["--models", "lenet"], ["--aggregates", "sum"], ["--threads", "0"], ["--ks", "a"], ["--peers", "tf"]):
        with pytest.raises(SystemExit):
            P.parse_args(bad)
    labels = [w.label("m") for w in P.workloads([4], ["mean"], ["activity"])]
    assert labels == ["m inference", "m backprop", "m activity draw k=4", "m activity k=4 mean",
                      "m activity loop k=4 mean"]
    assert P.tolerance("mlp", np.float32) == 1e-4 and P.tolerance("vit", np.float32) == 1e-2
    # the MLP's 1.86 M-term Gram entries: float32 room 3.2e-4 (torch's one-running-sum GEMM: 1.6e-4 off)
    assert P.gram_tolerance(1_863_690, np.float32) == pytest.approx(3.25e-4, rel=0.01)
    assert P.gram_tolerance(1_863_690, np.float64) < P.tolerance("mlp", np.float64)


def test_summary_table_takes_the_fastest_peer(tmp_path):
    """bench/peers_summary.py (README's tables): dualtensor's min against the fastest peer's min."""
    import peers_summary

    def row(kind, perturb=None, k=None, agg=None, **mins):
        return {"model": "mlp", "kind": kind, "perturb": perturb, "k": k, "aggregate": agg,
                "times": {n: {"min": v} for n, v in mins.items()}}

    runs = [{"rows": [row("fg", "activity", 4, "projection", dualtensor=10.0, torch=20.0, jax=12.5),
                      row("fg", "activity", 4, "mean", dualtensor=1.0, torch=1.0),
                      row("loop", "activity", 4, "projection", dualtensor=1.0, torch=1.0),
                      row("inference", dualtensor=3.0, torch=2.0, jax=2.5)]}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"runs": runs}))
    lines = peers_summary.table([path]).splitlines()
    assert lines[2:] == ["| mlp inference | 3 | 2 (torch) | 1.50 |", "| mlp activity k = 4 | 10 | 12.5 (jax) | 0.80 |"]
    # a second file with another k of the same model: its rows join the model's, ordered by step and k
    more = tmp_path / "q.json"
    # (the first file's inference row wins)
    later = [row("inference", dualtensor=9.0, torch=1.0),
             row("fg", "activity", 16, "projection", dualtensor=30.0, jax=40.0),
             row("fg", "weight", 16, "projection", dualtensor=5.0, torch=4.0)]
    more.write_text(json.dumps({"runs": [{"rows": later}]}))
    lines = peers_summary.table([path, more]).splitlines()
    assert lines[2:] == ["| mlp inference | 3 | 2 (torch) | 1.50 |", "| mlp weight k = 16 | 5 | 4 (torch) | 1.25 |",
                         "| mlp activity k = 4 | 10 | 12.5 (jax) | 0.80 |",
                         "| mlp activity k = 16 | 30 | 40 (jax) | 0.75 |"]
    # two column groups (one thread, two threads): a step only one set has gets dashes in the other
    lines = peers_summary.table([path], [more]).splitlines()
    assert lines[2:] == ["| mlp inference | 3 | 2 (torch) | 1.50 | 9 | 1 (torch) | 9.00 |",
                         "| mlp weight k = 16 | – | – | – | 5 | 4 (torch) | 1.25 |",
                         "| mlp activity k = 4 | 10 | 12.5 (jax) | 0.80 | – | – | – |",
                         "| mlp activity k = 16 | – | – | – | 30 | 40 (jax) | 0.75 |"]

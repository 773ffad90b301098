"""dualtensor against PyTorch and JAX on the same workloads, in one process, A/B interleaved.

    python bench/peers.py [--models mlp,cnn,resnet18,vit] [--ks 1,4,16] [--aggregates mean,projection]
                          [--perturb weight,activity] [--batch N] [--size full|tiny] [--peers torch,jax]
                          [--repeats R] [--warmup W] [--settle S] [--threads N|default]
                          [--dtype float32|float64]
                          [--check-only] [--json PATH]

Models (bench/runtime_cases.py): the MLP 784-1024-1024-10 and Baydin et al.'s CNN on MNIST-shaped
batches (default batch 64), ResNet18 and the ViT on CIFAR-shaped batches (default batch 32); standard
normal inputs, uniform labels; ``--size tiny`` shrinks the models. Workloads per model:

* ``inference``: forward pass + mean cross-entropy;
* ``backprop``: the gradient of that loss;
* ``weight k=K AGG``: one forward-gradient step with K global weight tangents in one pass (tangent
  draw, directional derivatives d (K,), aggregation ``mean`` or ``projection``);
* ``activity k=K AGG``: tangents injected at every block output (K per sample, all in one pass), the
  per-sample loss's directional derivatives d (K, B), the per-sample estimate of the gradient w.r.t.
  the concatenated block outputs, then each block's weight gradient from a block-local VJP of its
  slice (dualtensor.fgrad.activity, keep="tape");
* ``... loop k=K``: the same step as K single-tangent forward passes (the primal recomputed K times);
* ``weight draw k=K``, ``activity draw k=K``: the tangent draw alone, part of every step above; each
  framework uses its own generator (dualtensor: Box-Muller on NumPy's raw bits; ``torch.randn``;
  ``jax.random.normal``, threefry by default, slow on CPU), so these rows separate RNG from AD cost.

Framework variants: dualtensor's steps are runtime_cases.Case's; PyTorch (bench/peers_torch.py:
``torch.nn`` copies of the models, ``functional_call``) runs a ``no_grad`` forward, autograd,
``torch.func.vmap(jvp)`` and a loop of single ``jvp`` calls; JAX (bench/peers_jax.py: the forward in
``jax.numpy``/``lax``) runs ``jit(loss)``, ``jit(grad)``, ``jit(vmap(jvp))`` and a jitted single
``jvp`` called K times. For activity perturbation the peers take d from ``vmap(jvp)`` of the
per-sample loss w.r.t. additive block-output perturbations and the block-local VJPs from autograd
over a forward pass with detached block inputs (torch: one more primal pass, as dualtensor's
keep="recompute") or per-block ``jax.vjp`` inside the same jit. Every framework draws its own
normal tangents inside the timed step. Parameter updates are left out everywhere (dualtensor steps
run with ``update=False``): the gradient computation is timed.

Before timing, each peer is checked against dualtensor on the same tangents (drawn as dualtensor's
timed step draws them): losses, directional derivatives, estimates and gradients must agree to a
relative L2 difference (for weight perturbation's d and estimate relative to at least the typical
size of d, see direction_scale) within the tolerance (float32: 1e-4 for the MLP, 1e-2 for the deeper nets;
float64: 1e-9; weight projection at least 2·sqrt(|θ|)·eps, see gram_tolerance); otherwise the run
stops with exit status 1. Timing: one untimed call per step
(JAX compiles there), ``--warmup`` rounds, then ``--repeats`` rounds, each running every step of the
model once in a rotated order (dualtensor, torch, jax interleaved), with ``--settle`` seconds of sleep
after every step (rotation keeps each step's predecessor, and XLA finishes freeing a large step's
buffers in its own threads after returning: without the pause dualtensor's CNN inference measured
105-120 ms right after JAX's weight k=16 step against 77-83 ms elsewhere); min and median per cell, the
table's ratio is dualtensor's min over the fastest peer's min (medians in the JSON too).
``--threads N`` (default 1) pins the process to N CPUs and sets BLAS (threadpoolctl), torch and, for
N = 1, XLA (XLA_FLAGS, set before JAX loads) threads; ``default`` leaves all of them alone. The pinning
is what holds JAX: jax 0.10's XLA still runs a multi-threaded pool under those flags (a 2048² matmul
took 2x its wall time in CPU time unpinned, 1x pinned). Missing peers are
skipped with a line saying so. JSON: ``--json PATH`` (default bench/results/peers-<threads>.json).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
BENCH = os.path.dirname(os.path.abspath(__file__))


def _thread_arg(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
    return "1"


def pin_cpus(n: int) -> list[int] | None:
    """Pin every thread of the process to the first ``n`` of its allowed CPUs (Linux); None elsewhere."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:n]
    tids = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just ended
            pass
    return sorted(os.sched_getaffinity(0))


def thread_env(threads: str) -> None:
    """Environment for ``--threads`` that must precede the libraries' loading (BLAS, XLA)."""
    if threads == "default":
        return
    n = int(threads)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(v, str(n))
    if n == 1 and "jax" not in sys.modules and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()


if __name__ == "__main__":
    _t = _thread_arg(sys.argv[1:])
    if _t.isdigit():
        thread_env(_t)
        pin_cpus(int(_t))

import numpy as np  # noqa: E402

sys.path.insert(0, BENCH)
import _timing as T  # noqa: E402
from runtime_cases import MODEL_DATA, Case, make_case  # noqa: E402

from dualtensor.allocator import heap_arrays  # noqa: E402
from dualtensor.fgrad.activity import activity_gradient, activity_tangents  # noqa: E402
from dualtensor.fgrad.samplers import get_sampler  # noqa: E402
from dualtensor.fgrad.weight import forward_gradient  # noqa: E402
from dualtensor.nn import functional as F  # noqa: E402

MODELS = ("mlp", "cnn", "resnet18", "vit")
DEFAULT_BATCH = {"mlp": 64, "cnn": 64, "resnet18": 32, "vit": 32}
PEERS = ("torch", "jax")
AGGREGATES = ("mean", "projection")
KINDS = {"inference": "base", "backprop": "bp", "fg": "fg", "loop": "loop"}  # -> Case.step kinds


@dataclass(frozen=True)
class Workload:
    """One row: ``kind`` in inference, backprop, fg (one k-tangent pass), loop (k single passes), draw
    (the tangent draw alone, timed not checked: each framework has its own generator)."""

    kind: str
    perturb: str | None = None
    k: int | None = None
    agg: str | None = None

    def label(self, model: str) -> str:
        if self.kind in ("inference", "backprop"):
            return f"{model} {self.kind}"
        if self.kind == "draw":
            return f"{model} {self.perturb} draw k={self.k}"
        loop = " loop" if self.kind == "loop" else ""
        return f"{model} {self.perturb}{loop} k={self.k} {self.agg}"


def workloads(ks: list[int], aggregates: list[str], perturbs: tuple = ("weight", "activity")) -> list[Workload]:
    """Inference, backprop, then per perturbation the tangent draws and, per aggregator and k, the
    one-pass step and its loop."""
    out = [Workload("inference"), Workload("backprop")]
    for p in perturbs:
        out += [Workload("draw", p, k) for k in ks]
        for agg in aggregates:
            for k in ks:
                out += [Workload("fg", p, k, agg), Workload("loop", p, k, agg)]
    return out


def tolerance(model: str, dtype: Any) -> float:
    """Relative L2 tolerance of the agreement check. float32 (eps 6e-8): the frameworks sum in other
    orders (GEMM blocking, conv algorithms, pairwise vs. blocked reductions), each layer adds a
    relative error of order sqrt(fan-in)·eps ≈ 1e-6 and deep nets compound it. Measured on the
    full-size CNN with identical float32 inputs: dualtensor's float32 gradients are within 2e-6 of
    float64 (dualtensor and torch agree to 1e-15 in float64), torch's float32 gradients of conv1-conv3
    1.7e-3 to 2.0e-3 away from its own float64 ones, and JAX's differ from dualtensor's as much as torch's:
    up to 2.6e-3 (activity k = 4). 1e-4 for the two-layer MLP and 1e-2 for the deeper nets leave
    that margin while a wrong tangent, layer or scale (relative errors of order 1) still fails.
    float64 (eps 1e-16): 1e-9."""
    if np.dtype(dtype) == np.float64:
        return 1e-9
    return 1e-4 if model == "mlp" else 1e-2


def gram_tolerance(n: int, dtype: Any) -> float:
    """The least tolerance of a weight-projection cell: each entry of its k×k Gram sums n products in V's
    dtype, and a GEMM that runs such a long dot product as one running sum carries an error of order
    sqrt(n)·eps into the estimate (torch's float32 (4, n) @ (n, 4) on an AMD EPYC: 1.6e-4 relative, NumPy's
    blocked one 2e-6, for the MLP's n = 1.86 M). 2·sqrt(n)·eps: 3.2e-4 there."""
    return 2 * math.sqrt(n) * float(np.finfo(dtype).eps)


# ------------------------------------------------------------------------------------- dualtensor

def _per_sample_loss(logits: Any, y: Any) -> Any:
    return F.cross_entropy(logits, y, reduction="none")


def draw_tangents(case: Case, w: Workload, seed: Any) -> np.ndarray:
    """The tangents dualtensor's timed step draws from ``seed``: weight (k, n), activity (k, B, n)."""
    gen = case.generator(seed)
    if w.perturb == "weight":
        return get_sampler("normal")(w.k, (case.n_params,), gen, dtype=case.dtype, xp=case.xp)
    parts = activity_tangents("normal", w.k, case.sizes, gen, dtype=case.dtype, xp=case.xp, batch=case.batch)
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))


def reference(case: Case, w: Workload, V: Any = None) -> dict:
    """dualtensor's results for workload ``w`` with the given tangents (NumPy arrays)."""
    if w.kind == "inference":
        return {"loss": np.asarray(F.cross_entropy(case.model(case.x), case.y))}
    if w.kind == "backprop":
        loss, grads = case.vg(case.current())
        return {"loss": np.asarray(loss), "grads": grads}
    if w.perturb == "weight":
        _, grads, d = forward_gradient(case.objective, case.current(), w.k, sampler=V, aggregate=case.agg)
        return {"d": d, "grads": grads}
    res = activity_gradient(case.model, _per_sample_loss, case.x, case.y, tangents=V, aggregate=case.agg,
                            keep=case.keep, blocks=case.blocks, return_estimate=True)
    return {"d": res.d, "est": res.estimate, "grads": res.grads}


def dt_step(case: Case, w: Workload) -> Callable[..., Any]:
    """dualtensor's timed step for ``w`` (Case.step, no parameter update; the draw as the steps draw)."""
    if w.kind == "draw":
        return lambda rng=None: draw_tangents(case, w, rng) if w.perturb == "weight" else activity_tangents(
            "normal", w.k, case.sizes, case.generator(rng), dtype=case.dtype, xp=case.xp, batch=case.batch)
    fn = case.step(KINDS[w.kind], w.perturb, "normal", w.k)
    return lambda rng=None: fn(rng=rng, update=False)


# -------------------------------------------------------------------------------------- agreement

def relative(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float64 (arrays, or dicts of arrays over their common keys)."""
    if isinstance(b, dict):
        a = np.concatenate([np.ravel(a[n]) for n in b]) if b else np.zeros(0)
        b = np.concatenate([np.ravel(v) for v in b.values()]) if b else np.zeros(0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num, den = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    return num / den if den > 0 else num


def direction_scale(case: Case, V: Any, d: Any) -> float:
    """max(1, rms / ‖d‖) with rms = ‖∇L‖·‖V‖_F/√n, the root-mean-square of ‖d‖ over random directions.
    Weight perturbation's d and estimate are relative to ‖d‖ · this: a tangent nearly orthogonal to
    the gradient (likely at k = 1) has a tiny d whose relative rounding error means nothing."""
    grads = case.vg(case.current())[1]
    gnorm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    rms = gnorm * float(np.linalg.norm(V)) / math.sqrt(V.shape[-1])
    dn = float(np.linalg.norm(np.asarray(d, np.float64)))
    return max(1.0, rms / dn) if dn > 0 else 1.0


def compare(ref: dict, got: dict, to_numpy: Callable = np.asarray, scale: float = 1.0) -> dict:
    """Relative differences of each result of ``got`` (a peer's) against dualtensor's ``ref``; those of
    d and of the estimates (linear in d) divided by ``scale`` (:func:`direction_scale`)."""
    out = {}
    for key, r in ref.items():
        if key not in got:
            continue
        g = got[key]
        g = {n: to_numpy(v) for n, v in g.items()} if isinstance(g, dict) else to_numpy(g)
        if isinstance(g, dict) and set(g) != set(r):
            raise ValueError(f"{key}: parameter names differ: {sorted(set(g) ^ set(r))}")
        out[key] = relative(g, r) / (1.0 if key == "loss" else scale)
    return out


def check_workload(case: Case, peers: list, w: Workload, seed: Any, tol: float) -> list[dict]:
    """Run ``w`` on dualtensor and every peer with the same tangents; one record per framework with the
    relative differences (loss, d, est, grads), their max and whether it is within ``tol``. The
    dualtensor record compares its timed step (which draws from ``seed`` itself) with the reference."""
    if w.kind == "draw":
        return []
    V = draw_tangents(case, w, seed) if w.perturb else None
    ref = reference(case, w, V)
    scale = direction_scale(case, V, ref["d"]) if w.perturb == "weight" else 1.0
    records = []
    if w.kind in ("fg", "loop"):
        records.append(("dualtensor", "timed step", compare(ref, {"grads": dt_step(case, w)(rng=seed)}, scale=scale)))
    for p in peers:
        got = p.run(w.kind, w.perturb, w.k, w.agg, V)
        records.append((p.name, p.variants[w.kind], compare(ref, got, p.to_numpy, scale)))
    out = []
    for fw, variant, diffs in records:
        worst = max(diffs.values()) if diffs else float("nan")
        out.append({"workload": w.label(case.name), "framework": fw, "variant": variant, "diffs": diffs,
                    "scale": scale, "max": worst, "tol": tol, "ok": bool(worst <= tol)})
    return out


# ----------------------------------------------------------------------------------------- timing

def time_steps(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int, min_time: float,
               settle: float = 0.0) -> dict:
    """One untimed call per step (JIT compilation), then T.interleaved; summaries (ms) with raw times."""
    for fn in steps.values():
        fn()
    times = T.interleaved(steps, repeats, warmup, min_time=min_time, settle=settle)
    out = {}
    for name, ts in times.items():
        out[name] = T.summarize(ts)
        out[name]["raw_ms"] = [1e3 * t for t in ts]
    return out


def time_model(cases: dict, peers: list, wls: list[Workload], repeats: int, warmup: int, min_time: float,
               settle: float = 0.0) -> dict:
    """Every (workload, framework) step of one model, interleaved; {label: {framework: summary}}."""
    steps, where = {}, {}
    for w in wls:
        case = cases[w.agg or next(iter(cases))]
        label = w.label(case.name)
        steps[f"{label}|dualtensor"] = (lambda fn=dt_step(case, w): fn())
        where[f"{label}|dualtensor"] = (label, "dualtensor")
        for p in peers:
            steps[f"{label}|{p.name}"] = p.timed(w.kind, w.perturb, w.k, w.agg)
            where[f"{label}|{p.name}"] = (label, p.name)
    summaries = time_steps(steps, repeats, warmup, min_time, settle)
    out: dict = {}
    for key, s in summaries.items():
        label, fw = where[key]
        out.setdefault(label, {})[fw] = s
    return out


# ------------------------------------------------------------------------------------------ peers

def import_peer(name: str) -> Any:
    """bench/peers_<name>.py, or None (with a line saying so) when its framework is not installed."""
    try:
        return importlib.import_module(f"peers_{name}")
    except ImportError as e:
        if e.name == name:
            print(f"peers: {name} not installed — skipped", flush=True)
        elif e.name is None or str(e.name).startswith(name + "."):  # too old: a module or name it lacks
            print(f"peers: {name} unusable ({e}) — skipped", flush=True)
        else:
            raise  # a missing module of ours, not the framework
        return None


def build_peers(mods: dict, case: Case, seed: int) -> list:
    return [getattr(m, "TorchPeer" if name == "torch" else "JaxPeer")(case, seed) for name, m in mods.items()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def configure_threads(threads: str, mods: dict) -> dict:
    """Apply ``--threads`` (pinning, BLAS, torch) once the peers are loaded; returns what is in effect."""
    n = None if threads == "default" else int(threads)
    info: dict = {"requested": threads}
    if n is not None:
        info["affinity"] = pin_cpus(n)
    elif hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    info["blas_set_by"] = T.limit_threads(n)
    info["blas"] = T.blas_threads(T.blas_info())
    for name, m in mods.items():
        info[name] = m.set_threads(n)
    return info


# ----------------------------------------------------------------------------------------- output

def _ms(v: float) -> str:
    if not math.isfinite(v):
        return "–"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def timing_rows(results: list[dict], frameworks: list[str]) -> list[list[str]]:
    out = []
    for r in results:
        t = r["times"]
        cells = [f"{_ms(t[f]['min'])} / {_ms(t[f]['median'])}" if f in t else "–" for f in frameworks]
        ratio = f"{r['ratio_min']:.2f} ({r['fastest_min']})" if r.get("fastest_min") else "–"
        out.append([r["workload"], *cells, ratio])
    return out


def check_rows(records: list[dict], frameworks: list[str]) -> list[list[str]]:
    by: dict = {}
    for c in records:
        by.setdefault(c["workload"], {})[c["framework"]] = c
    out = []
    for label, fws in by.items():
        cells = []
        for f in ["dualtensor", *frameworks]:
            c = fws.get(f)
            cells.append("–" if c is None else f"{c['max']:.1e}" + ("" if c["ok"] else " FAIL"))
        out.append([label, *cells])
    return out


def summarize_row(model: str, case: Case, w: Workload, times: dict) -> dict:
    """The JSON row of one workload: times per framework and dualtensor over the fastest peer."""
    row = {"model": model, "workload": w.label(model), "kind": w.kind, "perturb": w.perturb, "k": w.k,
           "aggregate": w.agg, "batch": case.batch, "n_params": case.n_params, "times": times}
    peers = {f: s for f, s in times.items() if f != "dualtensor"}
    for stat in ("min", "median"):
        if peers:
            best = min(peers, key=lambda f: peers[f][stat])
            row[f"fastest_{stat}"] = best
            row[f"ratio_{stat}"] = times["dualtensor"][stat] / peers[best][stat]
    return row


# -------------------------------------------------------------------------------------------- CLI

def _list(s: str, allowed: tuple | None, what: str, p: argparse.ArgumentParser) -> list[str]:
    vals = [v.strip() for v in s.split(",") if v.strip()]
    for v in vals:
        if allowed is not None and v not in allowed:
            p.error(f"--{what}: unknown value {v!r} (choose from {', '.join(allowed)})")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--ks", default="1,4,16", help="numbers of tangents (default 1,4,16)")
    p.add_argument("--aggregates", default="mean,projection", help="mean,projection (default both)")
    p.add_argument("--perturb", default="weight,activity", help="weight,activity (default both)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for every model (default mlp 64, cnn 64, resnet18 32, vit 32)")
    p.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: shrunken models (smoke tests)")
    p.add_argument("--peers", default=",".join(PEERS), help="torch,jax (default both; missing ones are skipped)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call (default 1)")
    p.add_argument("--min-time", type=float, default=0.02, metavar="S",
                   help="steps faster than S seconds are repeated back to back per sample (default 0.02)")
    p.add_argument("--settle", type=float, default=0.1, metavar="S",
                   help="seconds of sleep after every timed step (default 0.1): a framework's background work\n"
                        "after it returns (XLA freeing a large step's buffers) is not charged to the next step")
    p.add_argument("--threads", default="1", help="N: pin to N CPUs, N BLAS/torch/XLA threads (default 1);\n"
                                                  "default: the libraries' defaults, no pinning")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--allocator", default="heap", choices=("heap", "system"),
                   help="heap (default, as bench/runtime.py): glibc keeps freed large blocks for every framework "
                        "in the process (dualtensor.allocator.heap_arrays); system: glibc's defaults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None, help="agreement tolerance (default: see tolerance())")
    p.add_argument("--check-only", action="store_true", help="the agreement checks only, no timing")
    p.add_argument("--json", default=None, metavar="PATH", help="default bench/results/peers-<threads>.json")
    a = p.parse_args(argv)
    a.models = _list(a.models, MODELS, "models", p)
    a.aggregates = _list(a.aggregates, AGGREGATES, "aggregates", p)
    a.perturb = _list(a.perturb, ("weight", "activity"), "perturb", p)
    a.peers = _list(a.peers, PEERS, "peers", p)
    try:
        a.ks = [int(k) for k in _list(a.ks, None, "ks", p)]
    except ValueError:
        p.error("--ks: comma list of positive integers")
    if a.threads != "default" and not (a.threads.isdigit() and int(a.threads) >= 1):
        p.error("--threads: a positive integer or 'default'")
    if any(k < 1 for k in a.ks) or a.repeats < 1 or a.warmup < 0 or (a.batch is not None and a.batch < 2) \
            or a.settle < 0:
        p.error("--ks, --repeats need positive values, --warmup >= 0, --settle >= 0, --batch >= 2")
    a.json = a.json or os.path.join(BENCH, "results", f"peers-{a.threads}.json")
    return a


def _make_cases(name: str, batch: int, a: argparse.Namespace) -> dict:
    """One Case per aggregator, sharing the model and the batch."""
    ds, dtype = MODEL_DATA[name], np.dtype(a.dtype)
    first = make_case(name, ds, batch, xp=np, dtype=dtype, size=a.size, aggregate=a.aggregates[0], seed=a.seed)
    cases = {a.aggregates[0]: first}
    for agg in a.aggregates[1:]:
        cases[agg] = make_case(name, ds, batch, xp=np, dtype=dtype, size=a.size, aggregate=agg, seed=a.seed,
                               model=first.model)
    return cases


def run_model(name: str, a: argparse.Namespace, mods: dict, log: Callable = print) -> dict:
    """Checks (and unless --check-only, timings) of one model; prints its tables."""
    batch = a.batch or DEFAULT_BATCH[name]
    cases = _make_cases(name, batch, a)
    case = next(iter(cases.values()))
    peers = build_peers(mods, case, a.seed)
    wls = workloads(a.ks, a.aggregates, a.perturb)
    tol = a.tol if a.tol is not None else tolerance(name, a.dtype)
    log(f"## {name} ({case.n_params:,} parameters, {case.dataset}-shaped batch {batch} {tuple(case.x.shape[1:])}, "
        f"{a.dtype})\n")
    gram_tol = tol if a.tol is not None else max(tol, gram_tolerance(case.n_params, a.dtype))
    checks = []
    for i, w in enumerate(wls):
        wtol = gram_tol if (w.perturb, w.agg) == ("weight", "projection") else tol
        checks += check_workload(cases[w.agg or next(iter(cases))], peers, w, [a.seed, 101, i], wtol)
    fws = [p.name for p in peers]
    log(f"agreement with dualtensor for the same tangents: max relative L2 difference over loss, d, estimate "
        f"and gradients (tolerance {tol:g}, weight projection {gram_tol:.2g}: see gram_tolerance); "
        f"'dualtensor timed step': the timed step, drawing its own "
        f"tangents from the same seed, against dualtensor given the tangents the peers get\n")
    log(table(check_rows(checks, fws), ["workload", "dualtensor timed step", *fws]) + "\n")
    out = {"model": name, "batch": batch, "n_params": case.n_params, "tolerance": tol, "checks": checks, "rows": []}
    if not all(c["ok"] for c in checks) or a.check_only:
        return out
    times = time_model(cases, peers, wls, a.repeats, a.warmup, a.min_time, a.settle)
    out["rows"] = [summarize_row(name, cases[w.agg or next(iter(cases))], w, times[w.label(name)]) for w in wls]
    log(f"times in ms, min / median of {a.repeats} interleaved repeats; last column: dualtensor min / fastest "
        f"peer min\n")
    header = ["workload", "dualtensor", *fws, "dualtensor / fastest peer"]
    log(table(timing_rows(out["rows"], ["dualtensor", *fws]), header) + "\n")
    return out


def environment(mods: dict, threads: dict) -> dict:
    env = T.environment(np)
    env["cpu_model"] = cpu_model()
    env["threads"] = threads
    env["peers"] = {name: m.versions() for name, m in mods.items()}
    import dualtensor

    env["dualtensor"] = dualtensor.__version__
    return env


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    thread_env(a.threads)  # no-op for what is already loaded (the command line did it before NumPy)
    mods = {name: m for name in a.peers if (m := import_peer(name)) is not None}
    threads = configure_threads(a.threads, mods)
    env = environment(mods, threads)
    env["allocator"] = "heap" if a.allocator == "heap" and heap_arrays() else "system"
    legend = "; ".join(f"{n}: " + ", ".join(f"{k} = {v}" for k, v in m.VARIANTS.items()) for n, m in mods.items())
    peer_threads = "".join(f"; {n} " + ", ".join(f"{k} {v}" for k, v in threads[n].items()) for n in mods)
    print(f"# bench/peers.py: dualtensor vs {', '.join(mods) or 'no peers'}\n\ncpu {env['cpu_model']}, "
          f"threads {a.threads} (CPUs {threads.get('affinity')}; BLAS {threads['blas']}{peer_threads}), {a.dtype}, "
          f"normal tangents, no parameter updates, allocator {env['allocator']}, {a.settle:g} s settle after "
          f"every step, dualtensor convolutions: {'oneDNN ' + env['onednn'] if env['onednn'] else 'GEMMs'}\n\n"
          f"variants: {legend or 'dualtensor only'}\n", flush=True)
    t0 = time.perf_counter()
    runs, failed = [], []
    for name in a.models:
        r = run_model(name, a, mods)
        runs.append(r)
        failed += [c for c in r["checks"] if not c["ok"]]
        if failed:
            break
    result = {"meta": {"environment": env, "args": vars(a), "seconds": time.perf_counter() - t0,
                       "units": "ms; times[framework] has min, median, quartiles, max and raw_ms",
                       "ratio": "dualtensor / fastest peer, of mins (ratio_min) and of medians (ratio_median)",
                       "checks": "relative L2 differences from dualtensor for the same tangents",
                       "updates": "no parameter updates in any framework: the gradient computation is timed"},
              "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"json: {a.json}\ntotal {result['meta']['seconds']:.1f} s")
    if failed:
        worst = max(failed, key=lambda c: c["max"])
        raise SystemExit(f"peers: agreement check FAILED for {len(failed)} cell(s), worst {worst['workload']} "
                         f"{worst['framework']}: {worst['diffs']} > {worst['tol']:g}")
    return result


if __name__ == "__main__":
    main()

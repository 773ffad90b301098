"""MPI scaling of the training step: 1 and 2 ranks measured, up to 64 ranks modelled (α–β).

    python bench/scaling.py [--models mlp,cnn] [--k 4,16] [--repeats N] [--rounds R] [--budget S]
                            [--quick] [--size full|tiny] [--alpha-us A] [--max-wait S]
                            [--out bench/results/scaling] [--from-json PATH]

Steps (dualtensor.train.steps.make_step, as training runs them, the optimizer update left out) of the
MLP 784-1024-1024-10 and Baydin et al.'s CNN (bench/runtime_cases.py), MNIST-shaped batch 64, float32,
projection aggregation, normal keyed tangents (a new step key every step, as in training):

* forward gradient, activity or weight perturbation, k in ``--k``, split over the ranks by tangents
  (``parallel="tangents"``: k/P tangents per rank, an Allgather of the directional derivatives;
  activity (projection) then splits the samples: each rank receives the other ranks' tangents for its
  B/P samples (one Alltoallv, the default ``other_tangents="exchange"``), aggregates those samples, and
  an Allgather of the (B, n) estimate, n the per-sample
  activation size, gives every rank the whole of it for the block-local VJPs) or by
  data (``parallel="data"``: B/P rows per rank; activity: a |θ| gradient Allreduce; weight: the ranks
  share the keyed global tangents and Allreduce k + 1 numbers);
* backprop data-parallel (the |θ| gradient Allreduce), the baseline of the bytes column;
* on 2 ranks also the backprop step without communication on every rank at once ("independent"):
  how much slower independent work runs when two ranks share the machine;
* on 1 rank also every step on the first B/2 rows ("half"): T(B) / T(B/2) is the most a 2-rank data
  split can gain with free communication (small GEMMs run below their full-batch rate).

On one rank every split is the same step, timed once. The driver launches worker jobs
``mpiexec -n P python bench/scaling.py --worker ...`` (P = 1 through mpiexec too) with one BLAS/OpenMP
thread per rank (environment and threadpoolctl), each rank pinned to its own CPU, glibc heap arrays
(dualtensor.allocator.heap_arrays); it alternates P = 1 and P = 2 over ``--rounds`` rounds (order
flipped every round) and pools the rounds: min and median per step. In a worker every configuration
is warmed up once, then timed ``--repeats`` times (fewer when that would exceed ``--budget`` seconds
per model, at least 2), the configurations interleaved (bench/_timing.interleaved) with a barrier
before and after every step: a step's time runs from the common start to the last rank's end (the
max over ranks). Per step and rank it records ``comm.bytes_sent`` (payload handed to collectives) and
the seconds spent in MPI calls (dualtensor's MPICommunicator over a timed COMM_WORLD); the report's
"in collectives" is each step's min over the ranks (the last rank to arrive does not wait), median
over the steps. Speed-up = 1-rank min / 2-rank min of the same run; efficiency = speed-up / 2.
This 2-core machine is shared: before each job the driver waits (up to ``--max-wait`` s) until other
processes keep less than 0.2 CPUs busy, and it records the CPU share other processes took while each
job ran (/proc/stat less the jobs' own rusage).

The model (bench/scaling_model.py) splits each measured 1-rank step into the part the ranks share
out and the part each repeats (from the 2-rank measurement), adds α–β collective costs for a 10 Gb/s
and a 100 Gb/s network (latency ``--alpha-us``, default 5 µs) and tabulates P = 1 … 64 at k = 16.
Output: ``OUT.md`` (tables, targets, machine) and ``OUT.json``; ``--from-json OUT.json`` writes the
report again from a run's records (e.g. with another ``--alpha-us``). ``--quick``: the MLP, 2 rounds
of 3 steps (~15 s here; the default run ~4-5 minutes); ``--size tiny`` shrinks the models (tests).
Needs mpi4py and mpiexec.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import _timing as T  # noqa: E402  (no NumPy import at module level)


def _pin_rank() -> None:
    """Before NumPy loads: one BLAS/OpenMP thread, and this rank on its own CPU (local rank mod CPUs)."""
    T.set_thread_env(1)
    local = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK",
                                                                 os.environ.get("PMI_RANK", "0"))))
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[local % len(cpus)]})


if __name__ == "__main__" and "--worker" in sys.argv:
    _pin_rank()

import numpy as np  # noqa: E402

import scaling_model as M  # noqa: E402
from peers import _ms, cpu_model  # noqa: E402
from runtime_cases import MODEL_DATA, make_case  # noqa: E402
from runtime_report import markdown, write_json  # noqa: E402

MODELS = ("mlp", "cnn")
BATCH = 64
PERTURBS = ("activity", "weight")
QUICK = {"models": "mlp", "rounds": 2, "repeats": 3, "budget": 3.0, "max_wait": 0.0}
DEFAULTS = {"models": "mlp,cnn", "rounds": 3, "repeats": 10, "budget": 30.0, "max_wait": 120.0}
TARGETS = {"tangents": 1.7, "data": 1.8}  # MLP activity k = 16, 2-rank speed-up


# ------------------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    """One timed step: ``grad`` forward/backprop, ``perturb`` activity/weight (None for backprop),
    ``mode`` serial (1 rank), half (1 rank, the first B/2 rows), tangents, data, or independent
    (backprop without communication on every rank)."""

    model: str
    grad: str
    perturb: str | None
    k: int | None
    mode: str

    @property
    def key(self) -> str:
        what = "backprop" if self.grad == "backprop" else f"{self.perturb} k={self.k}"
        return f"{self.model} {what} {self.mode}"

    @property
    def strategy(self) -> str:
        """The name of its strategy in scaling_model (``"activity tangents"``, ``"backprop data"``, ...)."""
        return f"{self.perturb or 'backprop'} {self.mode}"


def configs(model: str, P: int, ks: list[int]) -> list[Config]:
    """The steps a P-rank worker times for ``model``: on one rank each gradient once (every split is
    the same step) on the whole and on half the batch, on more the tangent split (where k >= P), the
    data split and the independent step."""
    if P == 1:
        grads = [("backprop", None, None)] + [("forward", p, k) for p in PERTURBS for k in ks]
        return [Config(model, g, p, k, mode) for mode in ("serial", "half") for g, p, k in grads]
    out = [Config(model, "backprop", None, None, "independent"), Config(model, "backprop", None, None, "data")]
    for p in PERTURBS:
        for k in ks:
            out += [Config(model, "forward", p, k, m) for m in ("tangents", "data") if m == "data" or k >= P]
    return out


# ------------------------------------------------------------------------------------------- worker

class TimedMPI:
    """An mpi4py communicator whose calls add their wall time to ``seconds`` (all but the barrier and
    the bookkeeping ones: Get_*, Split*, Free, Abort). dualtensor's MPICommunicator takes it as its
    ``comm``, so every collective a step makes is timed, whichever dualtensor method makes it."""

    UNTIMED = ("Barrier", "Abort", "Free", "Split", "Split_type", "Dup")

    def __init__(self, comm: Any):
        self._comm, self.seconds = comm, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._comm, name)
        if not callable(attr) or name in self.UNTIMED or name.startswith(("Get_", "Is_")):
            return attr

        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed


def timed_world() -> tuple[Any, TimedMPI]:
    """The job's dualtensor communicator over a timed COMM_WORLD, and the timer."""
    from mpi4py import MPI

    from dualtensor.distributed import MPICommunicator

    timer = TimedMPI(MPI.COMM_WORLD)
    return MPICommunicator(timer), timer


def make_config_step(case: Any, c: Config, comm: Any) -> Callable[[], Any]:
    """The training step of ``c`` on the case's batch (make_step with keyed tangents, a new key each call)."""
    from dualtensor.train import TrainConfig
    from dualtensor.train.build import RandomStreams
    from dualtensor.train.steps import make_step

    parallel = c.mode if c.mode in ("tangents", "data") else "none"
    # make_step reads the gradient options only; ``model`` stays the default (the CNN is not a CLI model)
    config = TrainConfig(grad=c.grad, perturb=c.perturb or "activity", k=c.k or 1, parallel=parallel,
                         ranks=comm.size, dtype="float32")
    streams = RandomStreams(config, case.model)
    streams.start_epoch(1, 0)
    step = make_step(case.model, config, streams, comm if parallel != "none" else None)
    rows = slice(0, case.batch // 2) if c.mode == "half" else slice(None)
    x, y = case.x[rows], case.y[rows]
    return lambda: step(x, y)


def _counted(fn: Callable, comm: Any, timer: TimedMPI, log: list) -> Callable[[], None]:
    """``fn`` appending (bytes sent, seconds in MPI calls) of each call to ``log``."""
    def run() -> None:
        b0, s0 = comm.bytes_sent, timer.seconds
        fn()
        log.append((comm.bytes_sent - b0, timer.seconds - s0))
    return run


def _repeats(comm: Any, warm: dict, repeats: int, budget: float) -> int:
    """Timed rounds: at most ``repeats``, fewer when a round (judged from the warm-up) would make the
    model's timing exceed ``budget`` seconds; at least 2. Rank 0 decides for all."""
    per_round = sum(ts[0] for ts in warm.values())
    n = max(2, min(repeats, int(budget / max(per_round, 1e-9))))
    return int(comm.bcast(np.array([n], dtype=np.int64))[0])


def time_model(case: Any, cs: list[Config], comm: Any, timer: TimedMPI, repeats: int, budget: float) -> list[dict]:
    """Warm up and time every configuration of one model, interleaved; one record per configuration."""
    from dualtensor.train import TrainConfig
    from dualtensor.train.build import model_blocks

    # the per-block activation sizes of the blocks make_step perturbs (the model needs n = their sum)
    sizes = [int(n) for n in case.model.activation_sizes(tuple(case.x.shape[1:]),
                                                         model_blocks(case.model, TrainConfig()))]
    logs: dict[str, list] = {c.key: [] for c in cs}
    steps = {c.key: _counted(make_config_step(case, c, comm), comm, timer, logs[c.key]) for c in cs}
    warm = T.interleaved(steps, 1, 0, sync=comm.barrier)
    n = _repeats(comm, warm, repeats, budget)
    times = T.interleaved(steps, n, 0, sync=comm.barrier)
    out = []
    for c in cs:
        mine = np.array(logs[c.key][1:], dtype=np.float64).reshape(-1, 2)  # warm-up dropped
        every = comm.allgather(mine).reshape(comm.size, -1, 2)  # (rank, step, [bytes, seconds])
        out.append({**asdict(c), "key": c.key, "strategy": c.strategy, "P": comm.size, "n_params": case.n_params,
                    "batch": case.batch, "activation_sizes": sizes, "warmup_ms": 1e3 * warm[c.key][0],
                    "times_ms": [1e3 * t for t in times[c.key]],
                    "bytes_per_rank": [int(b) for b in every[:, :, 0].max(axis=1)],
                    "bytes_constant": bool((every[:, :, 0] == every[:, :1, 0]).all()),
                    "comm_ms": [1e3 * float(s) for s in every[:, :, 1].min(axis=0)]})  # min over ranks
    return out


def worker_env(comm: Any) -> dict:
    """What rank 0 records of the job: BLAS threads, CPU affinity of every rank, MPI library."""
    from mpi4py import MPI
    import mpi4py

    aff = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    every = comm.allgather(np.array([aff[0] if len(aff) == 1 else -1], dtype=np.int64))
    return {"ranks": comm.size, "blas": T.blas_threads(T.blas_info()), "rank_cpus": [int(c) for c in every],
            "mpi_library": " ".join(MPI.Get_library_version().split("\n")[0].split()), "mpi4py": mpi4py.__version__,
            "mpi_standard": "%d.%d" % MPI.Get_version()}


def worker(a: argparse.Namespace) -> None:
    """One mpiexec job: every configuration of every model on this job's ranks; rank 0 writes JSON."""
    from dualtensor import distributed
    from dualtensor.allocator import heap_arrays

    T.limit_threads(1)
    heap = heap_arrays()
    comm, timer = timed_world()
    with distributed.abort_on_error(comm):
        records = []
        for m in a.models:
            case = make_case(m, MODEL_DATA[m], BATCH, xp=np, dtype=np.float32, size=a.size, seed=a.seed)
            records += time_model(case, configs(m, comm.size, a.k), comm, timer, a.repeats, a.budget)
        env = {**worker_env(comm), "heap_arrays": heap}
        if comm.is_root:
            with open(a.json_out, "w") as f:
                json.dump({"P": comm.size, "env": env, "records": records}, f)


# ------------------------------------------------------------------------------------------- driver

def _cpu_busy() -> float | None:
    """Busy CPU seconds of the whole machine so far (/proc/stat; None where there is none)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_wait: float, busy_cpus: float = 0.2, sample: float = 0.5) -> tuple[float, float | None]:
    """Wait (at most ``max_wait`` s) until other processes keep fewer than ``busy_cpus`` CPUs busy over a
    ``sample``-second window; returns (seconds waited, busy CPUs in the last window or None)."""
    t0, busy = time.perf_counter(), None
    while max_wait > 0:
        b0 = _cpu_busy()
        time.sleep(sample)
        b1 = _cpu_busy()
        if b0 is None or b1 is None:
            break
        busy = (b1 - b0) / sample
        if busy < busy_cpus or time.perf_counter() - t0 >= max_wait:
            break
    return time.perf_counter() - t0, busy


def run_worker(P: int, a: argparse.Namespace, mpiexec: str) -> dict:
    """Launch one P-rank worker job and return its JSON, with the wall time and the CPU share other
    processes took meanwhile (busy CPU seconds not ours / (wall · CPUs))."""
    fd, path = tempfile.mkstemp(prefix=f"scaling-P{P}-", suffix=".json")
    os.close(fd)
    env = {**os.environ, **{v: "1" for v in T.THREAD_ENV}}
    cmd = [mpiexec, "-n", str(P), sys.executable, os.path.abspath(__file__), "--worker", "--json-out", path,
           "--models", ",".join(a.models), "--k", ",".join(map(str, a.k)), "--repeats", str(a.repeats),
           "--budget", str(a.budget), "--size", a.size, "--seed", str(a.seed)]
    busy0, ours0, t0 = _cpu_busy(), _children_cpu(), time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"scaling: worker P={P} failed (exit {r.returncode}):\n"
                             f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
        with open(path) as f:
            out = json.load(f)
    finally:
        os.unlink(path)
    busy1 = _cpu_busy()
    if busy0 is not None and busy1 is not None:
        other = (busy1 - busy0) - (_children_cpu() - ours0)
        out["other_cpu_share"] = max(0.0, other) / (wall * (os.cpu_count() or 1))
    out["wall_s"] = wall
    return out


def pool(runs: list[dict]) -> dict[str, dict]:
    """Every configuration's records of several runs merged: times pooled, min and median, bytes per rank
    (max over the runs), median collective time per step (each step's min over ranks)."""
    out: dict[str, dict] = {}
    for run in runs:
        for r in run["records"]:
            per_run = ("times_ms", "comm_ms", "warmup_ms", "bytes_per_rank")
            p = out.setdefault(r["key"], {k: v for k, v in r.items() if k not in per_run})
            p.setdefault("times_ms", []).extend(r["times_ms"])
            p.setdefault("comm_all_ms", []).extend(r["comm_ms"])
            p["bytes_per_rank"] = [max(a, b) for a, b in zip(p.get("bytes_per_rank", r["bytes_per_rank"]),
                                                             r["bytes_per_rank"])]
            p["bytes_constant"] = p["bytes_constant"] and r["bytes_constant"]
    for p in out.values():
        p["min_ms"], p["median_ms"] = min(p["times_ms"]), statistics.median(p["times_ms"])
        p["comm_ms"] = statistics.median(p["comm_all_ms"])
        p["n"] = len(p["times_ms"])
    return out


def measure(a: argparse.Namespace, mpiexec: str, log: Callable = print) -> tuple[dict, dict, list[dict]]:
    """``--rounds`` rounds of a 1-rank and a 2-rank worker job, their order flipped every round; the
    pooled records of P = 1 and P = 2 and the per-job summaries."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    jobs = []
    for rnd in range(a.rounds):
        for P in ((1, 2) if rnd % 2 == 0 else (2, 1)):
            waited, busy = wait_quiet(a.max_wait)
            run = run_worker(P, a, mpiexec)
            runs[P].append(run)
            jobs.append({"round": rnd + 1, "P": P, "wall_s": run["wall_s"], "waited_s": waited,
                         "busy_cpus_before": busy, "other_cpu_share": run.get("other_cpu_share"), "env": run["env"]})
            log(f"round {rnd + 1}/{a.rounds}, P = {P}: {run['wall_s']:.1f} s, other processes "
                f"{100 * run.get('other_cpu_share', float('nan')):.0f}% of the CPUs", flush=True)
    return pool(runs[1]), pool(runs[2]), jobs


# ------------------------------------------------------------------------------------------ results

def _serial_key(model: str, grad: str, perturb: str | None, k: int | None, mode: str = "serial") -> str:
    return Config(model, grad, perturb, k, mode).key


def scaling_rows(one: dict, two: dict, models: list[str], ks: list[int]) -> list[dict]:
    """One row per (model, gradient, k, split): 1- and 2-rank min and median ms, speed-ups of the mins
    and of the medians, efficiency, bytes per step on 2 ranks (the largest rank's, and every rank's,
    measured and modelled), backprop's |θ|·4 bytes."""
    rows = []
    for m in models:
        cases = [("forward", p, k, mode) for p in PERTURBS for k in ks for mode in ("tangents", "data")]
        for grad, p, k, mode in cases + [("backprop", None, None, "data")]:
            r2 = two.get(Config(m, grad, p, k, mode).key)
            r1, half = one.get(_serial_key(m, grad, p, k)), one.get(_serial_key(m, grad, p, k, "half"))
            if r1 is None or r2 is None:
                continue
            ceiling = r1["min_ms"] / half["min_ms"] if half and mode == "data" else None
            speedup = r1["min_ms"] / r2["min_ms"]
            rows.append({"model": m, "gradient": p or "backprop", "k": k, "mode": mode, "strategy": r2["strategy"],
                         "n_params": r1["n_params"], "p1_ms": r1["min_ms"], "p2_ms": r2["min_ms"],
                         "p1_median_ms": r1["median_ms"], "p2_median_ms": r2["median_ms"], "speedup": speedup,
                         "speedup_median": r1["median_ms"] / r2["median_ms"], "efficiency": speedup / 2,
                         "bytes_p2": max(r2["bytes_per_rank"]), "bytes_constant": r2["bytes_constant"],
                         "bytes_ranks_p2": r2["bytes_per_rank"],
                         "bytes_model": M.payload_bytes(r2["strategy"], 2, r1["n_params"], k or 1, r1["batch"],
                                                        sizes=r1.get("activation_sizes")),
                         "bytes_model_ranks": M.rank_payload_bytes(r2["strategy"], 2, r1["n_params"], k or 1,
                                                                   r1["batch"], sizes=r1.get("activation_sizes")),
                         "backprop_bytes": 4 * r1["n_params"], "comm_p2_ms": r2["comm_ms"],
                         "data_ceiling": ceiling, "n_p1": r1["n"], "n_p2": r2["n"]})
    return rows


def slowdown(one: dict, two: dict, model: str) -> float | None:
    """2-rank / 1-rank time of the backprop step without communication (independent work), mins."""
    r1, r2 = one.get(_serial_key(model, "backprop", None, None)), two.get(Config(model, "backprop", None, None,
                                                                                 "independent").key)
    return r2["min_ms"] / r1["min_ms"] if r1 and r2 else None


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets on the measured rows: MLP activity k = 16 speed-ups, weight data-parallel bytes."""
    out = []
    for mode, goal in TARGETS.items():
        r = next((r for r in rows if (r["model"], r["gradient"], r["k"], r["mode"]) == ("mlp", "activity", 16, mode)),
                 None)
        got = None if r is None else f"{r['speedup']:.2f}x (medians {r['speedup_median']:.2f}x)"
        out.append({"target": f"MLP activity k=16, {mode}-parallel 2-rank speed-up", "goal": f">= {goal}",
                    "measured": got or "not measured",
                    "status": "not measured" if r is None else "met" if r["speedup"] >= goal else "missed"})
    wd = [r for r in rows if r["gradient"] == "weight" and r["mode"] == "data"]
    if wd:
        ok = all(r["bytes_p2"] == 4 * (r["k"] + 1) for r in wd)
        figs = "; ".join(f"{r['model']} k={r['k']}: {r['bytes_p2']:,} B vs backprop {r['backprop_bytes']:,} B"
                         for r in wd)
        out.append({"target": "weight data-parallel (shared tangents): bytes/step/rank O(k), independent of \\|θ\\|",
                    "goal": "4(k+1) B whatever \\|θ\\|", "measured": figs, "status": "met" if ok else "missed"})
    return out


def model_inputs(one: dict, two: dict, model: str, k: int, ks: list[int]) -> dict | None:
    """The α–β model's splits of ``model`` at ``k`` (every strategy measured on 1 and 2 ranks)."""
    sigma = slowdown(one, two, model)
    splits, detail = {}, []
    for s in M.STRATEGIES:
        grad_p, mode = s.split()
        grad, p, kk = ("backprop", None, None) if grad_p == "backprop" else ("forward", grad_p, k)
        r1, r2 = one.get(_serial_key(model, grad, p, kk)), two.get(Config(model, grad, p, kk, mode).key)
        if r1 is None or r2 is None:
            continue
        f2 = M.work_fraction(s, 2, k, r1["batch"])
        sp = M.split_compute(r1["min_ms"] / 1e3, r2["min_ms"] / 1e3, r2["comm_ms"] / 1e3, sigma or 1.0, f2)
        splits[s] = sp
        a = None
        if p and min(ks) != max(ks):
            lo, hi = one.get(_serial_key(model, grad, p, min(ks))), one.get(_serial_key(model, grad, p, max(ks)))
            a = M.k_intercept(lo["min_ms"], min(ks), hi["min_ms"], max(ks)) if lo and hi else None
        detail.append({"strategy": s, "t1_ms": r1["min_ms"], "t2_ms": r2["min_ms"], "comm2_ms": r2["comm_ms"],
                       "scaled_ms": 1e3 * sp.scaled, "repeated_ms": 1e3 * sp.repeated,
                       "repeated_share": sp.repeated / sp.total, "k_intercept_ms": a})
    if not splits:
        return None
    any1 = next(iter(one.values()))
    n_params = next(r["n_params"] for r in one.values() if r["model"] == model)
    sizes = next((r.get("activation_sizes") for r in one.values() if r["model"] == model), None)
    return {"model": model, "k": k, "batch": any1["batch"], "n_params": n_params, "slowdown": sigma,
            "activation_sizes": sizes, "splits": splits, "detail": detail}


def model_results(inp: dict, nets: tuple) -> dict:
    """The modelled grid; per network the fastest strategy at each P and, for each tangent split, the P >= 2
    at which it beats each data-parallel strategy."""
    sizes = inp.get("activation_sizes")
    grid = M.model_grid(inp["splits"], inp["n_params"], inp["k"], inp["batch"], nets, sizes=sizes)
    strategies = list(inp["splits"])
    data = [s for s in strategies if s.endswith("data")]
    summary = {}
    for net, g in grid.items():
        multi = {P: t for P, t in g.items() if P >= 2}
        summary[net] = {"fastest": {P: M.fastest(t) for P, t in g.items()},
                        "beats": {s: {r: M.wins(multi, s, [r]) for r in data}
                                  for s in strategies if s.endswith("tangents")}}
    alpha = nets[0].alpha
    pairs = [(s, r) for s in strategies if s.endswith("tangents")
             for r in (s.replace("tangents", "data"), "backprop data") if r in inp["splits"]]
    breakeven = {f"{s} vs {r}": {P: M.breakeven(s, r, P, inp["splits"], inp["n_params"], inp["k"], inp["batch"],
                                                alpha, sizes) for P in M.P_VALUES if P >= 2}
                 for s, r in pairs}
    return {"grid": grid, "summary": summary, "breakeven": breakeven, "alpha": alpha}


# ----------------------------------------------------------------------------------------- markdown

def _bytes(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _ps(ps: list[int]) -> str:
    return ", ".join(map(str, ps)) if ps else "none"


def scaling_table(rows: list[dict]) -> str:
    view = [{"model": r["model"], "gradient": r["gradient"], "k": "–" if r["k"] is None else str(r["k"]),
             "mode": r["mode"], "p1": f"{_ms(r['p1_ms'])} / {_ms(r['p1_median_ms'])}",
             "p2": f"{_ms(r['p2_ms'])} / {_ms(r['p2_median_ms'])}", "speedup": f"{r['speedup']:.2f}",
             "eff": f"{r['efficiency']:.2f}", "ceil": "–" if r["data_ceiling"] is None else f"{r['data_ceiling']:.2f}",
             "bytes": _bytes(r["bytes_p2"]) + ("" if r["bytes_constant"] else " (varies)"),
             "bp": _bytes(r["backprop_bytes"]), "comm": _ms(r["comm_p2_ms"])} for r in rows]
    cols = [("model", "model"), ("gradient", "gradient"), ("k", "k"), ("mode", "split"), ("p1", "P=1 ms min / med"),
            ("p2", "P=2 ms min / med"), ("speedup", "speed-up"), ("eff", "efficiency"), ("ceil", "T(B)/T(B/2)"),
            ("bytes", "bytes/rank/step (P=2)"), ("bp", "backprop \\|θ\\|·4 B"), ("comm", "in collectives ms")]
    return markdown(view, cols)


def split_table(inp: dict) -> str:
    view = [{"s": d["strategy"], "t1": _ms(d["t1_ms"]), "t2": _ms(d["t2_ms"]), "c2": _ms(d["comm2_ms"]),
             "sc": _ms(d["scaled_ms"]), "rp": _ms(d["repeated_ms"]), "sh": f"{100 * d['repeated_share']:.0f}%",
             "a": "–" if d["k_intercept_ms"] is None else _ms(d["k_intercept_ms"])} for d in inp["detail"]]
    cols = [("s", "strategy"), ("t1", "T1 ms"), ("t2", "T2 ms"), ("c2", "in collectives ms"), ("sc", "scaled s ms"),
            ("rp", "repeated r ms"), ("sh", "r / T1"), ("a", "k-independent part ms")]
    return markdown(view, cols)


def grid_table(res: dict, net: str, strategies: list[str]) -> str:
    view = []
    for P, times in res["grid"][net].items():
        row = {"P": str(P), "best": res["summary"][net]["fastest"][P] or "–"}
        for s in strategies:
            t = times[s]
            row[s] = "n/a" if t is None else _ms(1e3 * t)
        view.append(row)
    return markdown(view, [("P", "P"), *[(s, s + " ms") for s in strategies], ("best", "fastest")])


def _by_range(best: dict[int, str | None]) -> str:
    """'P = 1–4: a; 8–64: b' from {P: strategy}, consecutive P with the same strategy merged."""
    groups: list[list] = []
    for P, s in best.items():
        if groups and groups[-1][2] == s:
            groups[-1][1] = P
        else:
            groups.append([P, P, s])
    return "; ".join(f"P = {a}" + (f"–{b}" if b != a else "") + f": {s or 'none feasible'}" for a, b, s in groups)


def _relation(rel: tuple[str, float | None], feasible: bool) -> str:
    kind, beta = rel
    if not feasible:
        return "n/a"
    return {"below": "< ", "above": "> "}.get(kind, kind) + ("" if beta is None else f"{8 * beta / 1e9:.3g} Gb/s")


def breakeven_table(inp: dict, res: dict) -> str:
    """Rows P, one column per (tangent split, rival): the bandwidths at which the tangent split is faster."""
    view = []
    for P in [P for P in M.P_VALUES if P >= 2]:
        row = {"P": str(P)}
        for pair, by_p in res["breakeven"].items():
            s, r = pair.split(" vs ")
            ok = M.feasible(s, P, inp["k"], inp["batch"]) and M.feasible(r, P, inp["k"], inp["batch"])
            row[pair] = _relation(tuple(by_p[P]), ok)
        view.append(row)
    return markdown(view, [("P", "P"), *[(p, p) for p in res["breakeven"]]])


def conclusions(inp: dict, res: dict) -> list[str]:
    """Per network: the fastest strategy by P, and where each tangent split beats each data-parallel one."""
    lines = []
    for net, summ in res["summary"].items():
        beats = "; ".join(f"{s} beats " + ", ".join(f"{r} at P = {_ps(ps)}" for r, ps in rivals.items())
                          for s, rivals in summ["beats"].items())
        lines.append(f"- {inp['model']}, {net}: fastest {_by_range(summ['fastest'])}. {beats}.")
    return lines


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    env = meta["machine"]
    out = ["# MPI scaling (bench/scaling.py)", "",
           f"Measured {meta['date']} with `{meta['command']}`: {env['cpu_count']} CPUs ({env['cpu_model']}), "
           f"{env['blas_per_rank']} per rank, ranks pinned to CPUs {env['rank_cpus']}, Python {env['python']}, "
           f"NumPy {env['numpy']}, mpi4py {env['mpi4py']}, {env['mpi_library']}. Batch {BATCH}, float32, "
           f"projection aggregation, normal keyed tangents; {meta['rounds']} rounds of P = 1 and P = 2 jobs "
           f"(order alternating), {meta['steps']}. Other processes took at most "
           f"{100 * meta['max_other_cpu_share']:.0f}% of the CPUs during a job.", "",
           "## Measured: 1 and 2 ranks", "",
           "Step = make_step's gradient step (no optimizer update); time = barrier to the last rank's end; "
           "speed-up = P=1 min / P=2 min; efficiency = speed-up / 2; bytes = `comm.bytes_sent` per step of the rank "
           "that sent most (an Allgather counts the rank's own part, an Allreduce its whole buffer, an Alltoallv what "
           "goes to other ranks; activity tangents: its k/P·B directional derivatives + its k/P tangents for the "
           "other ranks' samples + its B/P rows of the B·n estimate); T(B)/T(B/2): 1-rank step on "
           "the whole over half the batch, the most a 2-rank data split gains with free communication. On one rank "
           "every split is the same step.", "",
           scaling_table(rows), ""]
    for m, s in meta["slowdown"].items():
        if s is not None:
            out.append(f"Independent work (the {m} backprop step, no communication) runs {s:.2f}x as long on each "
                       f"of 2 ranks as on 1: the machine's ceiling on a 2-rank speed-up is about {2 / s:.2f}x.")
    cols = [("target", "target"), ("goal", "goal"), ("measured", "measured"), ("status", "status")]
    out += ["", "## Targets", "", markdown(result["targets"], cols), ""]
    nets = ", ".join(f"{n['name']} (α = {1e6 * n['alpha']:g} µs, β = {8 * n['beta'] / 1e9:g} Gb/s)"
                     for n in meta["networks"])
    out += ["## Model: P up to 64", "",
            f"T(P) = s·f(P) + r + comm(P) (bench/scaling_model.py): s and r split the 1-rank time T1 using the "
            f"2-rank time T2 less its time in collectives, divided by the independent-work slowdown; f(P) = "
            f"ceil(k/P)/k (tangents) or ceil(B/P)/B (rows); comm: ring Allreduce 2(P−1)α + 2(P−1)/P·n/β, "
            f"Allgather (P−1)α + (P−1)/P·n/β, Alltoallv (P−1)α + (P−1)/P²·n/β, summed over the step's collectives "
            f"(activity tangents: Allgather of k·B, Alltoallv of the k·B·n tangents (each rank sends the others its "
            f"tangents for their samples) and Allgather of B·n numbers, n the per-sample activation size; weight "
            f"tangents: Allgather of k; data: Allreduce of |θ| + 1 or k + 1); networks {nets}. n/a: infeasible "
            f"(tangents need k >= P, data B/P >= 1). Per-step times only: backprop and forward gradients need "
            f"different numbers of steps. Activity tangents: a rank draws only its own k/P tangents and "
            f"aggregates only its B/P samples, so both shrink as f(P) and are extrapolated exactly.", ""]
    for mr in result["model"]:
        inp, res = mr["inputs"], mr["results"]
        out += [f"### {inp['model']}, k = {inp['k']} (|θ| = {inp['n_params']:,})", ""]
        sizes = inp.get("activation_sizes")
        if sizes and "activity tangents" in inp["splits"]:
            k, B = inp["k"], inp["batch"]
            Ps = [P for P in M.P_VALUES if 2 <= P <= k]
            sent = ", ".join(_bytes(M.payload_bytes("activity tangents", P, inp["n_params"], k, B, sizes=sizes))
                             for P in Ps)
            out += [f"Activity tangents: n = {sum(sizes):,} per sample ({' + '.join(map(str, sizes))}); at P = "
                    f"{', '.join(map(str, Ps))} the largest rank sends {sent} bytes per step.", ""]
        out += [split_table(inp), ""]
        strategies = [d["strategy"] for d in inp["detail"]]
        for net in res["grid"]:
            out += [f"{net}:", "", grid_table(res, net, strategies), ""]
        out += conclusions(inp, res) + [""]
        out += [f"Bandwidths at which the tangent split is faster per step than its rival (α = "
                f"{1e6 * res['alpha']:g} µs; always/never: at every/no bandwidth; n/a: infeasible):", "",
                breakeven_table(inp, res), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None, help="comma list from mlp,cnn (default both; --quick: mlp)")
    p.add_argument("--k", default="4,16", help="numbers of tangents (default 4,16)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per configuration per job (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of a 1-rank and a 2-rank job (default 3)")
    p.add_argument("--budget", type=float, default=None, metavar="S",
                   help="timed seconds per model per job, caps the repeats (default 30; at least 2 repeats)")
    p.add_argument("--quick", action="store_true", help="smoke run: the MLP, 2 rounds of 3 steps")
    p.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: shrunken models (tests)")
    p.add_argument("--alpha-us", type=float, default=5.0, help="network latency α in µs (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-wait", type=float, default=None, metavar="S",
                   help="before each job wait up to S s for other processes to go quiet (default 120; --quick: 0)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker job (default 1800)")
    p.add_argument("--out", default=os.path.join(BENCH, "results", "scaling"), help="writes OUT.md and OUT.json")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="write the report again from a run's OUT.json (its records; the model with --alpha-us)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name, default in DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, QUICK[name] if a.quick else default)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not a.models or any(m not in MODELS for m in a.models):
        p.error(f"--models: a comma list from {', '.join(MODELS)}")
    try:
        a.k = sorted({int(k) for k in a.k.split(",") if k.strip()})
    except ValueError:
        p.error("--k: comma list of positive integers")
    if not a.k or min(a.k) < 1 or a.repeats < 2 or a.rounds < 1 or a.budget <= 0 or a.alpha_us < 0:
        p.error("--k, --rounds need positive values, --repeats >= 2, --budget > 0, --alpha-us >= 0")
    if a.worker and not a.json_out:
        p.error("--worker needs --json-out")
    return a


def _command(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python bench/scaling.py", *args])


def machine(jobs: list[dict]) -> dict:
    """The driver's environment and the 2-rank job's MPI, BLAS and affinity records."""
    env = T.environment(np)
    job = next((j["env"] for j in jobs if j["P"] == 2), jobs[0]["env"])
    return {"cpu_count": env["cpu_count"], "cpu_model": cpu_model(), "python": env["python"], "numpy": env["numpy"],
            "platform": env["platform"], "blas_per_rank": job["blas"], "rank_cpus": job["rank_cpus"],
            "mpi_library": job["mpi_library"], "mpi4py": job["mpi4py"], "mpi_standard": job["mpi_standard"],
            "heap_arrays": job["heap_arrays"], "load_average_at_end": env.get("load_average")}


def analyse(one: dict, two: dict, meta: dict, models: list[str], ks: list[int], alpha_us: float) -> dict:
    """The result from the pooled 1- and 2-rank records: the rows, the targets, the model at k = 16 (or
    the largest k), ``meta`` completed (networks, slowdowns, step counts)."""
    rows = scaling_rows(one, two, models, ks)
    k_model = 16 if 16 in ks else max(ks)
    nets = M.networks(alpha_us)
    modelled = []
    for m in models:
        inp = model_inputs(one, two, m, k_model, ks)
        if inp is not None:
            modelled.append({"inputs": inp, "results": model_results(inp, nets)})
    steps = sorted({r["n"] for r in one.values()} | {r["n"] for r in two.values()})
    meta = {**meta, "alpha_us": alpha_us, "networks": [asdict(n) for n in nets],
            "steps": f"{steps[0]}–{steps[-1]} timed steps per configuration and P (pooled over rounds)",
            "max_other_cpu_share": max((j["other_cpu_share"] or 0.0) for j in meta["jobs"]),
            "slowdown": {m: slowdown(one, two, m) for m in models}, "units": "ms; bytes per rank per step"}
    return {"meta": meta, "rows": rows, "targets": evaluate_targets(rows), "model": modelled,
            "records": {"P1": one, "P2": two}}


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.worker:
        worker(a)
        return {}
    if a.from_json:  # the report again from a run's records (e.g. another --alpha-us), nothing measured
        with open(a.from_json) as f:
            old = json.load(f)
        one, two, meta = old["records"]["P1"], old["records"]["P2"], old["meta"]
        models, ks = meta["args"]["models"], meta["args"]["k"]
    else:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None or not _has_mpi4py():
            raise SystemExit("scaling: needs mpi4py and mpiexec (pip install -e \".[mpi]\")")
        t0 = time.perf_counter()
        one, two, jobs = measure(a, mpiexec)
        meta = {"date": datetime.date.today().isoformat(), "command": _command(argv), "args": vars(a),
                "machine": machine(jobs), "jobs": jobs, "rounds": a.rounds, "seconds": time.perf_counter() - t0}
        models, ks = a.models, a.k
    result = analyse(one, two, meta, models, ks, a.alpha_us)
    text = render(result)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".md", "w") as f:
        f.write(text + "\n")
    write_json(_jsonable(result), a.out + ".json")
    print(text)
    print(f"\nwrote {a.out}.md and {a.out}.json" + ("" if a.from_json else f" in {meta['seconds']:.0f} s"))
    return result


def _jsonable(v: Any) -> Any:
    """Splits as dicts, integer keys as strings (the rest is write_json's)."""
    if isinstance(v, M.Split):
        return {"scaled_s": v.scaled, "repeated_s": v.repeated}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _has_mpi4py() -> bool:
    from dualtensor.distributed import available

    return available()


if __name__ == "__main__":
    main()

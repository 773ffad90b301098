"""Runtime and memory of multi-tangent forward gradients against the NumPy backprop baseline.

    python bench/runtime.py [--quick] [--models mlp,cnn] [--ks 1,2,4,16] [--perturb weight,activity]
                            [--tangents normal,rademacher] [--depths 1,2,5,10,20,50,100]
                            [--device cpu|gpu] [--threads N] [--json PATH] [--plot [PATH]]

For each model (logistic regression, the MLP 784-1024-1024-10 and the CNN of Baydin et al. 2022,
ResNet18, the ViT of Flügel et al. 2024) on a synthetic MNIST-shaped (batch 64) or CIFAR-shaped
(batch 128) batch, it times, A/B interleaved within one run (warm-up, repeats, median and IQR):

* ``base``: inference, forward pass + mean cross-entropy (the unit of every ratio);
* ``bp``: one backprop training step: the project's reverse mode (``dt.value_and_grad``) + SGD update;
* ``fg``: one forward-gradient training step with all k tangents in ONE forward pass: tangent
  sampling, the forward pass, aggregation (``--aggregate``, projection by default), SGD update;
  weight perturbation (:func:`dualtensor.fgrad.weight.forward_gradient`) or activity perturbation
  (:func:`dualtensor.fgrad.activity.activity_gradient`);
* ``loop``: the same step done as k separate single-tangent forward passes (the primal recomputed
  k times, as reference implementations do), the k directional derivatives then combined with the
  same tangents and aggregator. With the same random state it yields the same estimate as ``fg``
  (checked: the ``check`` column is their relative L2 difference).

Reported: R_f = fg/base, R_b = bp/base, R_f/R_b, the batching speed-up loop/fg, and the peak
memory of each step above what was live before it (tracemalloc for NumPy, a memory-pool hook for
CuPy). ``--depths`` adds Baydin et al.'s Fig. 6: MLPs of 1..100 hidden layers of width 1024,
batch 64, R_f/R_b and peak memory vs depth. The run ends with the targets of issue 5 (met or not).
Output: Markdown tables on stdout, ``--json PATH``, ``--plot [PATH]`` (needs matplotlib).
``--quick`` (logreg/MLP/CNN, k in {1,4,16}, normal tangents, depths up to 8) takes ~1-2 minutes
on 2 cores; ``--size tiny`` shrinks every model for smoke tests.

The models and their step functions are in ``runtime_cases.py``; the tables, the targets, the figure
and the JSON file in ``runtime_report.py``; this file holds the command line and runs the cases.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Any, Callable


def _early_threads(argv: list[str]) -> None:
    """Honour --threads before NumPy loads its BLAS (the fallback when threadpoolctl is missing)."""
    for i, a in enumerate(argv):
        val = a.split("=", 1)[1] if a.startswith("--threads=") else (
            argv[i + 1] if a == "--threads" and i + 1 < len(argv) else None)
        if val is not None and val.isdigit():
            for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(v, val)


if __name__ == "__main__":
    _early_threads(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

from dualtensor.allocator import heap_arrays  # noqa: E402
from dualtensor.backend import array_module, set_default_dtype, synchronize  # noqa: E402
from dualtensor.fgrad.aggregators import get_aggregator  # noqa: E402
from dualtensor.fgrad.samplers import get_sampler  # noqa: E402
from dualtensor.nn import init as nn_init  # noqa: E402
from dualtensor.nn.models import mlp  # noqa: E402
from runtime_cases import (DATASETS, DEFAULT_BATCH, MODEL_DATA, MODELS, PERTURBATIONS, TINY_DATASETS,  # noqa: E402
                           Case, gemm_macs, he_init, loop_speedup_bound, make_case, measure_memory,
                           relative_difference)
from runtime_report import (DEPTH_COLUMNS, MAIN_COLUMNS, TARGET_COLUMNS, evaluate_targets, markdown,  # noqa: E402
                            plot, write_json)

QUICK = dict(models="logreg,mlp,cnn", ks="1,4,16", perturb="weight,activity", tangents="normal", repeats=3,
             warmup=1, depths="1,2,4,8", threads=1)
QUICK_BATCH = {"cnn": 8}  # --quick: the CNN on a small batch (a full batch-64 CNN grid takes minutes)
FULL_DEPTHS = "1,2,5,10,20,50,100"


# ------------------------------------------------------------------------------------------ running

def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def run_case(case: Case, configs: list[tuple], *, repeats: int, warmup: int, loop: bool = True,
             memory: bool = True, check: bool = True, draw_bound: bool = True, progress: bool = True,
             profile: int = 0, min_time: float = 0.02, stat: str = "median", log: Callable = print) -> dict:
    """Time base, bp and the fg/loop steps of ``configs`` [(perturb, sampler, k), ...] interleaved.

    Returns {"rows": one dict per config, "steps": {step name: summary}} (times in ms, memory in MB).
    """
    xp = case.xp
    sync = (lambda: synchronize(xp))  # dualtensor.backend.synchronize: waits for queued GPU work (no-op on NumPy)
    fns: dict[str, Callable] = {"base": case.step("base"), "bp": case.step("bp")}
    for perturb, sampler, k in configs:
        fns[f"fg/{perturb}/{sampler}/{k}"] = case.step("fg", perturb, sampler, k)
        if loop:
            fns[f"loop/{perturb}/{sampler}/{k}"] = case.step("loop", perturb, sampler, k)
    if draw_bound:  # the cost of drawing one global weight tangent (the weight-perturbation bound)
        for sampler in sorted({s for p, s, _ in configs if p == "weight"}):
            draw, gen = get_sampler(sampler), case.generator(None)
            fns[f"draw/{sampler}"] = (lambda draw=draw, gen=gen, rng=None, update=True:
                                      draw(1, (case.n_params,), gen, dtype=case.dtype, xp=xp))
    gens = {name: case.generator([case.seed, 7, i]) for i, name in enumerate(fns)}
    timed = {name: (lambda fn=fn, g=gens[name]: fn(rng=g)) for name, fn in fns.items()}
    bar = _progress(len(timed) * (repeats + warmup), f"{case.name} {case.dataset}x{case.batch}", progress)
    try:
        times = T.interleaved(timed, repeats, warmup, sync, bar, min_time=min_time)
    finally:
        if bar is not None:
            bar.close()
    steps = {name: T.summarize(ts) for name, ts in times.items()}
    for name, ts in times.items():
        steps[name]["raw_ms"] = [1e3 * t for t in ts]

    grads: dict[str, Any] = {}
    if memory or check:
        for name, fn in fns.items():
            if name.startswith("draw/") or (not memory and name in ("base", "bp")):
                continue
            peak, g = measure_memory(case, fn, sync, [case.seed, 11])  # same tangents for fg and loop
            steps[name]["peak_mb"] = peak / 2**20
            if name.startswith(("fg/", "loop/")):
                grads[name] = g
    if profile:
        _profile(case, fns, profile, log)

    def get(name: str, key: str = stat) -> float:
        return steps[name][key] if name in steps and key in steps[name] else float("nan")

    base, bp = get("base"), get("bp")
    macs = gemm_macs(case) if loop else None
    rows = []
    for perturb, sampler, k in configs:
        tag = f"{perturb}/{sampler}/{k}"
        fg, lp = get("fg/" + tag), get("loop/" + tag)
        row = {"model": case.name, "dataset": case.dataset, "batch": case.batch, "perturb": perturb, "stat": stat,
               "tangents": sampler, "k": k, "aggregate": case.aggregate, "keep": case.keep,
               "n_params": case.n_params, "params_mb": case.param_bytes / 2**20,
               "base_ms": base, "bp_ms": bp, "fg_ms": fg, "loop_ms": lp,
               "base_iqr_ms": get("base", "q75") - get("base", "q25"),
               "bp_iqr_ms": get("bp", "q75") - get("bp", "q25"),
               "fg_iqr_ms": get("fg/" + tag, "q75") - get("fg/" + tag, "q25"),
               "loop_iqr_ms": get("loop/" + tag, "q75") - get("loop/" + tag, "q25"),
               "R_f": fg / base, "R_b": bp / base, "R_f_over_R_b": fg / bp, "R_loop": lp / base,
               "speedup": lp / fg,
               "mem_base_mb": get("base", "peak_mb"), "mem_bp_mb": get("bp", "peak_mb"),
               "mem_fg_mb": get("fg/" + tag, "peak_mb"), "mem_loop_mb": get("loop/" + tag, "peak_mb")}
        if perturb == "weight" and f"draw/{sampler}" in steps:
            row["draw_ms"] = get(f"draw/{sampler}")
            row["R_bound_weight"] = 3.0 + row["draw_ms"] / base  # tangent draw + three GEMM passes
        if macs is not None:
            row["speedup_bound"] = loop_speedup_bound(macs, perturb, k)
        if check and "fg/" + tag in grads and "loop/" + tag in grads:
            row["check"] = relative_difference(grads["fg/" + tag], grads["loop/" + tag], xp)
        rows.append(row)
    return {"rows": rows, "steps": steps}


def _profile(case: Case, fns: dict, top: int, log: Callable) -> None:
    """cProfile one call of every step; print the ``top`` functions by internal time."""
    import cProfile
    import io
    import pstats

    for name, fn in fns.items():
        if name.startswith("draw/"):
            continue
        saved = case.snapshot()
        pr = cProfile.Profile()
        pr.enable()
        fn(rng=[case.seed, 13])
        pr.disable()
        case.restore(saved)
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
        log(f"\n### profile {case.name} {name}\n```\n{s.getvalue().strip()}\n```")


def run_depth(depths: list[int], *, width: int, batch: int, k: int, sampler: str, perturbs: list[str],
              xp: Any, dtype: Any, aggregate: str, keep: str, repeats: int, warmup: int, memory: bool,
              seed: int, progress: bool, size: str = "full", min_time: float = 0.02,
              stat: str = "median", init: str = "he") -> list[dict]:
    """Baydin et al. Fig. 6: MLPs of ``depth`` hidden layers of ``width`` units, batch ``batch``.

    ``init="he"`` (default) re-initialises the linear layers with std sqrt(2/fan_in) and zero
    biases: with PyTorch's default Linear init the backward signal shrinks ~2.4x per layer, so at
    depth 100 the cotangents (and the early weight gradients) are float32 denormals and every
    backward GEMM runs ~100x slower, an artefact of the init, not of the method. ``init="default"``
    keeps the library init (to see that effect)."""
    rows = []
    shape = (TINY_DATASETS if size == "tiny" else DATASETS)["mnist"]
    for depth in depths:
        set_default_dtype(dtype)
        nn_init.manual_seed(seed)
        model = mlp(math.prod(shape), width, depth, 10)
        if init == "he":
            he_init(model, seed)
        case = make_case("mlp", "mnist", batch, xp=xp, dtype=dtype, size=size, aggregate=aggregate, keep=keep,
                         seed=seed, model=model)
        configs = [(p, sampler, k) for p in perturbs]
        out = run_case(case, configs, repeats=repeats, warmup=warmup, loop=False, memory=memory, check=False,
                       draw_bound=False, progress=progress, min_time=min_time, stat=stat)
        st = out["steps"]
        row = {"depth": depth, "width": width, "batch": batch, "k": k, "tangents": sampler, "init": init,
               "steps_ms": {n: {q: v[q] for q in ("median", "q25", "q75", "min", "max")} for n, v in st.items()},
               "n_params": case.n_params, "params_mb": case.param_bytes / 2**20,
               "base_ms": st["base"][stat], "bp_ms": st["bp"][stat], "stat": stat,
               "R_b": st["bp"][stat] / st["base"][stat],
               "mem_base_mb": st["base"].get("peak_mb", float("nan")),
               "mem_bp_mb": st["bp"].get("peak_mb", float("nan"))}
        # what each step must hold in parameter-sized arrays: bp and activity a gradient (P),
        # weight perturbation the k tangents and the estimate ((k + 1) P)
        row["mem_bp_excess_mb"] = row["mem_bp_mb"] - row["params_mb"]
        for r in out["rows"]:
            p = r["perturb"]
            row[f"{p}_ms"] = r["fg_ms"]
            row[f"R_f_{p}"] = r["R_f"]
            row[f"R_f_over_R_b_{p}"] = r["R_f_over_R_b"]
            row[f"mem_{p}_mb"] = r["mem_fg_mb"]
            row[f"mem_{p}_excess_mb"] = r["mem_fg_mb"] - (k + 1 if p == "weight" else 1) * row["params_mb"]
        rows.append(row)
        del case, model
    return rows


# -------------------------------------------------------------------------------------------- CLI

def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def _names(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="logreg, mlp, cnn (batch 8); k 1,4,16; normal tangents; 3 repeats; depths 1,2,4,8;\n"
                        "1 BLAS thread unless --threads is given")
    p.add_argument("--models", default=None, help=f"comma list from {','.join(MODELS)} (default: all)")
    p.add_argument("--dataset", default="auto", choices=("auto", *DATASETS),
                   help="auto: mnist for logreg/mlp/cnn, cifar for resnet18/vit")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64 mnist, 128 cifar)")
    p.add_argument("--ks", default=None, help="numbers of tangents (default 1,2,4,16)")
    p.add_argument("--perturb", default=None, help="weight,activity (default both)")
    p.add_argument("--tangents", default=None, help="samplers, e.g. normal,rademacher (default both)")
    p.add_argument("--aggregate", default="projection", help="aggregator (default projection)")
    p.add_argument("--keep", default="tape", choices=("tape", "recompute"), help="activity: block-local VJP mode")
    p.add_argument("--allocator", default="heap", choices=("heap", "system"),
                   help="heap (default): large arrays from the process heap, freed ones reused\n"
                        "(dualtensor.allocator.heap_arrays; glibc); system: glibc's defaults, untouched")
    p.add_argument("--no-loop", action="store_true", help="skip the k-separate-passes loop")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory (and check) pass")
    p.add_argument("--no-check", action="store_true", help="skip the loop == batched gradient check")
    p.add_argument("--depths", default=None, help=f"depth-scaling MLP depths (default {FULL_DEPTHS}; '' skips)")
    p.add_argument("--depth-only", action="store_true", help="only the depth-scaling experiment")
    p.add_argument("--depth-k", type=int, default=1, help="tangents in the depth experiment (default 1)")
    p.add_argument("--depth-width", type=int, default=None, help="hidden width (default 1024)")
    p.add_argument("--depth-batch", type=int, default=None, help="batch (default 64)")
    p.add_argument("--depth-init", default="he", choices=("he", "default"),
                   help="he: std sqrt(2/fan_in), zero bias (default; keeps deep-net gradients out of the\n"
                        "float32 denormal range, which slows GEMMs ~100x); default: the library init")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up rounds (default 1)")
    p.add_argument("--min-time", type=float, default=0.02, metavar="S",
                   help="steps faster than S seconds are repeated back to back per sample (default 0.02)")
    p.add_argument("--stat", default="median", choices=("median", "min"),
                   help="statistic behind the tables and ratios (both are in the JSON); min is the\n"
                        "robust choice on a machine shared with other jobs")
    p.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: shrunken models (smoke tests)")
    p.add_argument("--resnet-stem", default="imagenet", choices=("imagenet", "cifar"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads (default: library default)")
    p.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate of the timed updates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile every step once, print top N")
    p.add_argument("--json", default=None, metavar="PATH", help="write all results as JSON")
    p.add_argument("--plot", nargs="?", const="runtime.png", default=None, metavar="PATH",
                   help="write a PNG (default runtime.png; needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    a = p.parse_args(argv)
    q = a.quick
    a.models = _names(a.models or (QUICK["models"] if q else ",".join(MODELS)))
    a.ks = _ints(a.ks or (QUICK["ks"] if q else "1,2,4,16"))
    a.perturb = _names(a.perturb or QUICK["perturb"])
    a.tangents = _names(a.tangents or (QUICK["tangents"] if q else "normal,rademacher"))
    a.depths = _ints(a.depths if a.depths is not None else (QUICK["depths"] if q else FULL_DEPTHS))
    a.repeats = a.repeats or (QUICK["repeats"] if q else 5)
    a.warmup = QUICK["warmup"] if a.warmup is None else a.warmup
    if q and a.threads is None:
        a.threads = QUICK["threads"]  # single-threaded BLAS: stable and fast enough on a shared machine
    tiny = a.size == "tiny"
    a.depth_width = a.depth_width or (16 if tiny else 1024)
    a.depth_batch = a.depth_batch or (4 if tiny else 64)
    for m in a.models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")
    for x in a.perturb:
        if x not in PERTURBATIONS:
            p.error(f"--perturb: unknown perturbation {x!r} (choose from weight, activity)")
    for s in a.tangents:
        try:
            get_sampler(s)
        except ValueError as e:
            p.error(f"--tangents: {e}")
    try:
        get_aggregator(a.aggregate)
    except ValueError as e:
        p.error(f"--aggregate: {e}")
    if any(k < 1 for k in a.ks) or a.repeats < 1 or a.warmup < 0 or any(d < 0 for d in a.depths):
        p.error("--ks, --repeats and --depths need positive values (warm-up >= 0)")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    how = T.limit_threads(a.threads)
    xp = array_module(a.device)
    dtype = np.dtype(a.dtype)
    progress = not a.no_progress
    env = T.environment(xp)
    env["threads_set_by"] = how
    # "system": no mallopt call at all (any call would switch off glibc's dynamic mmap threshold)
    env["allocator"] = "heap" if xp is np and a.allocator == "heap" and heap_arrays() else "system"
    # k > n (e.g. logistic regression's 10 logits with k = 16 activity tangents) makes the projection
    # fall back to least squares, by design; it would warn on every step
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="projection: Gram matrix")
    t0 = time.perf_counter()
    print(f"# bench/runtime.py: forward gradients vs backprop\n\nbackend {env['backend']} ({env['device']}), "
          f"dtype {a.dtype}, BLAS threads {T.blas_threads(env['blas'])} ({how}), cpus {env['cpu_count']}, "
          f"allocator {env['allocator']}, aggregate {a.aggregate}, keep {a.keep}, repeats {a.repeats} "
          f"(+{a.warmup} warm-up, samples >= "
          f"{a.min_time * 1e3:g} ms), "
          f"A/B interleaved; times are {a.stat}s in ms (per step), memory = peak above the live set in MB\n",
          flush=True)

    rows, steps = [], {}
    if not a.depth_only:
        configs = [(p, s, k) for p in a.perturb for s in a.tangents for k in a.ks]
        for name in a.models:
            ds = MODEL_DATA[name] if a.dataset == "auto" else a.dataset
            batch = a.batch or (4 if a.size == "tiny" else
                                (QUICK_BATCH.get(name) if a.quick else None) or DEFAULT_BATCH[ds])
            case = make_case(name, ds, batch, xp=xp, dtype=dtype, size=a.size, aggregate=a.aggregate, keep=a.keep,
                             lr=a.lr, seed=a.seed, resnet_stem=a.resnet_stem)
            out = run_case(case, configs, repeats=a.repeats, warmup=a.warmup, loop=not a.no_loop,
                           memory=not a.no_memory, check=not (a.no_check or a.no_memory), progress=progress,
                           profile=a.profile, min_time=a.min_time, stat=a.stat)
            for r in out["rows"]:
                r["data"] = f"{r['dataset']}×{r['batch']}"
            rows.extend(out["rows"])
            steps[f"{name}/{ds}/{batch}"] = out["steps"]
            print(f"## {name} ({case.n_params:,} parameters, {ds}-shaped batch {batch})\n", flush=True)
            print(markdown(out["rows"], MAIN_COLUMNS) + "\n", flush=True)
            del case

    depth_rows: list[dict] = []
    if a.depths:
        depth_rows = run_depth(a.depths, width=a.depth_width, batch=a.depth_batch, k=a.depth_k,
                               sampler=a.tangents[0], perturbs=a.perturb, xp=xp, dtype=dtype,
                               aggregate=a.aggregate, keep=a.keep, repeats=a.repeats, warmup=a.warmup,
                               memory=not a.no_memory, seed=a.seed, progress=progress, size=a.size,
                               min_time=a.min_time, stat=a.stat, init=a.depth_init)
        print(f"## depth scaling (Baydin et al. Fig. 6): MLP width {a.depth_width}, batch {a.depth_batch}, "
              f"k={a.depth_k} {a.tangents[0]} tangents, {a.depth_init} init\n", flush=True)
        print(markdown(depth_rows, [c for c in DEPTH_COLUMNS if any(c[0] in r for r in depth_rows)]) + "\n")

    targets = evaluate_targets(rows, depth_rows)
    if targets:
        print("## targets (issue 5)\n")
        print(markdown(targets, TARGET_COLUMNS) + "\n")
    elapsed = time.perf_counter() - t0
    print(f"total {elapsed:.1f} s")
    result = {"meta": {"environment": env, "args": {k: v for k, v in vars(a).items()}, "seconds": elapsed,
                       "units": {"time": f"ms ({a.stat} over repeats; steps[...] has median, quartiles, min, max)",
                                 "memory": "MB (2**20 bytes), peak above live"},
                       "bound_weight": "R_bound_weight = 3 + draw_ms/base_ms (tangent draw + three GEMM passes)",
                       "speedup_bound": "GEMM-count bound on loop/fg (see loop_speedup_bound)",
                       "check": "relative L2 difference of the fg and loop estimates for the same tangents"},
              "runs": rows, "depth": depth_rows, "targets": targets, "steps": steps}
    if a.json:
        write_json(result, a.json)
    if a.plot:
        if plot(result, a.plot):
            print(f"figure: {a.plot}")
    return result


if __name__ == "__main__":
    main()

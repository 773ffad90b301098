"""A/B of the linear layers' products on NumPy's BLAS against oneDNN's matmul (the ``onednn`` extra), float32.

* products: the MLP's (784-1024-1024-10, batch 64) forward ``x @ W^T``, tangent (k*64 rows), input-cotangent
  ``g @ W`` and weight-cotangent ``g^T @ x`` products, each on NumPy and on oneDNN, interleaved, in this
  process (glibc's heap keeps freed arrays: ``heap_arrays``). The weight cotangent is timed with its output
  warm (the same buffer freed and reused) and cold (16 results kept alive, as a step keeps its gradients).
* steps: the MLP's inference, backprop and forward-gradient steps (activity and weight, k = 1 and 4,
  projection), in alternating child processes with ``DUALTENSOR_ONEDNN=0`` and ``=1``, since which library
  runs the products changes the BLAS thread pool's settings for the whole process.

    python bench/matmul.py [--threads 1] [--repeats 7] [--out bench/results/matmul-ab]
    python bench/matmul.py --pools --threads 0 [--out bench/results/matmul-pools]

``--pools``: only the steps, with oneDNN's products, in alternating children with
``DUALTENSOR_SMALL_PRODUCTS=pool`` (the products oneDNN declines for size on OpenBLAS's thread pool) and
``=one-thread`` (the default: on the calling thread, so OpenBLAS's workers do not wake beside oneDNN's).

Writes ``<out>.md`` and ``<out>.json``; ratio = oneDNN / NumPy (min over the repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import _timing as T

from dualtensor.allocator import heap_arrays

HERE = Path(__file__).resolve().parent
STEPS = (("inference", "base", None, None), ("backprop", "bp", None, None),
         ("activity k = 1", "fg", "activity", 1), ("activity k = 4", "fg", "activity", 4),
         ("weight k = 1", "fg", "weight", 1), ("weight k = 4", "fg", "weight", 4))


def product_cases(k: int, rng) -> list:
    """(name, a, b, kept alive) of the MLP's products; ``kept`` results stay referenced (cold outputs)."""
    f = np.float32
    x, h = rng.standard_normal((64, 784), dtype=f), rng.standard_normal((64, 1024), dtype=f)
    g = rng.standard_normal((64, 1024), dtype=f)  # not h: NumPy runs h^T h as a symmetric product (syrk)
    w1, w2 = rng.standard_normal((1024, 784), dtype=f), rng.standard_normal((1024, 1024), dtype=f)
    w3 = rng.standard_normal((10, 1024), dtype=f)
    t = rng.standard_normal((k * 64, 1024), dtype=f)
    return [("forward 64 x 784 -> 1024", x, w1.T, 0), ("forward 64 x 1024 -> 1024", h, w2.T, 0),
            (f"tangents {k * 64} x 1024 -> 1024", t, w2.T, 0), ("input cotangent 64 x 1024 -> 1024", h, w2, 0),
            ("weight cotangent 1024 x 784, warm output", g.T, x, 0),
            ("weight cotangent 1024 x 784, cold output", g.T, x, 16),
            ("weight cotangent 1024 x 1024, cold output", g.T, h, 16),
            ("forward 64 x 1024 -> 10 (below fast_matmul's size)", h, w3.T, 0)]


def time_products(k: int, repeats: int) -> list[dict]:
    from dualtensor import onednn

    rows = []
    for name, a, b, kept in product_cases(k, np.random.default_rng(0)):
        alive: list = []

        def run(fn, a=a, b=b, kept=kept, alive=alive):
            alive.append(fn(a, b))
            del alive[:-kept or None]
        steps = {"numpy": lambda: run(np.matmul), "onednn": lambda: run(onednn.matmul)}
        if onednn.matmul(a, b) is None:
            print(f"{name}: oneDNN has no brgemm matmul here; skipped")
            continue
        times = T.interleaved(steps, repeats=repeats, warmup=2, min_time=0.02)
        rows.append({"product": name, **{fw: T.summarize(ts)["min"] for fw, ts in times.items()}})
    return rows


def child_steps(repeats: int) -> None:
    """In a child: time the MLP's steps (min ms over repeats of 3-10 calls) and print them as JSON."""
    from runtime_cases import make_case

    heap_arrays()
    case = make_case("mlp", "mnist", 64, xp=np, dtype=np.float32)
    fns = {name: case.step(kind, perturb, "normal", k) if k else case.step(kind) for name, kind, perturb, k in STEPS}
    steps = {name: (lambda fn=fn, n=3 if "weight" in name else 10: [fn(update=False) for _ in range(n)])
             for name, fn in fns.items()}
    times = T.interleaved(steps, repeats=repeats, warmup=1)
    per_call = {name: T.summarize(ts)["min"] / (3 if "weight" in name else 10) for name, ts in times.items()}
    print(json.dumps(per_call))


# the variants of a step A/B: (column name, environment of its child processes)
LIBRARIES = (("numpy", {"DUALTENSOR_ONEDNN": "0"}), ("onednn", {"DUALTENSOR_ONEDNN": "1"}))
POOLS = (("pool", {"DUALTENSOR_SMALL_PRODUCTS": "pool"}), ("one thread", {"DUALTENSOR_SMALL_PRODUCTS": "one-thread"}))


def time_steps(threads: int, repeats: int, variants: tuple = LIBRARIES, rounds: int = 3) -> list[dict]:
    """Alternating child processes, one per variant and round; min over the rounds."""
    best: dict = {}
    for r in range(rounds):
        for name, extra in (variants if r % 2 == 0 else variants[::-1]):
            env = dict(os.environ, **extra)
            if threads:
                env.update({v: str(threads) for v in T.THREAD_ENV})
            out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(repeats)], env=env,
                                 check=True, capture_output=True, text=True).stdout
            for step, ms in json.loads(out.strip().splitlines()[-1]).items():
                best[(step, name)] = min(best.get((step, name), float("inf")), ms)
    return [{"step": step, **{name: best[(step, name)] for name, _ in variants}} for step, *_ in STEPS]


def table(rows: list[dict], what: str, a: str = "numpy", b: str = "onednn") -> str:
    label = {"numpy": "NumPy", "onednn": "oneDNN"}
    la, lb = label.get(a, a), label.get(b, b)
    lines = [f"| {what} | {la} (ms) | {lb} (ms) | {lb} / {la} |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r[what]} | {r[a]:.3f} | {r[b]:.3f} | {r[b] / r[a]:.2f} |")
    return "\n".join(lines)


def numpy_blas() -> str:
    """NumPy's BLAS library, version and kernel set, e.g. ``openblas 0.3.31 (Haswell kernels)`` (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("user_api") == "blas" and "numpy" in (info.get("filepath") or ""):
            return f"{info.get('internal_api')} {info.get('version')} ({info.get('architecture')} kernels)"
    return "unknown"


def write_pools(a: argparse.Namespace, cmd: str, threads: str) -> int:
    """The --pools A/B: the MLP's steps with oneDNN's products, the small ones on OpenBLAS's pool or one thread."""
    from dualtensor import onednn
    from dualtensor.files import atomic_write_text

    if not onednn.runs_matmul():
        print("oneDNN takes no matmuls on this CPU (no brgemm kernel): the small products stay on OpenBLAS anyway")
        return 1
    steps = time_steps(a.threads, a.repeats, POOLS)
    out = a.out or HERE / "results" / "matmul-pools"
    text = (f"# Small products on OpenBLAS's pool or on one thread, beside oneDNN's products (`{cmd.strip()}`)\n\n"
            f"float32, {threads}, oneDNN {onednn.version()}, NumPy's BLAS {numpy_blas()}, "
            f"{T.environment(np)['processor']}; min of {a.repeats} interleaved repeats in a child process, "
            f"min over 3 alternating children per variant (DUALTENSOR_SMALL_PRODUCTS=pool / one-thread)\n\n"
            + table(steps, "step", "pool", "one thread") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"steps": steps}, indent=1))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS and OpenMP threads (0: the machine's default)")
    ap.add_argument("--k", type=int, default=4, help="tangents of the tangent product")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/matmul-ab-<threads>t (-default)")
    ap.add_argument("--pools", action="store_true",
                    help="only the steps, oneDNN on, with the small products on OpenBLAS's pool or on one thread")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_steps(a.repeats)
        return 0
    from dualtensor import onednn

    if not onednn.available():
        print("oneDNN is not installed (pip install -e '.[onednn]'): nothing to compare")
        return 1
    if a.threads:
        T.limit_threads(a.threads)
    heap_arrays()
    cmd = "python bench/matmul.py " + " ".join(argv if argv is not None else sys.argv[1:])
    threads = f"{a.threads} thread(s)" if a.threads else "the machine's default threads"
    if a.pools:
        return write_pools(a, cmd, threads)
    products = time_products(a.k, a.repeats)
    steps = time_steps(a.threads, a.repeats)
    out = a.out or HERE / "results" / (f"matmul-ab-{a.threads}t" if a.threads else "matmul-ab-default")
    text = (f"# Linear layers' products: NumPy's BLAS against oneDNN's matmul (`{cmd.strip()}`)\n\n"
            f"float32, {threads}, oneDNN {onednn.version()}, NumPy's BLAS {numpy_blas()}, "
            f"{T.environment(np)['processor']}; min of "
            f"{a.repeats} interleaved repeats; steps: min over 3 alternating child processes each\n\n"
            + table(products, "product") + "\n\n" + table(steps, "step") + "\n")
    from dualtensor.files import atomic_write_text

    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"products": products, "steps": steps}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

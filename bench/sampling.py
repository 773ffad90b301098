"""Tangent sampling cost: nanoseconds per generated number for every sampler and dtype.

    python bench/sampling.py [--k 16] [--n 65536] [--repeats 7] [--json out.json] [--quick]
    python bench/sampling.py --thread-ab 1,2 [--k 4] [--n 3333962] [--heap-arrays]   # per thread count
    python bench/sampling.py --transform-ab [--k 16] [--n 1863690]   # Box-Muller: numba vs NumPy passes

Each sampler draws a (k, n) block ``repeats`` times after one warm-up; the table reports the median
time per number (and the spread). Prints a Markdown table; ``--json`` also writes the records.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dualtensor.files import atomic_write_text  # noqa: E402
from dualtensor.fgrad import samplers as S  # noqa: E402

CASES = [("normal", {}), ("rademacher", {}), ("orthonormal", {}), ("basis", {}), ("cone", {"alpha": 0.5}),
         ("varying_length", {"L": 10.0})]


def _blas_threads() -> str:
    return _timing.blas_threads(_timing.blas_info())


def measure(name: str, params: dict, k: int, n: int, dtype: np.dtype, repeats: int, batch: int | None = None,
            shared: bool = False) -> dict:
    """Median ns per number of ``repeats`` draws of k tangents of length n (after one warm-up)."""
    fn = S.get_sampler(name, **params)
    rng = np.random.default_rng(0)
    fn(k, n, rng, dtype=dtype, batch=batch, shared=shared)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(k, n, rng, dtype=dtype, batch=batch, shared=shared)
        times.append(time.perf_counter() - t0)
    count = k * n * (batch if batch and not shared else 1)
    t = np.array(times) / count * 1e9
    return {"sampler": name, "dtype": np.dtype(dtype).name, "k": k, "n": n, "batch": batch, "shared": shared,
            "ns_per_number": float(np.median(t)), "ns_min": float(t.min()), "ns_max": float(t.max()),
            "repeats": repeats}


def measure_keyed(name: str, k: int, n: int, dtype: np.dtype, repeats: int, batch: int | None = None) -> dict:
    """The same for the keyed tangents training draws (:class:`~dualtensor.fgrad.streams.KeyedTangents`,
    a new step each repeat): a weight tangent (k, n), or one activity block (k, batch, n)."""
    from dualtensor.fgrad.streams import KeyedTangents

    def draw(step: int) -> None:
        keys = KeyedTangents(0, step)
        if batch is None:
            keys.weight(name, k, n, dtype=dtype)
        else:
            keys.activity(name, k, batch)(n, dtype)

    draw(0)
    times = []
    for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        draw(step)
        times.append(time.perf_counter() - t0)
    t = np.array(times) / (k * n * (batch or 1)) * 1e9
    return {"sampler": f"{name} (keyed)", "dtype": np.dtype(dtype).name, "k": k, "n": n, "batch": batch,
            "shared": False, "ns_per_number": float(np.median(t)), "ns_min": float(t.min()),
            "ns_max": float(t.max()), "repeats": repeats}


def thread_ab(counts: list[int], k: int, n: int, repeats: int) -> list[dict]:
    """float32 normal draws of (k, n), plain and keyed, under each BLAS thread count in ``counts`` (the
    sampler's threads follow it), interleaved: every repeat draws once per count. Times in ms."""
    from threadpoolctl import threadpool_limits

    from dualtensor.fgrad.streams import KeyedTangents

    draws = {"normal": lambda step: S.normal(k, n, np.random.default_rng(step), dtype=np.float32),
             "normal (keyed)": lambda step: KeyedTangents(0, step).weight("normal", k, n, dtype=np.float32)}
    times = {(name, c): [] for name in draws for c in counts}
    for step in range(repeats + 1):
        for name, draw in draws.items():
            for c in counts:
                with threadpool_limits(limits=c, user_api="blas"):
                    t0 = time.perf_counter()
                    draw(step)
                    if step:  # the first round warms up
                        times[(name, c)].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name in draws:
        base = min(times[(name, counts[0])])
        for c in counts:
            t = times[(name, c)]
            rows.append({"sampler": name, "threads": c, "k": k, "n": n, "ms_min": min(t),
                         "ms_median": float(np.median(t)), "speedup_vs_first": base / min(t), "repeats": repeats})
    return rows


def transform_ab(k: int, n: int, repeats: int) -> list[dict]:
    """The float32 Box-Muller transform of k n numbers, chunk by chunk as the sampler runs it, compiled
    (numba) and as NumPy passes, on the same words, interleaved, on the calling thread. Times in ms."""
    from dualtensor.fgrad import box_muller

    fns = {"numba": box_muller.compiled(), "numpy": box_muller.transform_arrays}
    if fns["numba"] is None:
        raise SystemExit("sampling.py: --transform-ab needs numba (pip install -e \".[numba]\")")
    m = S._BM_CHUNK
    chunks = -(-k * n // (2 * m))
    w = np.random.default_rng(0).bit_generator.random_raw(m).view(np.uint32).reshape(1, 2 * m)
    out = np.empty(w.shape, np.float32)
    times = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(chunks):
                fn(w, out)
            if r:  # the first round warms up (and compiles)
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = min(times["numpy"])
    return [{"transform": name, "k": k, "n": n, "chunks": chunks, "ms_min": min(t), "ms_median": float(np.median(t)),
             "numpy_over_this": base / min(t), "repeats": repeats} for name, t in times.items()]


def _report(title: str, header: list[str], rule: str, cells: list[list], path: str | None, record: dict) -> None:
    """Print a Markdown table under ``title``; with ``path``, write ``record`` (plus numpy and CPU count) as JSON."""
    print(title + "\n")
    print("| " + " | ".join(header) + " |")
    print(rule)
    for row in cells:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if path:
        atomic_write_text(path, json.dumps({"numpy": np.__version__, "cpus": os.cpu_count(), **record}, indent=1))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--n", type=int, default=65536, help="tangent length (orthonormal uses min(n, 4096))")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    p.add_argument("--thread-ab", default=None, metavar="N1,N2",
                   help="only the float32 normal draws, interleaved under these BLAS thread counts")
    p.add_argument("--heap-arrays", action="store_true",
                   help="large arrays from the process heap (dualtensor.allocator.heap_arrays), as bench/runtime.py")
    p.add_argument("--transform-ab", action="store_true",
                   help="only the float32 Box-Muller transform, numba against NumPy passes, interleaved")
    a = p.parse_args(argv)
    if a.transform_ab:
        _timing.limit_threads(1)
        rows = transform_ab(a.k, a.n, a.repeats)
        _report(f"float32 Box-Muller transform of {a.k} x {a.n} numbers in chunks of {2 * S._BM_CHUNK}, one thread, "
                f"interleaved, {a.repeats} repeats", ["transform", "ms min", "ms median", "numpy min / this min"],
                "|---|---:|---:|---:|", [[r["transform"], f"{r['ms_min']:.1f}", f"{r['ms_median']:.1f}",
                                          f"{r['numpy_over_this']:.2f}"] for r in rows], a.json, {"rows": rows})
        return rows
    if a.heap_arrays:
        from dualtensor.allocator import heap_arrays

        heap_arrays()
    if a.thread_ab:
        rows = thread_ab([int(c) for c in a.thread_ab.split(",")], a.k, a.n, a.repeats)
        _report(f"float32 normal tangents ({a.k}, {a.n}), {os.cpu_count()} CPUs, thread counts interleaved, "
                f"{a.repeats} repeats, allocator {'heap' if a.heap_arrays else 'system'}",
                ["sampler", "threads", "ms min", "ms median", "speed-up (min)"], "|---|---:|---:|---:|---:|",
                [[r["sampler"], r["threads"], f"{r['ms_min']:.1f}", f"{r['ms_median']:.1f}",
                  f"{r['speedup_vs_first']:.2f}"] for r in rows],
                a.json, {"heap_arrays": a.heap_arrays, "rows": rows})
        return rows
    _timing.limit_threads(a.threads)
    if a.quick:
        a.k, a.n, a.repeats = 4, 4096, 3
    rows = []
    for name, params in CASES:
        for dtype in (np.float32, np.float64):
            n = min(a.n, 4096) if name == "orthonormal" else a.n  # QR is O(n k^2), not a sampling cost
            rows.append(measure(name, params, a.k, n, dtype, a.repeats))
    rows.append(measure("normal", {}, a.k, max(a.n // 64, 1), np.float32, a.repeats, batch=64))
    rows.append(measure("rademacher", {}, a.k, max(a.n // 64, 1), np.float32, a.repeats, batch=64))
    for name in ("normal", "rademacher"):
        for dtype in (np.float32, np.float64):
            rows.append(measure_keyed(name, a.k, a.n, dtype, a.repeats))
        rows.append(measure_keyed(name, a.k, max(a.n // 64, 1), np.float32, a.repeats, batch=64))
    _report(f"Tangent sampling, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, BLAS threads: {_blas_threads()}",
            ["sampler", "dtype", "k", "n", "batch", "ns/number (median)", "min", "max"],
            "|---|---|---:|---:|---:|---:|---:|---:|",
            [[r["sampler"], r["dtype"], r["k"], r["n"], r["batch"] or "-", f"{r['ns_per_number']:.2f}",
              f"{r['ns_min']:.2f}", f"{r['ns_max']:.2f}"] for r in rows],
            a.json, {"blas_threads": _blas_threads(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()

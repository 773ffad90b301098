"""Tangent sampling cost: nanoseconds per generated number for every sampler and dtype.

    python bench/sampling.py [--k 16] [--n 65536] [--repeats 7] [--json out.json] [--quick]

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


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--n", type=int, default=65536, help="tangent length (orthonormal uses min(n, 4096))")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    a = p.parse_args(argv)
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
    print(f"Tangent sampling, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, BLAS threads: {_blas_threads()}\n")
    print("| sampler | dtype | k | n | batch | ns/number (median) | min | max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['dtype']} | {r['k']} | {r['n']} | {r['batch'] or '-'} | "
              f"{r['ns_per_number']:.2f} | {r['ns_min']:.2f} | {r['ns_max']:.2f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"numpy": np.__version__, "cpus": os.cpu_count(), "blas_threads": _blas_threads(),
                       "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""Timing and memory helpers for the benchmarks in bench/ (no dualtensor specifics).

* :func:`interleaved` times several steps A/B-interleaved: every repeat runs each step once, in a
  rotated order, so drift (thermal, other processes, allocator state) hits all steps alike.
* :func:`summarize` gives median, quartiles, min/max of the recorded times.
* :func:`peak_memory` runs a step once and reports the peak bytes allocated above what was live
  before it (``tracemalloc`` for NumPy, whose allocations it sees; a CuPy memory-pool hook on GPU).
* :func:`blas_info` / :func:`limit_threads` record and set the BLAS/OpenMP thread count
  (threadpoolctl when installed, else the usual environment variables).
"""
from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable, Iterable

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_limiter: Any = None  # keeps a threadpoolctl limit alive for the life of the process


def set_thread_env(n: int) -> None:
    """Set the thread environment variables (effective only before NumPy/BLAS is loaded)."""
    for v in THREAD_ENV:
        os.environ[v] = str(int(n))


def limit_threads(n: int | None) -> str:
    """Limit BLAS/OpenMP threads to ``n`` for the rest of the process; returns how it was done."""
    global _limiter
    if n is None:
        return "library default"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        set_thread_env(n)
        return "environment variables (threadpoolctl not installed)"
    from dualtensor import onednn

    onednn.available()  # load oneDNN's OpenMP runtime first, so that the limit reaches it too
    _limiter = threadpool_limits(limits=int(n))
    return "threadpoolctl"


def blas_info() -> dict:
    """BLAS/OpenMP libraries and their thread counts, plus the thread environment variables."""
    info: dict = {"env": {v: os.environ[v] for v in THREAD_ENV if v in os.environ}}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["threadpoolctl"] = False
        return info
    info["threadpoolctl"] = True
    info["libraries"] = [{"api": d.get("internal_api"), "num_threads": d.get("num_threads"),
                          "version": d.get("version"), "user_api": d.get("user_api"),
                          "architecture": d.get("architecture")} for d in threadpool_info()]
    return info


def blas_threads(info: dict) -> str:
    """A short 'openblas:2' style summary of :func:`blas_info`."""
    libs = info.get("libraries")
    if libs:
        return ", ".join(f"{d['api']}:{d['num_threads']}" for d in libs)
    env = info.get("env", {})
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "unknown"


def environment(xp: Any) -> dict:
    """Array backend, device, versions, CPU and BLAS threads: what a timing depends on."""
    import numpy as np

    env = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "backend": xp.__name__, "blas": blas_info()}
    from dualtensor import onednn

    env["onednn"] = onednn.version()  # conv2d's direct convolutions (float32, NumPy), or None: GEMMs
    try:
        env["load_average"] = os.getloadavg()
    except (AttributeError, OSError):
        pass
    if xp is not np:
        env["cupy"] = xp.__version__
        try:
            dev = xp.cuda.Device()
            props = xp.cuda.runtime.getDeviceProperties(dev.id)
            name = props.get("name", b"")
            env["device"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as e:  # pragma: no cover - depends on the driver
            env["device"] = f"unknown ({e})"
    else:
        env["device"] = "cpu"
    return env


def sync_fn(xp: Any) -> Callable[[], None]:
    """A no-argument function that waits for queued device work (a no-op on NumPy)."""
    import numpy as np

    if xp is np:
        return lambda: None
    stream = xp.cuda.Stream.null
    return stream.synchronize


def time_once(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds for one call of ``fn``, synchronised before and after, with the GC paused."""
    sync()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()


def interleaved(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None, progress: Any = None,
                min_time: float = 0.0, settle: float = 0.0) -> dict[str, list[float]]:
    """Time each step ``repeats`` times, A/B interleaved (each round runs every step once).

    ``warmup`` untimed rounds come first. The order is rotated from round to round so no step
    always follows the same one. With ``min_time`` > 0, a step faster than that (judged from its
    last warm-up call) is run ``ceil(min_time / t)`` times back to back per sample and the sample
    is the mean per call (timeit-style, for sub-millisecond steps). ``settle`` > 0: that many seconds
    of sleep after every step, so work a library finishes in its own threads after returning (XLA
    releasing a large step's buffers, measured at ~40 ms on one CPU) is not charged to the next step.
    ``progress`` (a tqdm bar or None) is advanced once per sample. Returns ``{name: [seconds per call, ...]}``.
    """
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    number = {n: 1 for n in names}
    for r in range(warmup + repeats):
        gc.collect()
        shift = r % len(names) if names else 0
        for n in names[shift:] + names[:shift]:
            fn, m = steps[n], number[n]
            t = time_once(fn if m == 1 else (lambda fn=fn, m=m: [fn() for _ in range(m)]), sync) / m
            if settle > 0:
                time.sleep(settle)
            if r < warmup:
                if min_time > 0 and r == warmup - 1:
                    number[n] = max(1, min(1000, math.ceil(min_time / max(t, 1e-9))))
            else:
                times[n].append(t)
            if progress is not None:
                progress.update(1)
    return times


def summarize(ts: Iterable[float]) -> dict:
    """Median, quartiles (IQR), min and max of the times (in milliseconds) and the count."""
    ms = sorted(1e3 * t for t in ts)
    if not ms:
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    if len(ms) >= 2:
        q = statistics.quantiles(ms, n=4, method="inclusive")
        q25, q75 = q[0], q[2]
    else:
        q25 = q75 = ms[0]
    return {"median": statistics.median(ms), "q25": q25, "q75": q75, "min": ms[0], "max": ms[-1], "n": len(ms)}


class _CupyPeak:
    """Tracks bytes handed out by the CuPy memory pool (current and peak) through a MemoryHook."""

    def __init__(self, xp: Any):
        from cupy.cuda import memory_hook

        outer = self
        self.current = self.peak = 0

        class Hook(memory_hook.MemoryHook):
            name = "dualtensor_bench_peak"

            def malloc_postprocess(self, **kw: Any) -> None:
                outer.current += kw["mem_size"]
                outer.peak = max(outer.peak, outer.current)

            def free_postprocess(self, **kw: Any) -> None:
                outer.current -= kw["mem_size"]

        self.hook = Hook()


def peak_memory(fn: Callable[[], Any], xp: Any, sync: Callable[[], None] = lambda: None) -> tuple[int, Any]:
    """Run ``fn`` once; return (peak bytes allocated above what was live before the call, fn's result).

    NumPy: ``tracemalloc`` (NumPy reports its data buffers to it), so the figure covers array data
    and Python objects created by the step. CuPy: bytes taken from the default memory pool
    (rounded allocation sizes), tracked by a memory hook; the pool's own caching is not counted.
    Result arrays that survive the call are part of the peak (they were live at some point).
    """
    import numpy as np

    gc.collect()
    sync()
    if xp is np:
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = fn()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            if started:
                tracemalloc.stop()
        return max(int(peak), 0), out
    tracker = _CupyPeak(xp)
    with tracker.hook:
        out = fn()
        sync()
    return max(int(tracker.peak), 0), out

"""Closed-form test functions written with dualtensor ops, and a vectorised gradient-descent driver.

Every function maps x of shape (..., n) to values of shape (...), so B independent problems (seeds ×
learning rates) are optimised in one batch; ``dt.jvp`` (via ``forward_gradient(batched=True)``)
yields all k directional derivatives of all rows in one forward pass.

Shared by bench/closed_form.py (Flügel et al. 2024, Fig. 4) and bench/angles.py (Fig. 5).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dualtensor as dt  # noqa: E402
from dualtensor.fgrad.aggregators import get_aggregator  # noqa: E402
from dualtensor.fgrad.weight import forward_gradient  # noqa: E402

ST_MIN_PER_DIM = -39.16616570377142  # 0.5 * min_x (x^4 - 16x^2 + 5x), at x = -2.903534...


def sphere(x: Any) -> Any:
    """Σ x_i² (minimum 0 at 0)."""
    return dt.sum(x * x, axis=-1)


def rosenbrock(x: Any, a: float = 1.0, b: float = 100.0) -> Any:
    """Chained Rosenbrock Σ_{i<n} b (x_{i+1} - x_i²)² + (a - x_i)² (minimum 0 at (a, …, a)); n ≥ 2."""
    head, tail = x[..., :-1], x[..., 1:]
    r = tail - head * head
    s = a - head
    return dt.sum(b * (r * r) + s * s, axis=-1)


def styblinski_tang(x: Any) -> Any:
    """0.5 Σ (x_i⁴ - 16 x_i² + 5 x_i) (minimum ≈ -39.16617·n at x_i ≈ -2.9035)."""
    x2 = x * x
    return 0.5 * dt.sum(x2 * x2 - 16.0 * x2 + 5.0 * x, axis=-1)


def beale(x: Any) -> Any:
    """Beale's function of (x, y) = x[..., 0], x[..., 1] (minimum 0 at (3, 0.5))."""
    u, v = x[..., 0], x[..., 1]
    uv = u * v
    t1 = 1.5 - u + uv
    t2 = 2.25 - u + uv * v
    t3 = 2.625 - u + uv * v * v
    return t1 * t1 + t2 * t2 + t3 * t3


@dataclasses.dataclass(frozen=True)
class Problem:
    """A test function with its start point, known minimum and step budget."""

    name: str
    f: Callable[[Any], Any]
    x0: Callable[[int], np.ndarray]
    minimum: Callable[[int], float]
    max_steps: int
    min_n: int = 1
    fixed_n: int | None = None


def _rosen_x0(n: int) -> np.ndarray:
    x = np.zeros(n)
    x[0] = -1.0
    return x


PROBLEMS: dict[str, Problem] = {
    "sphere": Problem("sphere", sphere, lambda n: -np.ones(n), lambda n: 0.0, 1000),
    "rosenbrock": Problem("rosenbrock", rosenbrock, _rosen_x0, lambda n: 0.0, 25_000, min_n=2),
    "styblinski_tang": Problem("styblinski_tang", styblinski_tang, lambda n: np.zeros(n),
                               lambda n: ST_MIN_PER_DIM * n, 1000),
    "beale": Problem("beale", beale, lambda n: np.ones(2), lambda n: 0.0, 1000, fixed_n=2),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """A gradient source: the exact gradient (reverse mode) or a forward gradient (k, aggregate, sampler)."""

    label: str
    k: int = 0  # 0 = exact gradient
    aggregate: str = "mean"
    sampler: Any = "normal"

    @property
    def exact(self) -> bool:
        return self.k == 0


def exact_value_and_grad(f: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (B,) and exact gradients (B, n) of a batched function by reverse mode."""
    vals, back = dt.vjp(f, x)
    return vals, back(np.ones_like(vals))[0]


def estimate(f: Callable, x: np.ndarray, method: Method, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(values, gradient estimates) for the rows of x with the given method (one forward pass for fg)."""
    if method.exact:
        return exact_value_and_grad(f, x)
    with warnings.catch_warnings():
        # k >= n makes the Gram singular; the least-squares fallback is exact there, the warning is noise
        warnings.filterwarnings("ignore", message="projection: Gram", category=RuntimeWarning)
        vals, g, _ = forward_gradient(f, x, k=method.k, sampler=method.sampler,
                                      aggregate=get_aggregator(method.aggregate), rng=rng, batched=True)
    return vals, g


@dataclasses.dataclass
class RunResult:
    best: np.ndarray      # (R,) best value seen per row
    steps: np.ndarray     # (R,) steps taken per row
    diverged: np.ndarray  # (R,) stopped on a non-finite value
    seconds: float


def gradient_descent(f: Callable, x0: np.ndarray, lr: np.ndarray, method: Method, rng: np.random.Generator,
                     max_steps: int, patience: int = 50) -> RunResult:
    """x ← x − lr·g for R rows at once (row r uses lr[r]); a row stops after ``patience`` steps without
    improving its best value, on a non-finite value or gradient, or after ``max_steps`` steps.
    Stopped rows leave the batch, so the cost follows the rows still running."""
    t0 = time.perf_counter()
    x = np.array(x0, dtype=np.float64, copy=True)
    R = x.shape[0]
    lr = np.asarray(lr, dtype=np.float64).reshape(R)
    best = np.full(R, np.inf)
    since = np.zeros(R, dtype=np.int64)
    steps = np.zeros(R, dtype=np.int64)
    diverged = np.zeros(R, dtype=bool)
    act = np.arange(R)
    with np.errstate(over="ignore", invalid="ignore"):  # diverging rows overflow before they stop
        for _ in range(max_steps + 1):
            if act.size == 0:
                break
            vals, g = estimate(f, x[act], method, rng)
            vals = np.asarray(vals, dtype=np.float64)
            finite = np.isfinite(vals) & np.all(np.isfinite(g), axis=1)
            improved = finite & (vals < best[act])
            best[act] = np.where(improved, vals, best[act])
            since[act] = np.where(improved, 0, since[act] + 1)
            diverged[act] = ~np.isfinite(vals)
            keep = finite & (since[act] < patience) & (steps[act] < max_steps)
            act, g = act[keep], g[keep]
            x[act] -= lr[act, None] * g
            steps[act] += 1
    return RunResult(best, steps, diverged, time.perf_counter() - t0)


def lr_grid(lo: float = 1e-6, hi: float = 1.0, per_decade: int = 2) -> np.ndarray:
    """Log-spaced learning rates from lo to hi inclusive."""
    decades = math.log10(hi / lo)
    return np.logspace(math.log10(lo), math.log10(hi), int(round(decades * per_decade)) + 1)


def _run_lrs(problem: Problem, n: int, method: Method, lrs: np.ndarray, seeds: int, rng: np.random.Generator,
             max_steps: int, patience: int) -> tuple[np.ndarray, np.ndarray, float]:
    x0 = np.tile(problem.x0(n), (len(lrs) * seeds, 1))
    res = gradient_descent(problem.f, x0, np.repeat(lrs, seeds), method, rng, max_steps, patience)
    return res.best.reshape(len(lrs), seeds), res.steps.reshape(len(lrs), seeds), res.seconds


def _pick(best: np.ndarray) -> int:
    """Index of the lr with the lowest mean best value over seeds (diverged runs keep their best)."""
    return int(np.argmin(np.where(np.isfinite(best), best, np.inf).mean(axis=1)))


def lr_search(problem: Problem, n: int, method: Method, lrs: np.ndarray, seeds: int, seed: int,
              max_steps: int | None = None, patience: int = 50, refine: int = 1) -> dict:
    """Learning-rate search for one (problem, n, method) and the selected lr's results over seeds.

    Stage 1 runs every lr of the grid with one seed; stage 2 re-runs the best lr and its ``refine``
    grid neighbours on each side with ``seeds`` fresh seeds (all rows of a stage in one batch) and
    selects the lr with the lowest mean best value. Exact gradient descent is deterministic: one seed.
    """
    steps_max = max_steps or problem.max_steps
    rng = np.random.default_rng([seed, n, method.k, sum(map(ord, method.aggregate))])
    records = []
    b1, s1, t1 = _run_lrs(problem, n, method, lrs, 1, rng, steps_max, patience)
    records += [("search", float(lr), 0, float(b), int(st)) for lr, b, st in zip(lrs, b1[:, 0], s1[:, 0])]
    i = _pick(b1)
    if method.exact or seeds <= 1:
        cand, best, steps, t2 = lrs[i:i + 1], b1[i:i + 1], s1[i:i + 1], 0.0
    else:
        cand = lrs[max(0, i - refine):i + refine + 1]
        best, steps, t2 = _run_lrs(problem, n, method, cand, seeds, rng, steps_max, patience)
        records += [("seeds", float(lr), s, float(best[j, s]), int(steps[j, s]))
                    for j, lr in enumerate(cand) for s in range(seeds)]
    j = _pick(best)
    vals = best[j]
    return {"lr": float(cand[j]), "values": vals, "mean": float(vals.mean()), "std": float(vals.std()),
            "min": float(vals.min()), "max": float(vals.max()), "steps": steps[j], "seconds": t1 + t2,
            "hit_max_steps": bool(np.any(steps[j] >= steps_max)), "records": records}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (first column left-aligned, others right-aligned)."""
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

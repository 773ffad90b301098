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
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
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

import dualtensor as dt  # noqa: E402
from dualtensor import optim  # noqa: E402
from dualtensor.allocator import heap_arrays  # noqa: E402
from dualtensor.backend import array_module, set_default_dtype, synchronize  # noqa: E402
from dualtensor.core import observe  # noqa: E402
from dualtensor.fgrad.activity import activity_gradient, activity_tangents  # noqa: E402
from dualtensor.fgrad.aggregators import get_aggregator  # noqa: E402
from dualtensor.fgrad.samplers import as_generator, get_sampler  # noqa: E402
from dualtensor.fgrad.weight import flatten_params, forward_gradient, tangent_tree  # noqa: E402
from dualtensor.nn import functional as F  # noqa: E402
from dualtensor.nn import init as nn_init  # noqa: E402
from dualtensor.nn.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear,  # noqa: E402
                                  MaxPool2d, ReLU)
from dualtensor.nn.models import mlp, resnet18, vit  # noqa: E402
from dualtensor.nn.models.blocked import Blocked, eval_mode  # noqa: E402
from dualtensor.nn.models.resnet import BasicBlock, ResNet  # noqa: E402
from dualtensor.nn.module import Sequential, functional_call  # noqa: E402
from dualtensor.tensor import DualTensor, Zero  # noqa: E402

MODELS = ("logreg", "mlp", "cnn", "resnet18", "vit")
DATASETS = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
TINY_DATASETS = {"mnist": (1, 8, 8), "cifar": (3, 8, 8)}
DEFAULT_BATCH = {"mnist": 64, "cifar": 128}
MODEL_DATA = {"logreg": "mnist", "mlp": "mnist", "cnn": "mnist", "resnet18": "cifar", "vit": "cifar"}
PERTURBATIONS = ("weight", "activity")
QUICK = dict(models="logreg,mlp,cnn", ks="1,4,16", perturb="weight,activity", tangents="normal", repeats=3,
             warmup=1, depths="1,2,4,8", threads=1)
QUICK_BATCH = {"cnn": 8}  # --quick: the CNN on a small batch (a full batch-64 CNN grid takes minutes)
FULL_DEPTHS = "1,2,5,10,20,50,100"


# ------------------------------------------------------------------------------------------- models

class LogReg(Blocked):
    """Multinomial logistic regression: one block, flatten + linear."""


class CNN(Blocked):
    """Baydin et al.'s CNN: blocks conv, conv+pool, conv, conv+pool, linear+ReLU, linear."""


def logreg(in_features: int, classes: int = 10) -> LogReg:
    return LogReg([Sequential(Flatten(), Linear(in_features, classes))])


def baydin_cnn(in_channels: int = 1, image_size: int = 28, classes: int = 10, channels: int = 64,
               hidden: int = 1024) -> CNN:
    """Four 3x3 conv layers (``channels`` each, padding 1, ReLU), a 2x2 max-pool after the 2nd and
    4th, then linear ``hidden`` + ReLU and linear ``classes`` (Baydin et al. 2022, Sec. 5)."""
    c = channels
    side = image_size // 2 // 2
    return CNN([
        Sequential(Conv2d(in_channels, c, 3, 1, 1), ReLU()),
        Sequential(Conv2d(c, c, 3, 1, 1), ReLU(), MaxPool2d(2)),
        Sequential(Conv2d(c, c, 3, 1, 1), ReLU()),
        Sequential(Conv2d(c, c, 3, 1, 1), ReLU(), MaxPool2d(2)),
        Sequential(Flatten(), Linear(c * side * side, hidden), ReLU()),
        Sequential(Linear(hidden, classes)),
    ])


def small_resnet(in_channels: int, classes: int, widths: tuple = (4, 8, 8, 16)) -> ResNet:
    """ResNet18's layout (stem, four stages of two BasicBlocks, head) with tiny widths, for smoke tests."""
    stem = Sequential(Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), BatchNorm2d(widths[0]), ReLU())
    stages, cin = [], widths[0]
    for cout, stride in zip(widths, (1, 2, 2, 2)):
        stages.append(Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        cin = cout
    head = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(cin, classes))
    return ResNet([stem, *stages, head], [stem] + [b for s in stages for b in s] + [head])


def build_model(name: str, input_shape: tuple, classes: int = 10, size: str = "full",
                resnet_stem: str = "imagenet") -> Any:
    """One of :data:`MODELS` for inputs of ``input_shape`` (C, H, W); ``size="tiny"`` shrinks it."""
    c, h, w = input_shape
    tiny = size == "tiny"
    if name == "logreg":
        return logreg(c * h * w, classes)
    if name == "mlp":
        return mlp(c * h * w, 16 if tiny else 1024, 2, classes)
    if name == "cnn":
        return baydin_cnn(c, h, classes, channels=4 if tiny else 64, hidden=16 if tiny else 1024)
    if name == "resnet18":
        return small_resnet(c, classes) if tiny else resnet18(c, classes, stem=resnet_stem)
    if name == "vit":
        if tiny:
            return vit(image_size=h, patch_size=4, in_channels=c, classes=classes, dim=8, depth=2, heads=2,
                       mlp_dim=16)
        return vit(image_size=h, patch_size=4, in_channels=c, classes=classes)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# -------------------------------------------------------------------------------------------- steps

def _per_sample_loss(logits: Any, y: Any) -> Any:
    return F.cross_entropy(logits, y, reduction="none")


def _primal(v: Any) -> Any:
    return v.primal if type(v) is DualTensor else v


@dataclass
class Case:
    """A model with its synthetic batch, optimizer and every step function of the benchmark.

    Every step is ``step(rng=None, update=True) -> grads`` (``None`` for inference); ``rng`` is the
    tangent generator (a fresh seeded one when None)."""

    name: str
    dataset: str
    batch: int
    model: Any
    x: Any
    y: Any
    xp: Any
    dtype: Any
    aggregate: str
    keep: str
    lr: float
    seed: int

    def __post_init__(self) -> None:
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = dict(self.model.named_parameters())
        self.opt = optim.SGD([self.params[n] for n in self.names], lr=self.lr)
        self.agg = get_aggregator(self.aggregate)
        self.blocks = list(self.model.blocks())
        self.n_params = int(sum(p.data.size for p in self.params.values()))
        self.param_bytes = int(sum(p.data.nbytes for p in self.params.values()))
        self.vg = dt.value_and_grad(self._objective)
        # block output shapes (one plain forward pass) for the activity loop
        h, self.shapes = self.x, []
        for b in self.blocks:
            h = b(h)
            self.shapes.append(tuple(h.shape))
        self.sizes = [math.prod(s[1:]) for s in self.shapes]

    # -- helpers ---------------------------------------------------------------------------
    def current(self) -> dict:
        return {n: self.params[n].data for n in self.names}

    def _objective(self, P: dict) -> Any:
        return F.cross_entropy(functional_call(self.model, P, self.x), self.y)

    def _apply(self, grads: dict) -> None:
        for n in self.names:
            self.params[n].grad = grads[n]
        self.opt.step()

    def generator(self, rng: Any = None) -> Any:
        """A tangent generator on the case's device: ``rng`` may be a generator, a seed or a seed list.
        Without one, timed steps share one generator per case (a GPU generator costs its seeding, which
        a training run pays once per epoch, not per step)."""
        if rng is None:
            if getattr(self, "_generator", None) is None:
                self._generator = as_generator(np.random.default_rng(self.seed), self.xp)
            return self._generator
        if isinstance(rng, (int, list, tuple)):
            rng = np.random.default_rng(rng)  # CuPy: seeded from it
        return as_generator(rng, self.xp)

    def snapshot(self) -> dict:
        return {n: p.data.copy() for n, p in self.params.items()}

    def restore(self, saved: dict) -> None:
        for n, a in saved.items():
            self.params[n].data[...] = a
            self.params[n].grad = None

    # -- the steps -------------------------------------------------------------------------
    def inference(self, rng: Any = None, update: bool = True) -> None:
        float(F.cross_entropy(self.model(self.x), self.y))
        return None

    def backprop(self, rng: Any = None, update: bool = True) -> dict:
        _, grads = self.vg(self.current())
        if update:
            self._apply(grads)
        return grads

    def fg_weight(self, k: int, sampler: str, rng: Any = None, update: bool = True) -> dict:
        _, grads, _ = forward_gradient(self._objective, self.current(), k, sampler=sampler, aggregate=self.agg,
                                       rng=self.generator(rng))
        if update:
            self._apply(grads)
        return grads

    def fg_weight_loop(self, k: int, sampler: str, rng: Any = None, update: bool = True) -> dict:
        P = self.current()
        _, _, xp, dtype, n = flatten_params(P)
        V = get_sampler(sampler)(k, (n,), self.generator(rng), dtype=dtype, xp=xp)  # as forward_gradient draws
        ds = []
        for i in range(k):  # one JVP per tangent: the primal is recomputed k times
            _, d_i = dt.jvp(self._objective, P, tangent_tree(V[i:i + 1], P))
            ds.append(d_i)
        g = self.agg(xp.concatenate(ds), V)
        grads = {name: t[0] for name, t in tangent_tree(g[None], P).items()}
        if update:
            self._apply(grads)
        return grads

    def fg_activity(self, k: int, sampler: str, rng: Any = None, update: bool = True) -> dict:
        res = activity_gradient(self.model, _per_sample_loss, self.x, self.y, k=k, sampler=sampler,
                                aggregate=self.agg, rng=self.generator(rng), keep=self.keep, blocks=self.blocks)
        if update:
            self._apply(res.grads)
        return res.grads

    def _activity_tangents(self, k: int, sampler: str, rng: Any) -> list:
        """Per-block (k, B, n_i) tangents, drawn exactly as activity_gradient draws them."""
        return activity_tangents(sampler, k, self.sizes, self.generator(rng), dtype=self.dtype, xp=self.xp,
                                 batch=self.batch)

    def _activity_pass(self, parts: list, i: int) -> Any:
        """Forward pass with tangent i alone injected at every block output; returns d_i of shape (1, B)."""
        h = self.x
        for block, part, shape in zip(self.blocks, parts, self.shapes):
            out = block(h)
            v = part[i:i + 1].reshape((1,) + shape)
            if type(out) is DualTensor and type(out.tangent) is not Zero:
                h = DualTensor(out.primal, out.tangent + v)
            else:
                h = DualTensor(_primal(out), v)
        return _per_sample_loss(h, self.y).tangent_array()

    def fg_activity_loop(self, k: int, sampler: str, rng: Any = None, update: bool = True) -> dict:
        xp = self.xp
        parts = self._activity_tangents(k, sampler, rng)
        ds = [self._activity_pass(parts, i) for i in range(k - 1)]
        V = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)  # (k, B, n)

        def combine(d_last: Any, _v_last: Any) -> Any:  # all k directional derivatives, all k tangents
            return self.agg(xp.concatenate(ds + [d_last]), V)

        # the k-th pass also records the block-local tape and runs the block VJPs of the estimate
        res = activity_gradient(self.model, _per_sample_loss, self.x, self.y, k=1,
                                tangents=xp.ascontiguousarray(V[k - 1:k]), aggregate=combine, keep=self.keep,
                                blocks=self.blocks)
        if update:
            self._apply(res.grads)
        return res.grads

    def step(self, kind: str, perturb: str | None = None, sampler: str | None = None,
             k: int | None = None) -> Callable[..., Any]:
        """The step function ``kind`` in {base, bp, fg, loop} (perturb/sampler/k for fg and loop)."""
        if kind == "base":
            return self.inference
        if kind == "bp":
            return self.backprop
        fn = {("fg", "weight"): self.fg_weight, ("loop", "weight"): self.fg_weight_loop,
              ("fg", "activity"): self.fg_activity, ("loop", "activity"): self.fg_activity_loop}[(kind, perturb)]
        return lambda rng=None, update=True: fn(k, sampler, rng=rng, update=update)


def make_case(name: str, dataset: str, batch: int, *, xp: Any, dtype: Any, size: str = "full",
              aggregate: str = "projection", keep: str = "tape", lr: float = 1e-4, seed: int = 0,
              resnet_stem: str = "imagenet", model: Any = None) -> Case:
    """Build the model (seeded) and a synthetic batch (standard normal images, uniform labels)."""
    shape = (TINY_DATASETS if size == "tiny" else DATASETS)[dataset]
    set_default_dtype(dtype)
    nn_init.manual_seed(seed)
    if model is None:
        model = build_model(name, shape, 10, size, resnet_stem)
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    y = rng.integers(0, 10, size=batch)
    if xp is not np:
        model.to("gpu")
        x, y = xp.asarray(x), xp.asarray(y)
    model.train()
    return Case(name, dataset, batch, model, x, y, xp, np.dtype(dtype), aggregate, keep, lr, seed)


def relative_difference(a: dict, b: dict, xp: Any) -> float:
    """‖a − b‖ / ‖a‖ over all parameters (global L2 norms, in float64)."""
    num = den = 0.0
    for n in a:
        x = a[n].astype(np.float64)
        num += float(((x - b[n].astype(np.float64)) ** 2).sum())
        den += float((x ** 2).sum())
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)


# ------------------------------------------------------------------------------------------ running

def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _measure_memory(case: Case, fn: Callable, sync: Callable, seed: Any) -> tuple[int, Any]:
    """Peak memory of one step (with its update; parameters restored afterwards) and its gradients."""
    saved = case.snapshot()
    for p in case.params.values():  # no stale gradients from the timed steps in the live set
        p.grad = None
    try:
        return T.peak_memory(lambda: fn(rng=seed, update=True), case.xp, sync)
    finally:
        case.restore(saved)


# ------------------------------------------------------------------------------------ GEMM-count bound

def _macs(name: str, args: tuple) -> tuple[int, bool]:
    """Multiply-adds of one primal call and whether its second operand is a weight (linear, conv2d)."""
    if name == "linear":
        x, w = args[0], args[1]
        return math.prod(x.shape[:-1]) * w.shape[0] * w.shape[1], True
    if name == "conv2d":
        w, out = args[1], args[-1]  # out: the primal output, appended by the counter
        return math.prod(out.shape) * math.prod(w.shape[1:]), True
    a, b = args[0], args[1]  # matmul, attention: (..., L, E) x (..., S, E) [x (..., S, Ev)]
    batch = math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    if name == "matmul":
        return batch * a.shape[-2] * a.shape[-1] * b.shape[-1], False
    return batch * a.shape[-2] * b.shape[-2] * (a.shape[-1] + args[2].shape[-1]), False


_GEMM_LIKE = ("linear", "conv2d", "matmul", "scaled_dot_product_attention")


def gemm_macs(case: Case) -> list[list[tuple[int, bool]]]:
    """Per block, the (multiply-adds, has-weight) of every GEMM-like primal call (linear, conv2d, matmul,
    attention), from one plain forward pass of the case's batch (eval mode: no state changes), seen
    through the primitives' observation hook."""
    calls: list[tuple[int, bool]] = []

    def record(prim: Any, args: tuple, params: dict, ans: Any) -> None:
        if prim.name in _GEMM_LIKE:
            calls.append(_macs(prim.name, args + ((ans[0] if prim.has_aux else ans),)))

    per_block = []
    with eval_mode(case.blocks), observe(record):
        h = case.x
        for b in case.blocks:
            calls.clear()
            h = _primal(b(h))
            per_block.append(list(calls))
    return per_block


def loop_speedup_bound(per_block: list, perturb: str, k: int) -> float:
    """GEMM-count bound on (k single-tangent passes) / (one k-tangent pass), sampling and elementwise
    work left out. P = primal multiply-adds. Activity: every GEMM after the first block carries the
    tangent (T per tangent; attention and matmuls between activations twice), and the block-local VJP
    costs W = one weight-gradient GEMM per weighted GEMM plus an input-gradient GEMM after the first GEMM
    of a block (both operands' gradients for matmuls between activations and attention); loop k(P + T) + W
    against P + kT + W. Weight: every GEMM has a weight-tangent term and, except the model's first (it reads
    the data), an input-tangent term; loop k(P + T) against P + kT.
    """
    flat = [(i, j, m, w) for i, blk in enumerate(per_block) for j, (m, w) in enumerate(blk)]
    P = sum(m for *_, m, _ in flat)
    if perturb == "activity":
        T = sum(m * (1 if w else 2) for i, _, m, w in flat if i > 0)
        W = sum(m * ((1 + (j > 0)) if w else 2) for _, j, m, w in flat)
        return (k * (P + T) + W) / (P + k * T + W)
    T = sum(m * (1 if n == 0 else 2) for n, (*_, m, w) in enumerate(flat))
    return k * (P + T) / (P + k * T)


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
            peak, g = _measure_memory(case, fn, sync, [case.seed, 11])  # same tangents for fg and loop
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


def he_init(model: Any, seed: int) -> None:
    """He (Kaiming normal, ReLU gain) weights and zero biases for every Linear layer of ``model``."""
    rng = np.random.default_rng([seed, 3])
    for m in model.modules():
        if isinstance(m, Linear):
            w = m.weight.data
            w[...] = rng.standard_normal(w.shape).astype(w.dtype) * np.sqrt(2.0 / w.shape[1])
            if m.bias is not None:
                m.bias.data[...] = 0


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


# ----------------------------------------------------------------------------------------- reports

def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
            return f"{v:.1e}"
        return f"{v:.{digits}g}"
    return str(v)


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` [(key, header), ...]."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" if i < 1 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(_f(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


MAIN_COLUMNS = [("model", "model"), ("data", "data×B"), ("perturb", "perturb"), ("tangents", "tangents"),
                ("k", "k"), ("base_ms", "base ms"), ("bp_ms", "bp ms"), ("fg_ms", "fg ms"), ("loop_ms", "loop ms"),
                ("R_f", "R_f"), ("R_b", "R_b"), ("R_f_over_R_b", "R_f/R_b"), ("speedup", "loop/fg"),
                ("speedup_bound", "bound"),
                ("mem_bp_mb", "bp MB"), ("mem_fg_mb", "fg MB"), ("mem_loop_mb", "loop MB"), ("check", "check")]
DEPTH_COLUMNS = [("depth", "depth"), ("params_mb", "params MB"), ("base_ms", "base ms"), ("bp_ms", "bp ms"),
                 ("weight_ms", "fg-w ms"), ("activity_ms", "fg-a ms"), ("R_b", "R_b"), ("R_f_weight", "R_f w"),
                 ("R_f_activity", "R_f a"), ("mem_bp_mb", "bp MB"), ("mem_weight_mb", "fg-w MB"),
                 ("mem_activity_mb", "fg-a MB"), ("mem_bp_excess_mb", "bp − P"),
                 ("mem_weight_excess_mb", "fg-w − (k+1)P"), ("mem_activity_excess_mb", "fg-a − P")]
TARGET_COLUMNS = [("target", "target"), ("measured", "measured"), ("goal", "goal"), ("status", "status")]


def _slope(xs: list[float], ys: list[float]) -> float:
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def evaluate_targets(rows: list[dict], depth_rows: list[dict]) -> list[dict]:
    """Issue 5's targets, evaluated on whatever was measured (rows missing → not evaluated)."""
    out = []

    def add(target: str, measured: str, goal: str, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured, "goal": goal,
                    "status": "n/a" if ok is None else ("met" if ok else "MISSED")})

    for model in ("mlp", "cnn"):
        for perturb in PERTURBATIONS:
            sel = [r for r in rows if r["model"] == model and r["perturb"] == perturb and r["k"] == 16
                   and math.isfinite(r.get("speedup", float("nan")))]
            if sel:
                worst = min(r["speedup"] for r in sel)
                bound = sel[0].get("speedup_bound")
                add(f"batched vs loop, {model} {perturb} k=16",
                    f"{worst:.2f}x (worst over tangents)" + (f"; GEMM-count bound {bound:.2f}x" if bound else ""),
                    ">= 3x", worst >= 3)
    act = [r for r in rows if r["model"] == "mlp" and r["perturb"] == "activity"]
    for k in sorted({r["k"] for r in act}):
        worst = max(r["R_f"] / (2 + k) for r in act if r["k"] == k)
        add(f"activity MLP R_f(k={k}) / (2+k)", f"{worst:.2f}", "<= 1.5", worst <= 1.5)
    k1 = [r for r in act if r["k"] == 1]
    if k1:
        worst = max(r["R_f_over_R_b"] for r in k1)
        add("activity MLP R_f/R_b at k=1", f"{worst:.2f}", "<= 1.2", worst <= 1.2)
    for r in rows:
        if r["perturb"] == "weight" and r["k"] == 1 and "R_bound_weight" in r:
            ratio = r["R_f"] / r["R_bound_weight"]
            add(f"weight {r['model']} {r['tangents']} R_f(k=1) / (3 + draw/base)",
                f"{ratio:.2f} (R_f {r['R_f']:.2f}, bound {r['R_bound_weight']:.2f})", "<= 1.5", ratio <= 1.5)
    # depth 1 has no hidden-to-hidden layer (its largest leaf, hence the update's temporary, differs):
    # fit the slopes on depths >= 2 when there are two of them
    measured = [r for r in depth_rows if math.isfinite(r.get("mem_bp_excess_mb", float("nan")))]  # not --no-memory
    fit = [r for r in measured if r["depth"] >= 2]
    fit = fit if len(fit) >= 2 else measured
    if len(fit) >= 2:
        ds = [r["depth"] for r in fit]
        bp = _slope(ds, [r["mem_bp_excess_mb"] for r in fit])
        for p in PERTURBATIONS:
            key = f"mem_{p}_excess_mb"
            if all(math.isfinite(r.get(key, float("nan"))) for r in fit):
                s = _slope(ds, [r[key] for r in fit])
                lo, hi = min(r[key] for r in fit), max(r[key] for r in fit)
                flat = math.isfinite(s) and math.isfinite(bp) and abs(s) <= 0.1 * abs(bp)
                add(f"memory vs depth {ds[0]}..{ds[-1]}, fg-{p} (excess over params)",
                    f"{s:.3g} MB/layer (range {lo:.3g}..{hi:.3g} MB) vs bp {bp:.3g} MB/layer",
                    "flat (slope <= 10% of bp's)" if p == "weight" else "(activity holds per-layer tangents)",
                    flat if p == "weight" else None)
        add(f"memory vs depth {ds[0]}..{ds[-1]}, backprop (excess over params)", f"{bp:.3g} MB/layer", "linear (> 0)",
            bool(math.isfinite(bp) and bp > 0))
    return out


def plot(result: dict, path: str) -> bool:
    """R_f vs k per model (batched and loop), and R / memory vs depth; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no figure written", file=sys.stderr)
        return False
    rows, depth = result["runs"], result["depth"]
    panels = (["k"] if rows else []) + (["time", "memory", "excess"] if depth else [])
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    if rows:
        ax = axes["k"]
        keys = sorted({(r["model"], r["perturb"], r["tangents"]) for r in rows})
        for m, p, s in keys:
            sel = sorted((r for r in rows if (r["model"], r["perturb"], r["tangents"]) == (m, p, s)),
                         key=lambda r: r["k"])
            ks = [r["k"] for r in sel]
            line, = ax.plot(ks, [r["R_f"] for r in sel], "o-", label=f"{m} {p} {s}")
            if any(math.isfinite(r["R_loop"]) for r in sel):
                ax.plot(ks, [r["R_loop"] for r in sel], "x--", color=line.get_color(), alpha=0.6)
        kmax = max(r["k"] for r in rows)
        ax.plot([1, kmax], [3, 2 + kmax], "k:", label="2 + k")
        ax.set(xscale="log", yscale="log", xlabel="k (tangents)", ylabel="R_f = fg step / inference",
               title="forward-gradient step (solid: batched, dashed: loop)")
        ax.set_xticks(sorted({r["k"] for r in rows}), [str(k) for k in sorted({r["k"] for r in rows})])
        ax.legend(fontsize=6)
    if depth:
        ds = [r["depth"] for r in depth]
        ax = axes["time"]
        ax.plot(ds, [r["R_b"] for r in depth], "o-", label="backprop R_b")
        for p in PERTURBATIONS:
            if f"R_f_{p}" in depth[0]:
                ax.plot(ds, [r[f"R_f_{p}"] for r in depth], "s-", label=f"fg {p} R_f")
        ax.set(xscale="log", xlabel=f"hidden layers (width {depth[0]['width']})", ylabel="step / inference",
               title=f"runtime vs depth (k={depth[0]['k']})")
        ax.legend(fontsize=7)
        ax = axes["memory"]
        ax.plot(ds, [r["params_mb"] for r in depth], "k:", label="parameters P")
        ax.plot(ds, [r["mem_bp_mb"] for r in depth], "o-", label="backprop")
        for p in PERTURBATIONS:
            if f"mem_{p}_mb" in depth[0]:
                ax.plot(ds, [r[f"mem_{p}_mb"] for r in depth], "s-", label=f"fg {p}")
        ax.set(xscale="log", yscale="log", xlabel="hidden layers", ylabel="peak memory of a step (MB)",
               title="peak memory vs depth")
        ax.legend(fontsize=7)
        ax = axes["excess"]
        ax.plot(ds, [r["mem_bp_excess_mb"] for r in depth], "o-", label="backprop − P")
        for p in PERTURBATIONS:
            if f"mem_{p}_excess_mb" in depth[0]:
                lab = f"fg {p} − (k+1)P" if p == "weight" else f"fg {p} − P"
                ax.plot(ds, [r[f"mem_{p}_excess_mb"] for r in depth], "s-", label=lab)
        ax.set(xscale="log", xlabel="hidden layers", ylabel="MB",
               title="peak memory beyond parameter-sized arrays")
        ax.legend(fontsize=7)
        for key in ("time", "memory", "excess"):
            axes[key].set_xticks(ds, [str(d) for d in ds])
            axes[key].minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
        import json

        d = os.path.dirname(os.path.abspath(a.json))
        os.makedirs(d, exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(_clean(result), fh, indent=1)
        os.replace(tmp, a.json)
    if a.plot:
        if plot(result, a.plot):
            print(f"figure: {a.plot}")
    return result


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


if __name__ == "__main__":
    main()

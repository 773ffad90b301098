"""Models and workloads of bench/runtime.py: the model builders and their synthetic batches, the
:class:`Case` with every timed step (inference, backprop, forward-gradient steps in one k-tangent pass
and as k single-tangent passes), the peak-memory measurement of a step, and the GEMM-count bound on
the loop/batched speed-up."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import _timing as T

import dualtensor as dt
from dualtensor import optim
from dualtensor.backend import set_default_dtype
from dualtensor.core import observe
from dualtensor.fgrad.activity import activity_gradient, activity_tangents
from dualtensor.fgrad.aggregators import get_aggregator
from dualtensor.fgrad.samplers import as_generator, get_sampler
from dualtensor.fgrad.weight import flatten_params, forward_gradient, tangent_tree
from dualtensor.nn import functional as F
from dualtensor.nn import init as nn_init
from dualtensor.nn.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from dualtensor.nn.models import mlp, resnet18, vit
from dualtensor.nn.models.blocked import Blocked, eval_mode
from dualtensor.nn.models.resnet import BasicBlock, ResNet
from dualtensor.nn.module import Sequential, functional_call
from dualtensor.tensor import DualTensor, Zero

MODELS = ("logreg", "mlp", "cnn", "resnet18", "vit")
DATASETS = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
TINY_DATASETS = {"mnist": (1, 8, 8), "cifar": (3, 8, 8)}
DEFAULT_BATCH = {"mnist": 64, "cifar": 128}
MODEL_DATA = {"logreg": "mnist", "mlp": "mnist", "cnn": "mnist", "resnet18": "cifar", "vit": "cifar"}
PERTURBATIONS = ("weight", "activity")


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


def he_init(model: Any, seed: int) -> None:
    """He (Kaiming normal, ReLU gain) weights and zero biases for every Linear layer of ``model``."""
    rng = np.random.default_rng([seed, 3])
    for m in model.modules():
        if isinstance(m, Linear):
            w = m.weight.data
            w[...] = rng.standard_normal(w.shape).astype(w.dtype) * np.sqrt(2.0 / w.shape[1])
            if m.bias is not None:
                m.bias.data[...] = 0


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
        self.vg = dt.value_and_grad(self.objective)
        # block output shapes (one plain forward pass) for the activity loop
        h, self.shapes = self.x, []
        for b in self.blocks:
            h = b(h)
            self.shapes.append(tuple(h.shape))
        self.sizes = [math.prod(s[1:]) for s in self.shapes]

    # -- helpers ---------------------------------------------------------------------------
    def current(self) -> dict:
        return {n: self.params[n].data for n in self.names}

    def objective(self, P: dict) -> Any:
        """Mean cross-entropy of the case's batch under the parameters ``P`` (name -> array)."""
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
        _, grads, _ = forward_gradient(self.objective, self.current(), k, sampler=sampler, aggregate=self.agg,
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
            _, d_i = dt.jvp(self.objective, P, tangent_tree(V[i:i + 1], P))
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


# ----------------------------------------------------------------------------------------- memory

def measure_memory(case: Case, fn: Callable, sync: Callable, seed: Any) -> tuple[int, Any]:
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

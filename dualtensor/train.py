"""The training loop behind ``python -m dualtensor train``.

:func:`train` runs one configured experiment (:class:`TrainConfig`) and writes into its output
directory:

* ``config.json``: the run configuration;
* ``metrics.csv`` / ``metrics.jsonl``: one row per epoch (:data:`dualtensor.metrics.FIELDS`);
* ``last.npz``: the state after the latest finished epoch (written before training too, as
  epoch 0), everything ``--resume`` needs; ``best.npz``: the same for the epoch with the best
  validation metric (its weights give the reported test accuracy);
* ``summary.json``: configuration, status, best epoch, validation/test accuracy, timings;
* ``curves.png`` with ``plot=True`` (needs matplotlib).

Gradients (``grad``): ``backprop`` (reverse mode, the baseline), ``forward`` (multi-tangent
forward gradients by forward-mode AD) or ``simulated`` (the same estimator computed from the
exact gradient, for analysis); ``perturb`` chooses activity perturbation (tangents at every
block output, :func:`dualtensor.fgrad.activity.activity_gradient`) or weight perturbation (one
global tangent over all parameters, :func:`dualtensor.fgrad.weight.forward_gradient`).

Reproducibility: the model is initialised from ``seed``; the batch order of an epoch depends only
on ``(seed, epoch)``; the tangent generator and every dropout generator are seeded from ``seed``
and saved in each checkpoint, with the optimizer and schedule state, so a resumed run repeats the
uninterrupted run bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backend import heap_arrays
from .checkpoint import (Checkpoint, CheckpointError, atomic_write_text, generator_state, load_checkpoint,
                         save_checkpoint, set_generator_state)
from .metrics import clean_json, plot_history, write_history

__all__ = ["TrainConfig", "train", "TrainingDiverged", "ConfigError", "MODELS", "DATASETS", "GRADS",
           "PERTURBATIONS", "AGGREGATES", "OPTIMIZERS", "SCHEDULES", "RESUME_OVERRIDABLE", "DEFAULT_LR",
           "build_model", "evaluate", "EXIT_DIVERGED"]

MODELS = ("mlp", "resnet18", "vit")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
GRADS = ("backprop", "forward", "simulated")
PERTURBATIONS = ("activity", "weight")
AGGREGATES = ("single", "sum", "mean", "normalized", "projection")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")
MONITORS = ("val_acc", "val_loss")

#: exit status of a run stopped by a non-finite loss or gradient
EXIT_DIVERGED = 3

#: default learning rates when ``lr`` is None, by (gradient, optimizer); measured on digits/Fashion-MNIST
#: MLPs with projection forward gradients (see the README's results)
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("backprop", "sgd"): 0.1, ("forward", "sgd"): 1.0, ("simulated", "sgd"): 1.0,
    ("backprop", "adam"): 1e-3, ("forward", "adam"): 1e-3, ("simulated", "adam"): 1e-3,
    ("backprop", "adamw"): 1e-3, ("forward", "adamw"): 1e-3, ("simulated", "adamw"): 1e-3,
}

#: options a resumed run may change (everything else must equal the checkpoint's configuration)
RESUME_OVERRIDABLE = frozenset({"epochs", "early_stopping", "quiet", "plot", "data_dir", "download",
                                "eval_batch_size", "device", "threads", "heap_arrays", "out",
                                "overwrite"})

_TANGENT_STREAM = (0, 1)   # tangent generator: default_rng([seed, 0, 1])
_DROPOUT_STREAM = (0, 2)   # dropout generator i: default_rng([seed, 0, 2, i])


#: the files a run writes into its output directory
_RUN_FILES = ("config.json", "metrics.csv", "metrics.jsonl", "last.npz", "best.npz", "summary.json", "curves.png")


class ConfigError(ValueError):
    """An invalid or inconsistent training configuration."""


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became non-finite; the last good checkpoint is kept."""

    def __init__(self, message: str, *, epoch: int, step: int, checkpoint: Path | None,
                 checkpoint_epoch: int | None):
        super().__init__(message)
        self.epoch, self.step = epoch, step
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch


@dataclass
class TrainConfig:
    """Everything that defines a training run (CLI options map one to one onto these fields)."""

    # model
    model: str = "mlp"
    width: int | None = None          # mlp: hidden units (default 256); vit: embedding dim (default 256)
    depth: int | None = None          # mlp: hidden layers (default 2); vit: encoder blocks (default 6)
    stem: str = "imagenet"            # resnet18 stem ("imagenet" or "cifar")
    patch_size: int | None = None     # vit (default 4)
    heads: int | None = None          # vit (default 4)
    mlp_dim: int | None = None        # vit (default 2 * width)
    fine_blocks: bool = False         # resnet18: perturb every BasicBlock instead of every stage
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    limit: int | None = None
    val_size: int | None = None
    # gradient
    grad: str = "forward"
    k: int = 16
    aggregate: str = "projection"
    perturb: str = "activity"
    tangents: str = "normal"
    cone_alpha: float | None = None   # cone sampler: angle (radians) to the first tangent
    tangent_length: float | None = None  # varying_length sampler: longest length L
    shared_tangents: bool = False
    keep: str = "tape"
    # optimisation
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int | None = None
    gamma: float | None = None
    decay: float | None = None
    t_max: int | None = None
    eta_min: float | None = None
    epochs: int = 30
    batch_size: int = 32
    drop_last: bool = True            # skip the last, smaller batch of an epoch (its noisier step)
    eval_batch_size: int = 1000
    early_stopping: int | None = None
    monitor: str = "val_acc"
    # run
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None        # BLAS threads (threadpoolctl); None: 1 for mlp on cpu, else the library's
    heap_arrays: bool = False         # cpu: backend.heap_arrays() for the process (freed large arrays reused)
    dtype: str = "float32"
    out: str | None = None
    overwrite: bool = False
    plot: bool = False
    quiet: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**dict(d))

    @property
    def effective_lr(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[(self.grad, self.optimizer)]

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        def choice(name: str, options: tuple) -> None:
            if getattr(self, name) not in options:
                raise ConfigError(f"--{name.replace('_', '-')}: invalid choice {getattr(self, name)!r} "
                                  f"(choose from {', '.join(options)})")

        choice("model", MODELS)
        choice("dataset", DATASETS)
        choice("grad", GRADS)
        choice("perturb", PERTURBATIONS)
        choice("aggregate", AGGREGATES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("monitor", MONITORS)
        choice("device", ("cpu", "gpu"))
        choice("dtype", ("float32", "float64"))
        choice("keep", ("tape", "recompute"))
        choice("stem", ("imagenet", "cifar"))
        from .fgrad.samplers import SAMPLERS

        if self.tangents not in SAMPLERS:
            raise ConfigError(f"--tangents: invalid choice {self.tangents!r} (choose from {', '.join(SAMPLERS)})")
        if self.cone_alpha is not None and self.tangents != "cone":
            raise ConfigError("--cone-alpha applies to --tangents cone only")
        if self.tangent_length is not None and self.tangents != "varying_length":
            raise ConfigError("--tangent-length applies to --tangents varying_length only")
        for name in ("k", "epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("width", "depth", "patch_size", "heads", "mlp_dim", "limit", "step_size", "t_max",
                     "early_stopping", "threads"):
            v = getattr(self, name)
            if v is not None and int(v) < (0 if name == "depth" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {0 if name == 'depth' else 1}, got {v}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("--momentum and --weight-decay must be >= 0")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"--momentum applies to sgd only (optimizer {self.optimizer!r})")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------- building

def build_model(config: TrainConfig, input_shape: tuple[int, ...], classes: int) -> Any:
    """The configured network, initialised from ``config.seed`` in ``config.dtype`` (on the CPU)."""
    from . import nn
    from .backend import set_default_dtype
    from .nn import models

    set_default_dtype(config.dtype)
    nn.init.manual_seed(config.seed)
    c, h, w = input_shape
    if config.model == "mlp":
        model = models.mlp(c * h * w, width=config.width or 256,
                           depth=2 if config.depth is None else config.depth, classes=classes)
    elif config.model == "resnet18":
        model = models.resnet18(in_channels=c, classes=classes, stem=config.stem)
    else:
        if h != w:
            raise ConfigError(f"--model vit needs square images, got {h}x{w}")
        dim = config.width or 256
        patch = config.patch_size or 4
        if h % patch:
            raise ConfigError(f"--patch-size {patch} does not divide the image size {h}")
        heads = config.heads or 4
        if dim % heads:
            raise ConfigError(f"--width {dim} (the ViT embedding dim) is not divisible by --heads {heads}")
        model = models.vit(image_size=h, patch_size=patch, in_channels=c, classes=classes, dim=dim,
                           depth=config.depth or 6, heads=heads, mlp_dim=config.mlp_dim or 2 * dim)
    for i, (_, m) in enumerate(_dropout_modules(model)):
        m.rng = np.random.default_rng([config.seed, *_DROPOUT_STREAM, i])
    return model


def _dropout_modules(model: Any) -> list[tuple[str, Any]]:
    """Modules holding their own NumPy generator (dropout), in a fixed order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)]


def _blocks(model: Any, config: TrainConfig) -> list:
    if config.fine_blocks:
        if config.model != "resnet18":
            raise ConfigError("--fine-blocks applies to --model resnet18 only")
        return model.blocks(fine=True)
    return model.blocks()


def _per_sample_loss(logits: Any, y: Any) -> Any:
    from .nn import functional as F

    return F.cross_entropy(logits, y, reduction="none")


def make_gradient_fn(model: Any, config: TrainConfig, tangent_rng: np.random.Generator
                     ) -> Callable[[Any, Any], tuple[float, dict, Any]]:
    """``step(x, y) -> (mean loss, {param name: gradient}, logits)`` for the configured method."""
    from . import autodiff
    from .autodiff import primal_of
    from .nn import functional as F
    from .nn import functional_call

    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def current() -> dict:
        return {n: params[n].data for n in names}

    if config.grad == "backprop":
        def objective(P: dict, x: Any, y: Any):
            logits = functional_call(model, P, x)
            return F.cross_entropy(logits, y, reduction="mean"), primal_of(logits)

        vg = autodiff.value_and_grad(objective, has_aux=True)

        def backprop_step(x: Any, y: Any):
            (loss, logits), grads = vg(current(), x, y)
            return float(loss), grads, logits

        return backprop_step

    simulated = config.grad == "simulated"
    sampler: Any = config.tangents
    if config.cone_alpha is not None or config.tangent_length is not None:
        from .fgrad.samplers import get_sampler

        params_ = {"alpha": config.cone_alpha} if config.cone_alpha is not None else {"L": config.tangent_length}
        sampler = get_sampler(config.tangents, **params_)
    if config.perturb == "activity":
        from .fgrad.activity import activity_gradient

        blocks = _blocks(model, config)

        def activity_step(x: Any, y: Any):
            seen: dict = {}

            def loss_fn(logits: Any, target: Any):
                seen["logits"] = logits
                return _per_sample_loss(logits, target)

            res = activity_gradient(model, loss_fn, x, y, k=config.k, sampler=sampler,
                                    aggregate=config.aggregate, rng=tangent_rng, shared=config.shared_tangents,
                                    simulated=simulated, keep=config.keep, blocks=blocks)
            return float(res.loss), res.grads, primal_of(seen["logits"])

        return activity_step

    from .fgrad import weight

    estimator = weight.simulated_forward_gradient if simulated else weight.forward_gradient

    def weight_step(x: Any, y: Any):
        seen: dict = {}

        def f(P: dict):
            logits = functional_call(model, P, x)
            seen["logits"] = logits
            return F.cross_entropy(logits, y, reduction="mean")

        loss, grads, _ = estimator(f, current(), config.k, sampler=sampler, aggregate=config.aggregate,
                                   rng=tangent_rng, shared=config.shared_tangents)
        return float(primal_of(loss)), grads, primal_of(seen["logits"])

    return weight_step


def evaluate(model: Any, x: Any, y: Any, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on plain arrays, in batches."""
    from .nn import functional as F

    was = model.training
    model.eval()
    total, correct, n = 0.0, 0, len(y)
    try:
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            logits = model(xb)
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(axis=1) == yb).sum())
    finally:
        model.train(was)
    return (total / n, correct / n) if n else (float("nan"), float("nan"))


def _finite_arrays(arrays: Any) -> bool:
    arrays = list(arrays)
    if not arrays:
        return True
    from .backend import get_xp

    xp = get_xp(*arrays)
    flags = [xp.isfinite(a).all() for a in arrays]
    return bool(xp.stack(flags).all()) if xp is not np else all(bool(f) for f in flags)


# ---------------------------------------------------------------------------------------- the run

class _Log:
    """Messages on stdout (through tqdm when bars are shown), silenced by ``quiet``."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    @staticmethod
    def err(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def default_out_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.model}-{config.grad}"


def _rng_state(tangent_rng: np.random.Generator, model: Any) -> dict:
    return {"tangent": generator_state(tangent_rng),
            "dropout": {name: generator_state(m.rng) for name, m in _dropout_modules(model)}}


def _restore_rng(state: Mapping, tangent_rng: np.random.Generator, model: Any) -> None:
    set_generator_state(tangent_rng, state["tangent"])
    saved = state.get("dropout", {})
    mods = dict(_dropout_modules(model))
    if set(saved) != set(mods):
        raise CheckpointError(f"checkpoint has dropout generators {sorted(saved)}, the model {sorted(mods)}")
    for name, s in saved.items():
        set_generator_state(mods[name].rng, s)


def _check_resume_config(saved: Mapping, config: TrainConfig) -> None:
    now = config.to_dict()
    diff = [k for k in now if k not in RESUME_OVERRIDABLE and saved.get(k) != now[k]]
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diff)
        raise ConfigError(f"--resume: the configuration differs from the checkpoint's ({pairs}); only "
                          f"{', '.join(sorted(RESUME_OVERRIDABLE))} may change when resuming")


def _better(monitor: str, val_loss: float, val_acc: float, best: float) -> bool:
    if monitor == "val_loss":
        return val_loss < best
    return val_acc > best


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Run (or with ``resume`` continue) the configured training; returns the summary dict.

    See :func:`_train` for the exceptions; the BLAS threads are limited meanwhile (:func:`blas_threads`).
    With ``heap_arrays`` on the CPU it turns on :func:`dualtensor.backend.heap_arrays` for the process.
    """
    if config.heap_arrays and config.device == "cpu":
        heap_arrays()  # reuse freed large arrays across steps instead of page-faulting them in again
    threads = blas_threads(config)
    if threads is None:
        return _train(config, resume)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        _Log.err("--threads: threadpoolctl is not installed (pip install threadpoolctl); using the default")
        return _train(config, resume)
    with threadpool_limits(limits=threads, user_api="blas"):
        return _train(config, resume)


def blas_threads(config: TrainConfig) -> int | None:
    """BLAS threads for the run: ``config.threads``, else 1 for an MLP on the CPU (its small GEMMs gain
    nothing from threads and lose badly when the cores are shared), else None (the library default)."""
    if config.threads is not None:
        return int(config.threads)
    return 1 if config.model == "mlp" and config.device == "cpu" else None


def _train(config: TrainConfig, resume: bool) -> dict:
    """Run (or with ``resume`` continue) the configured training; returns the summary dict.

    Raises :class:`ConfigError` for bad options, :class:`TrainingDiverged` when the loss or a
    gradient turns non-finite (after writing a summary with ``status: "diverged"``), and
    :class:`dualtensor.data.DatasetNotFoundError` when the data is missing.
    """
    from tqdm import tqdm

    from . import data as dtdata
    from .backend import array_module, set_default_dtype, synchronize, to_device
    from .optim import make_optimizer, make_schedule

    config.validate()
    t_start = time.perf_counter()
    log = _Log(config.quiet)
    out = Path(config.out) if config.out else default_out_dir(config)
    config = dataclasses.replace(config, out=str(out), lr=config.effective_lr)  # the default lr, resolved
    last_path, best_path = out / "last.npz", out / "best.npz"
    ckpt: Checkpoint | None = None
    if resume:
        if not last_path.is_file():
            raise ConfigError(f"--resume: no checkpoint {last_path} to resume from")
        ckpt = load_checkpoint(last_path)
        _check_resume_config(ckpt.config, config)
    elif last_path.exists() and not config.overwrite:
        raise ConfigError(f"{out} already holds a run ({last_path.name}); pass --resume to continue it, "
                          "--overwrite to start it afresh, or choose another --out")
    elif config.overwrite:
        for name in _RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if config.device == "gpu":
        array_module("gpu")  # a clear error when there is no GPU
    set_default_dtype(config.dtype)

    # data
    splits = dtdata.load(config.dataset, data_dir=config.data_dir, download=config.download,
                         val_size=config.val_size, seed=config.seed, dtype=config.dtype, limit=config.limit)
    if config.drop_last and len(splits.train) < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(splits.train)} training samples "
                          "(lower it, or pass --no-drop-last)")
    if len(splits.val) == 0:
        raise ConfigError("the validation split is empty (--val-size 0); it is needed to pick the best epoch")
    xs = {name: (to_device(s.x, config.device), to_device(s.y, config.device))
          for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    model = build_model(config, splits.input_shape, splits.num_classes)
    if config.device != "cpu":
        model.to(config.device)
    n_params = model.num_parameters()

    opt_kw: dict[str, Any] = {"lr": config.effective_lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        opt_kw["momentum"] = config.momentum
    optimizer = make_optimizer(config.optimizer, list(model.parameters()), **opt_kw)
    sched_kw: dict[str, Any] = {}
    if config.schedule == "step":
        sched_kw = {"step_size": config.step_size or max(1, config.epochs // 3), "gamma": config.gamma}
    elif config.schedule == "exponential":
        sched_kw = {"gamma": config.gamma, "decay": config.decay}
        if config.gamma is None and config.decay is None:
            sched_kw["gamma"] = 0.9
    elif config.schedule == "cosine":
        sched_kw = {"T_max": config.t_max or config.epochs, "eta_min": config.eta_min}
    scheduler = make_schedule(config.schedule, optimizer, **sched_kw)
    tangent_rng = np.random.default_rng([config.seed, *_TANGENT_STREAM])
    step_fn = make_gradient_fn(model, config, tangent_rng)

    history: list[dict] = []
    state = {"best_epoch": 0, "best_metric": -math.inf if config.monitor == "val_acc" else math.inf,
             "best_val_loss": math.inf, "best_val_acc": 0.0, "since_improved": 0, "steps": 0, "samples": 0,
             "train_time": 0.0, "elapsed": 0.0, "stopped_early": False}
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        scheduler.load_state_dict(ckpt.scheduler_state)
        _restore_rng(ckpt.rng_state, tangent_rng, model)
        history = list(ckpt.train_state.get("history", []))
        state.update({k: v for k, v in ckpt.train_state.items() if k != "history"})
        state["stopped_early"] = False
        start_epoch = ckpt.epoch
        log(f"resuming {out} from epoch {start_epoch}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(clean_json(config.to_dict()), indent=2) + "\n")
    write_history(history, out / "metrics.csv", out / "metrics.jsonl")
    elapsed0 = float(state["elapsed"])

    def snapshot(path: Path, epoch: int) -> None:
        save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                        best_metric=state["best_metric"], config=config.to_dict(),
                        rng_state=_rng_state(tangent_rng, model),
                        train_state={**state, "history": history})

    last_good: tuple[Path | None, int | None] = (last_path, start_epoch) if ckpt is not None else (None, None)
    if ckpt is None:
        state["elapsed"] = elapsed0 + time.perf_counter() - t_start
        snapshot(last_path, 0)
        last_good = (last_path, 0)
    method = "" if config.grad == "backprop" else f" ({config.perturb}, k={config.k}, {config.aggregate})"
    if config.grad != "backprop" and config.perturb == "activity":
        sizes = model.activation_sizes(splits.input_shape, _blocks(model, config))
        method += f", per-sample activation dimension n = {sum(sizes):,} ({' + '.join(map(str, sizes))})"
    log(f"{config.model} ({n_params:,} parameters) on {splits.name} "
        f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test), {config.grad}{method}, "
        f"{config.optimizer} lr={config.effective_lr:g}, batch {config.batch_size}, out {out}")

    xp = array_module(config.device)
    status = "completed"
    try:
        model.train()
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if config.early_stopping and state["since_improved"] >= config.early_stopping:
                state["stopped_early"] = True
                break
            lr = float(optimizer.param_groups[0]["lr"])
            x_tr, y_tr = xs["train"]
            batches = dtdata.batches(x_tr, y_tr, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch - 1,
                                     drop_last=config.drop_last, device=config.device)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{config.epochs}", disable=config.quiet,
                       leave=False, file=sys.stderr, dynamic_ncols=True, unit="step")
            try:
                for step, (xb, yb) in enumerate(batches, 1):
                    loss, grads, logits = step_fn(xb, yb)
                    if not math.isfinite(loss):
                        raise _Diverge(f"the training loss is {loss}", epoch, step)
                    if not _finite_arrays(grads.values()):
                        bad = [n for n, g in grads.items() if not _finite_arrays([g])]
                        raise _Diverge(f"non-finite gradient for {', '.join(bad[:4])}"
                                       f"{' ...' if len(bad) > 4 else ''} (loss {loss:.4g})", epoch, step)
                    for name, p in model.named_parameters():
                        p.grad = grads.get(name)
                    optimizer.step()
                    optimizer.zero_grad()
                    b = int(yb.shape[0])
                    loss_sum += loss * b
                    correct += int((logits.argmax(axis=1) == yb).sum())
                    seen += b
                    state["steps"] += 1
                    state["samples"] += b
                    if not config.quiet:
                        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
                        bar.update()
            finally:
                bar.close()
            synchronize(xp)
            t_train = time.perf_counter() - t0
            state["train_time"] += t_train
            if not _finite_arrays(p.data for p in model.parameters()):
                raise _Diverge("the parameters became non-finite", epoch, len(batches))
            t1 = time.perf_counter()
            val_loss, val_acc = evaluate(model, *xs["val"], config.eval_batch_size)
            t_eval = time.perf_counter() - t1
            if not math.isfinite(val_loss):
                raise _Diverge(f"the validation loss is {val_loss}", epoch, len(batches))
            scheduler.step()
            state["elapsed"] = elapsed0 + time.perf_counter() - t_start
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "steps": len(batches),
                   "time": t_train, "eval_time": t_eval, "elapsed": state["elapsed"]}
            history.append(row)
            improved = _better(config.monitor, val_loss, val_acc, state["best_metric"])
            if val_loss < state["best_val_loss"]:
                state["best_val_loss"], state["since_improved"] = val_loss, 0
            else:
                state["since_improved"] += 1
            if improved:
                state.update(best_epoch=epoch, best_metric=val_acc if config.monitor == "val_acc" else val_loss,
                             best_val_acc=val_acc)
            write_history(history, out / "metrics.csv", out / "metrics.jsonl")
            if improved:
                snapshot(best_path, epoch)
            snapshot(last_path, epoch)
            last_good = (last_path, epoch)
            log(f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.3g}  {t_train:.1f}s"
                f"{'  *' if improved else ''}")
        if state["stopped_early"]:
            status = "early_stopped"
            log(f"early stopping: no validation-loss improvement for {state['since_improved']} epochs "
                f"(best epoch {state['best_epoch']})")
    except _Diverge as d:
        path, at = last_good
        msg = (f"training diverged at epoch {d.epoch}, step {d.step}: {d.reason}. "
               + (f"The last good checkpoint {path} (epoch {at}) is kept. " if path else "")
               + "Try a smaller --lr.")
        state["elapsed"] = elapsed0 + time.perf_counter() - t_start
        summary = _summary(config, state, history, n_params, splits, status="diverged", test=None)
        summary["error"] = msg
        atomic_write_text(out / "summary.json", json.dumps(clean_json(summary), indent=2) + "\n")
        raise TrainingDiverged(msg, epoch=d.epoch, step=d.step, checkpoint=path, checkpoint_epoch=at) from None

    # test with the best-validation weights
    test = None
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path).model_state)
        test = evaluate(model, *xs["test"], config.eval_batch_size)
        log(f"test (best epoch {state['best_epoch']}): loss {test[0]:.4f}  accuracy {test[1]:.4f}")
    state["elapsed"] = elapsed0 + time.perf_counter() - t_start
    summary = _summary(config, state, history, n_params, splits, status=status, test=test)
    atomic_write_text(out / "summary.json", json.dumps(clean_json(summary), indent=2) + "\n")
    if config.plot:
        try:
            plot_history(history, out / "curves.png",
                         title=f"{config.model} on {splits.name}, {config.grad}")
            log(f"plot: {out / 'curves.png'}")
        except ImportError as e:
            _Log.err(f"--plot: {e}; no plot written")
    return summary


class _Diverge(Exception):
    def __init__(self, reason: str, epoch: int, step: int):
        super().__init__(reason)
        self.reason, self.epoch, self.step = reason, epoch, step


def _summary(config: TrainConfig, state: Mapping, history: list, n_params: int, splits: Any, *, status: str,
             test: tuple[float, float] | None) -> dict:
    import platform

    from . import __version__

    last = history[-1] if history else {}
    best = next((r for r in history if r["epoch"] == state["best_epoch"]), {})
    steps, t_train = int(state["steps"]), float(state["train_time"])
    return {
        "status": status,
        "config": config.to_dict(),
        "lr": config.effective_lr,
        "dataset": {"name": splits.name, "train": len(splits.train), "val": len(splits.val),
                    "test": len(splits.test), "input_shape": list(splits.input_shape)},
        "parameters": n_params,
        "epochs_run": len(history),
        "best_epoch": state["best_epoch"] or None,
        "best_val_acc": best.get("val_acc"),
        "best_val_loss": best.get("val_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "final_val_acc": last.get("val_acc"),
        "test_loss": None if test is None else test[0],
        "test_acc": None if test is None else test[1],
        "blas_threads": blas_threads(config),
        "steps": steps,
        "train_time_s": t_train,
        "wall_time_s": float(state["elapsed"]),
        "steps_per_s": steps / t_train if t_train > 0 else None,
        "samples_per_s": int(state["samples"]) / t_train if t_train > 0 else None,
        "versions": {"dualtensor": __version__, "numpy": np.__version__, "python": platform.python_version()},
    }

"""Command line: ``python -m dualtensor train [options]`` (also the ``dualtensor`` console script).

Exit status: 0 on success, 2 for invalid options or missing data, 3 when training diverged
(non-finite loss or gradient; the last good checkpoint is kept), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import train as _train

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _checked(cast: type, what: str, ok, rule: str):
    """An argparse type: ``cast`` the text, then insist on ``ok(value)`` (``rule`` names the bound)."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v
    return parse


_positive_int = _checked(int, "an integer", lambda v: v >= 1, ">= 1")
_nonneg_int = _checked(int, "an integer", lambda v: v >= 0, ">= 0")
_positive_float = _checked(float, "a number", lambda v: 0 < v < float("inf"), "a positive number")


_nonneg_float = _checked(float, "a number", lambda v: 0 <= v < float("inf"), "a non-negative number")


def _sampler_names() -> list[str]:
    try:
        from .fgrad.samplers import SAMPLERS

        return sorted(SAMPLERS)
    except Exception:  # keep --help working even if fgrad is broken
        return ["normal", "rademacher", "orthonormal", "basis"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``train`` (one per :class:`dualtensor.train.TrainConfig` field)."""
    d = _train.TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=_train.MODELS, default=d.model, help="network (default: %(default)s)")
    g.add_argument("--width", type=_positive_int, help="mlp: hidden units (256); vit: embedding dim (256)")
    g.add_argument("--depth", type=_nonneg_int, help="mlp: hidden layers (2); vit: encoder blocks (6)")
    g.add_argument("--stem", choices=("imagenet", "cifar"), default=d.stem,
                   help="resnet18 stem: 7x7/2 conv + max-pool, or 3x3/1 conv (default: %(default)s)")
    g.add_argument("--patch-size", type=_positive_int, help="vit patch size (4)")
    g.add_argument("--heads", type=_positive_int, help="vit attention heads (4)")
    g.add_argument("--mlp-dim", type=_positive_int, help="vit MLP hidden size (2 x width)")
    g.add_argument("--fine-blocks", action="store_true",
                   help="resnet18 activity perturbation: one block per BasicBlock instead of per stage")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=_train.DATASETS, default=d.dataset, help="(default: %(default)s)")
    g.add_argument("--data-dir", help="directory holding the dataset files (else the cache "
                                      "$DUALTENSOR_DATA or ~/.cache/dualtensor, then system copies)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; fail with instructions when the files are missing")
    g.add_argument("--limit", type=_positive_int, help="use only the first N training samples")
    g.add_argument("--val-size", type=_nonneg_int,
                   help="validation samples carved from the training set (10000; digits 180)")

    g = p.add_argument_group("gradient")
    g.add_argument("--grad", choices=_train.GRADS, default=d.grad,
                   help="backprop (reverse mode), forward (forward gradients by forward-mode AD) or simulated "
                        "(the same estimator from the exact gradient) (default: %(default)s)")
    g.add_argument("--k", type=_positive_int, default=d.k, help="tangents per step (default: %(default)s)")
    g.add_argument("--aggregate", choices=_train.AGGREGATES, default=d.aggregate,
                   help="how k directional derivatives become one estimate (default: %(default)s)")
    g.add_argument("--perturb", choices=_train.PERTURBATIONS, default=d.perturb,
                   help="tangents on block outputs (activity) or on all parameters (weight) "
                        "(default: %(default)s)")
    g.add_argument("--tangents", choices=_sampler_names(), default=d.tangents,
                   help="tangent sampler (default: %(default)s)")
    g.add_argument("--cone-alpha", type=_nonneg_float, help="cone tangents: angle to the first one (radians)")
    g.add_argument("--tangent-length", type=_positive_float,
                   help="varying_length tangents: lengths spread over [1, L] (L)")
    g.add_argument("--shared-tangents", action="store_true",
                   help="activity perturbation: one tangent draw shared by all samples of a batch")
    g.add_argument("--keep", choices=("tape", "recompute"), default=d.keep,
                   help="activity perturbation: keep block intermediates on a tape or recompute them "
                        "(default: %(default)s)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=_train.OPTIMIZERS, default=d.optimizer, help="(default: %(default)s)")
    g.add_argument("--lr", type=_positive_float,
                   help="learning rate (default by gradient and optimizer: "
                        + ", ".join(f"{g_}/{o}={v:g}" for (g_, o), v in _train.DEFAULT_LR.items()
                                    if o != "adamw") + ")")
    g.add_argument("--momentum", type=_nonneg_float, default=d.momentum, help="sgd momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument("--schedule", choices=_train.SCHEDULES, default=d.schedule,
                   help="per-epoch learning-rate schedule (default: %(default)s)")
    g.add_argument("--step-size", type=_positive_int, help="step schedule: epochs per decay (epochs/3)")
    g.add_argument("--gamma", type=_nonneg_float, help="step/exponential schedule: decay factor (0.1 / 0.9)")
    g.add_argument("--decay", type=_nonneg_float,
                   help="exponential schedule: lr = lr0 * exp(-decay * epoch) (instead of --gamma)")
    g.add_argument("--t-max", type=_positive_int, help="cosine schedule: period in epochs (epochs)")
    g.add_argument("--eta-min", type=_nonneg_float, help="cosine schedule: final lr (0)")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=d.drop_last,
                   help="skip each epoch's last, smaller batch (default: %(default)s)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size,
                   help="(default: %(default)s)")
    g.add_argument("--early-stopping", type=_positive_int, metavar="N",
                   help="stop after N epochs without a lower validation loss")
    g.add_argument("--monitor", choices=("val_acc", "val_loss"), default=d.monitor,
                   help="validation metric that picks the best checkpoint (default: %(default)s)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed, help="(default: %(default)s)")
    g.add_argument("--device", choices=("cpu", "gpu"), default=d.device, help="(default: %(default)s)")
    g.add_argument("--threads", type=_positive_int,
                   help="BLAS threads (default: 1 for --model mlp on the cpu, whose small GEMMs gain nothing "
                        "from threads; else the library's default)")
    g.add_argument("--heap-arrays", action="store_true",
                   help="keep freed large arrays in the process heap (glibc; dualtensor.backend.heap_arrays): "
                        "1.4-2x faster k = 16 CNN steps here, 0.8-1.3x on other steps")
    g.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype, help="(default: %(default)s)")
    g.add_argument("--out", help="output directory (default: runs/<time>-<dataset>-<model>-<grad>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.npz (its configuration is kept; "
                        "--epochs and --early-stopping may change)")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out that already holds a run")
    g.add_argument("--plot", action="store_true", help="write curves.png (needs matplotlib)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualtensor", description="dualtensor: forward-mode AD and "
                                     "forward-gradient training on NumPy/CuPy.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dualtensor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    t = sub.add_parser("train", help="train a network (forward gradients or backprop)",
                       description="Train a network with multi-tangent forward gradients or backprop; writes "
                                   "metrics, checkpoints and a summary into --out.")
    add_train_arguments(t)
    return parser


def _explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations given on the command line (parsed again with every default suppressed)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices["train"]
    saved = [(a, a.default) for a in train_parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns = parser.parse_args(argv)
    finally:
        for a, default in saved:
            a.default = default
    return set(vars(ns)) - {"command"}


def config_from_args(ns: argparse.Namespace) -> _train.TrainConfig:
    fields = {f for f in _train.TrainConfig.__dataclass_fields__}
    return _train.TrainConfig(**{k: v for k, v in vars(ns).items() if k in fields})


def _run_train(parser: argparse.ArgumentParser, argv: Sequence[str], ns: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_checkpoint

    prog = "dualtensor train"
    config = config_from_args(ns)
    if ns.resume:
        if not ns.out:
            print(f"{prog}: error: --resume needs --out DIR (the run to continue)", file=sys.stderr)
            return EXIT_USAGE
        from pathlib import Path

        try:
            saved = load_checkpoint(Path(ns.out) / "last.npz").config
        except CheckpointError as e:
            print(f"{prog}: error: --resume: {e}", file=sys.stderr)
            return EXIT_USAGE
        explicit = _explicit_options(parser, argv)
        merged = dict(saved)
        for key in explicit:
            if key in merged:
                merged[key] = getattr(config, key)
        merged["out"] = ns.out
        try:
            config = _train.TrainConfig.from_dict(merged)
        except (TypeError, _train.ConfigError) as e:
            print(f"{prog}: error: --resume: incompatible checkpoint configuration: {e}", file=sys.stderr)
            return EXIT_USAGE
    if not config.out:
        config.out = str(_train.default_out_dir(config))
    try:
        summary = _train.train(config, resume=ns.resume)
    except _train.TrainingDiverged as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return _train.EXIT_DIVERGED
    except (_train.ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last finished epoch is in {config.out}/last.npz "
              "(continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if config.quiet:
        acc = summary.get("test_acc")
        print(f"test accuracy {acc:.4f}" if acc is not None else "no test accuracy")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dualtensor`` and the ``dualtensor`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    return _run_train(parser, argv, ns)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m dualtensor train|sweep|report [options]`` (also the ``dualtensor`` script).

``sweep`` and ``report`` are :mod:`dualtensor.sweep.cli` and :mod:`dualtensor.report`. ``train`` is
a thin layer over :func:`dualtensor.train.fit`: it parses the options, builds the
:class:`~dualtensor.train.TrainConfig` and maps the outcome to the exit status: 0 done, 2 a user
error (one line naming the problem), 3 diverged (the last good checkpoint is kept), 130/143
interrupted by SIGINT/SIGTERM (resumable).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError
from .train.errors import EXIT_DIVERGED, EXIT_OK, EXIT_USAGE, exit_status

PROG = "dualtensor train"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from .distributed import launcher_rank

        once = launcher_rank() in (None, 0)  # every MPI rank parses the same line: rank 0 says it
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if once else None)


def _number(cast: type, what: str) -> Any:
    """An argparse type that only reads the number; its bounds are :meth:`TrainConfig.validate`'s."""
    def parse(text: str) -> Any:
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    return parse


_int = _number(int, "an integer")
_float = _number(float, "a number")


def add_train_arguments(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The options of ``train``: one per :class:`dualtensor.train.TrainConfig` field, plus the modes
    ``--resume`` and ``--overwrite``. Only options given on the command line reach the namespace.
    ``sweep``: the subset a sweep's trials take (no ``--lr``, which it searches, nor the run modes)."""
    from .train import CHOICES, DEFAULT_LR, MODEL_OPTIONS, RESUME_MUTABLE, TrainConfig
    from .data import get_spec
    from .train.config import EXP_GAMMA, STEP_EVERY_FRACTION, STEP_GAMMA, option

    d = TrainConfig()
    mlp, vit = MODEL_OPTIONS["mlp"], MODEL_OPTIONS["vit"]

    def choice(name: str, help_: str, **kw: Any) -> None:
        g.add_argument(f"--{name.replace('_', '-')}", choices=CHOICES[name],
                       help=f"{help_} (default: {getattr(d, name) or MODEL_OPTIONS['resnet18'].get(name)})", **kw)

    g = p.add_argument_group("model")
    choice("model", "network")
    g.add_argument("--width", type=_int,
                   help=f"mlp: hidden units ({mlp['width']}); vit: embedding dim ({vit['width']})")
    g.add_argument("--depth", type=_int,
                   help=f"mlp: hidden layers ({mlp['depth']}); vit: encoder blocks ({vit['depth']})")
    choice("stem", "resnet18 stem: 7x7/2 conv + max-pool, or 3x3/1 conv")
    g.add_argument("--patch-size", type=_int, help=f"vit patch size ({vit['patch_size']})")
    g.add_argument("--heads", type=_int, help=f"vit attention heads ({vit['heads']})")
    g.add_argument("--mlp-dim", type=_int, help="vit MLP hidden size (2 x width)")
    g.add_argument("--fine-blocks", action="store_true",
                   help="resnet18 activity perturbation: one block per BasicBlock instead of per stage")

    g = p.add_argument_group("data")
    choice("dataset", "dataset")
    g.add_argument("--data-dir", help="folder holding the dataset files (else the cache $DUALTENSOR_DATA or "
                                      "~/.cache/dualtensor, then system copies)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; fail with instructions when the files are missing")
    g.add_argument("--mirror", dest="mirrors", action="append", metavar="URL",
                   help="download from this base URL instead of the built-in mirrors (repeatable; '{dataset}' is "
                        "replaced by the dataset's name; env DUALTENSOR_MIRRORS); checksums are still enforced")
    g.add_argument("--limit", type=_int, help="use only the first N training samples")
    g.add_argument("--val-size", type=_int,
                   help="validation samples carved from the training set ("
                        + "; ".join(f"{n} {get_spec(n).default_val_size}" for n in CHOICES["dataset"]) + ")")

    g = p.add_argument_group("gradient")
    choice("grad", "backprop (reverse mode), forward (forward gradients by forward-mode AD) or simulated (the "
                   "same estimator from the exact gradient)")
    g.add_argument("--k", type=_int, help=f"tangents per step (default: {d.k})")
    choice("aggregate", "how k directional derivatives become one estimate")
    choice("perturb", "tangents on block outputs (activity) or on all parameters (weight)")
    choice("tangents", "tangent sampler")
    g.add_argument("--cone-alpha", type=_float,
                   help="cone tangents: angle to the first one (radians, 0..pi)")
    g.add_argument("--tangent-length", type=_float,
                   help="varying_length tangents: lengths spread over [1, L] (L >= 1)")
    g.add_argument("--shared-tangents", action="store_true",
                   help="activity perturbation: one tangent draw shared by all samples of a batch")
    choice("estimator", "activity perturbation: per-sample (a tangent, a directional derivative and an estimate "
                        "per sample) or batch (the paper's reference code: tangents shared by the batch, the "
                        "batch-mean loss's directional derivative, one estimate for every sample; its learning "
                        "rates are about 1/batch of per-sample's)")
    choice("keep", "activity perturbation: keep block intermediates on a tape or recompute them")

    g = p.add_argument_group("optimisation")
    choice("optimizer", "optimizer")
    if not sweep:
        g.add_argument("--lr", type=_float,
                       help="learning rate (default by gradient and optimizer: "
                            + ", ".join(f"{g_}/{o}={v:g}" for (g_, o), v in DEFAULT_LR.items() if o != "adamw")
                            + "); may change on --resume (recorded)")
    g.add_argument("--momentum", type=_float, help=f"sgd momentum (default: {d.momentum})")
    g.add_argument("--weight-decay", type=_float, help=f"(default: {d.weight_decay})")
    choice("schedule", "per-epoch learning-rate schedule")
    g.add_argument("--step-size", type=_int,
                   help=f"step schedule: epochs per decay (epochs/{STEP_EVERY_FRACTION})")
    g.add_argument("--gamma", type=_float,
                   help=f"step/exponential schedule: decay factor ({STEP_GAMMA} / {EXP_GAMMA})")
    g.add_argument("--decay", type=_float,
                   help="exponential schedule: lr = lr0 * exp(-decay * epoch) (instead of --gamma)")
    g.add_argument("--t-max", type=_int, help="cosine schedule: period in epochs (epochs)")
    g.add_argument("--eta-min", type=_float, help="cosine schedule: final lr (0)")
    g.add_argument("--epochs", type=_int, help=f"(default: {d.epochs})")
    g.add_argument("--batch-size", type=_int, help=f"(default: {d.batch_size})")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction,
                   help=f"skip each epoch's last, smaller batch (default: {d.drop_last})")
    g.add_argument("--eval-batch-size", type=_int, help=f"(default: {d.eval_batch_size})")
    g.add_argument("--early-stopping", type=_int, metavar="N",
                   help="stop after N epochs without a better value of the --monitor metric")
    choice("monitor", "validation metric that picks the best epoch and drives early stopping")
    g.add_argument("--track-test", action=argparse.BooleanOptionalAction,
                   help="also evaluate the test set after every epoch (test_loss, test_acc in the metrics, for "
                        "test curves; the best epoch is still chosen on validation)")
    g.add_argument("--test", action=argparse.BooleanOptionalAction,
                   help="evaluate the best epoch on the test set at the end (default: yes; a sweep's trials: no)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=_int, help=f"(default: {d.seed})")
    choice("device", "")
    g.add_argument("--threads", type=_int,
                   help="BLAS threads (default: the BLAS library's own, usually every core)")
    g.add_argument("--heap-arrays", action="store_true",
                   help="keep freed large arrays in the process heap (glibc; dualtensor.allocator.heap_arrays): "
                        "1.4-2x faster k = 16 CNN steps here, 0.8-1.3x on other steps")
    choice("dtype", "")
    if sweep:
        g.add_argument("--out", help="sweep folder (default: sweeps/<time>-<dataset>-<model>-<grad>, or "
                                     "sweeps/<preset>); run the same command again to continue it")
        g.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")
    else:
        g.add_argument("--out", help="run folder (default: runs/<time>-<dataset>-<model>-<grad>); dualtensor "
                                     "writes only into folders it made or empty ones")
        g.add_argument("--init-from", metavar="RUN", help="start a new run from the weights of RUN's last.npz (or "
                                                          "of a checkpoint file), e.g. after a divergence")
        g.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last.npz; only "
                            + ", ".join(option(k) for k in sorted(RESUME_MUTABLE)) + " may change")
        g.add_argument("--overwrite", action="store_true",
                       help="delete the files of the run in --out and start afresh")
        g.add_argument("--plot", action="store_true", help="write curves.png (needs matplotlib)")
        g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    g = p.add_argument_group("scale-out (start with mpiexec -n P or srun; needs the mpi extra)")
    choice("parallel", "split each step's k tangents (forward gradients) or its batch over the MPI ranks; rank 0 "
                       "writes the run folder")
    g.add_argument("--check-every", type=_int, metavar="N",
                   help=f"compare the ranks' parameters every N steps, 0: never (default: {d.check_every})")
    choice("other_tangents", "--parallel tangents, activity perturbation: a rank gets the other ranks' tangents for "
                             "its samples' aggregation by one exchange (Alltoallv) or draws them again from the keyed "
                             "stream (no tangent moves); the same numbers either way")


def build_parser() -> argparse.ArgumentParser:
    """The ``dualtensor`` command line parser."""
    from . import __version__

    parser = _Parser(prog="dualtensor", description="dualtensor: forward-mode AD and forward-gradient training "
                                                    "on NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"dualtensor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    t = sub.add_parser("train", argument_default=argparse.SUPPRESS, prog=PROG,
                       help="train a network (forward gradients or backprop)",
                       description="Train a network with multi-tangent forward gradients or backprop; writes "
                                   "metrics, checkpoints and a summary into --out. Exit status: 0 done, 2 user "
                                   "error, 3 diverged, 130/143 interrupted.")
    add_train_arguments(t)
    from .sweep.cli import add_sweep_arguments
    from .report import add_report_arguments

    w = sub.add_parser("sweep", argument_default=argparse.SUPPRESS, prog="dualtensor sweep",
                       help="search the learning rate (Optuna), then train seeds at the best one",
                       description="An Optuna study over the learning rate (and --search ranges) of training runs "
                                   "with the options of train, then --seeds runs at the best values; SQLite in the "
                                   "sweep folder unless --storage. Run the same command again to continue. Exit "
                                   "status: 0 done, 2 user error, 130/143 interrupted.")
    add_train_arguments(w, sweep=True)
    add_sweep_arguments(w)
    r = sub.add_parser("report", prog="dualtensor report", help="tables (Markdown, CSV) and plots of runs and sweeps",
                       description="Collect the runs and sweeps under DIR... into Table I's shape: rows gradient/k/"
                                   "aggregator/estimator, columns model/dataset, cells the best test error mean "
                                   "+- std over seeds, with the chosen lr and epochs.")
    add_report_arguments(r)
    return parser


def default_out_dir(config: Any) -> str:
    """``runs/<time>-<dataset>-<model>-<grad>`` (with a numeric suffix when that exists)."""
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.dataset}-{config.model}-{config.grad}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return str(path)


def _error(msg: str, comm: Any = None, everywhere: bool = True) -> None:
    """The one error line (in a multi-rank job: from rank 0 when every rank has the same error,
    else from the rank that has it, which it names)."""
    if comm is not None and comm.size > 1:
        if everywhere and not comm.is_root:
            return
        msg = msg if everywhere or comm.is_root else f"rank {comm.rank}: {msg}"
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _one_line_warnings(comm: Any = None) -> Iterator[None]:
    """Warnings as one line each (in a multi-rank job, from rank 0 only: the ranks run the same run)."""
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if comm is not None and not comm.is_root:
            return
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def run_train(options: dict[str, Any]) -> int:
    """Run ``train`` with the options given on the command line; returns the exit status."""
    from . import distributed
    from .train import TrainConfig, TrainingDiverged, fit, interrupt_on_signals, resume_config, run_mode

    opts = dict(options)
    resume, overwrite = opts.pop("resume", False), opts.pop("overwrite", False)
    out = opts.get("out")
    try:
        comm = distributed.init()
    except distributed.DistributedError as e:  # started by mpiexec, but there is no mpi4py
        _error(str(e))
        return EXIT_USAGE

    def configured() -> Any:
        if run_mode(resume, overwrite, out) == "resume":
            return resume_config(out, opts)
        config = TrainConfig(**opts)
        return config.replace(out=config.out or default_out_dir(config))

    passes = (TrainingDiverged, UsageError, distributed.DistributedError)
    with _one_line_warnings(comm), interrupt_on_signals(), distributed.abort_on_error(comm, passes):
        try:
            config = distributed.agreed(comm, configured)
            out = config.out
            result = fit(config, resume=resume, overwrite=overwrite)
        except distributed.PeerFailed as e:  # the failing rank has said why
            return e.code
        except TrainingDiverged as e:
            _error(str(e), comm)
            return EXIT_DIVERGED
        except UsageError as e:
            _error(str(e), comm, getattr(e, "all_ranks", True))
            return EXIT_USAGE
        except distributed.DistributedError as e:
            _error(str(e), comm)
            return 1
        except KeyboardInterrupt as e:
            path, epoch = getattr(e, "checkpoint", None), getattr(e, "checkpoint_epoch", None)
            where = (f"; {path} holds epoch {epoch}: continue with python -m dualtensor train --resume --out {out}"
                     if path is not None else "")
            _error(f"interrupted ({signal.Signals(exit_status(e) - 128).name}){where}", comm)
            if comm.size > 1:  # a rank may wait in a collective for one that stopped: end the job, giving
                if not comm.is_root:  # rank 0 (which writes the summary) a moment to finish first
                    time.sleep(5)
                comm.abort(exit_status(e))
            return exit_status(e)
    if config.quiet and comm.is_root:
        acc = result.summary.get("test_acc")
        print(f"test accuracy {acc:.4f}" if acc is not None else "no test accuracy")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dualtensor`` and the ``dualtensor`` script; returns the exit status."""
    parser = build_parser()
    try:
        ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help / --version (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    options = vars(ns)
    command = options.pop("command")
    if command == "sweep":
        from .sweep.cli import run_sweep_command

        return run_sweep_command(options)
    if command == "report":
        from .report import run_report_command

        return run_report_command(options)
    return run_train(options)


if __name__ == "__main__":
    sys.exit(main())

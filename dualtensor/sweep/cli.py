"""``python -m dualtensor sweep``: the options and the command (a thin layer over :func:`run_sweep`)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..train.errors import EXIT_OK, EXIT_USAGE, exit_status
from .config import PRUNERS, SweepConfig, SweepError, parse_search
from .presets import GRID_KEYS, PRESETS, expand_preset, open_preset_folder

__all__ = ["add_sweep_arguments", "run_sweep_command", "PROG"]

PROG = "dualtensor sweep"
_SWEEP_KEYS = ("trials", "seeds", "workers", "storage", "study", "lr_min", "lr_max", "pruner", "search", "preset",
               "scale", "only", "quiet")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's own options (the training options come from ``add_train_arguments``)."""
    g = p.add_argument_group("sweep")
    g.add_argument("--trials", type=int, help="trials of the search (default: 20; a preset's scaled value)")
    g.add_argument("--seeds", type=int, help="final runs at the best values, seeds seed+1... (default: 3)")
    g.add_argument("--workers", type=int, help="local worker processes (default: 1); BLAS threads are split "
                                               "between them unless --threads")
    g.add_argument("--storage", metavar="URL", help="the study's SQLAlchemy URL, e.g. postgresql+psycopg://user@"
                                                    "host/db, shared by workers on several machines (default: "
                                                    "SQLite in the sweep folder)")
    g.add_argument("--study", help="study name in the storage (default: the sweep folder's name; with a preset, "
                                   "a prefix of each sweep's name)")
    g.add_argument("--lr", type=float, help=argparse.SUPPRESS)  # refused with a reason below
    g.add_argument("--lr-min", type=float, help="lower bound of the log-uniform learning rate (default: 1e-6)")
    g.add_argument("--lr-max", type=float, help="upper bound (default: 1)")
    g.add_argument("--pruner", choices=PRUNERS, help="stop poor trials early on their per-epoch validation "
                                                     "accuracy: Optuna's median or successive-halving pruner "
                                                     "(default: median)")
    g.add_argument("--search", action="append", metavar="NAME=SPEC",
                   help="also search an option: NAME=V1,V2,... (choices) or NAME=LOW:HIGH[:log] (repeatable)")
    g.add_argument("--preset", choices=tuple(PRESETS), help="the paper's grid of sweeps (see the README); "
                                                            "--out holds one sweep folder per grid entry")
    g.add_argument("--scale", type=float, help="preset scale s in (0, 1]: training subset, validation size, epoch "
                                               "cap, trials and patience shrink with s (default: 1, the paper's)")
    g.add_argument("--only", action="append", metavar="KEY=V1,V2",
                   help=f"preset: keep the grid entries whose KEY ({', '.join(GRID_KEYS)}) is one of the values "
                        "(repeatable)")


def _say(kind: str, msg: str) -> None:
    print(f"{PROG}: {kind}: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)


def _only(items: list[str]) -> dict[str, tuple]:
    out = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SweepError(f"--only {item!r}: expected KEY=V1,V2,...")
        out[key.strip().replace("-", "_")] = tuple(v.strip() for v in values.split(","))
    return out


def sweeps_from_options(options: dict[str, Any]) -> list[SweepConfig]:
    """The sweep(s) the command line asks for (a preset expands to several)."""
    from ..train import TrainConfig

    opts = dict(options)
    if "lr" in opts:
        raise SweepError("--lr: a sweep searches the learning rate; bound it with --lr-min and --lr-max")
    own = {k: opts.pop(k) for k in _SWEEP_KEYS if k in opts}
    own.pop("quiet", None)
    search = [parse_search(t) for t in own.pop("search", [])]
    preset, scale, only = own.pop("preset", None), own.pop("scale", None), own.pop("only", [])
    if preset is None and (scale is not None or only):
        raise SweepError(f"{'--scale' if scale is not None else '--only'} applies to --preset only")
    sweep_opts = {k: own[k] for k in ("workers", "storage", "lr_min", "lr_max", "pruner") if k in own}
    out = opts.pop("out", None)
    if preset is None:
        train = _template(TrainConfig(**opts))
        folder = out or f"sweeps/{time.strftime('%Y%m%d-%H%M%S')}-{train.dataset}-{train.model}-{train.grad}"
        return [SweepConfig(train=train, out=folder, search=search, study=own.get("study"),
                            **{k: own[k] for k in ("trials", "seeds") if k in own}, **sweep_opts)]
    given = {**opts, **{k: own[k] for k in ("trials", "seeds") if k in own}}
    base = Path(out or f"sweeps/{preset}")
    configs = []
    for name, train_opts, counts in expand_preset(preset, 1.0 if scale is None else scale, _only(only), given):
        study = f"{own['study']}-{name}" if "study" in own else None
        configs.append(SweepConfig(train=_template(TrainConfig(**train_opts)), out=str(base / name), search=search,
                                   study=study, **counts, **sweep_opts))
    return configs


def _template(config: Any) -> Any:
    """A trial template: resolved, its learning rate left to the search."""
    return config.resolved().replace(lr=None)


def run_sweep_command(options: dict[str, Any]) -> int:
    """Run ``sweep`` with the options given on the command line; returns the exit status."""
    from ..train import interrupt_on_signals
    from .worker import run_sweep

    quiet = options.get("quiet", False)
    said: set = set()

    def show(message: Any, *args: Any, **kwargs: Any) -> None:  # each distinct warning once per sweep
        if str(message) not in said:
            said.add(str(message))
            _say("warning", str(message))

    with warnings.catch_warnings(), interrupt_on_signals():
        warnings.showwarning = show
        try:
            configs = sweeps_from_options(options)
            for c in configs:  # every sweep of a preset is checked before the first one starts
                c.validate()
            if "preset" in options:
                open_preset_folder(configs[0].folder.parent, options["preset"])
            results = []
            for i, c in enumerate(configs):
                if len(configs) > 1 and not quiet:
                    print(f"sweep {i + 1}/{len(configs)}: {c.out}", flush=True)
                results.append(run_sweep(c, quiet=quiet))
        except UsageError as e:
            _say("error", str(e))
            return EXIT_USAGE
        except KeyboardInterrupt as e:
            _say("error", "interrupted; run the same command again to continue the sweep")
            return exit_status(e)
    for c, r in zip(configs, results):
        if quiet:
            continue
        best = r.get("best")
        line = f"{c.out}: " + (f"best lr {best['lr']:.3g} (trial {r['best_trial']}, val_acc {r['best_val_acc']:.4f})"
                               if best else "no complete trial")
        if r.get("test_acc_mean") is not None:
            line += f"; test accuracy {r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f} over {len(r['seeds'])} seeds"
        print(line, flush=True)
    return EXIT_OK


__all__ += ["sweeps_from_options"]

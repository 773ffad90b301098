"""Studies over the training API (Optuna): ``python -m dualtensor sweep``.

A sweep searches the learning rate (log-uniform in ``[lr_min, lr_max]``; other options too, given as
:class:`SearchSpace`) with one training run per trial (objective: the run's best validation
accuracy; Optuna's pruner stops runs early on their per-epoch validation accuracy), then trains
``seeds`` final runs at the best values. The study lives in SQLite in the sweep folder by default
or in any SQLAlchemy storage (PostgreSQL for workers on many machines); kill a sweep and run it
again and it continues (an interrupted trial resumes from its checkpoint).
"""
from .config import PRUNERS, SEARCHABLE, SWEEP_MUTABLE, SearchSpace, SweepConfig, SweepError, parse_search
from .folder import SweepDir
from .presets import PRESETS, expand_preset, preset_grid
from .worker import run_sweep, seed_list, work

__all__ = ["SweepConfig", "SweepError", "SearchSpace", "parse_search", "PRUNERS", "SEARCHABLE", "SWEEP_MUTABLE",
           "SweepDir", "run_sweep", "work", "seed_list", "PRESETS", "expand_preset", "preset_grid"]

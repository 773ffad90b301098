"""The training API behind ``python -m dualtensor train``; sweeps and MPI ranks call it too.

:func:`fit` trains the run a :class:`TrainConfig` describes. Its pieces can be used alone:
:func:`train_epoch` and :func:`evaluate` (the loop), :func:`make_step` (one factory for the
step of every gradient mode), :class:`TrainState` (typed progress), :class:`RunDir` (the run
folder, the only code that touches ``--out``) and the callbacks (finite check, early stopping,
metrics, checkpoints, progress, plot).

Gradients (``grad``): ``backprop`` (reverse mode, the baseline), ``forward`` (multi-tangent
forward gradients by forward-mode AD) or ``simulated`` (the same estimator computed from the exact
gradient); ``perturb`` chooses activity perturbation (tangents at every block output) or weight
perturbation (one global tangent over all parameters).

Reproducibility: the model is initialised from ``seed``; the batch order and the dropout masks of
an epoch depend only on ``(seed, epoch)``, the tangents of a step only on ``(seed, step)`` (keyed:
:class:`RandomStreams`, the same at any number of MPI ranks), and each
checkpoint holds the optimizer and schedule state, so a resumed run repeats the uninterrupted run
bit for bit.
"""
from .build import RandomStreams, build_model, build_optimizer, build_schedule, tangent_generator
from .callbacks import (Callback, Checkpointer, EarlyStopping, EpochLog, Every, FiniteCheck, MetricsWriter, Plotter,
                        ProgressBar, ReplicaCheck)
from .config import CHOICES, DEFAULT_LR, MODEL_OPTIONS, RESUME_MUTABLE, ConfigError, TrainConfig
from .errors import EXIT_DIVERGED, EXIT_OK, EXIT_USAGE, RunInterrupted, TrainingDiverged, exit_status
from .resume import resume_config
from .runner import FitResult, Run, default_callbacks, fit, load_data, run_mode
from .loop import EpochStats, evaluate, train_epoch
from .rundir import RUN_FILES, RunDir, RunDirBusy, RunDirError
from .signals import deferred, interrupt_on_signals
from .state import TrainState
from .steps import StepOutput, make_step

__all__ = [
    "fit", "resume_config", "run_mode", "FitResult", "Run", "TrainConfig", "TrainState", "ConfigError",
    "TrainingDiverged", "RunInterrupted", "RunDir", "RunDirError", "RunDirBusy", "RUN_FILES", "CHOICES", "DEFAULT_LR",
    "MODEL_OPTIONS", "RESUME_MUTABLE", "EXIT_OK", "EXIT_USAGE", "EXIT_DIVERGED", "exit_status", "train_epoch",
    "evaluate", "EpochStats", "make_step", "StepOutput", "build_model", "build_optimizer", "build_schedule",
    "tangent_generator", "RandomStreams", "load_data", "Callback", "Every", "FiniteCheck", "ReplicaCheck",
    "EarlyStopping", "MetricsWriter", "Checkpointer", "ProgressBar", "EpochLog", "Plotter", "default_callbacks",
    "interrupt_on_signals", "deferred",
]

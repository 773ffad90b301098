"""How a run ends early: divergence and interruption (configuration errors: :mod:`.config`,
run-folder errors: :mod:`.rundir`)."""
from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["TrainingDiverged", "RunInterrupted", "EXIT_OK", "EXIT_USAGE", "EXIT_DIVERGED", "exit_status"]

#: exit statuses of ``python -m dualtensor train``: done, a user error (one line naming it), diverged
#: (a non-finite loss, gradient or parameter; the last good checkpoint is kept); interrupted runs
#: exit with :func:`exit_status` (130 for SIGINT, 143 for SIGTERM)
EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a parameter became non-finite at ``epoch``/``step``.

    ``checkpoint``/``checkpoint_epoch`` name the last good checkpoint, kept on disk (None when the
    run has no run folder); the message says how to continue from it with another learning rate.
    """

    def __init__(self, reason: str, *, epoch: int, step: int | str, checkpoint: Path | None = None,
                 checkpoint_epoch: int | None = None, message: str | None = None):
        super().__init__(message or f"training diverged at epoch {epoch}, step {step}: {reason}")
        self.reason, self.epoch, self.step = reason, epoch, step
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT or SIGTERM); its last finished epoch is resumable."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(error: KeyboardInterrupt) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
    return 128 + getattr(error, "signum", signal.SIGINT)

"""The error types every job shares; this module imports nothing, so any module can use it.

How a job ends (``pipeline.cli.run_job_main``): a :class:`UserError` is the user's to fix and ends the command with
one line and exit status 2; :class:`JobFailed` means the job ran and failed (its summary is already written), exit
status 1. Domain errors subclass one of these next to their own base (``class ConfigError(UserError, ValueError)``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobFailed", "UserError"]


class UserError(Exception):
    """Base of every error that is the user's to fix (a config field, an unreachable URL, a bad corpus or
    checkpoint): ``run_job_main`` prints it as one line and exits with status 2 instead of a traceback.

    ``model/`` stands alone and cannot import this, so ``run_job_main`` also names ``model.CheckpointError``.
    """


class JobFailed(Exception):
    """The job ran and failed (e.g. training workers exhausted their restarts), after writing its summary.

    ``run`` raises it instead of ``SystemExit``: Python callers get the exception with the summary attached,
    and ``run_job_main`` turns it into one line on stderr and exit status 1 (2 is kept for user errors).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary
        """The summary dict the job wrote before failing."""

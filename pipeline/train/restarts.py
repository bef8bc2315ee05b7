"""Restarts of the training worker group, counted by cause: preemptions apart from failures.

Ray Train restarts the worker group after a failure (``FailureConfig.max_failures``) and after a node preemption
(``max_preemption_failures``, unlimited by default), each from the last checkpoint; to the driver both look the
same (``fit()`` returns once, at the end). :class:`RestartRecorder` is a controller callback (it runs inside Ray
Train's controller actor): at each restart it writes ``restarts/<submission>-NNNN.json`` in the run folder, with
the cause and the error, and counts the restart in the ``hmhi_train_restarts_total`` metric; the job's driver
reads the records of its own submission (:func:`pipeline.run_layout.count_restarts`) into its summary.

Ray 2.60 offers the controller's state transitions only through ``ControllerCallback`` (a developer API in
``ray.train.v2._internal``); a record that cannot be written is logged and skipped, never failing the run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import RestartingState
from ray.train.v2.api.exceptions import PreemptionError

from pipeline import telemetry
from pipeline.run_layout import restart_record
from pipeline.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["RestartRecorder", "restart_cause"]


def restart_cause(error: BaseException | None) -> str:
    """``preemption`` for Ray Train's :class:`PreemptionError` (the controller waited out a preemption notice) or a
    worker that died with its preempted node; ``failure`` for anything else (Ray Train's own classification)."""
    if isinstance(error, PreemptionError):
        return "preemption"
    for failure in (getattr(error, "worker_failures", None) or {}).values():
        failure = getattr(failure, "health_check_failure", failure)  # a dead worker's health check
        if getattr(failure, "preempted", False):
            return "preemption"
    return "failure"


class RestartRecorder(ControllerCallback):
    """Records each restart of the worker group of one job run (``submission``) in the run folder ``run``."""

    def __init__(self, run: Storage, submission: str):
        self.run = run
        self.submission = submission
        self.restarts = 0

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        if not isinstance(current_state, RestartingState):
            return
        self.restarts += 1
        error = current_state.training_failed_error
        cause = restart_cause(error)
        telemetry.TRAIN_RESTARTS.inc(job="train", cause=cause)
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        record = {
            "submission": self.submission,
            "restart": self.restarts,
            "cause": cause,
            "error": f"{type(error).__name__}: {lines[-1] if lines else ''}",
            "time": time.time(),
        }
        try:
            self.run.write_json(restart_record(self.submission, self.restarts), record)
        except Exception as e:  # bookkeeping only: the restart itself must go on
            log.warning("could not record restart %d (%s) in %s: %s", self.restarts, cause, self.run.url, e)

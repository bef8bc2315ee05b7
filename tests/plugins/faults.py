"""Faults injected into real jobs, from outside the product code.

- :class:`TrainLoopFailingOnce`: a Ray Train worker entry that runs the real ``train_loop_per_worker`` and makes
  rank 0 raise once, right after it reported step ``fail_at_step`` to Ray Train (a marker file keeps it to once,
  across the restarts of the worker group). A test puts it in place of ``pipeline.train.job.
  train_loop_per_worker``, the entry the job's ``build_trainer`` hands to Ray Train, which ships it to the workers.
- :func:`kill_after_commits`: the flow job's driver SIGKILLs itself right after it committed ``n`` groups (index
  parts), as a crashed node would die.
- :func:`install_from_env`: both, in a job run as a subprocess, from ``HMHI_TEST_FAULTS`` (JSON); called by
  ``tests/plugins/site/sitecustomize.py``, which a test puts on the subprocess's ``PYTHONPATH`` with
  :func:`subprocess_env`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["FAULTS_ENV", "TrainLoopFailingOnce", "kill_after_commits", "install_from_env", "subprocess_env"]

FAULTS_ENV = "HMHI_TEST_FAULTS"
"""JSON of the faults for a subprocess: ``{"kill_after_commits": n}`` or ``{"train_fail_at_step": n,
"train_fail_marker": path}``."""
SITE_DIR = Path(__file__).resolve().parent / "site"


@dataclass(frozen=True)
class TrainLoopFailingOnce:
    """``train_loop_per_worker`` whose rank 0 fails once, after reporting step ``fail_at_step``."""

    fail_at_step: int
    """The step after whose ``ray.train.report`` rank 0 raises (a reported step: a checkpoint or validation)."""
    marker: str
    """Local file created when the failure fires; while it exists the failure does not fire again."""

    def __call__(self, config: dict) -> None:
        # Imported here, in the Ray worker: a flow-job subprocess that loads this module need not load Ray Train.
        import ray.train

        from pipeline.train.loop import train_loop_per_worker

        real_report = ray.train.report

        def report(metrics, *args, **kwargs):
            real_report(metrics, *args, **kwargs)
            if (
                metrics.get("step") == self.fail_at_step
                and ray.train.get_context().get_world_rank() == 0
                and _first_time(self.marker)
            ):
                raise RuntimeError(f"injected failure after step {self.fail_at_step}")

        ray.train.report = report  # the worker process's own module: the loop calls ray.train.report
        try:
            train_loop_per_worker(config)
        finally:
            ray.train.report = real_report


def _first_time(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def kill_after_commits(n: int) -> None:
    """Make this process (a flow-job driver) SIGKILL itself right after its ``n``-th index part is written."""
    import pipeline.dataset.job as dataset_job

    real_write = dataset_job.write_index_part
    commits = 0

    def write_index_part(*args, **kwargs):
        nonlocal commits
        result = real_write(*args, **kwargs)
        commits += 1
        if commits >= n:
            log.warning("killing this driver after %d commits (tests.plugins.faults)", commits)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    dataset_job.write_index_part = write_index_part


def install_from_env() -> None:
    """Install the faults ``HMHI_TEST_FAULTS`` names (nothing when it is unset)."""
    faults = json.loads(os.environ.get(FAULTS_ENV) or "{}")
    if "kill_after_commits" in faults:
        kill_after_commits(int(faults["kill_after_commits"]))
    if "train_fail_at_step" in faults:
        import pipeline.train.job as train_job

        train_job.train_loop_per_worker = TrainLoopFailingOnce(
            int(faults["train_fail_at_step"]), str(faults["train_fail_marker"])
        )


def subprocess_env(base: dict[str, str], repo_root: Path, **faults) -> dict[str, str]:
    """``base`` plus what makes a Python subprocess install ``faults`` at start-up (see :data:`FAULTS_ENV`)."""
    return dict(
        base, PYTHONPATH=os.pathsep.join([str(SITE_DIR), str(repo_root)]), **{FAULTS_ENV: json.dumps(faults)}
    )

"""Probes around the real training loop, put in place of the job's worker entry (``pipeline.train.job.
train_loop_per_worker``, which ``build_trainer`` hands to Ray Train) by a test; Ray ships them to the workers. The
product code has no test hooks.

- :class:`ReportsObserved`: rank 0 records, for every report that carries a checkpoint, whether the checkpoint's
  file was already in the run storage when ``ray.train.report`` returned (asked of the store itself, not through
  the slow path the upload takes).
- :class:`AttemptsOnNodes`: every attempt's rank 0 records the Ray node it runs on, and each step of the first
  attempt is slowed down, so that a test can drain (preempt) that node while the attempt is still training.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

__all__ = ["AttemptsOnNodes", "ReportsObserved"]


def _append(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class ReportsObserved:
    """``train_loop_per_worker`` whose rank 0 appends ``{"step", "stored_at_return", "report_s"}`` to ``record``
    (a local JSON-lines file) for each checkpoint it reports."""

    record: str
    """Local file of the records (the workers share this machine)."""
    store_endpoint: str
    """S3 endpoint of the store itself, where the check looks."""

    def __call__(self, config: dict) -> None:
        import ray.train

        from pipeline.run_layout import checkpoint_file
        from pipeline.storage import S3Options, open_storage
        from pipeline.train.loop import train_loop_per_worker

        train = config["train"]
        run = open_storage(train["storage"], S3Options(endpoint_url=self.store_endpoint)).child(
            train["run_name"]
        )
        real_report = ray.train.report

        def report(metrics, *args, checkpoint=None, **kwargs):
            started = time.perf_counter()
            real_report(metrics, *args, checkpoint=checkpoint, **kwargs)
            if checkpoint is not None:
                stored = run.exists(checkpoint_file(metrics["step"]))
                seconds = time.perf_counter() - started
                _append(
                    self.record, {"step": metrics["step"], "stored_at_return": stored, "report_s": seconds}
                )

        ray.train.report = report  # the worker process's own module: the loop calls ray.train.report
        try:
            train_loop_per_worker(config)
        finally:
            ray.train.report = real_report


@dataclass(frozen=True)
class AttemptsOnNodes:
    """``train_loop_per_worker`` whose rank 0 appends ``{"node", "pid", "time"}`` to ``record`` when an attempt
    starts, and whose steps each take ``step_sleep_s`` longer in the first attempt (a resumed one runs at speed)."""

    record: str
    """Local file of the records."""
    step_sleep_s: float
    """Added to every training step of the first attempt (keeps it running while the test acts on its node)."""

    def __call__(self, config: dict) -> None:
        import ray
        import ray.train

        from pipeline.train.loop import train_loop_per_worker
        from pipeline.train.trainer import Trainer

        if ray.train.get_context().get_world_rank() == 0:
            node = ray.get_runtime_context().get_node_id()
            _append(self.record, {"node": node, "pid": os.getpid(), "time": time.time()})
        if ray.train.get_checkpoint() is not None:  # a restart, from a checkpoint: nothing to keep running
            train_loop_per_worker(config)
            return
        real_step = Trainer.train_step

        def slow_step(trainer, batch):
            time.sleep(self.step_sleep_s)
            return real_step(trainer, batch)

        Trainer.train_step = slow_step
        try:
            train_loop_per_worker(config)
        finally:
            Trainer.train_step = real_step

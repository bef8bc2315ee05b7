"""``train_loop_per_worker(config)``: the Ray Train worker of the HMHI-Net training job.

``config`` is built by :func:`pipeline.train.job.build_loop_config`: ``{"train": <TrainConfig as dict>,
"shards": [...], "val_shards": [...]}``. The shard lists are resolved and verified by the driver before any
worker starts.

The work of a rank is :class:`pipeline.train.trainer.Trainer`'s; this module connects it to Ray Train: the rank,
world size, device and DDP wrapping come from the Ray Train context, the state to resume from from the last
reported checkpoint. Every ``checkpoint.every_steps`` and at the end, rank 0 reports a checkpoint (model,
optimiser, scheduler, step, RNG states of every rank, config, data positions of every rank, best J&F) with
``ray.train.report``; the other ranks report the same metrics without one. A resubmitted run with the same name,
or a restart after a failure, continues at the next step.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch

from model.checkpoint import read_checkpoint
from pipeline.config import config_from_dict
from pipeline.run_layout import CHECKPOINT_FILE, checkpoint_dir
from pipeline.runtime import keep_freed_memory, quiet_frameworks
from pipeline.shards import ShardEntry
from pipeline.train.config import TrainConfig
from pipeline.train.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["train_loop_per_worker"]


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: trains on this worker's share of the shards; scratch files go when it returns."""
    quiet_frameworks()  # warning filters are per process: the DDP notice is raised here, not in the driver
    keep_freed_memory()  # each step's tensors reuse the last step's pages (pipeline.runtime says why)
    with tempfile.TemporaryDirectory(prefix="hmhi-train-") as scratch, _trainer(config, scratch) as trainer:
        state = trainer.state
        if trainer.finished:
            # A resubmission of a finished run: nothing to train, nothing to write (idempotent).
            log.info(
                "rank %d: run %s already reached step %d (optim.max_steps=%d)",
                trainer.rank,
                trainer.cfg.run_name,
                state.step,
                trainer.cfg.optim.max_steps,
            )
            ray.train.report(
                {"step": state.step, "epoch": state.position.epoch, "start_step": state.start_step}
            )
            return
        while not trainer.finished:
            trainer.train_step(trainer.next_batch())
            plan = trainer.plan()
            if not plan.anything:
                continue
            metrics = trainer.step_metrics(plan)
            if not plan.report:
                # ray.train.report is a barrier across workers that costs ~1.8 s per call on Ray 2.60 (measured on
                # 2 CPU workers), longer than a small model's step: log lines and metrics.csv carry progress, and
                # Ray Train hears from the loop only when there is a checkpoint or a validation result.
                continue
            _report(trainer, metrics, plan.checkpoint, scratch)


def _trainer(config: dict, scratch: str) -> Trainer:
    """The rank's :class:`~pipeline.train.trainer.Trainer`, from the Ray Train context and the last checkpoint."""
    cfg = config_from_dict(TrainConfig, config["train"])
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    return Trainer(
        cfg,
        [ShardEntry(**s) for s in config["shards"]],
        [ShardEntry(**s) for s in config.get("val_shards", [])],
        scratch=scratch,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=functools.partial(
            ray.train.torch.prepare_model,
            parallel_strategy_kwargs={"find_unused_parameters": cfg.model.find_unused_parameters},
        ),
        resume=_read_ray_checkpoint(checkpoint, scratch) if checkpoint is not None else None,
    )


def _report(trainer: Trainer, metrics: dict[str, Any], with_checkpoint: bool, scratch: str) -> None:
    """``ray.train.report`` the step's metrics, with rank 0's checkpoint when one is due (every rank calls it)."""
    checkpoint, ckpt_dir = None, None
    if with_checkpoint:
        ckpt_dir = tempfile.mkdtemp(prefix="ckpt-", dir=scratch)
        if trainer.write_checkpoint(os.path.join(ckpt_dir, CHECKPOINT_FILE)):
            checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir)
    step = trainer.state.step
    ray.train.report(
        metrics,
        checkpoint=checkpoint,
        checkpoint_dir_name=checkpoint_dir(step) if with_checkpoint else None,
    )
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir)  # report() has persisted it to the run's storage


def _read_ray_checkpoint(checkpoint, scratch: str) -> dict[str, Any]:
    """Copy a reported checkpoint's state file to this process's scratch dir and load it (weights only).

    Each rank copies on its own: ``Checkpoint.as_directory`` shares one temporary directory between the workers of
    a node, and a restarted group reading it while another rank is still downloading saw a truncated file.
    """
    local = os.path.join(scratch, f"resume-{CHECKPOINT_FILE}")
    pafs.copy_files(
        f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}",
        local,
        source_filesystem=checkpoint.filesystem,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    try:
        return read_checkpoint(local)
    finally:
        os.remove(local)

"""``train_loop_per_worker(config)``: the Ray Train worker of the HMHI-Net training job.

``config`` is built by :func:`pipeline.train.job.build_loop_config`: ``{"train": <TrainConfig as dict>,
"shards": [...], "val_shards": [...], "run": <the run folder's Storage, fenced by the driver's lease>}``. The shard lists are resolved and verified by the driver before any
worker starts.

The work of a rank is :class:`pipeline.train.trainer.Trainer`'s; this module connects it to Ray Train: the rank,
world size, device and DDP wrapping come from the Ray Train context, the state to resume from from the last
reported checkpoint. Every ``checkpoint.every_steps`` and at the end, rank 0 reports a checkpoint (model,
optimiser, scheduler, step, RNG states of every rank, config, data positions of every rank, best J&F) with
``ray.train.report``; the other ranks report the same metrics without one. A resubmitted run with the same name,
or a restart after a failure, continues at the next step.

Training does not wait on storage: with ``checkpoint.upload: async`` (the default) the report hands the checkpoint
to Ray Train's background uploader (``CheckpointUploadMode.ASYNC``) and the next step starts while it uploads.
Preemption: every ``checkpoint.preemption_check_steps`` steps the ranks ask ``ray.train.get_preemption_info()``;
on the first notice of an attempt they write a checkpoint at once (uploaded synchronously: the node is going) and
train on; Ray Train restarts the group on other nodes when the node goes, from that checkpoint, and counts it
against its preemption budget, not ``max_failures`` (the job's summary counts the two causes apart).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch

from model.checkpoint_file import read_checkpoint
from pipeline import telemetry
from pipeline.config import config_from_dict
from pipeline.run_layout import CHECKPOINT_FILE, checkpoint_dir
from pipeline.runtime import keep_freed_memory, quiet_frameworks
from pipeline.shards import ShardEntry
from pipeline.train.config import TrainConfig
from pipeline.train.trainer import StepPlan, Trainer

log = logging.getLogger(__name__)

__all__ = ["remove_orphan_checkpoint_folders", "train_loop_per_worker"]

RESUME_READ_BYTES = 32 << 20
"""Bytes per read when a rank copies the checkpoint it resumes from: pyarrow's default (1 MiB) makes one ranged GET
per MiB, 60 requests for a small model's checkpoint and hundreds for a large one's."""

CHECKPOINT_FOLDER_PREFIX = "hmhi-train-ckpt-"
"""Local checkpoint folders: ``<tmp>/hmhi-train-ckpt-<pid>-<random>``, named after the worker process that wrote them."""


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: trains on this worker's share of the shards; scratch files go when it returns."""
    quiet_frameworks()  # warning filters are per process: the DDP notice is raised here, not in the driver
    keep_freed_memory()  # each step's tensors reuse the last step's pages (pipeline.runtime says why)
    telemetry.set_job("train")
    remove_orphan_checkpoint_folders()
    with tempfile.TemporaryDirectory(prefix="hmhi-train-") as scratch, _trainer(config, scratch) as trainer:
        state = trainer.state
        if trainer.finished:
            # A finished run (the driver answers a resubmission itself; a restart can still land here): no work.
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
        notice = _PreemptionNotice(trainer.cfg.checkpoint.preemption_check_steps)
        while not trainer.finished:
            trainer.train_step(trainer.next_batch())
            plan = trainer.plan()
            preempted = notice.arrived(trainer.state.step)
            if preempted:
                plan = dataclasses.replace(plan, checkpoint=True)
            if not plan.anything:
                continue
            metrics = trainer.step_metrics(plan)
            if not plan.report:
                # ray.train.report is a barrier across workers that costs ~1.8 s per call on Ray 2.60 (measured on
                # 2 CPU workers), longer than a small model's step: log lines and metrics.csv carry progress, and
                # Ray Train hears from the loop only when there is a checkpoint or a validation result.
                continue
            _report(trainer, metrics, plan, "preemption" if preempted else "cadence")


def remove_orphan_checkpoint_folders(tmp_dir: str | None = None) -> list[str]:
    """Delete the local checkpoint folders of worker processes that are gone; returns them.

    A worker that fails while Ray Train uploads its checkpoint in the background leaves the folder behind (Ray Train
    waits for the uploads only when the loop returns normally, and the process dies with the upload). The next
    attempt's workers on the node remove them; a live process's folders (an upload in flight) are never touched.
    """
    removed = []
    for path in glob.glob(os.path.join(tmp_dir or tempfile.gettempdir(), CHECKPOINT_FOLDER_PREFIX + "*")):
        pid = os.path.basename(path)[len(CHECKPOINT_FOLDER_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d local checkpoint folder(s) left by failed workers", len(removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _trainer(config: dict, scratch: str) -> Trainer:
    """The rank's :class:`~pipeline.train.trainer.Trainer`, from the Ray Train context and the last checkpoint."""
    cfg = config_from_dict(TrainConfig, config["train"])
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    run = config.get("run")  # the run folder fenced by the driver's lease (a pickled Storage)
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
        provenance=config.get("provenance"),
        run=run,
    )


class _PreemptionNotice:
    """Asks Ray Train every ``every_steps`` steps whether a node of the run is about to be preempted; the first
    notice of an attempt is :meth:`arrived` (every rank asks at the same steps and gets rank 0's answer)."""

    def __init__(self, every_steps: int):
        self.every_steps = every_steps
        self.noticed = False

    def arrived(self, step: int) -> bool:
        if self.noticed or not self.every_steps or step % self.every_steps:
            return False
        info = ray.train.get_preemption_info()  # a collective: every rank calls it at the same steps
        if info is None:
            return False
        self.noticed = True
        log.warning(
            "step %d: preemption notice for ranks %s (nodes %s, deadline %s ms): writing a checkpoint now",
            step,
            info.preempted_ranks,
            info.preempted_node_ids,
            info.deadline_ms,
        )
        return True


def _report(trainer: Trainer, metrics: dict[str, Any], plan: StepPlan, reason: str) -> None:
    """``ray.train.report`` the step's metrics, with rank 0's checkpoint when one is due (every rank calls it).

    The checkpoint folder is Ray Train's to delete once uploaded (``delete_local_checkpoint_after_upload``): an
    asynchronous upload outlives this call, and may outlive the loop's scratch folder (Ray Train waits for the
    last upload after the loop returns), so the folder is a sibling of it (:data:`CHECKPOINT_FOLDER_PREFIX`).
    """
    checkpoint = None
    if plan.checkpoint:  # every rank takes part in gathering the state; rank 0 writes it
        ckpt_dir = (
            tempfile.mkdtemp(prefix=f"{CHECKPOINT_FOLDER_PREFIX}{os.getpid()}-") if trainer.rank == 0 else ""
        )
        if trainer.write_checkpoint(os.path.join(ckpt_dir, CHECKPOINT_FILE), reason=reason):
            trainer.check_lease()  # Ray Train persists it inside report(): the last moment to check
            checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir)
    modes = ray.train.CheckpointUploadMode
    asynchronous = trainer.cfg.checkpoint.upload == "async" and reason != "preemption"
    ray.train.report(
        metrics,
        checkpoint=checkpoint,
        checkpoint_dir_name=checkpoint_dir(trainer.state.step) if plan.checkpoint else None,
        checkpoint_upload_mode=modes.ASYNC if asynchronous else modes.SYNC,
        delete_local_checkpoint_after_upload=True,
    )


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
        chunk_size=RESUME_READ_BYTES,
    )
    try:
        return read_checkpoint(local)
    finally:
        os.remove(local)

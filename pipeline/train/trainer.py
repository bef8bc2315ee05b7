"""``Trainer``: one rank's training of HMHI-Net, without Ray.

The trainer builds the model (same initial weights on every rank), wraps it for data parallelism through
``wrap_model`` (Ray Train's ``prepare_model`` in the job; moving to the device alone for one process, which
needs no process group), and owns the AdamW optimiser, the LR schedule, the rank's data stream, the training
step, the log window averaged across ranks, validation with best-model publishing, and the training state a
checkpoint records and a resume restores. ``pipeline.train.loop`` drives it from Ray Train; the unit tests drive
it directly.

Per step: a batch of clips from :class:`~pipeline.train.data.TrainStream` -> forward over the clip (bf16 autocast
where ``model.precision`` asks for it) -> official loss -> backward -> optional clipping -> AdamW step -> LR schedule step (warm-up, then
constant or cosine).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from model import create_model, load_checkpoint, save_checkpoint
from pipeline import telemetry
from pipeline.config import config_to_dict
from pipeline.run_layout import commit_best_model
from pipeline.shards import ShardEntry, decode_clip
from pipeline.storage import Storage, local_copy, open_storage
from pipeline.summary import format_eta
from pipeline.train.config import OptimConfig, TrainConfig
from pipeline.train.data import ClipBatch, DataPosition, Prefetcher, TrainStream
from pipeline.train.losses import clip_loss
from pipeline.train.metrics import MetricsWriter
from pipeline.train.validate import validate

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainState", "StepPlan", "lr_lambda", "state_digest"]

"""Folder of the best model by validation J&F in the run directory."""

LOSS_PARTS = ("loss", "loss_focal", "loss_bce", "loss_dice", "grad_norm")
"""What :meth:`Trainer.train_step` returns per step, and the log window averages."""


def lr_lambda(cfg: OptimConfig):
    """LR multiplier per step: linear warm-up, then constant (official) or cosine to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def state_digest(state: Any) -> str:
    """SHA-256 over the tensors and scalars of a (nested) state dict, in key order: a resume fingerprint."""
    digest = hashlib.sha256()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            digest.update(
                obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                if obj.numel()
                else b""
            )
            digest.update(str((obj.dtype, tuple(obj.shape))).encode())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                digest.update(str(key).encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        else:
            digest.update(repr(obj).encode())

    walk(state)
    return digest.hexdigest()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _mean_across_ranks(values: dict[str, float], device: torch.device, world_size: int) -> dict[str, float]:
    if world_size == 1 or not dist.is_initialized():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world_size for k, v in zip(keys, t.tolist())}


# -- state --------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where this rank's run stands. With the model, optimiser and scheduler states and the RNG states of every
    rank (taken when a checkpoint is written: they belong to the process, not to this object), it is what a
    checkpoint records and a resume restores."""

    step: int = 0
    """Optimiser steps done."""
    best_jf: float = float("-inf")
    """Best validation J&F so far (-inf before the first validation); the same on every rank."""
    position: DataPosition = field(default_factory=DataPosition)
    """This rank's data position after ``step`` (where its stream continues)."""
    start_step: int = 0
    """The step this attempt started at: 0, or the step of the checkpoint it resumed from."""
    resume_info: dict[str, Any] = field(default_factory=dict)
    """What this attempt continued from, recorded in its checkpoints: ``from_step`` and ``optimizer_sha256`` (the
    digest of the optimiser state it loaded); empty for an attempt that started afresh."""


@dataclass(frozen=True)
class StepPlan:
    """What is due after a step, from the config's cadences (the same on every rank)."""

    log: bool
    """Average the log window across ranks and write a metrics row and a log line."""
    validate: bool
    """Validate (every rank takes part) and publish the model if it is the best so far."""
    checkpoint: bool
    """Write a checkpoint."""

    @property
    def anything(self) -> bool:
        """Whether anything is due at all (most steps: nothing)."""
        return self.log or self.validate or self.checkpoint

    @property
    def report(self) -> bool:
        """Whether Ray Train hears of this step (a checkpoint or a validation result)."""
        return self.validate or self.checkpoint


class _LogWindow:
    """Loss parts summed over the steps since the last logged step, with the time and the data wait they took."""

    def __init__(self, wait_s: float):
        self.restart(wait_s)

    def restart(self, wait_s: float) -> None:
        self.started = time.perf_counter()
        self.wait_at_start = wait_s
        self.steps = 0
        self.sums = dict.fromkeys(LOSS_PARTS, 0.0)

    def add(self, parts: dict[str, float]) -> None:
        self.steps += 1
        for key in LOSS_PARTS:
            self.sums[key] += parts[key]

    def local_means(self, wait_s: float, clips_per_step: int) -> dict[str, float]:
        """This rank's means over the window, its share of time waiting for data and its clip rate."""
        elapsed = time.perf_counter() - self.started
        means = {k: v / max(1, self.steps) for k, v in self.sums.items()}
        means["data_wait_frac"] = (wait_s - self.wait_at_start) / max(elapsed, 1e-9)
        means["clips_per_s_per_worker"] = self.steps * clips_per_step / max(elapsed, 1e-9)
        return means


# -- the trainer --------------------------------------------------------------------------------------------------


class Trainer:
    """One rank's training: model, optimiser, LR schedule, data stream, steps, metrics, validation, state.

    ``wrap_model`` wraps the model for data parallelism and places it on ``device`` (``ray.train.torch.
    prepare_model`` in the job); None moves it to ``device``, which is all one process needs. ``resume`` is a
    checkpoint's content (:meth:`state_dict`, as read back from the file) to continue from. ``run`` is the run
    folder the trainer writes to (default ``<storage>/<run_name>`` from the config; the job passes it fenced by
    its lease, see :meth:`check_lease`). Collective methods
    (:meth:`step_metrics`, :meth:`state_dict`, :meth:`write_checkpoint`) must be called by every rank at the
    same step. The data stream and the metrics files open at the first batch, at the state's position; call
    :meth:`close` (or use the trainer as a context manager) to stop them.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        shards: list[ShardEntry],
        val_shards: list[ShardEntry],
        *,
        scratch: str,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        resume: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        run: Storage | None = None,
    ):
        # The job's driver resolves the model settings against the init checkpoint; a Trainer built directly gets
        # the official defaults for what its config leaves unset (a no-op on resolved settings).
        cfg.model = cfg.model.resolved()
        self.cfg, self.shards, self.val_shards, self.scratch = cfg, shards, val_shards, scratch
        self.provenance = dict(provenance or {})
        """What the model is trained on (the training data's fingerprint and flow settings), recorded in every
        checkpoint and best model."""
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        # The job passes the run folder fenced by its driver's lease: the best model and the metrics check it.
        self.run = run if run is not None else open_storage(cfg.storage).child(cfg.run_name)
        self.amp = cfg.model.precision == "bf16" or (
            cfg.model.precision == "auto" and self.device.type == "cuda"
        )
        self.state = TrainState()
        self._stream: TrainStream | None = None
        self._batches: Prefetcher | None = None
        self._writer: MetricsWriter | None = None
        self._window = _LogWindow(0.0)
        self._attempt_started = time.monotonic()  # reset at the first batch: the ETA's clock
        self._last_step_at: float | None = None  # when the previous step ended (the step-time metric)
        self._last_wait_s = 0.0  # the stream's data wait at that moment

        # Same initial weights on every rank (DDP broadcasts rank 0's anyway); different dropout streams per rank.
        torch.manual_seed(cfg.optim.seed)
        net = create_model(cfg.model.name, **cfg.model.architecture())
        if resume is None and cfg.model.init_checkpoint:
            with local_copy(cfg.model.init_checkpoint, prefix="hmhi-train-init-") as path:
                load_checkpoint(net, path, strict=cfg.model.init_strict)
            log.info("rank %d: initialised from %s", rank, cfg.model.init_checkpoint)
        self.net = wrap_model(net) if wrap_model is not None else net.to(self.device)
        self.module = getattr(self.net, "module", self.net)  # the model itself, inside a DDP wrapper
        # fused: one kernel over all parameters instead of a loop of small ops per tensor, the same AdamW update (16
        # vs 56 ms a step for hmhi_mit_b0 on one CPU thread, ~4% of a demo training step; torch's default on CPU is
        # that loop). A run resumed from a checkpoint of an unfused optimiser keeps that checkpoint's setting.
        self.optimizer = torch.optim.AdamW(
            self.module.parameters(),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
            fused=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim))
        if resume is not None:
            self.load_state_dict(resume)
        else:
            torch.manual_seed(cfg.optim.seed + rank)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The run has reached ``optim.max_steps``."""
        return self.state.step >= self.cfg.optim.max_steps

    def next_batch(self) -> ClipBatch:
        """The next batch of this rank's stream (opened at the state's data position on first use)."""
        if self._batches is None:
            self._stream = TrainStream(
                self.shards,
                self.cfg.data,
                self.cfg.augment,
                self.cfg.model.input_size,
                self.cfg.optim.seed,
                self.world_size,
                self.rank,
                decode_clip,
                start=self.state.position,
                normalization=(self.cfg.model.mean, self.cfg.model.std),
            )
            self._batches = Prefetcher(self._stream, self.cfg.data.prefetch_batches)
            self._window.restart(self._batches.wait_s)
            self._attempt_started = time.monotonic()
        return next(self._batches)

    def close(self) -> None:
        """Stop the data stream and upload the last metrics; warn about samples the stream skipped."""
        if self._batches is not None:
            self._batches.close()
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None and self._stream.skipped and self.rank == 0:
            log.warning(
                "skipped %d samples without ground truth, e.g. %s",
                len(self._stream.skipped),
                next(iter(self._stream.skipped.items())),
            )

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- training -------------------------------------------------------------------------------------------------
    def train_step(self, batch: ClipBatch) -> dict[str, float]:
        """One optimiser step on ``batch``: forward, loss, backward, clipping, AdamW, LR schedule.

        Returns this rank's loss parts (:data:`LOSS_PARTS`: the total, the weighted focal, BCE and Dice sums, the
        gradient norm before clipping); they also go into the log window.
        """
        cfg = self.cfg
        self.module.train()
        frames = batch.frames.to(self.device, non_blocking=True)
        flows = batch.flows.to(self.device, non_blocking=True)
        masks = batch.masks.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            full, _quarter = self.net(frames, flows)
        loss, parts = clip_loss(full, masks, cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        self.state.position = batch.position
        out = {
            "loss": float(loss.detach()),
            "loss_focal": parts["focal"],
            "loss_bce": parts["bce"],
            "loss_dice": parts["dice"],
            "grad_norm": grad_norm,
        }
        self._window.add(out)
        self._count_step(out["loss"])
        return out

    def _count_step(self, loss: float) -> None:
        """The step's metrics: steps, step time (since the previous step ended), data wait, loss."""
        now = time.perf_counter()
        wait_s = self._batches.wait_s if self._batches is not None else 0.0
        rank = str(self.rank)
        if self._last_step_at is not None:
            telemetry.TRAIN_STEP_SECONDS.observe(now - self._last_step_at, rank=rank)
            telemetry.TRAIN_DATA_WAIT_SECONDS.observe(wait_s - self._last_wait_s, rank=rank)
        telemetry.TRAIN_STEPS.inc(rank=rank)
        telemetry.TRAIN_LOSS.set(loss, rank=rank)
        self._last_step_at, self._last_wait_s = now, wait_s

    def plan(self) -> StepPlan:
        """What is due after the step just done: logging, validation, a checkpoint (always all at the last)."""
        cfg, step = self.cfg, self.state.step
        last = self.finished
        every_val = cfg.validation.every_steps
        return StepPlan(
            log=step % cfg.log_every_steps == 0 or last,
            validate=bool(self.val_shards) and every_val > 0 and (step % every_val == 0 or last),
            checkpoint=step % cfg.checkpoint.every_steps == 0 or last,
        )

    def step_metrics(self, plan: StepPlan) -> dict[str, Any]:
        """The metrics of the step just done (collective): the log window averaged across ranks at log and
        checkpoint steps, the validation scores at validation steps. Rank 0 writes them as a metrics row, and a
        log line at log steps; a new best model is published."""
        state = self.state
        metrics: dict[str, Any] = {
            "step": state.step,
            "epoch": state.position.epoch,
            "start_step": state.start_step,
            "wall_time": time.time(),
        }
        if plan.log or plan.checkpoint:
            metrics.update(self._window_metrics())
        if plan.validate:
            metrics.update(self._validate())
        if self.rank == 0:
            self._record(metrics, plan)
        return metrics

    def _window_metrics(self) -> dict[str, Any]:
        wait_s = self._batches.wait_s if self._batches is not None else 0.0
        local = self._window.local_means(wait_s, self.cfg.data.batch_size_per_worker)
        metrics: dict[str, Any] = _mean_across_ranks(local, self.device, self.world_size)
        metrics["clips_per_s"] = metrics["clips_per_s_per_worker"] * self.world_size
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self._window.restart(wait_s)
        if self.rank == 0:
            telemetry.TRAIN_CLIPS_PER_SECOND.set(metrics["clips_per_s"])
        return metrics

    def _validate(self) -> dict[str, Any]:
        """Validation J&F on every rank's share of the samples; rank 0 publishes a new best model."""
        state = self.state
        scores = validate(
            self.module,
            self.val_shards,
            self.cfg,
            decode_clip,
            self.device,
            self.rank,
            self.world_size,
            self.amp,
        )
        # Every rank holds the same gathered scores, so best_jf stays identical across ranks.
        if math.isfinite(scores["JF_mean"]) and scores["JF_mean"] > state.best_jf:
            state.best_jf = scores["JF_mean"]
        if self.rank == 0 and state.best_jf == scores["JF_mean"]:
            best_path = os.path.join(self.scratch, "best.pt")
            save_checkpoint(
                self.module,
                best_path,
                {"step": state.step, "val": scores, "config": config_to_dict(self.cfg)},
                settings=self.cfg.model,
                provenance=self.provenance,
            )
            commit_best_model(self.run, best_path, state.step, scores)
            os.remove(best_path)
        metrics: dict[str, Any] = {f"val_{k}": v for k, v in scores.items()}
        metrics["best_val_JF_mean"] = state.best_jf if math.isfinite(state.best_jf) else float("nan")
        return metrics

    def _record(self, metrics: dict[str, Any], plan: StepPlan) -> None:
        """Rank 0: the metrics row (CSV and TensorBoard) and, at log steps, the log line."""
        if self._writer is None:
            self._writer = MetricsWriter(self.run, resume_step=self.state.start_step)
        self._writer.write(self.state.step, {k: v for k, v in metrics.items() if k != "start_step"})
        if plan.log:
            state, max_steps = self.state, self.cfg.optim.max_steps
            rate = (state.step - state.start_step) / max(1e-9, time.monotonic() - self._attempt_started)
            log.info(
                "step %d/%d  loss %.4f  grad_norm %.3g  lr %.3g  %.2f clips/s  data wait %.0f%%%s  %s",
                state.step,
                max_steps,
                metrics["loss"],
                metrics["grad_norm"],
                metrics["lr"],
                metrics["clips_per_s"],
                100 * metrics["data_wait_frac"],
                f"  val J&F {metrics['val_JF_mean']:.3f}" if plan.validate else "",
                format_eta(max_steps - state.step, rate),
            )

    # -- checkpoint state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state (collective: gathers every rank's data position and RNG states): model,
        optimizer, scheduler, step, best_jf, data_positions, rng_states, world_size, config, resume_info."""
        positions = _gather(vars(self.state.position).copy(), self.world_size)
        rngs = _gather(_rng_state(), self.world_size)
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.state.step,
            "best_jf": self.state.best_jf,
            "data_positions": positions,
            "rng_states": rngs,
            "world_size": self.world_size,
            "config": config_to_dict(self.cfg),
            "resume_info": self.state.resume_info,
        }

    def write_checkpoint(self, path: str, reason: str = "cadence") -> bool:
        """Write :meth:`state_dict` to ``path`` in the project's checkpoint format (collective; rank 0 writes and
        also uploads the metrics rows up to this step, for a restart from it). ``reason`` (``cadence`` or
        ``preemption``) is recorded in the file. True where the file was written."""
        state = self.state_dict()
        if self.rank != 0:
            return False
        extra = {k: v for k, v in state.items() if k != "model"}
        save_checkpoint(
            self.module, path, dict(extra, reason=reason), settings=self.cfg.model, provenance=self.provenance
        )
        telemetry.TRAIN_CHECKPOINTS.inc(reason=reason)
        if self._writer is not None:
            self._writer.flush()  # best-effort, like every metrics upload
        return True

    def check_lease(self) -> None:
        """Raise :class:`~pipeline.lease.LeaseLostError` if the run's driver may have lost the run folder's lease:
        before a commit that does not go through :attr:`run` (a checkpoint reported to Ray Train)."""
        self.run.check_fence()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's content (before the first batch).

        The same worker count continues each rank's data stream and RNG states where they were; another count
        cannot continue the old split, so every rank starts the next epoch afresh with a new seed.
        """
        if self._batches is not None:
            raise RuntimeError("load_state_dict must come before the first batch")
        self.module.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        log.info("rank %d: resuming from step %d", self.rank, step)
        positions, rngs = state["data_positions"], state["rng_states"]
        if len(positions) == self.world_size:
            position = DataPosition(**positions[self.rank])
            _set_rng_state(rngs[self.rank])
        else:
            position = DataPosition(epoch=max(p["epoch"] for p in positions) + 1)
            log.warning(
                "world size changed (%d -> %d): data resumes at epoch %d",
                len(positions),
                self.world_size,
                position.epoch,
            )
            torch.manual_seed(self.cfg.optim.seed + 1000 * step + self.rank)
        self.state = TrainState(
            step=step,
            best_jf=float(state.get("best_jf", float("-inf"))),
            position=position,
            start_step=step,
            # Recorded in later checkpoints: proves what this attempt continued from.
            resume_info={"from_step": step, "optimizer_sha256": state_digest(self.optimizer.state_dict())},
        )

"""``train_loop_per_worker(config)``: the Ray Train worker of the HMHI-Net training job.

``config`` is built by :func:`pipeline.train.job.build_loop_config`: ``{"train": <TrainConfig as dict>,
"shards": [...], "val_shards": [...]}``. The shard lists are resolved and verified by the driver before any
worker starts.

Per step: a batch of clips from :class:`pipeline.train.data.TrainStream` -> DDP forward over the clip -> official
loss -> AdamW step (optional clipping, warm-up + cosine, bf16 autocast on GPU). Every ``checkpoint.every_steps``
and at the end, rank 0 reports a checkpoint (model, optimiser, scheduler, step, RNG states of every rank, config,
data positions of every rank, best J&F) with ``ray.train.report``; the other ranks report the same metrics
without one. A resubmitted run with the same name, or a restart after a failure, continues at the next step.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import shutil
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import config_from_dict, config_to_dict
from pipeline.run_layout import CHECKPOINT_FILE, checkpoint_dir, commit_best_model
from pipeline.runtime import quiet_frameworks
from pipeline.shards import ShardEntry
from pipeline.storage import Storage, local_copy, open_storage
from pipeline.train.config import OptimConfig, TrainConfig
from pipeline.train.data import DataPosition, Prefetcher, TrainStream
from pipeline.train.losses import clip_loss
from pipeline.train.metrics import MetricsWriter
from pipeline.train.validate import validate

log = logging.getLogger(__name__)

__all__ = ["train_loop_per_worker", "lr_lambda", "state_digest", "FAULT_MARKER_DIR"]

FAULT_MARKER_DIR = "faults"


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
            digest.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                          if obj.numel() else b"")
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


def _read_ray_checkpoint(checkpoint, scratch: str) -> dict[str, Any]:
    """Copy a reported checkpoint's state file to this process's scratch dir and load it (weights only).

    Each rank copies on its own: ``Checkpoint.as_directory`` shares one temporary directory between the workers of
    a node, and a restarted group reading it while another rank is still downloading saw a truncated file.
    """
    import pyarrow.fs as pafs

    from model.checkpoint import read_checkpoint

    local = os.path.join(scratch, f"resume-{CHECKPOINT_FILE}")
    pafs.copy_files(f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}", local,
                    source_filesystem=checkpoint.filesystem, destination_filesystem=pafs.LocalFileSystem())
    try:
        return read_checkpoint(local)
    finally:
        os.remove(local)


def _maybe_inject_fault(cfg: TrainConfig, run: Storage, step: int, rank: int) -> None:
    """Testing aid: rank 0 fails once after ``fault.fail_at_step`` (a marker in the run dir keeps it to once)."""
    if cfg.fault.fail_at_step is None or step != cfg.fault.fail_at_step or rank != 0:
        return
    marker = f"{FAULT_MARKER_DIR}/fail_at_step_{step}.json"
    if run.exists(marker):
        return
    run.write_json(marker, {"step": step, "time": time.time()})
    raise RuntimeError(f"injected failure after step {step} (fault.fail_at_step)")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: trains on this worker's share of the shards; scratch files go when it returns."""
    quiet_frameworks()  # warning filters are per process: the DDP notice is raised here, not in the driver
    with tempfile.TemporaryDirectory(prefix="hmhi-train-") as scratch:
        _train_worker(config, scratch)


def _train_worker(config: dict, scratch: str) -> None:
    import ray.train
    import ray.train.torch

    from model import create_model, load_checkpoint, save_checkpoint
    from pipeline.shards import decode_clip

    cfg = config_from_dict(TrainConfig, config["train"])
    shards = [ShardEntry(**s) for s in config["shards"]]
    val_shards = [ShardEntry(**s) for s in config.get("val_shards", [])]
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"
    run = open_storage(cfg.storage).child(cfg.run_name)

    # Same initial weights on every rank (DDP broadcasts rank 0's anyway); different dropout streams per rank.
    torch.manual_seed(cfg.optim.seed)
    net = create_model(cfg.model.name, **cfg.model.architecture())

    resume = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    if resume is not None:
        state = _read_ray_checkpoint(resume, scratch)
        net.load_state_dict(state["model"], strict=True)
        log.info("rank %d: resuming from step %d", rank, state["step"])
    elif cfg.model.init_checkpoint:
        with local_copy(cfg.model.init_checkpoint, prefix="hmhi-train-init-") as path:
            load_checkpoint(net, path, strict=cfg.model.init_strict)
        log.info("rank %d: initialised from %s", rank, cfg.model.init_checkpoint)

    net = ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs={"find_unused_parameters": cfg.model.find_unused_parameters}
    )
    module = net.module if hasattr(net, "module") else net
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim))

    step, best_jf, position = 0, float("-inf"), DataPosition()
    resume_info: dict[str, Any] = {}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # Recorded in later checkpoints: proves what this attempt continued from.
        resume_info = {"from_step": int(state["step"]), "optimizer_sha256": state_digest(optimizer.state_dict())}
        step = int(state["step"])
        best_jf = float(state.get("best_jf", float("-inf")))
        positions, rngs = state["data_positions"], state["rng_states"]
        if len(positions) == world_size:
            position = DataPosition(**positions[rank])
            _set_rng_state(rngs[rank])
        else:  # a different worker count cannot continue the old split: start the next epoch afresh
            position = DataPosition(epoch=max(p["epoch"] for p in positions) + 1)
            log.warning("world size changed (%d -> %d): data resumes at epoch %d", len(positions), world_size,
                        position.epoch)
            torch.manual_seed(cfg.optim.seed + 1000 * step + rank)
    else:
        torch.manual_seed(cfg.optim.seed + rank)
    start_step = step
    if step >= cfg.optim.max_steps:
        # A resubmission of a finished run: nothing to train, nothing to write (idempotent).
        log.info("rank %d: run %s already reached step %d (optim.max_steps=%d)", rank, cfg.run_name, step,
                 cfg.optim.max_steps)
        ray.train.report({"step": step, "epoch": position.epoch, "start_step": start_step})
        return

    stream = TrainStream(shards, cfg.data, cfg.augment, cfg.model.input_size, cfg.optim.seed, world_size, rank,
                         decode_clip, start=position)
    batches = Prefetcher(stream, cfg.data.prefetch_batches)
    writer = MetricsWriter(run, resume_step=step) if rank == 0 else None
    amp = cfg.model.precision == "bf16" or (cfg.model.precision == "auto" and use_cuda)
    clips_per_step = cfg.data.batch_size_per_worker

    window_start, window_wait, window_steps = time.perf_counter(), batches.wait_s, 0
    sums = {"loss": 0.0, "loss_focal": 0.0, "loss_bce": 0.0, "loss_dice": 0.0, "grad_norm": 0.0}
    try:
        while step < cfg.optim.max_steps:
            module.train()
            batch = next(batches)
            frames = batch.frames.to(device, non_blocking=True)
            flows = batch.flows.to(device, non_blocking=True)
            masks = batch.masks.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                full, _quarter = net(frames, flows)
            loss, parts = clip_loss(full, masks, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
            optimizer.step()
            scheduler.step()
            step += 1
            position = batch.position
            window_steps += 1
            sums["loss"] += float(loss.detach())
            sums["loss_focal"] += parts["focal"]
            sums["loss_bce"] += parts["bce"]
            sums["loss_dice"] += parts["dice"]
            sums["grad_norm"] += grad_norm

            is_last = step >= cfg.optim.max_steps
            do_log = step % cfg.log_every_steps == 0 or is_last
            do_val = bool(val_shards) and cfg.validation.every_steps > 0 and (
                step % cfg.validation.every_steps == 0 or is_last)
            do_ckpt = step % cfg.checkpoint.every_steps == 0 or is_last
            if not (do_log or do_val or do_ckpt):
                continue

            metrics: dict[str, Any] = {"step": step, "epoch": position.epoch, "start_step": start_step,
                                       "wall_time": time.time()}
            if do_log or do_ckpt:
                elapsed = time.perf_counter() - window_start
                local = {k: v / max(1, window_steps) for k, v in sums.items()}
                local["data_wait_frac"] = (batches.wait_s - window_wait) / max(elapsed, 1e-9)
                local["clips_per_s_per_worker"] = window_steps * clips_per_step / max(elapsed, 1e-9)
                metrics.update(_mean_across_ranks(local, device, world_size))
                metrics["clips_per_s"] = metrics["clips_per_s_per_worker"] * world_size
                metrics["lr"] = scheduler.get_last_lr()[0]
                window_start, window_wait, window_steps = time.perf_counter(), batches.wait_s, 0
                sums = dict.fromkeys(sums, 0.0)
            if do_val:
                scores = validate(module, val_shards, cfg, decode_clip, device, rank, world_size, amp)
                metrics.update({f"val_{k}": v for k, v in scores.items()})
                # Every rank holds the same gathered scores, so best_jf stays identical across ranks.
                if math.isfinite(scores["JF_mean"]) and scores["JF_mean"] > best_jf:
                    best_jf = scores["JF_mean"]
                if rank == 0 and best_jf == scores["JF_mean"]:
                    best_path = os.path.join(scratch, "best.pt")
                    save_checkpoint(module, best_path, {"step": step, "val": scores,
                                                        "config": config_to_dict(cfg)}, settings=cfg.model)
                    commit_best_model(run, best_path, step, scores)
                    os.remove(best_path)
                metrics["best_val_JF_mean"] = best_jf if math.isfinite(best_jf) else float("nan")
            if writer is not None:
                writer.write(step, {k: v for k, v in metrics.items() if k != "start_step"})
                if do_log:
                    log.info("step %d/%d  loss %.4f  grad_norm %.3g  lr %.3g  %.2f clips/s  data wait %.0f%%%s", step,
                             cfg.optim.max_steps, metrics["loss"], metrics["grad_norm"], metrics["lr"],
                             metrics["clips_per_s"], 100 * metrics["data_wait_frac"],
                             f"  val J&F {metrics['val_JF_mean']:.3f}" if do_val else "")
            if not (do_val or do_ckpt):
                # ray.train.report is a barrier across workers that costs ~1.8 s per call on Ray 2.60 (measured on
                # 2 CPU workers), longer than a small model's step: log lines and metrics.csv carry progress, and
                # Ray Train hears from the loop only when there is a checkpoint or a validation result.
                continue

            checkpoint, ckpt_dir = None, None
            if do_ckpt:
                positions = _gather(vars(position).copy(), world_size)
                rngs = _gather(_rng_state(), world_size)
                if rank == 0:
                    ckpt_dir = tempfile.mkdtemp(prefix="ckpt-", dir=scratch)
                    save_checkpoint(module, os.path.join(ckpt_dir, CHECKPOINT_FILE), {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "best_jf": best_jf,
                        "data_positions": positions,
                        "rng_states": rngs,
                        "world_size": world_size,
                        "config": config_to_dict(cfg),
                        "resume_info": resume_info,
                    }, settings=cfg.model)
                    checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir)
            if do_ckpt and writer is not None:
                writer.flush()  # the rows up to this checkpoint, for a restart from it (best-effort)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=checkpoint_dir(step) if do_ckpt else None)
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir)  # report() has persisted it to the run's storage
            _maybe_inject_fault(cfg, run, step, rank)
    finally:
        batches.close()
        if writer is not None:
            writer.close()
    if stream.skipped and rank == 0:
        log.warning("skipped %d samples without ground truth, e.g. %s", len(stream.skipped),
                    next(iter(stream.skipped.items())))

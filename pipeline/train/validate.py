"""Validation J&F during training, with the evaluation module's DAVIS measures.

Each validation sample (a run of consecutive frames of one video) is segmented as one sequence with the model's
clip forward (fresh memories at its first frame), without augmentation, at the training size. Logits are resized
bilinearly to the ground-truth size (as the official inference does) and binarised at ``validation.threshold``.
Frames with a ground-truth mask are scored; the J&F of the samples is averaged (unweighted over sequences) with
``pipeline.evaluate``. Samples are split round-robin across ranks and the per-sequence results gathered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.metrics import aggregate_results, evaluate_sequence
from pipeline.shards import ShardEntry, read_samples
from pipeline.train.augment import prepare_clip
from pipeline.train.config import TrainConfig

__all__ = ["validate", "val_sample_refs"]


def val_sample_refs(shards: list[ShardEntry], max_samples: int | None) -> list[tuple[ShardEntry, int]]:
    """(shard, sample position) of the validation samples in index order (at most ``max_samples``)."""
    refs = [(entry, i) for entry in shards for i in range(entry.num_samples)]
    return refs if max_samples is None else refs[:max_samples]


@torch.no_grad()
def validate(
    module,
    shards: list[ShardEntry],
    cfg: TrainConfig,
    decode_fn,
    device: torch.device,
    rank: int,
    world_size: int,
    amp: bool,
) -> dict[str, float]:
    """Return ``{"J_mean", "F_mean", "JF_mean", "sequences"}`` over the validation samples (same on all ranks)."""
    was_training = module.training
    module.eval()
    per_sequence: dict[str, dict] = {}
    try:
        for entry, position in val_sample_refs(shards, cfg.validation.max_samples)[rank::world_size]:
            sample = next(read_samples(entry, position, position + 1))
            clip = decode_fn(sample)
            valid = np.asarray(clip.mask_valid, bool)
            if not valid.any():
                continue
            frames, flows, masks = (
                np.asarray(clip.frames),
                np.asarray(clip.flow_images()),
                np.asarray(clip.masks),
            )
            tensors = prepare_clip(
                frames, flows, masks, cfg.model.input_size, None, None, (cfg.model.mean, cfg.model.std)
            )
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                full, _ = module.forward_clip(tensors.frames[None].to(device), tensors.flows[None].to(device))
            logits = F.interpolate(
                full[0].float(), size=masks.shape[1:], mode="bilinear", align_corners=False
            )
            pred = (torch.sigmoid(logits[:, 0]) > cfg.validation.threshold).cpu().numpy()
            name = f"{clip.key}"
            per_sequence[name] = evaluate_sequence(
                masks[valid], pred[valid], protocol=cfg.validation.protocol
            )
    finally:
        module.train(was_training)
    if world_size > 1 and dist.is_initialized():
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, per_sequence)
        per_sequence = {k: v for part in gathered for k, v in part.items()}
    if not per_sequence:
        return {"J_mean": math.nan, "F_mean": math.nan, "JF_mean": math.nan, "sequences": 0}
    summary = aggregate_results(per_sequence)
    return {
        "J_mean": float(summary["J_mean"]),
        "F_mean": float(summary["F_mean"]),
        "JF_mean": float(summary["JF_mean"]),
        "sequences": int(summary["n_sequences"]),
    }

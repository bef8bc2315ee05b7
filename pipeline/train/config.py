"""Typed configuration of the training job (``jobs/train.py``).

Defaults follow the official HMHI-Net recipe as it is actually implemented (docs/model.md §7-§9):
AdamW lr 6e-5 / weight decay 5e-4, constant LR, no clipping, fp32, 5-frame clips at 512x512, per-frame flips
and RGB-only photometric jitter, loss 20*focal + 10*BCE + 1*Dice summed over the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from model.settings import ModelSettings
from pipeline.config import ConfigError, require
from pipeline.names import UnsafeNameError, check_name
from pipeline.storage import absolute_url

__all__ = [
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "LossConfig",
    "OptimConfig",
    "CheckpointingConfig",
    "ValidationConfig",
    "TrainConfig",
    "cadence_warnings",
    "MIN_STEPS_BETWEEN_SAVES",
    "MAX_SAVES_PER_RUN",
]


@dataclass
class ModelConfig(ModelSettings):
    """The model to train (:class:`model.ModelSettings`: name, options, memory_size, input_size, precision, mean,
    std) and where its weights start. Fields left null take the init checkpoint's recorded values (a checkpoint of
    this project records its architecture, input size and normalisation), else the official ones (hmhi_mit_b1,
    T=5, 512x512, ImageNet normalisation); a set field that differs from the record is honoured with a warning.
    ``precision`` 'auto' trains in bf16 autocast on GPUs and in fp32 on CPUs; 'bf16' asks for bf16 autocast on
    either."""

    init_checkpoint: str | None = None
    """Weights to start from: a URL/path of an NVlabs MiT ImageNet file, an official HMHI-Net checkpoint or a
    checkpoint of this project (format auto-detected). Ignored when the run resumes from its own checkpoint."""
    init_strict: bool = True
    """Load ``init_checkpoint`` strictly: every key the file's format covers must match (an MiT ImageNet file covers
    the MiT backbone only; official and project files cover the whole model). False tolerates missing keys."""
    find_unused_parameters: bool = False
    """Let DDP tolerate parameters without gradients (only needed if the model registers unused modules)."""

    def __post_init__(self):
        super().__post_init__()
        require(
            self.init_checkpoint is None or bool(self.init_checkpoint),
            "init_checkpoint",
            self.init_checkpoint,
            "must be a non-empty URL or null",
        )
        if self.init_checkpoint:
            self.init_checkpoint = absolute_url(
                self.init_checkpoint
            )  # on the driver (see TrainConfig.storage)


@dataclass
class DataConfig:
    url: str = ""
    """URL of the shard set written by the data pipeline (the folder holding its index)."""
    train_split: str = "train"
    """Split name of the training shards (only this split is used for training)."""
    val_split: str = "val"
    """Split name of the validation shards; validation is skipped if this split has no shards."""
    clip_length: int = 5
    """Frames per training clip (official: 5)."""
    max_skip: int = 7
    """Official sampler window: each next frame is drawn within [prev - max_skip, prev + max_skip)."""
    batch_size_per_worker: int = 2
    """Clips per worker and step (official: 2 for pretraining, 4 for fine-tuning)."""
    shuffle_buffer: int = 64
    """Samples held in each worker's shuffle buffer (raw bytes, decoded only when drawn)."""
    prefetch_batches: int = 2
    """Batches prepared ahead by a background thread (0 = prepare in the training loop)."""
    decode_workers: int = 0
    """Processes per training worker that decode and augment samples in parallel (0 = in the prefetch thread).
    Needed on GPUs, where one thread cannot keep up; keep ``cpus_per_worker`` >= decode_workers + 1."""
    verify_checksums: bool = True
    """Verify each shard's SHA-256 from the index in the worker that first reads it (a mismatch fails the run,
    naming the shard)."""
    read_retries: int = 3
    """Times a worker reopens a shard whose read failed (at the sample it reached, waiting 1, 2, 4... s) before
    the error restarts the worker group from the last checkpoint (``max_failures``)."""

    def __post_init__(self):
        self.url = absolute_url(self.url)  # on the driver (see TrainConfig.storage)
        require(bool(self.train_split), "train_split", self.train_split, "must not be empty")
        require(self.clip_length >= 1, "clip_length", self.clip_length, "must be >= 1")
        require(self.max_skip >= 1, "max_skip", self.max_skip, "must be >= 1")
        require(
            self.batch_size_per_worker >= 1,
            "batch_size_per_worker",
            self.batch_size_per_worker,
            "must be >= 1",
        )
        require(self.shuffle_buffer >= 1, "shuffle_buffer", self.shuffle_buffer, "must be >= 1")
        require(self.prefetch_batches >= 0, "prefetch_batches", self.prefetch_batches, "must be >= 0")
        require(self.decode_workers >= 0, "decode_workers", self.decode_workers, "must be >= 0")
        require(self.read_retries >= 0, "read_retries", self.read_retries, "must be >= 0")


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    """Probability of a horizontal flip (image, flow and mask together)."""
    flip_mode: Literal["per_frame", "clip"] = "per_frame"
    """'per_frame' (official: each frame flipped independently, flow colours left as they are) or 'clip'
    (one decision for the whole clip, and the flow's x component is negated so its colours stay correct)."""
    photometric: bool = True
    """Photometric distortion on RGB only (brightness, contrast, saturation, hue; each with p=0.5)."""
    brightness_delta: int = 32
    """Brightness shift range (+-, in uint8 units)."""
    contrast_range: tuple[float, float] = (0.5, 1.5)
    """Contrast factor range."""
    saturation_range: tuple[float, float] = (0.5, 1.5)
    """Saturation factor range."""
    hue_delta: int = 18
    """Hue shift drawn from the integers in [-hue_delta, hue_delta) (official: [-18, 17]), in OpenCV's 0-179 hue units."""

    def __post_init__(self):
        require(0.0 <= self.flip_prob <= 1.0, "flip_prob", self.flip_prob, "must be in [0, 1]")
        require(
            self.flip_mode in ("per_frame", "clip"),
            "flip_mode",
            self.flip_mode,
            "must be 'per_frame' or 'clip'",
        )
        require(
            0 <= self.brightness_delta <= 255,
            "brightness_delta",
            self.brightness_delta,
            "must be in [0, 255]",
        )
        for name in ("contrast_range", "saturation_range"):
            lo, hi = getattr(self, name)
            require(0.0 <= lo <= hi, name, getattr(self, name), "must be (low, high) with 0 <= low <= high")
        require(0 <= self.hue_delta <= 90, "hue_delta", self.hue_delta, "must be in [0, 90]")


@dataclass
class LossConfig:
    focal_weight: float = 20.0
    """Weight of the focal term (alpha 0.25, gamma 2) per frame."""
    bce_weight: float = 10.0
    """Weight of the binary cross-entropy term per frame (official: 20 * 0.5)."""
    dice_weight: float = 1.0
    """Weight of the Dice term per frame."""
    focal_alpha: float = 0.25
    """Focal loss alpha (weight of the foreground class)."""
    focal_gamma: float = 2.0
    """Focal loss gamma."""

    def __post_init__(self):
        for name in ("focal_weight", "bce_weight", "dice_weight", "focal_gamma"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(0.0 <= self.focal_alpha <= 1.0, "focal_alpha", self.focal_alpha, "must be in [0, 1]")


@dataclass
class OptimConfig:
    lr: float = 6e-5
    """AdamW learning rate (official 6e-5)."""
    weight_decay: float = 5e-4
    """AdamW weight decay, applied to every parameter as the official code does."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["constant", "cosine"] = "constant"
    """'constant' (official) or 'cosine' decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to ``lr`` (official: none)."""
    min_lr_ratio: float = 0.0
    """Final LR of the cosine schedule as a fraction of ``lr``."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value (official: no clipping)."""
    max_steps: int = 100000
    """Total optimiser steps of the run (a resubmission continues up to this number)."""
    seed: int = 666
    """Seed of model init, clip sampling, augmentation and shard order (official: 666)."""

    def __post_init__(self):
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(
            all(0.0 <= b < 1.0 for b in self.betas) and len(self.betas) == 2,
            "betas",
            self.betas,
            "must be two values in [0, 1)",
        )
        require(
            self.schedule in ("constant", "cosine"),
            "schedule",
            self.schedule,
            "must be 'constant' or 'cosine'",
        )
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        require(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            "grad_clip_norm",
            self.grad_clip_norm,
            "must be > 0 or null",
        )
        require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")


@dataclass
class CheckpointingConfig:
    every_steps: int = 1000
    """Write a checkpoint every this many steps (and always at the end of the run)."""
    keep_last: int = 3
    """Checkpoints kept by Ray Train (the latest ones); the best-by-J&F model is kept separately."""
    upload: Literal["async", "sync"] = "async"
    """How a checkpoint reaches the run storage: 'async' (Ray Train's ``CheckpointUploadMode.ASYNC``: rank 0
    writes the file locally and training goes on while a background thread uploads it; the uploads keep their
    order, and the run ends only once the last one is stored) or 'sync' (the step waits for the upload). A
    checkpoint taken on a preemption notice is always uploaded synchronously."""
    preemption_check_steps: int = 1
    """Every this many steps, ask Ray Train whether a node of the run is about to be preempted
    (``ray.train.get_preemption_info``, one small collective); on a notice, write a checkpoint at once and train on
    until Ray Train restarts the group elsewhere. 0 disables the check."""

    def __post_init__(self):
        require(self.every_steps >= 1, "every_steps", self.every_steps, "must be >= 1")
        require(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        require(self.upload in ("async", "sync"), "upload", self.upload, "must be 'async' or 'sync'")
        require(
            self.preemption_check_steps >= 0,
            "preemption_check_steps",
            self.preemption_check_steps,
            "must be >= 0 (0: never)",
        )


@dataclass
class ValidationConfig:
    every_steps: int = 1000
    """Validate every this many steps (and at the end); 0 disables validation."""
    max_samples: int | None = None
    """Validate on at most this many validation samples (None = all)."""
    threshold: float = 0.5
    """Foreground threshold on the sigmoid of the logits (our default binarisation)."""
    protocol: Literal["davis2016", "all"] = "davis2016"
    """Frame protocol of the J&F computation (see docs/evaluation.md §6)."""

    def __post_init__(self):
        require(self.every_steps >= 0, "every_steps", self.every_steps, "must be >= 0")
        require(
            self.max_samples is None or self.max_samples >= 1,
            "max_samples",
            self.max_samples,
            "must be >= 1 or null",
        )
        require(0.0 < self.threshold < 1.0, "threshold", self.threshold, "must be in (0, 1)")
        require(
            self.protocol in ("davis2016", "all"), "protocol", self.protocol, "must be 'davis2016' or 'all'"
        )


@dataclass
class TrainConfig:
    storage: str = ""
    """URL of the run storage: checkpoints, logs and metrics go to ``<storage>/<run_name>/``."""
    run_name: str = ""
    """Run name, one folder name below ``storage`` (not ``.`` or ``..``, no ``/``); resubmitting with the same
    name resumes from the latest checkpoint."""
    num_workers: int = 1
    """Ray Train workers (one per GPU when ``use_gpu``)."""
    use_gpu: bool = False
    """Train on GPUs (NCCL); otherwise CPU with gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    max_failures: int = 10
    """Worker-group restarts allowed (each resumes from the last checkpoint). A long run meets lost nodes,
    preempted instances and storage outages that outlast the retries; each costs at most ``checkpoint.every_steps``
    steps, so 10 absorbs the blips of a multi-day run while a deterministic error (which fails again at once)
    still ends the run after 10 quick restarts. -1 retries forever."""
    log_every_steps: int = 10
    """Report metrics and write a CSV/TensorBoard row every this many steps."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Input pipeline settings."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation settings."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser, schedule and precision."""
    checkpoint: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    """Checkpoint cadence and retention."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation cadence and metric settings."""

    def __post_init__(self):
        # A relative path would mean each Ray Train worker's session folder: made absolute where the config is
        # built (the driver), like every path field of every job config.
        self.storage = absolute_url(self.storage)
        if self.run_name:
            try:
                check_name(self.run_name, "run_name")
            except UnsafeNameError as err:  # '.' would put the run (and its lease) on the storage root itself
                raise ConfigError(
                    "run_name", self.run_name, f"must be one folder name below storage ({err})"
                ) from err
        require(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        require(self.max_failures >= -1, "max_failures", self.max_failures, "must be >= 0, or -1 (no limit)")
        require(self.log_every_steps >= 1, "log_every_steps", self.log_every_steps, "must be >= 1")


MIN_STEPS_BETWEEN_SAVES = 50
"""A checkpoint or a validation pass costs about as much as tens of small-model steps (upload, gather, barrier)."""
MAX_SAVES_PER_RUN = 20
"""More checkpoints (or validations) than this per run, each fewer than ``MIN_STEPS_BETWEEN_SAVES`` steps apart,
and the run spends a large share of its time saving or validating instead of training."""


def cadence_warnings(cfg: TrainConfig) -> list[str]:
    """Warnings for a checkpoint or validation cadence that would make the run checkpoint-bound.

    A cadence is flagged when it is both dense (fewer than ``MIN_STEPS_BETWEEN_SAVES`` steps apart) and frequent
    over the run (more than ``MAX_SAVES_PER_RUN`` times): ``checkpoint.every_steps=4`` is right for an 8-step test
    and wrong for ``--max-steps 800`` (200 checkpoints). The job logs these before training starts.
    """
    steps = cfg.optim.max_steps
    out = []
    for what, field_name, every in (
        ("checkpoint", "checkpoint.every_steps", cfg.checkpoint.every_steps),
        ("validation", "validation.every_steps", cfg.validation.every_steps),
    ):
        if every <= 0:
            continue
        count = steps // every
        if every < MIN_STEPS_BETWEEN_SAVES and count > MAX_SAVES_PER_RUN:
            suggested = max(MIN_STEPS_BETWEEN_SAVES, steps // MAX_SAVES_PER_RUN)
            out.append(
                f"{field_name}={every} with optim.max_steps={steps}: {count} {what}s in this run, each "
                f"{every} steps apart; the run may spend more time on {what}s than on training "
                f"(e.g. --set {field_name}={suggested})"
            )
    return out

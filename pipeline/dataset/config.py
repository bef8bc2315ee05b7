"""Settings of the dataset build (``jobs/precompute_flow.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import require
from pipeline.flow.config import FlowConfig
from pipeline.ingest.formats import FORMATS
from pipeline.storage import absolute_url

__all__ = ["FORMAT_CHOICES", "ComputeConfig", "FlowConfig", "PrecomputeFlowConfig", "ShardConfig"]

FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMATS)
"""``auto`` and every corpus layout :mod:`pipeline.ingest.formats` reads (its registry is the one list)."""


@dataclass
class ShardConfig:
    clip_length: int = 32
    """Frames per sample (consecutive frames of one video); a video's frames are split into near-equal clips."""
    jpeg_quality: int = 90
    """JPEG quality of the stored frames (1-100)."""
    shard_size_mb: float = 512.0
    """Target shard size in MB (a shard is closed once it reaches this size)."""
    flow_compress_level: int = 1
    """zstd level of the float16 flow members (1-19): 1 is the fastest (~3.5 ms per 480p frame for ~57% of the raw
    bytes); 0 stores them uncompressed."""
    group_videos: int = 16
    """Most videos per work group: the driver cuts the sorted pending videos into groups of at most this many, and
    into at least as many groups as there are flow workers (a small corpus is spread over all of them); one worker
    makes, packs and uploads a group's shards (one or more per split, cut at ``shard_size_mb``) and the driver
    commits the group as one index part. Larger groups make fuller shards and fewer commits; smaller ones lose less
    work to a kill."""

    consolidate_every: int = 1000
    """Also consolidate the index parts into ``index.parquet`` (and the wids lists) every this many commits, so
    that a resume or a reader after a kill reads few parts (0: only at the end of the run)."""

    def __post_init__(self):
        require(2 <= self.clip_length <= 999, "clip_length", self.clip_length, "must be in 2..999")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.shard_size_mb > 0, "shard_size_mb", self.shard_size_mb, "must be > 0")
        require(
            0 <= self.flow_compress_level <= 19,
            "flow_compress_level",
            self.flow_compress_level,
            "must be in 0..19",
        )
        require(self.group_videos >= 1, "group_videos", self.group_videos, "must be >= 1")
        require(self.consolidate_every >= 0, "consolidate_every", self.consolidate_every, "must be >= 0")


@dataclass
class ComputeConfig:
    concurrency: int | None = None
    """Flow actors; default: one per GPU (divided by num_gpus_per_actor), else one per ``num_cpus_per_actor``
    cluster CPUs (fused) or per 2 cluster CPUs (staged)."""
    fused: bool | None = None
    """Run decode, flow, encode and shard packing of a group in one actor, so that only the group's index rows
    cross the object store. Default: fused without GPUs; with GPUs, staged: CPU decode/encode tasks feed the GPU
    flow actors and tasks pack each group's samples into shards."""
    num_gpus_per_actor: float = 0.0
    """GPUs per flow actor; > 0 runs ptlflow models on CUDA."""
    num_cpus_per_actor: float = 1.0
    """CPUs reserved per flow actor (also its OpenCV/torch thread count, at least 1)."""
    num_cpus_per_task: float = 0.5
    """CPUs reserved per decode / encode / pack task (fractional so tasks run beside the actors on small machines)."""

    def __post_init__(self):
        require(
            self.concurrency is None or self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1"
        )
        require(self.num_gpus_per_actor >= 0, "num_gpus_per_actor", self.num_gpus_per_actor, "must be >= 0")
        require(self.num_cpus_per_actor > 0, "num_cpus_per_actor", self.num_cpus_per_actor, "must be > 0")
        require(self.num_cpus_per_task > 0, "num_cpus_per_task", self.num_cpus_per_task, "must be > 0")


@dataclass
class PrecomputeFlowConfig:
    input: str = ""
    """Corpus root: local path, file:// or s3://bucket/prefix."""
    output: str = ""
    """Output root for shards/, the index, manifest.parquet and summary.json."""
    format: str = "auto"
    """Corpus layout: auto or a pipeline.ingest format (davis2016, davis2017, ytvos, fbms, ytobj, hmhi, frames,
    videos)."""
    davis_resolution: str = "480p"
    """DAVIS resolution folder (480p or Full-Resolution)."""
    val_fraction: float = 0.0
    """Fraction of train videos moved to a deterministic val split when the corpus has no val split. The
    assignment is stored in the output and reused: videos added later never move a video between splits."""
    max_videos: int | None = None
    """Process at most this many videos (in listing order); for trials."""
    max_video_mb: float = 4096.0
    """Per-video memory budget for decoded RGB frames; longer videos are rejected with a message."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """Optical-flow settings (``flow.engine=pictures`` stores the corpus's own flow pictures instead)."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Sample and shard settings."""
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    """Ray resources."""

    def __post_init__(self):
        require(bool(self.input), "input", self.input, "is required (--input URL)")
        require(bool(self.output), "output", self.output, "is required (--output URL)")
        # Local paths absolute where the config is built (the driver), before anything reaches a Ray worker.
        self.input, self.output = absolute_url(self.input), absolute_url(self.output)
        self.flow = self.flow.resolved()  # the flow job's samples are made with concrete settings
        require(self.format in FORMAT_CHOICES, "format", self.format, f"must be one of {FORMAT_CHOICES}")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        require(
            self.max_videos is None or self.max_videos >= 1, "max_videos", self.max_videos, "must be >= 1"
        )
        require(self.max_video_mb > 0, "max_video_mb", self.max_video_mb, "must be > 0")

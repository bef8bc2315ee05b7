"""Typed configuration of batch inference (``jobs/segment.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from model.settings import ModelSettings
from pipeline.config import require
from pipeline.flow.config import FlowConfig
from pipeline.formats.exporter import EXPORT_FORMATS
from pipeline.imaging import DECODERS
from pipeline.storage import absolute_url

PRESETS: tuple[str, ...] = ("", "official")
PICTURES_ENGINE = "pictures"
"""``flow.engine`` value that feeds the corpus' own flow pictures (VideoRecord.flows) instead of computing flow."""

__all__ = [
    "SegmentModelConfig",
    "SegmentOutputConfig",
    "SegmentRuntimeConfig",
    "SegmentConfig",
]


@dataclass
class SegmentModelConfig(ModelSettings):
    """Which network runs and how frames are fed to it (:class:`model.ModelSettings`: name, options, memory_size,
    input_size, precision, mean, std), and the weights. A hmhi-uvos checkpoint records its model: the fields left
    null take its recorded values (the size and normalisation it was trained with); a field set to another value is
    honoured with a warning naming both, except the architecture (name, options), which the weights fix. An official
    HMHI-Net file records nothing: the official protocol's defaults apply (hmhi_mit_b1, T=5, 512x512, ImageNet
    normalisation; ``--preset official``: T=3)."""

    checkpoint: str = ""
    """Path or storage URL of the weights: a hmhi-uvos checkpoint (records its model) or an official HMHI-Net file."""
    device: str = "auto"
    """'auto' (CUDA when the actor has a GPU, else CPU), 'cpu' or 'cuda'."""
    decoder: str = "opencv"
    """Image decoder for frame and flow picture files: 'opencv' (fast) or 'pil' (the official code's)."""

    def __post_init__(self):
        super().__post_init__()
        self.checkpoint = absolute_url(self.checkpoint)  # on the driver (see SegmentConfig.input)
        require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "must be auto, cpu or cuda")
        require(self.decoder in DECODERS, "decoder", self.decoder, f"must be one of {', '.join(DECODERS)}")


@dataclass
class SegmentOutputConfig:
    """What is written per video."""

    threshold: float = 0.5
    """Foreground where the sigmoid probability > threshold (absolute mode)."""
    binarize: Literal["absolute", "official_minmax"] = "absolute"
    """absolute: p > threshold; official_minmax: the official HMHI-Net per-frame min-max stretch, then > 128."""
    save_probs: bool = False
    """Also write soft-probability PNGs (8-bit greyscale) under probs/<video>/."""
    prob_mode: Literal["absolute", "official_minmax"] = "absolute"
    """Soft PNG values: round(255 p), or the official per-frame min-max stretch."""
    overlay: bool = False
    """Also write an overlay MP4 (frames with the mask tinted) under overlays/<video>.mp4, and overlays/index.html."""
    export: list[str] = field(default_factory=list)
    """At the end, export the finished videos for other tools (pipeline/export): coco (YouTube-VIS-style JSON),
    cvat (Segmentation mask 1.1 zip), cvat_video (one zip per video)."""
    overwrite: bool = False
    """Redo videos that already have a done marker (default: skip them)."""

    def __post_init__(self):
        require(0.0 <= self.threshold < 1.0, "threshold", self.threshold, "must be in [0, 1)")
        for i, fmt in enumerate(self.export):
            require(fmt in EXPORT_FORMATS, f"export[{i}]", fmt, f"must be one of {list(EXPORT_FORMATS)}")


@dataclass
class SegmentRuntimeConfig:
    """How the work is spread over the Ray cluster."""

    num_actors: int = 1
    """Model actors (one per GPU on GPU clusters)."""
    gpus_per_actor: float = 0.0
    """GPUs per model actor (0 = CPU inference)."""
    cpus_per_actor: float = 0.0
    """CPUs per model actor (its torch thread count on CPU, rounded up). 0 = auto: CPU actors share the cluster's
    CPUs less what their decode tasks reserve (videos_in_flight x decode_cpus each); GPU actors take 1."""
    videos_in_flight: int = 4
    """Videos each actor steps together (the model's batch dimension)."""
    videos_per_batch: int = 0
    """Videos handed to an actor at a time (0 = 2 x videos_in_flight); finished slots refill from it."""
    decode_cpus: float = 0.1
    """CPUs reserved per decode+flow task (one task per video in flight). Decoding, DIS flow, rendering and resizing
    to 512 take 15-25 ms of CPU per 240x432 frame (measured), against 250-1000 ms for the model on CPU: a tenth
    of a core keeps up, and the model gets the rest. Raise it for ptlflow flow on CPU or very large frames."""
    chunk_frames: int = 8
    """Frames per chunk passed from a decode task to the actor (memory is bounded by chunks, not videos)."""
    prefetch_chunks: int = 2
    """Chunks a decode task may run ahead of the model (Ray generator back-pressure)."""
    write_threads: int = 4
    """Threads per actor encoding and writing outputs."""

    def __post_init__(self):
        require(self.num_actors >= 1, "num_actors", self.num_actors, "must be >= 1")
        require(self.gpus_per_actor >= 0, "gpus_per_actor", self.gpus_per_actor, "must be >= 0")
        require(self.cpus_per_actor >= 0, "cpus_per_actor", self.cpus_per_actor, "must be >= 0 (0 = auto)")
        require(self.videos_in_flight >= 1, "videos_in_flight", self.videos_in_flight, "must be >= 1")
        require(self.videos_per_batch >= 0, "videos_per_batch", self.videos_per_batch, "must be >= 0")
        require(self.decode_cpus > 0, "decode_cpus", self.decode_cpus, "must be > 0")
        require(self.chunk_frames >= 1, "chunk_frames", self.chunk_frames, "must be >= 1")
        require(self.prefetch_chunks >= 1, "prefetch_chunks", self.prefetch_chunks, "must be >= 1")
        require(self.write_threads >= 1, "write_threads", self.write_threads, "must be >= 1")

    def torch_threads(self) -> int:
        """Intra-op threads of a CPU model actor: its CPUs rounded up. The decode tasks' fractions (0.1 each) are
        what they need on average, well under a core, so the actor's last thread shares a core with them rather
        than leaving most of it idle (rounding down would run 1 thread on a 2-core machine: ~1.8x slower)."""
        return max(1, math.ceil(self.cpus_per_actor - 1e-9))

    def actor_cpus(self, cluster_cpus: float, node_cpus: float | None = None) -> float:
        """``cpus_per_actor``, with 0 (auto) resolved for a cluster of ``cluster_cpus`` CPUs whose largest node has
        ``node_cpus`` (an actor runs on one node: asking for more than a node has would never be scheduled)."""
        if self.cpus_per_actor > 0:
            return self.cpus_per_actor
        if self.gpus_per_actor > 0:
            return 1.0
        share = cluster_cpus / self.num_actors
        if node_cpus is not None:
            share = min(share, node_cpus)
        spare = share - self.videos_in_flight * self.decode_cpus
        return max(1.0, float(int(spare * 10)) / 10)  # tenths: Ray's fractional CPUs are exact in that unit


@dataclass
class SegmentConfig:
    """jobs/segment.py: segment every video of a corpus and write masks back to storage."""

    input: str = ""
    """URL or path of the corpus: video files, DAVIS-style frame folders, any layout pipeline.ingest reads, or shards."""
    output: str = ""
    """URL or path of the output root (masks/, probs/, rle/, overlays/, done/, summary.json)."""
    format: str = "auto"
    """Corpus layout: auto, shards (the data pipeline's output: frames and flow from its index.parquet), or a
    pipeline.ingest format: videos, frames, davis2016, davis2017, ytvos, fbms, ytobj, hmhi."""
    preset: str = ""
    """'' (the project's defaults) or 'official': the official HMHI-Net inference protocol. It sets, where they are
    left at their defaults: model.memory_size=3, model.input_size=512, model.decoder=pil, model.precision=fp32,
    outputs.binarize and outputs.prob_mode = official_minmax, outputs.save_probs=true, frames=annotated."""
    frames: Literal["all", "annotated"] = "all"
    """Frames stepped through the model: 'all', or 'annotated' (only frames with a ground-truth mask, for videos
    with sparse annotation, as the official inference on FBMS and YouTube-Objects archives does). With a computed
    flow engine, flow then runs between consecutive stepped frames; the official archives ship flow pictures."""
    davis_resolution: str = "480p"
    """DAVIS resolution folder (480p or Full-Resolution)."""
    videos: list[str] = field(default_factory=list)
    """Only these videos (by video id or name); default: every video found."""
    max_videos: int = 0
    """Stop after this many videos (0 = all), after skipping finished ones."""
    model: SegmentModelConfig = field(default_factory=SegmentModelConfig)
    """Network and input size."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """On-the-fly optical flow."""
    outputs: SegmentOutputConfig = field(default_factory=SegmentOutputConfig)
    """What is written per video."""
    runtime: SegmentRuntimeConfig = field(default_factory=SegmentRuntimeConfig)
    """Actors, batching and prefetching."""

    def __post_init__(self):
        require(bool(self.input), "input", self.input, "is required (URL or path of the corpus)")
        require(bool(self.output), "output", self.output, "is required (URL or path for the results)")
        # Local paths absolute where the config is built (the driver): an actor's working directory is elsewhere.
        self.input, self.output = absolute_url(self.input), absolute_url(self.output)
        require(
            bool(self.model.checkpoint),
            "model.checkpoint",
            self.model.checkpoint,
            "is required (--checkpoint PATH_OR_URL)",
        )
        require(self.max_videos >= 0, "max_videos", self.max_videos, "must be >= 0")
        require(self.preset in PRESETS, "preset", self.preset, "must be '' or 'official'")
        require(self.frames in ("all", "annotated"), "frames", self.frames, "must be all or annotated")
        if self.preset == "official":
            self._apply_official_preset()

    def _apply_official_preset(self) -> None:
        """Official protocol values for the fields still at their defaults (idempotent: configs travel as dicts)."""
        defaults = {"model": SegmentModelConfig(), "outputs": SegmentOutputConfig()}
        official = {
            ("model", "memory_size"): 3,  # the shipped inference script uses the config default T=3
            ("model", "input_size"): 512,
            ("model", "decoder"): "pil",
            ("model", "precision"): "fp32",
            ("outputs", "binarize"): "official_minmax",
            ("outputs", "prob_mode"): "official_minmax",
            ("outputs", "save_probs"): True,
        }
        for (section, name), value in official.items():
            part = getattr(self, section)
            if getattr(part, name) == getattr(defaults[section], name):
                setattr(part, name, value)
        if self.frames == "all":
            self.frames = "annotated"

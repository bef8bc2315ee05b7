"""The flow-precompute job: corpus -> Ray Data (decode, flow, encode) -> WebDataset shards + index + manifest.

Stages (Ray Data, streaming):
  1. ``load_clips`` (tasks): read and validate one video (frames + masks), cut it into clips of
     ``clip_length`` consecutive frames; a clip carries one extra frame of context for its last forward flow.
     A video that cannot be used becomes one ``rejected`` row naming the video and the file.
  2. ``FlowStage`` (actor pool, ``num_gpus`` per actor when asked): the flow engine on each clip.
  3. ``encode_clip_row`` (tasks): JPEG frames, PNG masks, float16 flow, meta.json -> sample member bytes.
Without GPUs the three run fused in one actor per video (``FusedFlowStage``, ``compute.fused``): only encoded samples
then cross the object store. The driver packs samples into per-split shards (:class:`pipeline.shards.ShardWriter`), which are uploaded, then
indexed. A rerun resumes: videos whose samples are all indexed are skipped, samples already indexed are not
written again, unindexed leftovers of a killed run are deleted first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import ConfigError, config_to_dict, require
from pipeline.flow.config import FlowConfig
from pipeline.lease import holds_output_lease

log = logging.getLogger(__name__)

__all__ = [
    "ComputeConfig",
    "FlowConfig",
    "PrecomputeFlowConfig",
    "ShardConfig",
    "FlowStage",
    "clip_spans",
    "encode_clip_row",
    "load_clips",
    "run_precompute",
]

FORMAT_CHOICES = ("auto", "davis2016", "davis2017", "ytvos", "fbms", "hmhi", "frames", "videos")
KILL_AFTER_SHARDS_ENV = "HMHI_PRECOMPUTE_KILL_AFTER_SHARDS"
"""Fault injection for resume tests: SIGKILL this driver right after it commits that many shards."""
SETTINGS_NAME = "precompute_settings.json"
MANIFEST_NAME = "manifest.parquet"


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

    def __post_init__(self):
        require(2 <= self.clip_length <= 999, "clip_length", self.clip_length, "must be in 2..999")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.shard_size_mb > 0, "shard_size_mb", self.shard_size_mb, "must be > 0")
        require(0 <= self.flow_compress_level <= 19, "flow_compress_level", self.flow_compress_level,
                "must be in 0..19")


@dataclass
class ComputeConfig:
    concurrency: int | None = None
    """Flow actors; default: one per GPU (divided by num_gpus_per_actor), else one per ``num_cpus_per_actor``
    cluster CPUs (fused) or per 2 cluster CPUs (staged)."""
    fused: bool | None = None
    """Run decode, flow and encode of a video in one actor, so that only the encoded samples cross the object
    store (on CPU this halves the job's cost: raw frames and flows are ~4x the encoded bytes). Default: fused
    without GPUs; with GPUs, staged: CPU decode/encode tasks feed the GPU flow actors."""
    num_gpus_per_actor: float = 0.0
    """GPUs per flow actor; > 0 runs ptlflow models on CUDA."""
    num_cpus_per_actor: float = 1.0
    """CPUs reserved per flow actor (also its OpenCV/torch thread count, at least 1)."""
    num_cpus_per_task: float = 0.5
    """CPUs reserved per decode / encode task (fractional so tasks run beside the actors on small machines)."""

    def __post_init__(self):
        require(self.concurrency is None or self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1")
        require(self.num_gpus_per_actor >= 0, "num_gpus_per_actor", self.num_gpus_per_actor, "must be >= 0")
        require(self.num_cpus_per_actor > 0, "num_cpus_per_actor", self.num_cpus_per_actor, "must be > 0")
        require(self.num_cpus_per_task > 0, "num_cpus_per_task", self.num_cpus_per_task, "must be > 0")


@dataclass
class PrecomputeFlowConfig:
    input: str = ""
    """Corpus root: local path, file:// or s3://bucket/prefix."""
    output: str = ""
    """Output root for shards/, index.parquet, manifest.parquet and summary.json."""
    format: str = "auto"
    """Corpus layout: auto, davis2016, davis2017, ytvos, fbms, hmhi, frames or videos."""
    davis_resolution: str = "480p"
    """DAVIS resolution folder (480p or Full-Resolution)."""
    val_fraction: float = 0.0
    """Fraction of train videos moved to a deterministic val split when the corpus has no val split."""
    max_videos: int | None = None
    """Process at most this many videos (in listing order); for trials."""
    max_video_mb: float = 4096.0
    """Per-video memory budget for decoded RGB frames; longer videos are rejected with a message."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """Optical-flow settings."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Sample and shard settings."""
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    """Ray resources."""

    def __post_init__(self):
        require(bool(self.input), "input", self.input, "is required (--input URL)")
        require(bool(self.output), "output", self.output, "is required (--output URL)")
        require(self.format in FORMAT_CHOICES, "format", self.format, f"must be one of {FORMAT_CHOICES}")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        require(self.max_videos is None or self.max_videos >= 1, "max_videos", self.max_videos, "must be >= 1")
        require(self.max_video_mb > 0, "max_video_mb", self.max_video_mb, "must be > 0")


def clip_spans(n: int, clip_length: int) -> list[tuple[int, int]]:
    """Split ``n`` frames into ceil(n / clip_length) runs of near-equal length: [(start, end), ...]."""
    k = max(1, -(-n // clip_length))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


# -- stage 1: load -------------------------------------------------------------------------------------------------

_EMPTY = {"frames": np.zeros((1, 1, 1, 3), np.uint8), "masks": np.zeros((1, 1, 1), np.uint8),
          "mask_valid": np.zeros(1, bool)}


def _rejected_row(record: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"video_id": record["video_id"], "kind": "rejected", "info": json.dumps({"record": record,
            "reason": reason}), "clip_index": -1, "n_clips": 0, "start": 0, **_EMPTY}


def load_clips(row: dict[str, Any], input_url: str, clip_length: int, max_video_mb: float = 4096.0
               ) -> list[dict[str, Any]]:
    """Ray Data flat_map: one video -> its clip rows (or one rejected row)."""
    from pipeline.ingest.formats import VideoRecord
    from pipeline.ingest.load import VideoRejected, load_video
    from pipeline.storage import StorageError, open_storage

    record = json.loads(row["record"])
    skip = set(json.loads(row["skip_keys"]))
    rec = VideoRecord.from_dict(record)
    try:
        video = load_video(open_storage(input_url), rec, max_video_mb=max_video_mb)
    except VideoRejected as e:
        return [_rejected_row(record, str(e))]
    except (StorageError, OSError) as e:
        return [_rejected_row(record, f"video {rec.name!r} ({rec.source}): cannot be read: {e}")]
    n, h, w, _ = video.frames.shape
    facts = {"frame_count": n, "height": h, "width": w, "fps": video.fps,
             "annotated_frames": [int(i) for i in np.flatnonzero(video.mask_valid)], "warnings": video.warnings}
    spans = clip_spans(n, clip_length)
    from pipeline.shards import sample_key

    rows = []
    for ci, (s, e) in enumerate(spans):
        if sample_key(rec.video_id, s) in skip:
            continue
        ctx_end = min(e + 1, n)  # one frame of context for the clip's last forward flow
        rows.append({
            "video_id": rec.video_id, "kind": "clip",
            "info": json.dumps({"record": record, "facts": facts, "frame_names": video.frame_names[s:e]}),
            "clip_index": ci, "n_clips": len(spans), "start": s,
            "frames": video.frames[s:ctx_end], "masks": video.masks[s:e].astype(np.uint8),
            "mask_valid": video.mask_valid[s:e],
        })
    return rows


# -- stage 2: flow -------------------------------------------------------------------------------------------------

class FlowStage:
    """Ray Data actor: holds one flow engine and adds ``flows`` (float16) to each clip row."""

    def __init__(self, flow: FlowConfig, device: str, threads: int):
        self.engine = flow.create_engine(device=device, threads=threads)
        self.provenance = json.dumps(self.engine.provenance, sort_keys=True)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["kind"] != "clip":
            row["flows"] = np.zeros((1, 1, 1, 2), np.float16)
            row["provenance"] = self.provenance
            return row
        frames = np.asarray(row["frames"])
        n = len(row["mask_valid"])
        row["flows"] = self.engine.compute(frames)[:n].astype(np.float16)
        row["frames"] = frames[:n]
        row["provenance"] = self.provenance
        return row


class FusedFlowStage(FlowStage):
    """Ray Data actor for CPU engines: one video row -> its encoded sample rows (load, flow, encode in place)."""

    def __init__(self, flow: FlowConfig, device: str, threads: int, load_kwargs: dict[str, Any],
                 encode_kwargs: dict[str, Any]):
        super().__init__(flow, device, threads)
        self.load_kwargs, self.encode_kwargs = load_kwargs, encode_kwargs

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:  # type: ignore[override]
        return [encode_clip_row(super(FusedFlowStage, self).__call__(clip), **self.encode_kwargs)
                for clip in load_clips(row, **self.load_kwargs)]


# -- stage 3: encode -----------------------------------------------------------------------------------------------

def encode_clip_row(row: dict[str, Any], jpeg_quality: int, flow_level: int) -> dict[str, Any]:
    """Ray Data map: clip row -> sample member bytes (names + one blob) and the index fields."""
    from pipeline.flow.render import RENDER_VERSION
    from pipeline.shards import encode_clip, sample_key

    out = {"video_id": row["video_id"], "kind": row["kind"], "info": row["info"], "key": "",
           "names": "[]", "blob": b"", "index_row": "{}"}
    if row["kind"] != "clip":
        return out
    info = json.loads(row["info"])
    rec, facts = info["record"], info["facts"]
    start, n = int(row["start"]), len(row["mask_valid"])
    key = sample_key(rec["video_id"], start)
    frame_indices = list(range(start, start + n))
    mask_valid = np.asarray(row["mask_valid"], bool)
    meta = {"video_id": rec["video_id"], "video_name": rec["name"], "split": rec["split"],
            "source_split": rec["source_split"], "format": rec["format"], "source": rec["source"],
            "frame_indices": frame_indices, "frame_names": info["frame_names"],
            "clip_index": int(row["clip_index"]), "n_clips": int(row["n_clips"]),
            "video_frames": facts["frame_count"], "fps": facts["fps"],
            "flow": json.loads(row["provenance"]), "flow_dtype": "float16", "flow_units": "pixels (dx, dy)",
            "flow_last_frame": "backward" if start + n == facts["frame_count"] else "forward",
            "render_version": RENDER_VERSION, "jpeg_quality": jpeg_quality, "warnings": facts["warnings"]}
    members = encode_clip(key, np.asarray(row["frames"]), np.asarray(row["flows"]),
                          np.asarray(row["masks"]).astype(bool), mask_valid, meta, jpeg_quality, flow_level)
    names = list(members)
    out.update(key=key, names=json.dumps([[k, len(members[k])] for k in names]),
               blob=b"".join(members[k] for k in names),
               index_row=json.dumps({"video_id": rec["video_id"], "clip_index": int(row["clip_index"]),
                                     "n_clips": int(row["n_clips"]), "frame_indices": frame_indices,
                                     "n_frames": n, "n_masks": int(mask_valid.sum()),
                                     "height": int(np.asarray(row["frames"]).shape[1]),
                                     "width": int(np.asarray(row["frames"]).shape[2])}))
    return out


def _unpack_members(names_json: str, blob: bytes) -> dict[str, bytes]:
    members, pos = {}, 0
    for name, size in json.loads(names_json):
        members[name] = blob[pos:pos + size]
        pos += size
    return members


# -- driver --------------------------------------------------------------------------------------------------------

def _settings(cfg: PrecomputeFlowConfig) -> dict[str, Any]:
    """Settings that change sample content: a resumed run must use the same ones."""
    from pipeline.flow.engines import file_sha256
    from pipeline.flow.render import RENDER_VERSION
    from pipeline.shards import SAMPLE_VERSION

    ckpt_sha = None
    if cfg.flow.checkpoint and "://" not in cfg.flow.checkpoint and os.path.isfile(cfg.flow.checkpoint):
        ckpt_sha = file_sha256(cfg.flow.checkpoint)
    return {"format": cfg.format, "davis_resolution": cfg.davis_resolution, "val_fraction": cfg.val_fraction,
            "flow_engine": cfg.flow.engine, "flow_preset": cfg.flow.preset if cfg.flow.engine == "dis" else None,
            "flow_checkpoint_sha256": ckpt_sha, "flow_max_side": cfg.flow.max_side,
            "clip_length": cfg.shards.clip_length, "jpeg_quality": cfg.shards.jpeg_quality,
            "render_version": RENDER_VERSION, "sample_version": SAMPLE_VERSION}


def _check_settings(out, cfg: PrecomputeFlowConfig) -> None:
    settings = _settings(cfg)
    if out.exists(SETTINGS_NAME):
        previous = out.read_json(SETTINGS_NAME)
        diff = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError("output", out.url, f"holds shards made with other settings ({detail}); "
                              "use a new --output or the same settings")
    else:
        out.write_json(SETTINGS_NAME, settings)


def _remove_unindexed_shards(out, index) -> int:
    from pipeline.shards import SHARD_DIR

    indexed = set(index.column("shard").to_pylist())
    removed = 0
    for name in out.list(SHARD_DIR, suffix=".tar"):
        rel = f"{SHARD_DIR}/{name}"
        if rel not in indexed:
            log.warning("removing %s: written by an interrupted run but never indexed", out.join(rel))
            out.delete(rel)
            removed += 1
    return removed


def _timed(rows, summary, counter: str):
    """Yield from ``rows``, adding the seconds spent waiting for each row to ``summary``'s ``counter``."""
    it = iter(rows)
    while True:
        t0 = time.perf_counter()
        try:
            row = next(it)
        except StopIteration:
            return
        finally:
            summary.add(counter, time.perf_counter() - t0)
        yield row


def _build_dataset(cfg: PrecomputeFlowConfig, pending: list[dict[str, Any]], input_url: str):
    """The Ray Data pipeline: video rows -> encoded sample rows (fused actors, or decode -> flow -> encode)."""
    import ray

    gpus = cfg.compute.num_gpus_per_actor
    fused = cfg.compute.fused if cfg.compute.fused is not None else gpus == 0
    res = ray.cluster_resources()
    total_cpus = float(res.get("CPU", 1))
    actor_cpus, task_cpus = cfg.compute.num_cpus_per_actor, cfg.compute.num_cpus_per_task
    concurrency = cfg.compute.concurrency
    if concurrency is None:
        if gpus > 0:
            concurrency = max(1, int(res.get("GPU", 0) // gpus))
        else:
            concurrency = max(1, int(total_cpus // (actor_cpus if fused else 2)))
    # FlowConfig.create_engine keeps DIS on the CPU whatever the device.
    engine_kwargs = {"flow": cfg.flow, "device": "cuda" if gpus > 0 else "cpu",
                     "threads": max(1, int(cfg.compute.num_cpus_per_actor))}
    load_kwargs = {"input_url": input_url, "clip_length": cfg.shards.clip_length, "max_video_mb": cfg.max_video_mb}
    encode_kwargs = {"jpeg_quality": cfg.shards.jpeg_quality, "flow_level": cfg.shards.flow_compress_level}
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    if fused:
        return ds.flat_map(FusedFlowStage, fn_constructor_kwargs=dict(engine_kwargs, load_kwargs=load_kwargs,
                                                                      encode_kwargs=encode_kwargs),
                           compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=min(actor_cpus, total_cpus),
                           num_gpus=gpus or None)
    if concurrency * actor_cpus + task_cpus > total_cpus:
        # Actors holding every CPU would starve the decode/encode tasks: shrink the reservations to fit.
        scale = total_cpus / (concurrency * actor_cpus + task_cpus)
        actor_cpus, task_cpus = actor_cpus * scale, task_cpus * scale
        log.warning("%d flow actor(s) x %.2g CPU + tasks do not fit in %.3g CPUs: reserving %.2g CPU per actor "
                    "and %.2g per task", concurrency, cfg.compute.num_cpus_per_actor, total_cpus, actor_cpus,
                    task_cpus)
    ds = ds.flat_map(load_clips, fn_kwargs=load_kwargs, num_cpus=task_cpus)
    ds = ds.map(FlowStage, fn_constructor_kwargs=engine_kwargs, compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=actor_cpus, num_gpus=gpus or None)
    return ds.map(encode_clip_row, fn_kwargs=encode_kwargs, num_cpus=task_cpus)


@holds_output_lease("precompute_flow")  # one run per output (pipeline/lease.py)
def run_precompute(cfg: PrecomputeFlowConfig) -> dict[str, Any]:
    """Run the job (Ray must be initialised); returns the summary dict (also written to summary.json)."""
    import ray

    from pipeline.ingest.manifest import assign_val_split, list_corpus, manifest_table
    from pipeline.jobs import JobSummary
    from pipeline.shards import INDEX_NAME, ShardWriter, empty_index
    from pipeline.storage import open_storage

    summary = JobSummary("precompute_flow")
    inp, out = open_storage(cfg.input), open_storage(cfg.output)
    inp.check()
    out.check()
    _check_settings(out, cfg)
    listing = list_corpus(inp, cfg.format, cfg.davis_resolution)
    records = listing.records[:cfg.max_videos] if cfg.max_videos else listing.records
    moved = assign_val_split(records, cfg.val_fraction)
    log.info("%s: %d videos (%s)%s", inp.url, len(records), listing.format,
             f", {moved} moved to val" if moved else "")

    index = out.read_parquet(INDEX_NAME) if out.exists(INDEX_NAME) else empty_index()
    _remove_unindexed_shards(out, index)
    indexed_keys: dict[str, set[str]] = defaultdict(set)
    n_clips_of: dict[str, int] = {}
    for vid, key, nc in zip(index.column("video_id").to_pylist(), index.column("key").to_pylist(),
                            index.column("n_clips").to_pylist(), strict=True):
        indexed_keys[vid].add(key)
        n_clips_of[vid] = nc
    previous_facts: dict[str, dict[str, Any]] = {}
    if out.exists(MANIFEST_NAME):
        for r in out.read_parquet(MANIFEST_NAME).to_pylist():
            previous_facts[r["video_id"]] = {k: r[k] for k in ("frame_count", "height", "width", "fps",
                                                               "annotated_frames", "status", "reason")}

    facts: dict[str, dict[str, Any]] = {}
    pending = []
    for r in records:
        done_keys = indexed_keys.get(r.video_id, set())
        if done_keys and len(done_keys) == n_clips_of[r.video_id]:
            summary.skipped("video", r.video_id, "already done (all samples indexed)")
            facts[r.video_id] = dict(previous_facts.get(r.video_id, {}), status="done", reason=None)
            continue
        pending.append({"record": json.dumps(r.to_dict()), "skip_keys": json.dumps(sorted(done_keys))})

    # Per video: clips still to commit, and the frame count; a video is done once all its clips are indexed.
    remaining: dict[str, int] = {}
    frames_of: dict[str, int] = {}
    kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0") or 0)

    def on_commit(shard: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            vid = row["video_id"]
            remaining[vid] -= 1
            if remaining[vid] == 0:
                summary.done("video", vid)
                facts[vid]["status"] = "done"
        if kill_after and writer.shards_written >= kill_after:
            log.warning("%s=%d: killing this driver now (fault injection)", KILL_AFTER_SHARDS_ENV, kill_after)
            os.kill(os.getpid(), signal.SIGKILL)

    writer = ShardWriter(out, int(cfg.shards.shard_size_mb * 1e6), index=index, on_commit=on_commit)
    if pending:
        ctx = ray.data.DataContext.get_current()
        saved_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # deterministic sample order, hence shard contents
        ds = _build_dataset(cfg, pending, inp.url)
        try:
            for row in _timed(ds.iter_rows(), summary, "driver_wait_s"):
                info = json.loads(row["info"])
                rec = info["record"]
                vid = rec["video_id"]
                if row["kind"] == "rejected":
                    summary.rejected("video", rec["name"], info["reason"])
                    facts[vid] = {"status": "rejected", "reason": info["reason"]}
                    continue
                if vid not in remaining:
                    f = info["facts"]
                    already = len(indexed_keys.get(vid, ()))
                    facts[vid] = {k: f[k] for k in ("frame_count", "height", "width", "fps", "annotated_frames")}
                    facts[vid].update(status="pending", reason=None)
                    frames_of[vid] = f["frame_count"]
                    remaining[vid] = int(json.loads(row["index_row"])["n_clips"]) - already
                    for w in f["warnings"]:
                        summary.add("warnings")
                        log.warning(w)
                index_row = json.loads(row["index_row"])
                writer.add(rec["split"], row["key"], _unpack_members(row["names"], row["blob"]), index_row)
                summary.add("samples")
                summary.add("frames", index_row["n_frames"])
                summary.add("flows", index_row["n_frames"])
                summary.add("masks", index_row["n_masks"])
            writer.close()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("Ray Data stats:\n%s", ds.stats())
        except BaseException:
            writer.abort()
            raise
        finally:
            ctx.execution_options.preserve_order = saved_order  # the context is process-wide
    else:
        writer.close()

    summary.add("driver_tar_s", round(writer.write_s, 3))
    summary.add("driver_upload_index_s", round(writer.commit_s, 3))
    summary.add("shards_written", writer.shards_written)
    summary.add("bytes_written", writer.bytes_written)
    summary.add("shards_total", len(set(writer.index.column("shard").to_pylist())))
    for vid, f in facts.items():
        if f.get("status") == "pending":  # should not happen: every clip of a loaded video reaches the writer
            summary.rejected("video", vid, "not all clips were written")
    out.write_parquet(MANIFEST_NAME, manifest_table(records, facts))
    frames = summary.figures.get("frames", 0)
    summary.set("format", listing.format)
    summary.set("input", inp.url)
    summary.set("output", out.url)
    summary.set("index_rows", writer.index.num_rows)
    summary.set("frames_per_s", round(frames / summary.elapsed_s, 3) if frames else 0)
    summary.config = config_to_dict(cfg)
    return summary.finish(storage=out, rel="summary.json")

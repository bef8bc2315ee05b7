"""The Ray stages of the dataset build, run on the workers: a group of videos -> its shards in storage.

  1. ``load_clips`` (tasks): read and validate one video (frames + masks, and its flow pictures with
     ``flow.engine=pictures``), cut it into clips of ``clip_length`` consecutive frames; a clip carries one extra
     frame of context for its last forward flow. A video that cannot be used becomes one ``rejected`` row naming
     the video and the file.
  2. ``FlowStage`` (actor pool, ``num_gpus`` per actor when asked): the flow engine on each clip.
  3. ``encode_clip_row`` (tasks): JPEG frames, PNG masks, float16 flow (or the flow pictures' bytes), meta.json ->
     sample member bytes.
  4. ``GroupPacker``: the group's samples, sorted by (video, first frame), packed into the group's shards and
     uploaded straight to storage; the result is one small row per group (the index rows, the videos' facts and
     rejections) that the driver commits as an index part.

Without GPUs the four run fused in one actor per group (``GroupStage``): only the group's index rows cross the
object store. With GPUs, tasks decode and encode around the GPU flow actors, and ``pack_group_batch`` tasks pack
each group (Ray Data ``groupby("group").map_groups``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline import telemetry
from pipeline.flow.config import FlowConfig
from pipeline.flow.engines import compute_timed
from pipeline.flow.render import RENDER_VERSION
from pipeline.imaging import decode_image
from pipeline.ingest.formats import VideoRecord
from pipeline.ingest.load import VideoRejected, load_video
from pipeline.shards import SHARD_DIR, ShardWriter, encode_clip, picture_suffix, sample_key
from pipeline.storage import LocalDiskFullError, Storage, StorageError, open_storage

log = logging.getLogger(__name__)

__all__ = [
    "FLOW_TIME_FIELDS",
    "FlowStage",
    "GroupPacker",
    "GroupStage",
    "clip_spans",
    "encode_clip_row",
    "group_name",
    "load_clips",
    "pack_group_batch",
]


def clip_spans(n: int, clip_length: int) -> list[tuple[int, int]]:
    """Split ``n`` frames into ceil(n / clip_length) runs of near-equal length: [(start, end), ...]."""
    k = max(1, -(-n // clip_length))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


OWN_SHARD = re.compile(r"[A-Za-z0-9_]+-[0-9a-f]{12}-[0-9]{4}\.tar")
"""The name of a shard this job writes below ``shards/``: ``<split>-<group>-NNNN.tar`` (GroupPacker's names).
A rerun deletes uncommitted shards of exactly this shape, never another ``.tar``."""


def group_name(video_ids: Iterable[str]) -> str:
    """Deterministic name of a group of videos (its shards' and its index part's names): the same members give
    the same name, so a rerun of an uncommitted group rewrites the same objects."""
    return hashlib.sha1("\n".join(video_ids).encode("utf-8")).hexdigest()[:12]


# -- stage 1: load -------------------------------------------------------------------------------------------------

_EMPTY = {
    "frames": np.zeros((1, 1, 1, 3), np.uint8),
    "masks": np.zeros((1, 1, 1), np.uint8),
    "mask_valid": np.zeros(1, bool),
    "flowpics": [],
    "flowpic_names": [],
}


def _rejected_row(row: dict[str, Any], record: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        "group": row.get("group", ""),
        "video_id": record["video_id"],
        "kind": "rejected",
        "info": json.dumps({"record": record, "reason": reason}),
        "clip_index": -1,
        "n_clips": 0,
        "start": 0,
        **_EMPTY,
    }


def _read_pictures(storage, rec: VideoRecord, n: int) -> list[bytes]:
    """The flow picture of every frame, bytes as stored; raises VideoRejected naming the file when unusable."""
    if len(rec.flows) != n:
        raise VideoRejected(
            f"video {rec.name!r} ({rec.source}): {len(rec.flows)} flow pictures for {n} frames; "
            "flow.engine=pictures needs one flow picture per frame (the corpus's flow folder)"
        )
    pictures = []
    for rel in rec.flows:
        try:
            picture_suffix(rel)
            data = storage.read_bytes(rel)
            decode_image(data, f"flow picture {rel}")  # a damaged picture is refused here, not in training
        except (ValueError, StorageError, OSError) as e:
            raise VideoRejected(f"video {rec.name!r}: flow picture {rel}: {e}") from e
        pictures.append(data)
    return pictures


def load_clips(
    row: dict[str, Any],
    input_url: str,
    clip_length: int,
    max_video_mb: float = 4096.0,
    flow_pictures: bool = False,
) -> list[dict[str, Any]]:
    """Ray Data flat_map: one video -> its clip rows (or one rejected row)."""
    telemetry.set_job("precompute_flow")  # this worker's storage metrics are the flow job's
    record = json.loads(row["record"])
    skip = set(json.loads(row["skip_keys"]))
    rec = VideoRecord.from_dict(record)
    storage = open_storage(input_url)
    try:
        video = load_video(storage, rec, max_video_mb=max_video_mb)
        n, h, w, _ = video.frames.shape
        pictures = _read_pictures(storage, rec, n) if flow_pictures else None
    except VideoRejected as e:
        return [_rejected_row(row, record, str(e))]
    except (StorageError, OSError) as e:
        return [_rejected_row(row, record, f"video {rec.name!r} ({rec.source}): cannot be read: {e}")]
    facts = {
        "frame_count": n,
        "height": h,
        "width": w,
        "fps": video.fps,
        "annotated_frames": [int(i) for i in np.flatnonzero(video.mask_valid)],
        "warnings": video.warnings,
    }
    spans = clip_spans(n, clip_length)
    rows = []
    for ci, (s, e) in enumerate(spans):
        if sample_key(rec.video_id, s) in skip:
            continue
        ctx_end = min(e + 1, n)  # one frame of context for the clip's last forward flow
        rows.append(
            {
                "group": row.get("group", ""),
                "video_id": rec.video_id,
                "kind": "clip",
                "info": json.dumps({"record": record, "facts": facts, "frame_names": video.frame_names[s:e]}),
                "clip_index": ci,
                "n_clips": len(spans),
                "start": s,
                "frames": video.frames[s:ctx_end],
                "masks": video.masks[s:e].astype(np.uint8),
                "mask_valid": video.mask_valid[s:e],
                "flowpics": pictures[s:e] if pictures else [],
                "flowpic_names": [os.path.basename(p) for p in rec.flows[s:e]] if pictures else [],
            }
        )
    return rows


# -- stage 2: flow -------------------------------------------------------------------------------------------------


class FlowStage:
    """Ray Data actor: holds one flow engine and adds ``flows`` (float16) to each clip row, with the time the
    engine took (``flow_s``), this actor (``flow_actor``) and its wall time since it was ready
    (``flow_actor_wall_s``): the flow engine's busy fraction is the one over the other."""

    def __init__(self, flow: FlowConfig, device: str, threads: int):
        self.engine = flow.create_engine(device=device, threads=threads)
        self.pictures = flow.uses_pictures
        self.provenance = json.dumps(self.engine.provenance, sort_keys=True)
        telemetry.set_job("precompute_flow")
        self.label = writer_label()
        self._ready_at = self._wall_counted_at = time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        row["provenance"] = self.provenance
        row["flow_s"] = 0.0
        if row["kind"] != "clip" or self.pictures:  # pictures: the flow is already in the row
            row["flows"] = np.zeros((1, 1, 1, 2), np.float16)
            if row["kind"] == "clip":
                row["frames"] = np.asarray(row["frames"])[: len(row["mask_valid"])]
        else:
            frames = np.asarray(row["frames"])
            n = len(row["mask_valid"])
            flows, row["flow_s"] = compute_timed(self.engine, frames)
            row["flows"] = flows[:n].astype(np.float16)
            row["frames"] = frames[:n]
            telemetry.BUSY_SECONDS.inc(row["flow_s"], stage="flow")
        now = time.perf_counter()
        telemetry.WORKER_SECONDS.inc(now - self._wall_counted_at, stage="flow")
        self._wall_counted_at = now
        row["flow_actor"], row["flow_actor_wall_s"] = self.label, now - self._ready_at
        return row


# -- stage 3: encode -----------------------------------------------------------------------------------------------


def encode_clip_row(row: dict[str, Any], jpeg_quality: int, flow_level: int) -> dict[str, Any]:
    """Ray Data map: clip row -> sample member bytes (names + one blob) and the index fields."""
    out = dict(
        {k: row[k] for k in ("video_id", "kind", "info", *FLOW_TIME_FIELDS)},
        group=row.get("group", ""),
        key="",
        start=int(row["start"]),
        names="[]",
        blob=b"",
        index_row="{}",
    )
    if row["kind"] != "clip":
        return out
    info = json.loads(row["info"])
    rec, facts = info["record"], info["facts"]
    start, n = int(row["start"]), len(row["mask_valid"])
    key = sample_key(rec["video_id"], start)
    frame_indices = list(range(start, start + n))
    mask_valid = np.asarray(row["mask_valid"], bool)
    provenance = json.loads(row["provenance"])
    pictures = list(zip(list(row["flowpic_names"]), [bytes(b) for b in row["flowpics"]], strict=True)) or None
    meta = {
        "video_id": rec["video_id"],
        "video_name": rec["name"],
        "split": rec["split"],
        "source_split": rec["source_split"],
        "format": rec["format"],
        "source": rec["source"],
        "frame_indices": frame_indices,
        "frame_names": info["frame_names"],
        "clip_index": int(row["clip_index"]),
        "n_clips": int(row["n_clips"]),
        "video_frames": facts["frame_count"],
        "fps": facts["fps"],
        "flow": provenance,
        "render_version": RENDER_VERSION,
        "jpeg_quality": jpeg_quality,
        "warnings": facts["warnings"],
    }
    if pictures is None:
        meta.update(
            flow_source="computed",
            flow_dtype="float16",
            flow_units="pixels (dx, dy)",
            flow_last_frame="backward" if start + n == facts["frame_count"] else "forward",
        )
    else:
        meta["flow_picture_names"] = [name for name, _ in pictures]
    frames = np.asarray(row["frames"])
    members = encode_clip(
        key,
        frames,
        None if pictures else np.asarray(row["flows"]),
        np.asarray(row["masks"]).astype(bool),
        mask_valid,
        meta,
        jpeg_quality,
        flow_level,
        flow_pictures=pictures,
    )
    names = list(members)
    out.update(
        key=key,
        names=json.dumps([[k, len(members[k])] for k in names]),
        blob=b"".join(members[k] for k in names),
        index_row=json.dumps(
            {
                "video_id": rec["video_id"],
                "clip_index": int(row["clip_index"]),
                "n_clips": int(row["n_clips"]),
                "frame_indices": frame_indices,
                "n_frames": n,
                "n_masks": int(mask_valid.sum()),
                "height": int(frames.shape[1]),
                "width": int(frames.shape[2]),
            }
        ),
    )
    return out


FLOW_TIME_FIELDS = ("flow_s", "flow_actor", "flow_actor_wall_s")
"""What :class:`FlowStage` adds to a row about the engine's time; the rows carry it to the group's result."""


def _unpack_members(names_json: str, blob: bytes) -> dict[str, bytes]:
    members, pos = {}, 0
    for name, size in json.loads(names_json):
        members[name] = blob[pos : pos + size]
        pos += size
    return members


# -- stage 4: pack and upload a group's shards ---------------------------------------------------------------------


class GroupPacker:
    """Packs the encoded samples of one group into its shards ``shards/<split>-<group>-NNNN.tar`` (uploaded by
    the worker, streamed while they grow) and returns the group's result row for the driver to commit."""

    def __init__(self, output: Storage | str, group: str, target_bytes: int):
        self.group = group
        self.rows: list[dict[str, Any]] = []
        self.videos: dict[str, dict[str, Any]] = {}
        self.samples = self.frames = self.masks = 0
        self.flow_s = 0.0
        self.flow_actors: dict[str, float] = {}  # flow actor -> its wall time since ready, at its latest clip
        self.writer = ShardWriter(
            open_storage(output),
            target_bytes,
            index_name=None,
            on_commit=lambda shard, rows: self.rows.extend(rows),
            shard_name=lambda split, num: f"{SHARD_DIR}/{split}-{group}-{num:04d}.tar",  # see OWN_SHARD
        )

    def add(self, row: dict[str, Any]) -> None:
        """One encoded row (a sample or a rejected video), in (video, first frame) order."""
        info = json.loads(row["info"])
        rec = info["record"]
        vid = rec["video_id"]
        self.flow_s += float(row["flow_s"])
        actor = str(row["flow_actor"])
        self.flow_actors[actor] = max(self.flow_actors.get(actor, 0.0), float(row["flow_actor_wall_s"]))
        if row["kind"] == "rejected":
            self.videos[vid] = {"name": rec["name"], "status": "rejected", "reason": info["reason"]}
            return
        if vid not in self.videos:
            f = info["facts"]
            self.videos[vid] = {
                k: f[k] for k in ("frame_count", "height", "width", "fps", "annotated_frames", "warnings")
            }
            self.videos[vid].update(name=rec["name"], status="done", reason=None)
        index_row = json.loads(row["index_row"])
        self.writer.add(
            rec["split"], row["key"], _unpack_members(row["names"], bytes(row["blob"])), index_row
        )
        self.samples += 1
        self.frames += index_row["n_frames"]
        self.masks += index_row["n_masks"]

    def reject_all(self, videos: list[dict[str, Any]], error: LocalDiskFullError) -> dict[str, Any]:
        """The result row of a group that could not be built (its shards' local disk is full): every video of the
        group rejected with the error, nothing to commit; a rerun redoes the group."""
        self.writer.abort()
        records = [json.loads(v["record"]) for v in videos]
        names = {rec["video_id"]: rec["name"] for rec in records}
        rejected = {
            vid: {
                "name": name,
                "status": "rejected",
                "reason": f"video {name!r} (group {self.group}): {error}",
            }
            for vid, name in names.items()
        }
        return {
            "group": self.group,
            "rows": "[]",
            "videos": json.dumps(rejected),
            "shards": 0,
            "bytes": 0,
            "samples": 0,
            "frames": 0,
            "masks": 0,
            "pack_s": round(self.writer.write_s, 3),
            "writer": writer_label(),
            "flow_s": self.flow_s,
            "flow_actors": json.dumps(self.flow_actors),
        }

    def finish(self) -> dict[str, Any]:
        """Upload the last shards and return the group's result row (small: index rows and video facts)."""
        try:
            self.writer.close()
        except BaseException:
            self.writer.abort()
            raise
        return {
            "group": self.group,
            "rows": json.dumps(self.rows),
            "videos": json.dumps(self.videos),
            "shards": self.writer.shards_written,
            "bytes": self.writer.bytes_written,
            "samples": self.samples,
            "frames": self.frames,
            "masks": self.masks,
            "pack_s": round(self.writer.write_s, 3),
            "writer": writer_label(),
            "flow_s": self.flow_s,
            "flow_actors": json.dumps(self.flow_actors),
        }


def writer_label() -> str:
    """The process that writes shards, as ``host:ray-node-id:pid`` (the Ray node tells the two nodes of a loopback
    rehearsal apart, which share one host name); ``-`` for the node outside Ray."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
    return f"{socket.gethostname()}:{node}:{os.getpid()}"


class GroupStage(FlowStage):
    """Ray Data actor (CPU engines): one group row -> its result row (load, flow, encode and pack every video of
    the group in place; only the index rows leave the actor)."""

    def __init__(
        self,
        flow: FlowConfig,
        device: str,
        threads: int,
        load_kwargs: dict[str, Any],
        encode_kwargs: dict[str, Any],
        output: Storage | str,
        target_bytes: int,
    ):
        super().__init__(flow, device, threads)
        self.load_kwargs, self.encode_kwargs = load_kwargs, encode_kwargs
        self.output, self.target_bytes = output, target_bytes

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        t0 = time.perf_counter()
        packer = GroupPacker(self.output, row["group"], self.target_bytes)
        videos = json.loads(row["videos"])
        telemetry.IN_FLIGHT.set(len(videos))
        try:
            for video in videos:  # sorted by video id: shard members come out sorted
                video["group"] = row["group"]
                started = time.perf_counter()
                for clip in load_clips(video, **self.load_kwargs):
                    packer.add(encode_clip_row(super().__call__(clip), **self.encode_kwargs))
                telemetry.VIDEO_SECONDS.observe(time.perf_counter() - started)
            result = packer.finish()
        except LocalDiskFullError as err:  # bad for this group, not for the job: report its videos and go on
            result = packer.reject_all(videos, err)
        except BaseException:
            packer.writer.abort()
            raise
        finally:
            telemetry.IN_FLIGHT.set(0)
        result["worker_s"] = round(time.perf_counter() - t0, 3)
        return result


def pack_group_batch(batch: dict[str, Any], output: Storage | str, target_bytes: int) -> dict[str, list]:
    """Ray Data ``map_groups`` (staged pipeline): all encoded rows of one group -> its result row."""
    n = len(batch["group"])
    order = sorted(range(n), key=lambda i: (str(batch["video_id"][i]), int(batch["start"][i])))
    packer = GroupPacker(output, str(batch["group"][0]), target_bytes)
    for i in order:
        packer.add(
            {k: batch[k][i] for k in ("kind", "info", "key", "names", "blob", "index_row", *FLOW_TIME_FIELDS)}
        )
    result = packer.finish()
    return {k: [v] for k, v in result.items()}

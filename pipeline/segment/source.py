"""The CPU stage of batch inference: stream a video's frames, compute flow, and cut model-ready chunks.

:func:`video_chunks` runs as a Ray generator task (one per video in flight, launched by the model actor), so
decoding and flow overlap with the model and a video is never held in memory whole: it yields chunks of
``chunk_frames`` frames, and Ray's generator back-pressure stops it a few chunks ahead of the model.

Videos from the data pipeline's shards carry their flow, which is used as stored. Otherwise flow for frame t is the forward flow t -> t+1 and, for the last frame, the backward flow to the frame before
(as pipeline.flow.engines defines it); a one-frame look-ahead gives the same flow as computing the whole video.
Flow is computed at the original resolution (capped by the engine's ``max_side``), rendered with the
Middlebury wheel, and resized like a frame, as the training pipeline does (pipeline.train.augment).
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.flow.config import FlowConfig
from pipeline.flow.render import flow_to_rgb
from pipeline.ingest.formats import VideoRecord
from pipeline.ingest.load import decode_image
from pipeline.storage import Storage, StorageError
from pipeline.train.augment import resize_rgb
from pipeline.video import VideoError, iter_video_frames, probe_video

log = logging.getLogger(__name__)

__all__ = ["Chunk", "SourceError", "iter_source_frames", "iter_shard_frames", "shard_records", "video_chunks"]


class SourceError(ValueError):
    """A video cannot be segmented (corrupt, too short, unreadable); the message names the video and file."""


@dataclass
class Chunk:
    """Consecutive frames of one video, ready for the model."""

    start: int
    """Index of the first frame in the video."""
    names: list[str]
    """Output frame names (file stems): the input frame's stem for frame folders, 00000.. for video files."""
    frames: np.ndarray
    """(k, S, S, 3) uint8 RGB resized to the model input."""
    flows: np.ndarray
    """(k, S, S, 3) uint8 flow pictures resized to the model input."""
    height: int
    """Original frame height."""
    width: int
    """Original frame width."""
    fps: float | None
    """Frame rate of a video file (None for frame folders)."""
    original: np.ndarray | None = None
    """(k, H, W, 3) uint8 original frames, only when overlays are written."""
    last: bool = False
    """True on the video's final chunk."""


def _video_path(storage: Storage, rec: VideoRecord) -> tuple[str, str | None]:
    """A local path for the video file (downloaded to a temporary file from object storage)."""
    if storage.is_local:
        return os.path.join(storage.root, rec.source), None
    fd, tmp = tempfile.mkstemp(prefix="segment-", suffix=posixpath.splitext(rec.source)[1])
    os.close(fd)
    try:
        storage.download_file(rec.source, tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp, tmp


def iter_source_frames(storage: Storage, rec: VideoRecord) -> Iterator[tuple[str, np.ndarray, float | None]]:
    """Yield ``(frame name, (H, W, 3) uint8 RGB, fps)`` one frame at a time; :class:`SourceError` on bad input."""
    if rec.kind == "video":
        try:
            path, tmp = _video_path(storage, rec)
        except (StorageError, OSError, ValueError) as err:
            raise SourceError(f"video {rec.name!r}: cannot read {storage.join(rec.source)}: {err}") from err
        try:
            fps = probe_video(path, name=storage.join(rec.source)).fps or None
            for index, frame in enumerate(iter_video_frames(path, name=storage.join(rec.source))):
                yield f"{index:05d}", frame, fps
        except VideoError as err:
            raise SourceError(str(err)) from err
        finally:
            if tmp:
                os.remove(tmp)
        return
    first_shape = None
    for rel in rec.frames:
        url = storage.join(rel)
        try:
            frame = decode_image(storage.read_bytes(rel), f"frame {url}")
        except (ValueError, StorageError, OSError) as err:
            raise SourceError(f"video {rec.name!r}: {err}") from err
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise SourceError(f"video {rec.name!r}: frame {url} is {frame.shape[1]}x{frame.shape[0]}, the first "
                              f"frame is {first_shape[1]}x{first_shape[0]} (frames of different sizes)")  # fmt: skip
        yield posixpath.splitext(posixpath.basename(rel))[0], frame, None


def shard_records(storage: Storage) -> list[dict]:
    """One work item per video of the data pipeline's shards (``index.parquet`` below ``storage``).

    Each item lists the video's samples (clips) in frame order with their byte ranges, so the decode task
    reads exactly those bytes; frames and flow come from the shards (no flow is recomputed).
    """
    from pipeline.shards import read_index

    by_video: dict[str, list[dict]] = {}
    for row in read_index(storage.url).to_pylist():
        by_video.setdefault(row["video_id"], []).append(row)
    items = []
    for video_id in sorted(by_video):
        rows = sorted(
            by_video[video_id], key=lambda r: (r["frame_indices"][0] if r["frame_indices"] else -1, r["key"])
        )
        samples = [
            {
                "url": storage.join(r["shard"]),
                "offset": int(r["offset"]),
                "bytes": int(r["bytes"]),
                "key": r["key"],
            }
            for r in rows
        ]
        items.append({"video_id": video_id, "name": video_id, "kind": "shards", "source": storage.join("index.parquet"),
                      "samples": samples, "split": rows[0]["split"]})  # fmt: skip
    return items


def iter_shard_frames(record: dict) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(frame name, RGB frame, (H, W, 2) flow)`` of one video from its shard samples, in frame order.

    Overlapping clips give a frame once; a gap in the frame indices (clips written with a stride) is logged,
    and the memory simply carries over it.
    """
    from pipeline.shards import ShardEntry, decode_clip, read_samples

    last = -1
    for sample in record["samples"]:
        entry = ShardEntry(url=sample["url"], offsets=(sample["offset"],), sizes=(sample["bytes"],))
        try:
            raw = list(read_samples(entry))
            if len(raw) != 1:
                raise ValueError(f"expected one sample at byte {sample['offset']}, found {len(raw)}")
            clip = decode_clip(raw[0])
        except Exception as err:  # damaged bytes fail in tar, zip, zlib, numpy or JPEG code, each its own way
            raise SourceError(
                f"video {record['name']!r}: sample {sample['key']} in {sample['url']}: {type(err).__name__}: {err}"
            ) from err
        for i, index in enumerate(clip.frame_indices):
            if index <= last:
                continue  # already yielded by an overlapping clip
            if index != last + 1:
                log.warning("video %s: frames %d..%d are not in the shards; continuing after the gap",
                            record["name"], last + 1, index - 1)  # fmt: skip
            last = index
            yield f"{index:05d}", clip.frames[i], clip.flows[i]


def _shard_chunks(record: dict, size: int, chunk_frames: int, keep_original: bool) -> Iterator[Chunk]:
    items: list[tuple[str, np.ndarray, np.ndarray]] = []
    start = 0

    def make(batch, last: bool) -> Chunk:
        height, width = batch[0][1].shape[:2]
        return Chunk(
            start=start,
            names=[name for name, _, _ in batch],
            frames=np.stack([resize_rgb(frame, size) for _, frame, _ in batch]),
            flows=np.stack([resize_rgb(flow_to_rgb(flow), size) for _, _, flow in batch]),
            height=height,
            width=width,
            fps=None,
            original=np.stack([frame for _, frame, _ in batch]) if keep_original else None,
            last=last,
        )

    for item in iter_shard_frames(record):
        if items and item[1].shape != items[0][1].shape:
            raise SourceError(
                f"video {record['name']!r}: frame {item[0]} has another size than frame {items[0][0]}"
            )
        items.append(item)
        if len(items) == chunk_frames + 1:  # hold one back so the final chunk is marked last
            yield make(items[:chunk_frames], last=False)
            start += chunk_frames
            items = items[chunk_frames:]
    if items:
        yield make(items, last=True)


def _flow_pictures(engine, frames: list[np.ndarray], size: int) -> list[np.ndarray]:
    flows = engine.compute(np.stack(frames))
    return [resize_rgb(flow_to_rgb(flow), size) for flow in flows]


def video_chunks(
    storage: Storage,
    record: dict,
    size: int,
    chunk_frames: int,
    flow: FlowConfig,
    keep_original: bool = False,
) -> Iterator[Chunk | dict]:
    """Generator: the chunks of one video, then nothing; on bad input a final ``{"error": message}``.

    Errors are yielded rather than raised so the actor reports them as a rejected video with a clean
    message (the frames before the error were already yielded and are discarded by the actor).
    """
    if record.get("kind") == "shards":
        try:
            yield from _shard_chunks(record, size, chunk_frames, keep_original)
        except SourceError as err:
            yield {"error": str(err)}
        return
    rec = VideoRecord.from_dict(record)
    try:
        engine = flow.create_engine(device="cpu", threads=1)  # decode tasks are CPU tasks
    except (ValueError, OSError, RuntimeError) as err:
        yield {"error": f"video {rec.name!r}: flow engine {flow.engine!r} unavailable: {err}"}
        return

    pending: list[tuple[str, np.ndarray]] = []  # frames of the chunk being built, plus one look-ahead
    previous: np.ndarray | None = None  # last frame of the previous chunk (backward flow of a 1-frame tail)
    start = 0
    fps: float | None = None
    height = width = 0

    def make_chunk(
        items: list[tuple[str, np.ndarray]], flow_frames: list[np.ndarray], offset: int, last: bool
    ):
        pictures = _flow_pictures(engine, flow_frames, size)[offset : offset + len(items)]
        return Chunk(
            start=start,
            names=[name for name, _ in items],
            frames=np.stack([resize_rgb(frame, size) for _, frame in items]),
            flows=np.stack(pictures),
            height=height,
            width=width,
            fps=fps,
            original=np.stack([frame for _, frame in items]) if keep_original else None,
            last=last,
        )

    try:
        for name, frame, frame_fps in iter_source_frames(storage, rec):
            if not pending and previous is None:
                height, width, fps = frame.shape[0], frame.shape[1], frame_fps
            pending.append((name, frame))
            if len(pending) == chunk_frames + 1:  # a full chunk and its look-ahead frame
                items = pending[:chunk_frames]
                yield make_chunk(items, [f for _, f in pending], 0, last=False)
                start += len(items)
                previous = items[-1][1]
                pending = pending[chunk_frames:]
        total = start + len(pending)
        if total < 2:
            yield {"error": f"video {rec.name!r}: only {total} frame(s) in {storage.join(rec.source)}; "
                            "at least 2 are needed for optical flow"}  # fmt: skip
            return
        flow_frames = [f for _, f in pending]
        offset = 0
        if len(pending) == 1:  # the last frame needs its predecessor for its backward flow
            flow_frames = [previous, *flow_frames]
            offset = 1
        yield make_chunk(pending, flow_frames, offset, last=True)
    except SourceError as err:
        yield {"error": str(err)}

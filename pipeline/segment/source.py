"""The CPU stage of batch inference: stream a video's frames, compute flow, and cut model-ready chunks.

:func:`video_chunks` runs as a Ray generator task (one per video in flight, launched by the model actor), so
decoding and flow overlap with the model and a video is never held in memory whole: it yields chunks of
``chunk_frames`` frames, and Ray's generator back-pressure stops it a few chunks ahead of the model.

Where the flow picture of a frame comes from:

- videos from the data pipeline's shards carry their flow, used as stored (rendered with the Middlebury wheel);
- ``flow.engine = "pictures"``: the flow picture shipped with the corpus next to each frame
  (``VideoRecord.flows``, the official archives' ``flow/`` folder), decoded and fed as it is (no rendering);
- otherwise flow is computed: for frame t the forward flow t -> t+1 and, for the last frame, the backward flow to
  the frame before (as pipeline.flow.engines defines it); a one-frame look-ahead gives the same flow as computing
  the whole video. It is computed at the original resolution (capped by the engine's ``max_side``) and rendered.

Frames and flow pictures are then resized like a frame for the model (pipeline.transforms). The same functions
serve :class:`pipeline.segment.VideoSegmenter` (frame arrays, files, folders) and the Ray decode tasks.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline import telemetry
from pipeline.flow.config import FlowConfig
from pipeline.flow.engines import compute_timed
from pipeline.flow.render import flow_to_rgb
from pipeline.imaging import decode_rgb
from pipeline.ingest.formats import VideoRecord
from pipeline.segment.config import PICTURES_ENGINE
from pipeline.shards import ShardEntry, decode_clip, read_index, read_samples
from pipeline.storage import Storage, StorageError, local_copy
from pipeline.transforms import resize_rgb
from pipeline.video import VideoError, iter_video_frames, probe_video

log = logging.getLogger(__name__)

__all__ = [
    "Chunk",
    "FrameItem",
    "Preprocessing",
    "SourceError",
    "chunk_items",
    "iter_source_frames",
    "iter_shard_frames",
    "shard_records",
    "video_chunks",
]


class SourceError(ValueError):
    """A video cannot be segmented (corrupt, too short, unreadable); the message names the video and file."""


@dataclass
class Preprocessing:
    """What the CPU stage needs to turn a video into model-ready chunks (no model; travels to Ray tasks)."""

    input_size: int = 512
    """Square side frames and flow pictures are resized to."""
    chunk_frames: int = 8
    """Frames per chunk."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """Flow engine settings, or ``engine="pictures"`` for the corpus' own flow pictures."""
    decoder: str = "opencv"
    """Image decoder for frame and flow picture files (pipeline.imaging.decode_rgb)."""
    frames: str = "all"
    """'all' frames, or only the 'annotated' ones of a video with sparse masks."""
    keep_original: bool = False
    """Keep the original frames in the chunks (for overlays)."""

    def __post_init__(self):
        if self.chunk_frames < 1 or self.input_size < 32:
            raise ValueError(
                f"Preprocessing: chunk_frames {self.chunk_frames} must be >= 1 and input_size "
                f"{self.input_size} >= 32"
            )

    @property
    def uses_pictures(self) -> bool:
        return self.flow.engine == PICTURES_ENGINE


@dataclass
class FrameItem:
    """One decoded frame on its way to a chunk."""

    index: int
    """Frame index in the video."""
    name: str
    """Output frame name (file stem)."""
    frame: np.ndarray
    """(H, W, 3) uint8 RGB at the original size."""
    fps: float | None = None
    """Frame rate of a video file (None for frame folders)."""
    picture: np.ndarray | None = None
    """(h, w, 3) uint8 flow picture when known (shipped or stored); None: flow is computed."""


@dataclass
class Chunk:
    """Consecutive frames of one video, ready for the model."""

    indices: list[int]
    """Frame index in the video of each frame of the chunk."""
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


def _selected_frames(rec: VideoRecord, frames: str) -> list[int]:
    """Indices of the frames to step: all, or the annotated ones of a sparsely annotated video."""
    count = len(rec.frames)
    if frames == "annotated" and rec.masks and len(rec.masks) < count:
        return sorted(i for i in rec.masks if 0 <= i < count)
    return list(range(count))


def _read_image(storage: Storage, rel: str, rec: VideoRecord, decoder: str, what: str) -> np.ndarray:
    url = storage.join(rel)
    try:
        return decode_rgb(storage.read_bytes(rel), f"{what} {url}", decoder)
    except (ValueError, StorageError, OSError) as err:
        raise SourceError(f"video {rec.name!r}: {err}") from err


def iter_source_frames(
    storage: Storage, rec: VideoRecord, prep: Preprocessing | None = None
) -> Iterator[FrameItem]:
    """Yield the video's frames (and shipped flow pictures) one at a time; :class:`SourceError` on bad input."""
    prep = prep or Preprocessing()
    if rec.kind == "video":
        if prep.uses_pictures:
            raise SourceError(
                f"video {rec.name!r}: flow.engine=pictures needs flow pictures shipped with the corpus; "
                f"{storage.join(rec.source)} is a video file (use a computed flow engine, e.g. dis)"
            )
        url = f"{storage.url}/{rec.source}"  # for messages; storage.join below refuses unsafe names
        with contextlib.ExitStack() as stack:
            try:
                url = storage.join(rec.source)
                path = stack.enter_context(
                    local_copy(url, prefix="hmhi-segment-")
                )  # demuxers seek: download first
            except (StorageError, OSError, ValueError) as err:
                raise SourceError(f"video {rec.name!r}: cannot read {url}: {err}") from err
            try:
                fps = probe_video(path, name=url).fps or None
                for index, frame in enumerate(iter_video_frames(path, name=url)):
                    yield FrameItem(index, f"{index:05d}", frame, fps)
            except VideoError as err:
                raise SourceError(str(err)) from err
        return
    if prep.uses_pictures and len(rec.flows) != len(rec.frames):
        raise SourceError(
            f"video {rec.name!r}: flow.engine=pictures needs one flow picture per frame; "
            f"{storage.join(rec.source)} has {len(rec.frames)} frames and {len(rec.flows)} flow "
            "pictures"
        )
    first_shape = None
    for index in _selected_frames(rec, prep.frames):
        rel = rec.frames[index]
        frame = _read_image(storage, rel, rec, prep.decoder, "frame")
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise SourceError(
                f"video {rec.name!r}: frame {storage.join(rel)} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the first frame is {first_shape[1]}x{first_shape[0]} (frames of different sizes)"
            )
        picture = None
        if prep.uses_pictures:
            picture = _read_image(storage, rec.flows[index], rec, prep.decoder, "flow picture")
        yield FrameItem(index, posixpath.splitext(posixpath.basename(rel))[0], frame, None, picture)


def shard_records(storage: Storage) -> list[dict]:
    """One work item per video of the data pipeline's shards (``index.parquet`` below ``storage``).

    Each item lists the video's samples (clips) in frame order with their byte ranges, so the decode task
    reads exactly those bytes; frames and flow come from the shards (no flow is recomputed).
    """
    by_video: dict[str, list[dict]] = {}
    for row in read_index(storage.url).to_pylist():
        by_video.setdefault(row["video_id"], []).append(row)
    items = []
    for video_id in sorted(
        by_video, key=str
    ):  # a corrupt index may hold a null id: the job rejects it by name
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
        items.append(
            {
                "video_id": video_id,
                "name": video_id,
                "kind": "shards",
                "source": storage.join("index.parquet"),
                "samples": samples,
                "split": rows[0]["split"],
            }
        )
    return items


def iter_shard_frames(record: dict) -> Iterator[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Yield ``(frame name, RGB frame, (H, W, 2) flow, flow picture)`` of one video from its shard samples, in
    frame order: samples made with ``--flow-model pictures`` carry the corpus's flow picture and no flow, the others
    the float flow and no picture.

    Overlapping clips give a frame once; a gap in the frame indices (clips written with a stride) is logged,
    and the memory simply carries over it.
    """
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
                log.warning(
                    "video %s: frames %d..%d are not in the shards; continuing after the gap",
                    record["name"],
                    last + 1,
                    index - 1,
                )
            last = index
            flow = None if clip.flows is None else clip.flows[i]
            picture = None if clip.flow_pictures is None else clip.flow_pictures[i]
            yield f"{index:05d}", clip.frames[i], flow, picture


def _shard_items(record: dict) -> Iterator[FrameItem]:
    for name, frame, flow, picture in iter_shard_frames(record):
        yield FrameItem(int(name), name, frame, None, picture if picture is not None else flow_to_rgb(flow))


def chunk_items(items: Iterator[FrameItem], prep: Preprocessing, label: str, engine=None) -> Iterator[Chunk]:
    """Cut frames into model-ready chunks; flow is computed with ``engine`` for frames without a picture.

    Holds at most ``chunk_frames + 1`` frames (a chunk and its look-ahead frame, whose flow partner it is).
    ``label`` names the video in errors.
    """
    size = prep.input_size
    pending: list[FrameItem] = []  # frames of the chunk being built, plus one look-ahead
    previous: FrameItem | None = None  # last frame of the previous chunk (backward flow of a 1-frame tail)
    total = 0

    def make(batch: list[FrameItem], flow_frames: list[FrameItem], last: bool) -> Chunk:
        if any(item.picture is None for item in batch):
            if engine is None:
                raise SourceError(
                    f"video {label}: no flow picture for frame {batch[0].name} and no flow engine"
                )
            flows, _ = compute_timed(engine, np.stack([item.frame for item in flow_frames]))
            offset = 0 if flow_frames[0] is batch[0] else 1  # a 1-frame tail is preceded by its flow partner
            pictures = [resize_rgb(flow_to_rgb(f), size) for f in flows[offset : offset + len(batch)]]
        else:
            pictures = [resize_rgb(np.ascontiguousarray(item.picture), size) for item in batch]
        height, width = batch[0].frame.shape[:2]
        return Chunk(
            indices=[item.index for item in batch],
            names=[item.name for item in batch],
            frames=np.stack([resize_rgb(item.frame, size) for item in batch]),
            flows=np.stack(pictures),
            height=height,
            width=width,
            fps=batch[0].fps,
            original=np.stack([item.frame for item in batch]) if prep.keep_original else None,
            last=last,
        )

    for item in items:
        reference = pending[0] if pending else previous
        if reference is not None and item.frame.shape != reference.frame.shape:
            raise SourceError(
                f"video {label}: frame {item.name} is {item.frame.shape[1]}x{item.frame.shape[0]}, "
                f"frame {reference.name} is {reference.frame.shape[1]}x{reference.frame.shape[0]}"
            )
        pending.append(item)
        total += 1
        if len(pending) == prep.chunk_frames + 1:  # a full chunk and its look-ahead frame
            batch = pending[: prep.chunk_frames]
            yield make(batch, pending, last=False)
            previous = batch[-1]
            pending = pending[prep.chunk_frames :]
    needs_flow = any(item.picture is None for item in pending)
    if total < 2 and needs_flow:
        raise SourceError(f"video {label}: only {total} frame(s); at least 2 are needed for optical flow")
    if not pending:
        raise SourceError(f"video {label}: no frames")
    flow_frames = pending if len(pending) > 1 or not needs_flow else [previous, *pending]
    yield make(pending, flow_frames, last=True)


def video_chunks(storage: Storage, record: dict, prep: Preprocessing) -> Iterator[Chunk | dict]:
    """Generator: the chunks of one video, then nothing; on bad input a final ``{"error": message}``.

    Errors are yielded rather than raised so the actor reports them as a rejected video with a clean
    message (the frames before the error were already yielded and are discarded by the actor).
    """
    telemetry.set_job("segment")  # a Ray task: this worker's metrics (flow time, storage bytes) are segment's
    if record.get("kind") == "shards":
        label = repr(record["name"])
        try:
            yield from chunk_items(_shard_items(record), prep, label)
        except SourceError as err:
            yield {"error": str(err)}
        return
    rec = VideoRecord.from_dict(record)
    engine = None
    if not prep.uses_pictures:
        try:
            engine = prep.flow.create_engine(device="cpu", threads=1)  # decode tasks are CPU tasks
        except (ValueError, OSError, RuntimeError, ImportError) as err:
            yield {"error": f"video {rec.name!r}: flow engine {prep.flow.engine!r} unavailable: {err}"}
            return
    try:
        yield from chunk_items(
            iter_source_frames(storage, rec, prep), prep, f"{rec.name!r} ({storage.join(rec.source)})", engine
        )
    except SourceError as err:
        yield {"error": str(err)}

"""The manifest: one Parquet row per input video (id, source, split, frames, size, fps, annotated frames, whether
the corpus ships its flow pictures, the object class where known, status).

Built in two steps: :func:`list_corpus` lists the input once and finds the videos (cheap, in the driver); the
frame size, fps and (for video files) the frame count are filled in by the workers that decode the videos, and
:func:`manifest_table` writes them all out at the end of the job.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.ingest.formats import IngestError, VideoRecord, discover_videos

log = logging.getLogger(__name__)

__all__ = ["CorpusListing", "MANIFEST_SCHEMA", "assign_val_split", "list_corpus", "manifest_table"]


@dataclass
class CorpusListing:
    """What the input holds."""

    format: str
    records: list[VideoRecord]


def list_corpus(
    storage, fmt: str = "auto", davis_resolution: str = "480p", files: list[str] | None = None
) -> CorpusListing:
    """List ``storage`` recursively once and find its videos (``files``: that listing, when the caller has it)."""

    class _Cfg:
        pass

    cfg = _Cfg()
    cfg.davis_resolution = davis_resolution
    if files is None:
        files = storage.list("", recursive=True)
    try:
        found, records = discover_videos(files, storage.read_text, fmt, cfg)
    except IngestError as e:
        raise IngestError(f"{storage.url}: {e}") from None  # the message names the corpus it is about
    return CorpusListing(format=found, records=records)


def assign_val_split(records: list[VideoRecord], val_fraction: float) -> int:
    """Move a deterministic ``val_fraction`` of the train videos to ``val`` when the corpus has no val split.

    The choice depends only on the video ids (their SHA-1 order), so reruns and resumed runs agree. Test videos
    are never used. Returns how many videos moved.
    """
    if val_fraction <= 0:
        return 0
    if any(r.split == "val" for r in records):
        log.warning("the corpus has its own val split; val_fraction=%s ignored", val_fraction)
        return 0
    train = sorted(
        (r for r in records if r.split == "train"),
        key=lambda r: hashlib.sha1(r.video_id.encode()).hexdigest(),
    )
    n = round(len(train) * val_fraction)
    if n == 0 and len(train) >= 2:
        n = 1
    n = min(n, len(train) - 1) if len(train) > 1 else 0
    for r in train[:n]:
        r.split = "val"
    return n


MANIFEST_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("name", pa.string()),
        ("format", pa.string()),
        ("split", pa.string()),
        ("source_split", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("frame_count", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("fps", pa.float64()),
        ("annotated_frames", pa.list_(pa.int32())),
        ("flow_pictures", pa.bool_()),
        ("category", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


def manifest_table(records: list[VideoRecord], facts: dict[str, dict[str, Any]]) -> pa.Table:
    """The manifest; ``facts[video_id]`` holds what decoding found (frame_count, height, width, fps,
    annotated_frames, status, reason)."""
    rows = []
    for r in records:
        f = facts.get(r.video_id, {})
        rows.append(
            {
                "video_id": r.video_id,
                "name": r.name,
                "format": r.format,
                "split": r.split,
                "source_split": r.source_split,
                "kind": r.kind,
                "source": r.source,
                "frame_count": f.get("frame_count", len(r.frames) if r.kind == "frames" else None),
                "height": f.get("height"),
                "width": f.get("width"),
                "fps": f.get("fps"),
                "annotated_frames": f.get("annotated_frames", sorted(r.masks)),
                "flow_pictures": bool(r.flows),
                "category": r.category,
                "status": f.get("status", "pending"),
                "reason": f.get("reason"),
            }
        )
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

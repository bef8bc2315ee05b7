"""Reading segment's finished videos: the done marker and the per-frame RLE rows (pipeline/segment_layout.py).

Only videos with a done marker are read: a video without one is still being written (or was killed) and its files
may be partial. The RLE Parquet is the source of the exported masks: it holds every frame's COCO RLE, so exporting
decodes no PNGs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.names import check_name
from pipeline.segment_layout import done_marker, finished_video_ids, rle_parquet
from pipeline.storage import Storage, StorageError

__all__ = ["FinishedVideo", "RejectedVideo", "FrameRle", "iter_finished_videos"]


@dataclass(frozen=True)
class FrameRle:
    """One frame of a finished video."""

    index: int
    """Frame index in the video (0-based)."""
    name: str
    """Frame name, the stem of ``masks/<video>/<name>.png``."""
    rle: dict
    """COCO RLE ``{"size": [H, W], "counts": str}`` of the binary mask."""
    area: int
    """Foreground pixels."""


@dataclass(frozen=True)
class FinishedVideo:
    """A video segment finished: its done marker and its frames in order."""

    video_id: str
    """The corpus' sanitised video id (the folder/file name under masks/, rle/, done/)."""
    marker: dict
    """The done marker (frames, size, fps, source, provenance)."""
    frames: list[FrameRle]
    """Every frame, by frame index."""

    @property
    def height(self) -> int:
        return int(self.frames[0].rle["size"][0])

    @property
    def width(self) -> int:
        return int(self.frames[0].rle["size"][1])


@dataclass(frozen=True)
class RejectedVideo:
    """A finished video whose outputs cannot be exported; ``reason`` names the file."""

    video_id: str
    """The video id."""
    reason: str
    """What is wrong, naming the file."""


def _read_video(storage: Storage, video_id: str) -> FinishedVideo:
    marker_rel, rle_rel = done_marker(video_id), rle_parquet(video_id)
    try:
        marker = storage.read_json(marker_rel)
    except (StorageError, OSError, ValueError) as err:
        raise ValueError(f"done marker {storage.join(marker_rel)} unreadable: {err}") from err
    if not isinstance(marker, dict):
        raise ValueError(f"done marker {storage.join(marker_rel)} is not a JSON object")
    if not storage.exists(rle_rel):
        raise ValueError(f"{storage.join(rle_rel)} is missing (the video has a done marker)")
    try:
        table = storage.read_parquet(rle_rel)
        rows = table.select(["frame_index", "frame", "height", "width", "rle_counts", "area"]).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged or foreign file
        raise ValueError(f"{storage.join(rle_rel)} unreadable: {err}") from err
    if not rows:
        raise ValueError(f"{storage.join(rle_rel)} has no frames")
    rows.sort(key=lambda r: r["frame_index"])
    expected = marker.get("frames")
    if isinstance(expected, int) and expected != len(rows):
        raise ValueError(f"{storage.join(rle_rel)} has {len(rows)} frames, its done marker says {expected}")
    sizes = {(r["height"], r["width"]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"{storage.join(rle_rel)}: frames of different sizes {sorted(sizes)}")
    names = [r["frame"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{storage.join(rle_rel)}: repeated frame names")
    for name in names:  # they become file and archive member names in the exports
        check_name(name, f"frame name in {storage.join(rle_rel)}")
    frames = [
        FrameRle(
            int(r["frame_index"]),
            str(r["frame"]),
            {"size": [int(r["height"]), int(r["width"])], "counts": r["rle_counts"]},
            int(r["area"]),
        )
        for r in rows
    ]
    return FinishedVideo(video_id, marker, frames)


def iter_finished_videos(
    storage: Storage, videos: Sequence[str] = ()
) -> Iterator[FinishedVideo | RejectedVideo]:
    """Each finished video in id order, read one at a time (bounded memory), or why it cannot be read."""
    for video_id in finished_video_ids(storage, videos):
        try:
            yield _read_video(storage, video_id)
        except ValueError as err:
            yield RejectedVideo(video_id, str(err))

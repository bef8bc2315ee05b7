"""The segment job's output layout: where each output of a video lives below a segment output root.

This is the contract between ``segment`` (which writes it), ``export`` and ``evaluate`` (which read it) and the
demo; nothing else spells these paths::

    masks/<video>/<frame>.png       binary mask, DAVIS palette PNG (0 background, 1 object), original size
    probs/<video>/<frame>.png       optional soft probabilities, 8-bit greyscale
    rle/<video>.parquet             one row per frame (RLE_SCHEMA): video, frame index and name, size, COCO RLE, area
    overlays/<video>.mp4            optional overlay video; overlays/index.html links them
    done/<video>.json               the done marker, written last: a rerun skips the video, a killed run redoes it
    summary.json                    the job summary

``<video>`` is the corpus' sanitised video id and ``<frame>`` the frame's name: each must be one safe path
component (:func:`pipeline.names.check_name`; the functions below raise ``UnsafeNameError`` otherwise), so that no
id read from an index or a marker reaches another video's files. A video's outputs count only once its done marker
exists.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence

import pyarrow as pa

from pipeline.names import UnsafeNameError, check_name
from pipeline.storage import Storage

log = logging.getLogger(__name__)

__all__ = [
    "DONE_DIR",
    "MASKS_DIR",
    "OVERLAYS_DIR",
    "OVERLAY_INDEX",
    "PROBS_DIR",
    "RLE_DIR",
    "RLE_SCHEMA",
    "SUMMARY",
    "done_marker",
    "finished_video_ids",
    "mask_png",
    "overlay_mp4",
    "prob_png",
    "rle_parquet",
    "video_outputs",
]

MASKS_DIR = "masks"
PROBS_DIR = "probs"
RLE_DIR = "rle"
OVERLAYS_DIR = "overlays"
DONE_DIR = "done"
OVERLAY_INDEX = f"{OVERLAYS_DIR}/index.html"
"""The page linking every overlay video."""
SUMMARY = "summary.json"

RLE_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame_index", pa.int32()),
        ("frame", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle_counts", pa.string()),
        ("area", pa.int64()),
    ]
)
"""Columns of ``rle/<video>.parquet``: one row per frame."""


def _video(video_id: str) -> str:
    return check_name(video_id, "video id")


def mask_png(video_id: str, frame: str) -> str:
    return f"{MASKS_DIR}/{_video(video_id)}/{check_name(frame, 'frame name')}.png"


def prob_png(video_id: str, frame: str) -> str:
    return f"{PROBS_DIR}/{_video(video_id)}/{check_name(frame, 'frame name')}.png"


def rle_parquet(video_id: str) -> str:
    return f"{RLE_DIR}/{_video(video_id)}.parquet"


def overlay_mp4(video_id: str) -> str:
    return f"{OVERLAYS_DIR}/{_video(video_id)}.mp4"


def done_marker(video_id: str) -> str:
    return f"{DONE_DIR}/{_video(video_id)}.json"


def video_outputs(video_id: str) -> list[tuple[str, bool]]:
    """Every output of one video as ``(path, recursive)``, the done marker first: what a failed video removes.

    An unsafe ``video_id`` raises ``UnsafeNameError`` before anything is listed: ``masks/.`` is every video's.
    """
    _video(video_id)
    return [
        (done_marker(video_id), False),
        (rle_parquet(video_id), False),
        (overlay_mp4(video_id), False),
        (f"{MASKS_DIR}/{video_id}", True),
        (f"{PROBS_DIR}/{video_id}", True),
    ]


def finished_video_ids(storage: Storage, videos: Sequence[str] = ()) -> list[str]:
    """Ids of the videos with a done marker, sorted (one listing of ``done/``); only ``videos`` when given."""
    ids = []
    for name in storage.list(DONE_DIR, suffix=".json"):
        video_id = posixpath.splitext(name)[0]
        try:
            ids.append(_video(video_id))
        except UnsafeNameError as err:  # segment never writes such a marker: not a video of this output
            log.warning("ignoring %s: %s", storage.join(f"{DONE_DIR}/{name}"), err)
    ids = sorted(i for i in ids if not i.startswith("."))
    if videos:
        wanted = set(videos)
        ids = [i for i in ids if i in wanted]
    return ids

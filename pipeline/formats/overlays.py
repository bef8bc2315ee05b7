"""``overlays/index.html``: one page linking every overlay video ``segment --overlay`` wrote (relative links, so the
folder can be copied or opened from storage as is); the page is ``pipeline/templates/overlays.html.j2``."""

from __future__ import annotations

import posixpath
from urllib.parse import quote

from pipeline.segment_layout import OVERLAY_INDEX, OVERLAYS_DIR, done_marker, finished_video_ids
from pipeline.storage import Storage, StorageError
from pipeline.templates import render

__all__ = ["write_overlay_index"]


def _describe(marker: dict) -> str:
    """A line about the video from its done marker; fields of the wrong type are left out (a marker may be damaged)."""
    number = (int, float)
    frames, width, height, fps, foreground = (
        marker.get(k) for k in ("frames", "width", "height", "fps", "foreground_frames")
    )
    parts = []
    if isinstance(frames, int):
        parts.append(f"{frames} frames")
    if isinstance(width, int) and isinstance(height, int) and width and height:
        parts.append(f"{width}x{height}")
    if isinstance(fps, number) and fps:
        parts.append(f"{float(fps):g} fps")
    if isinstance(foreground, int):
        parts.append(f"object in {foreground} frames")
    return ", ".join(parts)


def write_overlay_index(storage: Storage) -> str | None:
    """Write ``overlays/index.html`` below the segment output root ``storage``; returns its URL, or None when
    there are no overlay videos. Only finished videos (with a done marker) are listed."""
    overlays = sorted(
        posixpath.splitext(n)[0] for n in storage.list(OVERLAYS_DIR, suffix=".mp4") if "/" not in n
    )
    videos = finished_video_ids(storage, overlays) if overlays else []
    if not videos:
        return None
    items = []
    for video in videos:
        try:
            marker = storage.read_json(done_marker(video))
        except (StorageError, ValueError, OSError):
            marker = {}
        details = _describe(marker if isinstance(marker, dict) else {})
        items.append({"name": video, "href": quote(f"{video}.mp4"), "details": details})
    storage.write_text(OVERLAY_INDEX, render("overlays.html.j2", videos=items))
    return storage.join(OVERLAY_INDEX)

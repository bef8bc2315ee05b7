"""``export_outputs``: segment's finished videos as the files other tools read (one pass over the videos)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.formats.coco import CocoVideoWriter
from pipeline.formats.cvat import CvatMaskWriter, MaskPngEncoder, cvat_video_item_name
from pipeline.formats.finished import FinishedVideo, RejectedVideo, iter_finished_videos
from pipeline.formats.overlays import write_overlay_index
from pipeline.segment_layout import finished_video_ids
from pipeline.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "export_outputs", "run_exports"]

EXPORT_FORMATS: tuple[str, ...] = ("coco", "cvat", "cvat_video")
"""coco: a YouTube-VIS-style video instance JSON; cvat: CVAT's "Segmentation mask 1.1" zip for the whole corpus
(images named <video>_<frame>); cvat_video: one such zip per video (images named frame_<index:06d>, for a CVAT
task made from that video)."""

EXPORT_FILES: dict[str, str] = {
    "coco": "instances_ytvis.json",
    "cvat": "cvat_segmentation_mask_1.1.zip",
    "cvat_video": "cvat/{video}.zip",
}
"""The file each format writes, below the export folder ({video}: the video id)."""


def _write_video_archive(target: Storage, video: FinishedVideo, pngs: list[bytes], category: str) -> str:
    archive = CvatMaskWriter(category, item_name=cvat_video_item_name)
    try:
        archive.add(video, pngs)
    except BaseException:
        archive.abort()
        raise
    return archive.finish(target, EXPORT_FILES["cvat_video"].format(video=video.video_id))["url"]


def export_outputs(
    storage: Storage,
    formats: Sequence[str],
    *,
    target: Storage | None = None,
    videos: Sequence[str] = (),
    category: str = "object",
    frame_ext: str = ".jpg",
    summary=None,
    kind: str = "video",
) -> dict[str, Any]:
    """Export the finished videos of a segment output root ``storage`` in ``formats`` (``EXPORT_FORMATS``).

    Reads ``done/<video>.json`` and ``rle/<video>.parquet`` of every video with a done marker (only ``videos`` when
    given), one video at a time, and writes each format's files (``EXPORT_FILES``) to ``target`` (default
    ``<storage>/exports``). A video whose outputs cannot be read is left out and named in the result (and counted in
    ``summary``, a ``pipeline.summary.JobSummary``, when given, under ``kind``); the others are exported. Files are
    replaced atomically and are the same bytes for the same outputs, so a rerun rewrites the same files.
    Returns ``{"videos": n, "frames": n, "files": {format: {"url": ..., ...}}, "rejected": [{video, reason}]}``.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; choose from {list(EXPORT_FORMATS)}")
    target = target if target is not None else storage.child("exports")
    coco = CocoVideoWriter(category, frame_ext) if "coco" in formats else None
    cvat = CvatMaskWriter(category) if "cvat" in formats else None
    encoder = MaskPngEncoder() if {"cvat", "cvat_video"} & set(formats) else None
    rejected: list[dict[str, str]] = []
    video_archives: list[str] = []
    exported = frames = 0

    def reject(video_id: str, reason: str) -> None:
        rejected.append({"video": video_id, "reason": reason})
        if summary is not None:
            summary.rejected(kind, video_id, reason)
        else:
            log.warning("export: video %r left out: %s", video_id, reason)

    if summary is not None:  # the progress line (one more listing of done/, against one read per video)
        summary.expect(kind, len(finished_video_ids(storage, videos)))
    try:
        for video in iter_finished_videos(storage, videos):
            if isinstance(video, RejectedVideo):
                reject(video.video_id, video.reason)
                continue
            problem = cvat.check(video) if cvat is not None else None
            if problem:
                reject(video.video_id, problem)
                continue
            if coco is not None:
                coco.add(video)
            if encoder is not None:
                pngs = encoder.encode(video)  # once for both CVAT forms
                if cvat is not None:
                    cvat.add(video, pngs)
                if "cvat_video" in formats:
                    video_archives.append(_write_video_archive(target, video, pngs, category))
            exported += 1
            frames += len(video.frames)
            if summary is not None:
                summary.done(kind, video.video_id)
        files: dict[str, dict[str, Any]] = {}
        if coco is not None:
            info = {"description": f"hmhi-uvos segmentation of {storage.url}", "videos": exported}
            files["coco"] = coco.finish(target, EXPORT_FILES["coco"], info)
        if cvat is not None:
            files["cvat"] = cvat.finish(target, EXPORT_FILES["cvat"])
        if "cvat_video" in formats:
            files["cvat_video"] = {"url": target.join("cvat"), "archives": len(video_archives)}
    finally:
        if cvat is not None:
            cvat.abort()
        if encoder is not None:
            encoder.close()
    for fmt, written in files.items():
        log.info("export %s: %s", fmt, written["url"])
    return {"videos": exported, "frames": frames, "files": files, "rejected": rejected}


def run_exports(
    storage: Storage,
    summary,
    formats: Sequence[str],
    *,
    overlay_index: bool = True,
    kind: str = "video",
    **options: Any,
) -> dict[str, Any] | None:
    """What a job runs at its end: :func:`export_outputs` in ``formats`` (none: no export) and the overlay index
    page, recorded in ``summary`` (counts under ``kind``; figures ``<format>_file`` and ``overlay_index``, the
    URLs). ``options`` go to :func:`export_outputs`. Returns export_outputs' result, or None without formats.

    The segment job calls ``run_exports(output, summary, cfg.outputs.export, overlay_index=cfg.outputs.overlay,
    kind="exported video")`` before ``summary.finish``.
    """
    result = None
    if formats:
        result = export_outputs(storage, formats, summary=summary, kind=kind, **options)
        for fmt, written in result["files"].items():
            summary.set(f"{fmt}_file", written["url"])
        summary.add("exported_frames", result["frames"])
    if overlay_index:
        index = write_overlay_index(storage)
        if index:
            summary.set("overlay_index", index)
    return result

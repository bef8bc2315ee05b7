"""The export job: read a segment output root's finished videos and write the files other tools import."""

from __future__ import annotations

import logging

from pipeline.config import config_to_dict
from pipeline.export.config import ExportConfig
from pipeline.formats.exporter import run_exports
from pipeline.segment_layout import DONE_DIR, done_marker
from pipeline.storage import StorageNotFoundError, open_storage
from pipeline.summary import JobSummary

log = logging.getLogger("jobs.export")

__all__ = ["FLAGS", "run"]

FLAGS = {
    "--input": "input",
    "--output": "output",
    "--formats": "formats",
    "--videos": "videos",
    "--category": "category",
}


def run(cfg: ExportConfig) -> dict:
    """Export every finished video; returns the job summary (also written as <output>/summary.json)."""
    summary = JobSummary("export", config=config_to_dict(cfg))
    source = open_storage(cfg.input)
    if not source.exists(DONE_DIR):
        raise StorageNotFoundError(
            f"{source.join(DONE_DIR)} not found: {source.url} is not a segment output root, "
            "or no video has finished yet"
        )
    target = open_storage(cfg.output) if cfg.output else source.child("exports")
    result = run_exports(
        source,
        summary,
        cfg.formats,
        overlay_index=cfg.overlay_index,
        target=target,
        videos=cfg.videos,
        category=cfg.category,
        frame_ext=cfg.frame_ext,
    )
    for video in cfg.videos:
        if not source.exists(done_marker(video)):
            summary.skipped("video", video, f"not finished: no done marker {source.join(done_marker(video))}")
    if result["videos"] == 0:
        log.warning("no video exported from %s: the exports are empty", source.url)
    return summary.finish(storage=target, rel="summary.json")

"""The export job: read a segment output root's finished videos and write the files other tools import."""

from __future__ import annotations

import logging

from pipeline.config import config_to_dict
from pipeline.export.config import ExportConfig
from pipeline.export.exporter import export_outputs
from pipeline.export.overlays import write_overlay_index
from pipeline.jobs import JobSummary
from pipeline.storage import open_storage

log = logging.getLogger("jobs.export")

__all__ = ["FLAGS", "run"]

FLAGS = {"--input": "input", "--output": "output", "--formats": "formats", "--videos": "videos",
         "--category": "category"}  # fmt: skip


def run(cfg: ExportConfig) -> dict:
    """Export every finished video; returns the job summary (also written as <output>/summary.json)."""
    summary = JobSummary("export", config=config_to_dict(cfg))
    source = open_storage(cfg.input)
    source.check("read")
    target = open_storage(cfg.output) if cfg.output else source.child("exports")
    result = export_outputs(source, cfg.formats, target=target, videos=cfg.videos, category=cfg.category,
                            frame_ext=cfg.frame_ext, summary=summary)  # fmt: skip
    for video in cfg.videos:
        if not source.exists(f"done/{video}.json"):
            summary.skipped("video", video, f"not finished: no done marker {source.join(f'done/{video}.json')}")
    if result["videos"] == 0 and not result["rejected"]:
        log.warning("no finished videos (done/<video>.json) in %s: the exports are empty", source.url)
    for fmt, written in result["files"].items():
        summary.set(f"{fmt}_file", written["url"])
    if cfg.overlay_index:
        index = write_overlay_index(source)
        if index:
            summary.set("overlay_index", index)
    return summary.finish(storage=target, rel="summary.json")

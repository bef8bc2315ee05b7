"""The export job: read a segment output root's finished videos and write the files other tools import."""

from __future__ import annotations

import logging

from pipeline.config import config_to_dict
from pipeline.export.config import ExportConfig
from pipeline.formats.exporter import run_exports
from pipeline.formats.overlays import write_overlay_index
from pipeline.lease import LeaseHeldError, OutputLease, OutputRefusedError
from pipeline.segment_layout import DONE_DIR, OVERLAY_INDEX, done_marker
from pipeline.storage import Storage, StorageNotFoundError, open_storage
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


def _export_root(cfg: ExportConfig) -> str:
    """The folder the exports go to, which the run's lease protects: ``--output``, else ``<input>/exports``."""
    return cfg.output or open_storage(cfg.input).child("exports").url


def run(cfg: ExportConfig) -> dict:
    """Export every finished video; returns the job summary (also written as <output>/summary.json).

    The input is checked first (the default output lives inside it: a missing input must not be created), then the
    export folder's lease is taken (pipeline/lease.py) for the rest of the run.
    """
    source = open_storage(cfg.input)
    if not source.exists(DONE_DIR):
        raise StorageNotFoundError(
            f"{source.join(DONE_DIR)} not found: {source.url} is not a segment output root, "
            "or no video has finished yet"
        )
    target = open_storage(_export_root(cfg))
    with OutputLease(target, job="export") as lease:
        return _export(cfg, source, target.fenced(lease))  # every write checks this run's lease


def _export(cfg: ExportConfig, source: Storage, target: Storage) -> dict:
    summary = JobSummary("export", config=config_to_dict(cfg))
    if cfg.overlay_index:
        _write_overlay_index(source, summary)
    result = run_exports(
        source,
        summary,
        cfg.formats,
        overlay_index=False,
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


def _write_overlay_index(source: Storage, summary: JobSummary) -> None:
    """``overlays/index.html`` belongs to the segment output it indexes: written only under that output's lease,
    and skipped (with the reason in the summary) while a segment run holds it -- that run writes its own."""
    try:
        with OutputLease(source, job="segment", clean=False) as lease:
            index = write_overlay_index(source.fenced(lease))
    except (LeaseHeldError, OutputRefusedError) as err:
        summary.skipped("overlay_index", source.join(OVERLAY_INDEX), str(err))
        return
    if index:
        summary.set("overlay_index", index)

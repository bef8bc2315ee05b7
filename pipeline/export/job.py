"""The export job: read a segment output root's finished videos and write the files other tools import."""

from __future__ import annotations

import logging

from pipeline.cli import JobSpec
from pipeline.config import config_to_dict
from pipeline.export.config import ExportConfig
from pipeline.formats.exporter import run_exports
from pipeline.formats.overlays import write_overlay_index
from pipeline.lease import LeaseHeldError, OutputLease, OutputRefusedError
from pipeline.preflight import PreflightError, check_disjoint, check_input, check_output, within
from pipeline.segment_layout import (
    DONE_DIR,
    MASKS_DIR,
    OVERLAY_INDEX,
    OVERLAYS_DIR,
    PROBS_DIR,
    RLE_DIR,
    done_marker,
    finished_video_ids,
)
from pipeline.storage import Storage, StorageNotFoundError, open_storage
from pipeline.summary import JobSummary

log = logging.getLogger("jobs.export")

__all__ = ["FLAGS", "JOB", "preflight", "run"]

FLAGS = {
    "--input": "input",
    "--output": "output",
    "--formats": "formats",
    "--videos": "videos",
    "--category": "category",
}

_READ_DIRS = (DONE_DIR, RLE_DIR, MASKS_DIR, PROBS_DIR, OVERLAYS_DIR)
"""The folders of a segment output root that exports are made from: an export folder is never one of them."""


def _target(cfg: ExportConfig, source: Storage) -> Storage:
    """Where the exports go: ``--output``, else ``<input>/exports``."""
    return open_storage(cfg.output) if cfg.output else source.child("exports")


def preflight(cfg: ExportConfig) -> None:
    """Before any write: the input is a segment output root with finished videos, every name of ``videos`` is one
    of them (an unknown name is a user error), and the export folder can be written and is neither the input root
    nor around it nor inside one of the folders read (done/, rle/, masks/, probs/, overlays/)."""
    source = check_input("input", cfg.input)
    if not source.isdir(DONE_DIR):
        raise PreflightError(
            f"input {source.url}: no {DONE_DIR}/ folder: not a segment output root, or no video has finished yet"
        )
    finished = set(finished_video_ids(source))
    if not finished:
        raise PreflightError(
            f"input {source.url}: no finished video ({source.join(DONE_DIR)} holds no marker)"
        )
    unknown = sorted(set(cfg.videos) - finished)
    if unknown:
        raise PreflightError(
            f"videos: {len(unknown)} not finished in {source.url} (no done marker): {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
        )
    target = _target(cfg, source)
    check_output("output", target.url)
    # Below the input is fine (the default is <input>/exports), but not the input itself, around it, or in what
    # is read.
    if within(source.url, target.url):
        relation = "is" if within(target.url, source.url) else "contains"
        raise PreflightError(
            f"output {target.url} {relation} input {source.url}: exports need a folder of their own"
        )
    check_disjoint("output", target.url, {f"input's {name}/": source.join(name) for name in _READ_DIRS})


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
    target = _target(cfg, source)
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


JOB = JobSpec(
    name="export",
    summary="segment's finished videos as COCO (YouTube-VIS) JSON and CVAT mask archives",
    config=ExportConfig,
    run=run,
    preflight=preflight,
    flags=FLAGS,
    description="""Export segment's finished videos as files other tools read.

Reads every video with a done marker (done/<video>.json) and its rle/<video>.parquet, and writes to --output
(default <input>/exports): instances_ytvis.json (video instances in the YouTube-VIS layout: per-frame RLE, areas,
boxes; pycocotools' mask API reads the RLE, a YouTube-VIS loader the file), cvat_segmentation_mask_1.1.zip
(CVAT's "Segmentation mask 1.1" import format, frames named <video>_<frame>) and cvat/<video>.zip (the same per
video, frames named frame_<index:06d> as in a CVAT video task), plus overlays/index.html in the input when it has
overlay videos, and summary.json.""",
    examples=(
        "{prog} --input runs/seg",
        "{prog} --input s3://bucket/seg1 --output s3://bucket/seg1-exports --formats coco",
        "{prog} --input runs/seg --output runs/seg-cvat --formats cvat_video --videos synth003,synth007",
    ),
)
"""The export job on the command line (``hmhi-uvos export``, ``jobs/export.py``)."""

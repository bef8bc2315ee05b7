"""DAVIS J&F evaluation: exact per-frame metrics (:mod:`.metrics`), dataset scoring from storage (:mod:`.dataset`),
and the evaluation job (:mod:`.config`, :mod:`.job`; ``jobs/evaluate.py`` is its command line)."""

from pipeline.evaluate.metrics import (
    METRIC_KEYS,
    PROTOCOLS,
    Protocol,
    aggregate_results,
    boundary_radius,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    evaluate_frames,
    evaluate_sequence,
    seg2bmap,
    sequence_statistics,
)

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "Protocol",
    "aggregate_results",
    "boundary_radius",
    "db_eval_boundary",
    "db_eval_iou",
    "db_statistics",
    "evaluate_frames",
    "evaluate_sequence",
    "seg2bmap",
    "sequence_statistics",
]

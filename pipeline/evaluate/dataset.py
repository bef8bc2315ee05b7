"""Score DAVIS-style folders of masks from storage: discovery of sequences/frames and one-sequence scoring.

Layouts (local or any storage URL):

- predictions: ``<pred>/<sequence>/<frame>.png`` (what ``jobs/segment.py`` writes under ``masks/``);
- ground truth: a DAVIS root (``<gt>/Annotations/480p/<sequence>/<frame>.png``), its ``Annotations``
  folder, or any root that directly holds sequence folders (frames matched by file stem, ``00012.png`` ↔
  ``00012.png``; extensions may differ); or a dataset archive read by :mod:`pipeline.ingest.formats` (FBMS-59,
  YouTube-Objects, YouTube-VOS, the official HMHI-Net layout), whose masks are matched to the *frame* they
  annotate and looked up under that frame's stem, which is what ``jobs/segment.py`` names its outputs after
  (``Testset/cars1/GroundTruth/cars1_0004_gt.pgm`` scores ``<pred>/cars1/cars1_04.png``).

Only frames that have ground truth are scored (the sparse sets: the annotated frames only); a missing
prediction frame is scored as an empty mask and reported.
These functions run inside Ray tasks (``jobs/evaluate.py``), so they take picklable :class:`Storage`
objects and return plain dicts.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import telemetry
from pipeline.ingest.formats import IngestError, VideoRecord, detect_layout, mask_has_white_background
from pipeline.ingest.manifest import list_corpus
from pipeline.masks import OFFICIAL_UINT8_THRESHOLD, MaskError, read_mask, read_mask_grey
from pipeline.metrics import (
    DEFAULT_BOUND_TH,
    boundary_radius,
    db_eval_boundary,
    db_eval_iou,
    sequence_statistics,
)
from pipeline.storage import Storage, StorageError

log = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_FORMATS",
    "GT_LAYOUTS",
    "MASK_SUFFIXES",
    "GroundTruth",
    "SequenceResult",
    "read_ground_truth",
    "resolve_gt_root",
    "list_frames",
    "score_sequence",
]

GT_LAYOUTS: tuple[str, ...] = ("Annotations/480p", "Annotations")
"""Sub-folders of a ground-truth root tried, in order, before the root itself (DAVIS layout first)."""

MASK_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
"""File endings read as masks (case-insensitive); PNG is the norm."""


def _is_mask_name(name: str) -> bool:
    return name.lower().endswith(MASK_SUFFIXES)


def resolve_gt_root(gt: Storage) -> Storage:
    """The folder of ground-truth sequences: ``Annotations/480p``, ``Annotations`` or the root itself."""
    for layout in GT_LAYOUTS:
        if gt.isdir(layout):
            return gt.child(layout)
    return gt


ARCHIVE_FORMATS: tuple[str, ...] = ("fbms", "ytobj", "ytvos", "hmhi")
"""Archives that ``gt_format=auto`` reads through their own layout; DAVIS roots keep the folder reading."""


@dataclass
class GroundTruth:
    """What is scored: per sequence, frame stem -> ground-truth file (relative to ``root``)."""

    root: Storage
    """Where the ground-truth paths are relative to."""
    frames: dict[str, dict[str, str]]
    """{sequence (the prediction folder name): {frame stem: ground-truth path}}."""
    format: str
    """'folders' or the archive's ingest format."""
    categories: dict[str, str]
    """{sequence: object class} where the archive names one (YouTube-Objects)."""


def _archive_frames(rec: VideoRecord) -> dict[str, str]:
    return {
        posixpath.splitext(posixpath.basename(rec.frames[i]))[0]: rel for i, rel in sorted(rec.masks.items())
    }


def read_ground_truth(
    gt: Storage, gt_format: str = "auto", splits: tuple[str, ...] = ("test",), davis_resolution: str = "480p"
) -> GroundTruth:
    """The ground truth under ``gt``: an archive's annotated frames (see :data:`ARCHIVE_FORMATS`) or folders."""
    fmt = gt_format
    files: list[str] | None = None
    if fmt == "auto":
        files = gt.list("", recursive=True)
        try:
            detected, prefix = detect_layout(files, davis_resolution)
        except IngestError:
            detected, prefix = "folders", ""
        if detected not in ARCHIVE_FORMATS:
            # DAVIS and plain folders: the folder reading, inside the archive's own folder if it was unpacked into one
            root = resolve_gt_root(gt.child(prefix.rstrip("/")) if prefix else gt)
            return GroundTruth(root, list_frames(root), "folders", {})
        fmt = "auto"  # list_corpus finds the same archive, and its folder
    if fmt == "folders":
        root = resolve_gt_root(gt)
        return GroundTruth(root, list_frames(root), "folders", {})
    listing = list_corpus(gt, fmt, davis_resolution, files=files)
    fmt = listing.format
    frames, categories = {}, {}
    for rec in listing.records:
        if rec.split in splits and rec.masks and rec.kind == "frames":
            frames[rec.video_id] = _archive_frames(rec)
            if rec.category:
                categories[rec.video_id] = rec.category
    log.info(
        "ground truth: %s archive %s, %d sequences of splits %s with annotated frames",
        fmt,
        gt.url,
        len(frames),
        ",".join(splits),
    )
    return GroundTruth(gt, dict(sorted(frames.items())), fmt, categories)


def list_frames(root: Storage, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """``{sequence: {frame_stem: relative_path}}`` for every ``<sequence>/<frame>.<mask ext>`` below ``root``.

    One recursive listing (one S3 request stream, not one per folder). Deeper files, files directly
    in the root and sequences named in ``exclude`` are ignored. Hidden names (``.x``) are ignored.
    """
    frames: dict[str, dict[str, str]] = defaultdict(dict)
    for rel in root.list("", recursive=True):
        parts = rel.split("/")
        if len(parts) != 2 or not _is_mask_name(parts[1]) or parts[0] in exclude:
            continue
        if parts[0].startswith(".") or parts[1].startswith("."):
            continue
        stem = posixpath.splitext(parts[1])[0]
        previous = frames[parts[0]].get(stem)
        # Two files with one stem (x.png and x.jpg): prefer the PNG, deterministically.
        if previous is None or (not previous.lower().endswith(".png") and rel.lower().endswith(".png")):
            frames[parts[0]][stem] = rel
    return {seq: dict(sorted(f.items())) for seq, f in sorted(frames.items())}


@dataclass
class SequenceResult:
    """What scoring one sequence produced (plain data, returned from a Ray task)."""

    sequence: str
    """Sequence (folder) name."""
    metrics: dict
    """sequence_statistics(): J/F mean, recall, decay, JF_mean, n_frames (NaN when not scorable)."""
    frames: list[tuple[str, float, float]]
    """(frame stem, J, F) for every frame with ground truth, before the protocol selects frames."""
    resolution: tuple[int, int] | None
    """(height, width) of the ground truth, the evaluated resolution; None if nothing was read."""
    missing: list[str]
    """Frames with ground truth but no prediction (scored as empty)."""
    unreadable: list[str]
    """Prediction frames that could not be decoded (scored as empty); reasons in ``warnings``."""
    resized: int
    """Prediction frames resized (nearest neighbour) to the ground-truth size."""
    warnings: list[str]
    """Human-readable warnings naming the files."""
    error: str | None = None
    """Set when the sequence could not be scored at all (e.g. unreadable ground truth)."""


def _nan_metrics(protocol: str) -> dict:
    return sequence_statistics(np.zeros(0), np.zeros(0), protocol)


def score_sequence(
    sequence: str,
    gt_root: Storage,
    gt_frames: dict[str, str],
    pred_root: Storage,
    pred_frames: dict[str, str],
    protocol: str = "davis2016",
    threshold: float | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    official: bool = False,
) -> SequenceResult:
    """Read and score one sequence, frame by frame (bounded memory).

    ``threshold`` None: any non-zero prediction pixel is foreground; otherwise soft (greyscale) maps
    are foreground where ``value / 255 > threshold`` (palette masks always by index). Predictions of
    another size are resized to the ground truth's by nearest neighbour.

    ``official``: the official HMHI-Net rule (``utils/val_zvos.py:_read_and_eval_file``): the prediction
    read as 8-bit grey, resized to the ground truth's size with ``cv2.resize``'s default *bilinear*
    interpolation (the official call passes ``cv2.INTER_NEAREST`` in the ``dst`` position, so it is not
    used), then foreground ``> 128``; ``threshold`` is ignored. Ground truth is ``> 0`` in both modes.
    """
    telemetry.set_job("evaluate")  # a Ray task: this worker's storage metrics are evaluate's
    warnings: list[str] = []
    missing: list[str] = []
    unreadable: list[str] = []
    frames: list[tuple[str, float, float]] = []
    resized = 0
    resolution: tuple[int, int] | None = None
    stems = sorted(gt_frames)
    for stem in stems:
        gt_url = gt_root.join(gt_frames[stem])
        try:
            gt = read_mask(
                gt_root.read_bytes(gt_frames[stem]),
                name=gt_url,
                white_background=mask_has_white_background(gt_frames[stem]),
            )
        except (MaskError, StorageError, OSError) as err:
            return SequenceResult(
                sequence,
                _nan_metrics(protocol),
                [],
                resolution,
                missing,
                unreadable,
                resized,
                warnings,
                error=f"ground truth {gt_url} unreadable: {err}",
            )
        if resolution is None:
            resolution = gt.shape
        pred = None
        if stem not in pred_frames:
            missing.append(stem)
        else:
            try:
                pred, was_resized = _read_prediction(
                    pred_root, pred_frames[stem], gt.shape, threshold, official
                )
                resized += was_resized
            except (MaskError, StorageError, OSError) as err:
                unreadable.append(stem)
                warnings.append(f"{err}; scored as an empty mask")
        if pred is None:
            pred = np.zeros_like(gt)
        frames.append(
            (stem, float(db_eval_iou(gt, pred)), float(db_eval_boundary(gt, pred, bound_th=bound_th)))
        )
    warnings += _sequence_warnings(sequence, pred_root, len(stems), missing, resized, resolution, official)
    if resolution is not None:
        log.debug("%s: r=%d px at %s", sequence, boundary_radius(resolution, bound_th), resolution)
    j_values = np.array([j for _, j, _ in frames])
    f_values = np.array([f for _, _, f in frames])
    metrics = sequence_statistics(j_values, f_values, protocol)
    if metrics["n_frames"] == 0:
        warnings.append(f"{sequence}: {len(frames)} frames are too few for protocol {protocol!r}; not scored")
    return SequenceResult(sequence, metrics, frames, resolution, missing, unreadable, resized, warnings)


def _read_prediction(
    pred_root: Storage, rel: str, gt_shape: tuple[int, int], threshold: float | None, official: bool
) -> tuple[np.ndarray, bool]:
    """One prediction frame as a boolean mask at the ground truth's size -> (mask, whether it was resized).

    Raises ``MaskError``, ``StorageError`` or ``OSError`` (naming the file) when it cannot be read.
    """
    pred_url = pred_root.join(rel)
    data = pred_root.read_bytes(rel)
    if official:
        grey = read_mask_grey(data, name=pred_url)
        if grey.shape == gt_shape:
            return grey > OFFICIAL_UINT8_THRESHOLD, False
        grey = cv2.resize(grey, (gt_shape[1], gt_shape[0]))  # bilinear, as the official call
        return grey > OFFICIAL_UINT8_THRESHOLD, True
    pred = read_mask(data, threshold=threshold, name=pred_url)
    if pred.shape == gt_shape:
        return pred, False
    # The tolerance of F depends on the evaluated size, so evaluate at the ground truth's.
    pred = cv2.resize(pred.astype(np.uint8), (gt_shape[1], gt_shape[0]), interpolation=cv2.INTER_NEAREST)
    return pred.astype(bool), True


def _sequence_warnings(
    sequence: str,
    pred_root: Storage,
    n_frames: int,
    missing: list[str],
    resized: int,
    resolution: tuple[int, int] | None,
    official: bool,
) -> list[str]:
    """The warnings about a whole sequence: frames without a prediction, predictions resized."""
    warnings = []
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        where = pred_root.join(sequence)
        warnings.append(
            f"{sequence}: {len(missing)} of {n_frames} frames have no prediction in {where} ({shown}); scored as empty masks"
        )
    if resized:
        how = "bilinear, then > 128" if official else "nearest neighbour"
        warnings.append(
            f"{sequence}: {resized} prediction frames resized to the ground-truth size {resolution} ({how})"
        )
    return warnings

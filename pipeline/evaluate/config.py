"""Typed configuration of the evaluation job (``jobs/evaluate.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import require
from pipeline.metrics import PROTOCOLS
from pipeline.storage import absolute_url

__all__ = ["EVALUATE_PRESETS", "GT_FORMATS", "HMHI_OFFICIAL_THRESHOLD", "EvaluateConfig"]

# hmhi_official keeps stretched soft-map values > 128 (docs/evaluation.md §6); on a 0-255 scale that
# is value / 255 > 128 / 255. Binary masks (palette or 0/255) are unaffected.
HMHI_OFFICIAL_THRESHOLD = 128 / 255

EVALUATE_PRESETS: tuple[str, ...] = ("default", "official")
"""``default``: this project's rules (see the fields). ``official``: the official HMHI-Net evaluation
(ZhengxyFlow/HMHI-Net ``utils/val_zvos.py``): protocol ``hmhi_official``, the soft maps of ``probs/`` read as
8-bit grey, resized to the ground truth's size bilinearly, foreground ``> 128``; ground truth ``> 0``."""

GT_FORMATS: tuple[str, ...] = ("auto", "folders", "davis2016", "davis2017", "ytvos", "fbms", "ytobj", "hmhi")
"""How ``--gt`` is read. ``folders``: ``Annotations/480p``, ``Annotations`` or a root of sequence folders, frames
matched by file stem. An ingest format name: the archive's own layout (:mod:`pipeline.ingest.formats`), ground
truth matched to the *frame* it annotates, whatever its name or extension (FBMS ``GroundTruth/*_gt.pgm``,
YouTube-Objects' sparse ``Annotations``). ``auto``: an archive when the root is an FBMS, YouTube-Objects,
YouTube-VOS or official HMHI-Net archive, else ``folders`` (DAVIS roots keep the folder reading)."""


@dataclass
class EvaluateConfig:
    """Score predicted masks against ground truth with the DAVIS J and F measures."""

    pred: str = ""
    """URL or path of the predictions, <pred>/<sequence>/<frame>.png, or a segment output root.
    A segment output root is read through its masks/ folder (probs/, the soft maps, under the official preset)."""
    gt: str = ""
    """URL or path of the ground truth: a DAVIS root, a root of sequence folders, or a dataset archive.
    A DAVIS root is read through Annotations/480p/<sequence>/; archives as gt_format says."""
    output: str = ""
    """URL or path for the result files; empty: print the summary only."""
    preset: Literal["default", "official"] = "default"
    """'default' or 'official' (the official HMHI-Net evaluation rules).
    official: protocol hmhi_official, predictions read as grey levels, resized bilinearly to the ground truth,
    foreground > 128 of 255; the ground truth > 0; per-class means for YouTube-Objects. It sets protocol (which
    must then be left at its default or hmhi_official)."""
    protocol: Literal["davis2016", "all", "hmhi_official"] = "davis2016"
    """Frames scored: davis2016 (drops the first and last frame), all, or hmhi_official.
    all keeps every frame; hmhi_official averages every frame but takes recall/decay over the inner frames
    (docs/evaluation.md §6)."""
    threshold: float | None = None
    """Soft (greyscale) predictions: foreground where value/255 > threshold; null: any non-zero pixel.
    Under protocol hmhi_official, null means > 128 of 255."""
    bound_th: float = 0.008
    """Boundary tolerance: a fraction of the image diagonal (< 1) or pixels (>= 1)."""
    gt_format: str = "auto"
    """How --gt is laid out: auto, folders, or an ingest format (davis2016, davis2017, ytvos, fbms, ytobj, hmhi).
    An archive is scored on its annotated frames, each matched to the frame it annotates."""
    gt_splits: list[str] = field(default_factory=lambda: ["test"])
    """Archive ground truth only: the splits scored (test = DAVIS val, FBMS Testset, HMHI val, YouTube-Objects)."""
    davis_resolution: str = "480p"
    """Archive ground truth only: the DAVIS resolution folder."""
    sequences: list[str] = field(default_factory=list)
    """Only these sequences (default: every ground-truth sequence)."""
    sequence_list: str = ""
    """A text file (path/URL, or relative to --gt) with one sequence per line, e.g. ImageSets/2016/val.txt."""
    plot: bool = True
    """Write the per-sequence J&F bar plot."""
    frames: str = ""
    """URL or path of the frame images (<sequence>/<frame>.jpg) drawn under the masks in report.html; empty: the
    DAVIS root's JPEGImages/480p when --gt is a DAVIS layout, else the masks are drawn over black."""

    def __post_init__(self):
        require(bool(self.pred), "pred", self.pred, "is required (URL or path of the predicted masks)")
        require(bool(self.gt), "gt", self.gt, "is required (URL or path of the ground truth)")
        # Local paths absolute where the config is built (the driver): Ray tasks run in their own folders.
        # sequence_list may be relative to --gt: the pre-flight resolves it.
        for name in ("pred", "gt", "output", "frames"):
            setattr(self, name, absolute_url(getattr(self, name)))
        require(self.preset in EVALUATE_PRESETS, "preset", self.preset, f"must be one of {EVALUATE_PRESETS}")
        require(self.protocol in PROTOCOLS, "protocol", self.protocol, f"must be one of {PROTOCOLS}")
        require(
            self.threshold is None or 0.0 <= self.threshold < 1.0,
            "threshold",
            self.threshold,
            "must be in [0, 1) or null",
        )
        require(self.bound_th > 0, "bound_th", self.bound_th, "must be > 0")
        require(self.gt_format in GT_FORMATS, "gt_format", self.gt_format, f"must be one of {GT_FORMATS}")
        require(
            bool(self.gt_splits) and set(self.gt_splits) <= {"train", "val", "test"},
            "gt_splits",
            self.gt_splits,
            "must be a non-empty subset of train, val, test",
        )
        if self.preset == "official":
            # The protocol's default is davis2016; the official preset owns the frame rule.
            require(
                self.protocol in ("davis2016", "hmhi_official"),
                "protocol",
                self.protocol,
                "the official preset scores with hmhi_official; leave protocol unset",
            )
            require(
                self.threshold is None,
                "threshold",
                self.threshold,
                "the official preset binarises at > 128 of 255; leave threshold unset",
            )
            self.protocol = "hmhi_official"

    @property
    def official(self) -> bool:
        return self.preset == "official"

    @property
    def effective_threshold(self) -> float | None:
        if self.threshold is None and self.protocol == "hmhi_official":
            return HMHI_OFFICIAL_THRESHOLD
        return self.threshold

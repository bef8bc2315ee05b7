"""Typed configuration of the export job (``jobs/export.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import require
from pipeline.formats.exporter import EXPORT_FORMATS
from pipeline.storage import absolute_url

__all__ = ["ExportConfig"]


@dataclass
class ExportConfig:
    """jobs/export.py: segment's finished videos as a YouTube-VIS-style COCO file and a CVAT mask archive."""

    input: str = ""
    """URL or path of a segment output root (done/, rle/, masks/, overlays/)."""
    output: str = ""
    """URL or path of the folder the exports go to; empty: <input>/exports."""
    formats: list[str] = field(default_factory=lambda: ["coco", "cvat", "cvat_video"])
    """coco (instances_ytvis.json, YouTube-VIS layout), cvat (one CVAT "Segmentation mask 1.1" zip, images named
    <video>_<frame>) and/or cvat_video (cvat/<video>.zip, images named frame_<index:06d> as in a CVAT video task)."""
    videos: list[str] = field(default_factory=list)
    """Only these video ids (default: every finished video)."""
    category: str = "object"
    """Name of the one category/label the masks belong to."""
    frame_ext: str = ".jpg"
    """Extension of the frame images named in the COCO file's file_names (<video>/<frame><ext>)."""
    overlay_index: bool = True
    """Also write overlays/index.html in the input root when it has overlay videos."""

    def __post_init__(self):
        require(bool(self.input), "input", self.input, "is required (a segment output root)")
        self.input, self.output = absolute_url(self.input), absolute_url(self.output)
        require(
            bool(self.formats), "formats", self.formats, f"must name at least one of {list(EXPORT_FORMATS)}"
        )
        for i, fmt in enumerate(self.formats):
            require(fmt in EXPORT_FORMATS, f"formats[{i}]", fmt, f"must be one of {list(EXPORT_FORMATS)}")
        require(
            bool(self.category) and not any(c in self.category for c in ":\n,"),
            "category",
            self.category,
            "must be a non-empty name without ':', ',' or a newline (CVAT's labelmap syntax)",
        )
        require(
            self.frame_ext.startswith(".") and "/" not in self.frame_ext,
            "frame_ext",
            self.frame_ext,
            "must be a file extension such as .jpg",
        )

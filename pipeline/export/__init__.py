"""Exports of segment's outputs that other tools read: a YouTube-VIS-style COCO file (pycocotools), CVAT's
"Segmentation mask 1.1" archive, and the overlay videos' index page.

``export_outputs(storage, ["coco", "cvat"])`` is what the segment job calls at its end (``--export``) and what
``jobs/export.py`` runs on an existing output root.
"""

from pipeline.export.exporter import EXPORT_FILES, EXPORT_FORMATS, export_outputs
from pipeline.export.overlays import OVERLAY_INDEX, write_overlay_index

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "OVERLAY_INDEX", "export_outputs", "write_overlay_index"]

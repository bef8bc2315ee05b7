"""Exports of segment's outputs that other tools read: a YouTube-VIS-style COCO file (pycocotools), CVAT's
"Segmentation mask 1.1" archive, and the overlay videos' index page.

``run_exports(output, summary, ["coco", "cvat"])`` (``export_outputs`` and ``write_overlay_index``, recorded in the
job summary) is what the segment job runs at its end (``--export``) and what ``jobs/export.py`` runs on an existing
output root.
"""

from pipeline.export.exporter import EXPORT_FILES, EXPORT_FORMATS, export_outputs, run_exports
from pipeline.export.overlays import OVERLAY_INDEX, write_overlay_index

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "OVERLAY_INDEX", "export_outputs", "run_exports",
           "write_overlay_index"]

"""Interchange formats other tools read, written from segment's finished videos: a YouTube-VIS-style COCO file
(pycocotools), CVAT's "Segmentation mask 1.1" archives, and the overlay videos' index page.

``run_exports(output, summary, ["coco", "cvat"])`` (``export_outputs`` and ``write_overlay_index``, recorded in the
job summary) is what the segment job runs at its end (``--export``) and what ``jobs/export.py`` runs on an existing
output root. A shared library: the segment and export jobs both use it, neither imports the other.
"""

from pipeline.formats.exporter import EXPORT_FILES, EXPORT_FORMATS, export_outputs, run_exports
from pipeline.formats.overlays import write_overlay_index

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "export_outputs", "run_exports", "write_overlay_index"]

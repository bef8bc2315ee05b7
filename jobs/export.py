"""Export segment's finished videos as files other tools read.

    python jobs/export.py --input s3://bucket/run1/segment                 # every format, to <input>/exports
    python jobs/export.py --input runs/seg --output runs/seg-exports --formats coco

Reads every video with a done marker (``done/<video>.json``) and its ``rle/<video>.parquet``, and writes
``instances_ytvis.json`` (COCO-style video instances in the YouTube-VIS layout: per-frame RLE, areas, boxes; reads
with pycocotools), ``cvat_segmentation_mask_1.1.zip`` (CVAT's "Segmentation mask 1.1" import format, frames named
``<video>_<frame>``) and ``cvat/<video>.zip`` (the same per video, frames named ``frame_<index:06d>`` as in a CVAT
video task), plus ``overlays/index.html`` when the input has overlay videos, and ``summary.json``.
"""

from pipeline.cli import job_main, run_job_main
from pipeline.export.config import ExportConfig
from pipeline.export.job import FLAGS, run


def main(argv=None):
    return job_main(ExportConfig, run, argv, flags=FLAGS, description=__doc__, prog="jobs/export.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

"""Score predicted masks against ground truth with the DAVIS J&F measures.

    python jobs/evaluate.py --pred s3://bucket/run1/masks --gt /data/DAVIS --output s3://bucket/run1/eval
    python jobs/evaluate.py --preset official --pred runs/fbms --gt /data/FBMS   # the official HMHI-Net rules
    ray job submit --working-dir . -- python jobs/evaluate.py --pred ... --gt ... --protocol all

Predictions: ``<pred>/<sequence>/<frame>.png`` (or a segment output root); ground truth: a DAVIS root
(``Annotations/480p``), its ``Annotations`` folder, a root of sequence folders, or a dataset archive (FBMS-59,
YouTube-Objects, YouTube-VOS, official HMHI-Net layout) scored on its annotated frames. One Ray task per sequence.
Writes to ``--output``: ``per_sequence.csv``, ``per_frame.csv``, ``jf_per_sequence.png`` and ``summary.json``
(scores under ``figures``, also printed).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.job import FLAGS, run


def main(argv=None):
    return job_main(EvaluateConfig, run, argv, flags=FLAGS, description=__doc__, prog="jobs/evaluate.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

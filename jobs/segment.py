"""Segment every video of a corpus with HMHI-Net and write the masks back to storage.

    python jobs/segment.py --input s3://bucket/videos --output s3://bucket/run1 --checkpoint s3://bucket/hmhi.pth
    python jobs/segment.py --input DATA/DAVIS2SEG --format hmhi --checkpoint hmhi_davis.pth --output out \\
        --preset official --flow-model pictures          # the official protocol, with the archive's flow pictures
    ray job submit --working-dir . -- python jobs/segment.py --input ... --output ... --checkpoint ... \\
        --num-actors 4 --set runtime.gpus_per_actor=1 --set runtime.videos_in_flight=16

Outputs: ``masks/<video>/<frame>.png``, ``rle/<video>.parquet``, optional ``probs/`` and ``overlays/``, and
``done/<video>.json`` written last (see pipeline/segment/job.py). Score the masks with
``jobs/evaluate.py --pred <output>/masks --gt ...``.
"""

from pipeline.cli import job_main, run_job_main
from pipeline.segment.config import SegmentConfig
from pipeline.segment.job import FLAGS, run


def main(argv=None):
    return job_main(SegmentConfig, run, argv, flags=FLAGS, description=__doc__, prog="jobs/segment.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

"""Segment every video of a corpus with HMHI-Net and write the masks back to storage (``hmhi-uvos segment``).

    python jobs/segment.py --input s3://bucket/videos --output s3://bucket/run1 --checkpoint s3://bucket/model.pt
    ray job submit --working-dir . -- python jobs/segment.py --input ... --output ... --checkpoint ... \\
        --num-actors 4 --set runtime.gpus_per_actor=1 --set runtime.videos_in_flight=16

``--help`` lists every option; the job is ``pipeline.segment`` (``JOB`` in ``pipeline/segment/job.py``).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.segment.job import JOB


def main(argv=None):
    return job_main(JOB, argv, prog="jobs/segment.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

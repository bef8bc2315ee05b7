"""Score predicted masks against ground truth with the DAVIS J&F measures (``hmhi-uvos evaluate``).

    python jobs/evaluate.py --pred s3://bucket/run1/masks --gt /data/DAVIS --output s3://bucket/run1-eval
    ray job submit --working-dir . -- python jobs/evaluate.py --pred ... --gt ... --protocol all

``--help`` lists every option; the job is ``pipeline.evaluate`` (``JOB`` in ``pipeline/evaluate/job.py``).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.evaluate.job import JOB


def main(argv=None):
    return job_main(JOB, argv, prog="jobs/evaluate.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

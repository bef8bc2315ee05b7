"""Precompute optical flow for a video corpus and shard it into WebDataset tars (``hmhi-uvos precompute_flow``).

    python jobs/precompute_flow.py --input s3://bucket/DAVIS --output s3://bucket/shards/davis16 [options]
    ray job submit --working-dir . -- python jobs/precompute_flow.py --input ... --output ...

``--help`` lists every option; the job is ``pipeline.dataset`` (``JOB`` in ``pipeline/dataset/job.py``).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.dataset.job import JOB


def main(argv=None):
    return job_main(JOB, argv, prog="jobs/precompute_flow.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

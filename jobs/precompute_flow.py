"""Precompute optical flow for a video corpus and shard it into WebDataset tars (local or S3).

    python jobs/precompute_flow.py --input s3://bucket/DAVIS --output s3://bucket/shards/davis16 [options]
    ray job submit --working-dir . -- python jobs/precompute_flow.py --input ... --output ...

See ``pipeline/dataset/`` for the stages and ``pipeline/shards.py`` for the sample layout.
"""

from pipeline.cli import job_main, run_job_main
from pipeline.dataset.config import PrecomputeFlowConfig
from pipeline.dataset.job import FLAGS, run


def main(argv=None):
    return job_main(
        PrecomputeFlowConfig, run, argv, flags=FLAGS, description=__doc__, prog="jobs/precompute_flow.py"
    )


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

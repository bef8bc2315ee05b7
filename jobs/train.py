r"""Train HMHI-Net with Ray Train DDP on the data pipeline's WebDataset shards (``hmhi-uvos train``).

    python jobs/train.py --config configs/tiny_cpu.yaml --data s3://bucket/shards --storage s3://bucket/runs \
        --run-name tiny [--num-workers 2] [--use-gpu] [--set optim.max_steps=100 ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/pretrain_ytvos.yaml ...

``--help`` lists every option; the job is ``pipeline.train`` (``JOB`` in ``pipeline/train/job.py``).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.train.job import JOB


def main(argv=None):
    return job_main(JOB, argv, prog="jobs/train.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

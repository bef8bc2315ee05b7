r"""Train HMHI-Net with Ray Train DDP on the data pipeline's WebDataset shards.

    python jobs/train.py --config configs/tiny_cpu.yaml --data s3://bucket/shards --storage s3://bucket/runs \
        --run-name tiny [--num-workers 2] [--use-gpu] [--set optim.max_steps=100 ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/pretrain_ytvos.yaml ...

Resubmitting with the same ``--run-name`` (and ``--storage``) resumes from the latest checkpoint at the next step.
Inputs are checked before any worker starts (missing/empty shards, bad checksums, missing init checkpoint).
Exit status: 0 done, 2 bad input or config, 1 the training itself failed (its summary.json is still written).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.train.config import TrainConfig
from pipeline.train.job import FLAGS, run


def main(argv=None):
    return job_main(TrainConfig, run, argv, flags=FLAGS, description=__doc__, prog="jobs/train.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

r"""Train HMHI-Net with Ray Train DDP on the data pipeline's WebDataset shards.

    python jobs/train.py --config configs/tiny_cpu.yaml --data s3://bucket/shards --storage s3://bucket/runs \
        --run-name tiny [--num-workers 2] [--use-gpu] [--set optim.max_steps=100 ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/pretrain_ytvos.yaml ...

Resubmitting with the same ``--run-name`` (and ``--storage``) resumes from the latest checkpoint at the next step.
Inputs are checked before any worker starts (missing/empty shards, bad checksums, missing init checkpoint).
"""

from __future__ import annotations

import logging
import math

from pipeline.config import ConfigError, parse_job_args
from pipeline.jobs import JobSummary, init_ray, run_job_main, setup_logging
from pipeline.storage import StorageError, open_storage
from pipeline.train.config import TrainConfig
from pipeline.train.trainer import TrainInputError, run_training

log = logging.getLogger("jobs.train")

FLAGS = {
    "--data": "data.url",
    "--storage": "storage",
    "--run-name": "run_name",
    "--num-workers": "num_workers",
    "--use-gpu": ("use_gpu", True),
    "--init-checkpoint": "model.init_checkpoint",
    "--max-steps": "optim.max_steps",
}


def main(argv: list[str] | None = None) -> dict:
    """Run the training job; returns the job summary dict (also written to ``<run>/summary.json``)."""
    setup_logging()
    cfg = parse_job_args(TrainConfig, argv, description=__doc__, flags=FLAGS, prog="jobs/train.py")
    summary = JobSummary("train")
    try:
        init_ray()
        result = run_training(cfg)
    except (ConfigError, TrainInputError, StorageError) as e:
        log.error("%s", e)
        summary.rejected("run", cfg.run_name or "?", reason=str(e))
        summary.finish()
        raise SystemExit(2) from e
    if result.error is not None:
        summary.rejected("run", cfg.run_name, reason=f"training failed: {result.error}")
        summary.finish(storage=open_storage(cfg.storage).child(cfg.run_name), rel="summary.json")
        raise SystemExit(1)
    metrics = result.metrics or {}
    summary.done("run", cfg.run_name, steps=int(metrics.get("step", 0)),
                 resumed_from_step=int(metrics.get("start_step", 0)))
    for key in ("loss", "val_JF_mean", "best_val_JF_mean", "clips_per_s"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            summary.add(f"final_{key}", float(value))
    if result.checkpoint is not None:
        log.info("latest checkpoint: %s", result.checkpoint.path)
    return summary.finish(storage=open_storage(cfg.storage).child(cfg.run_name), rel="summary.json")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

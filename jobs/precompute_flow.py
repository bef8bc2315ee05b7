"""Precompute optical flow for a video corpus and shard it into WebDataset tars (local or S3).

    python jobs/precompute_flow.py --input s3://bucket/DAVIS --output s3://bucket/shards/davis16 [options]
    ray job submit --working-dir . -- python jobs/precompute_flow.py --input ... --output ...

See ``pipeline/flow/precompute.py`` for the stages and ``pipeline/shards.py`` for the sample layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.config import parse_job_args
from pipeline.flow.precompute import PrecomputeFlowConfig, run_precompute
from pipeline.jobs import init_ray, run_job_main, setup_logging

FLAGS = {
    "--input": "input",
    "--output": "output",
    "--format": "format",
    "--flow-model": "flow.engine",
    "--flow-preset": "flow.preset",
    "--flow-ckpt": "flow.checkpoint",
    "--clip-length": "shards.clip_length",
    "--jpeg-quality": "shards.jpeg_quality",
    "--shard-size-mb": "shards.shard_size_mb",
    "--val-fraction": "val_fraction",
    "--max-side": "flow.max_side",
    "--num-gpus-per-actor": "compute.num_gpus_per_actor",
    "--concurrency": "compute.concurrency",
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the command line, run the job on Ray (attached or local) and return the summary dict."""
    cfg = parse_job_args(PrecomputeFlowConfig, argv, description=__doc__, flags=FLAGS,
                         prog="precompute_flow.py")
    setup_logging()
    init_ray()
    return run_precompute(cfg)


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))

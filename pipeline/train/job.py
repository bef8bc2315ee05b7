"""The training job (``jobs/train.py``): checks the inputs, runs ``TorchTrainer`` on the worker loop, and
returns the job summary.

Everything that can be wrong with the inputs is checked here, before any worker starts: the shard index and its
training split (missing or empty), the checkpoint to initialise from. A run's state lives
only in ``--storage``: Ray Train checkpoints under ``<storage>/<run_name>/checkpoint_<step>/``, our CSV and
TensorBoard logs under ``<storage>/<run_name>/logs/``, the best model by validation J&F under ``best/``, and the
summary in ``<storage>/<run_name>/summary.json``.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from dataclasses import asdict
from typing import Any

from model import CheckpointError, ModelSettings, create_model, load_checkpoint
from pipeline.config import ConfigError, config_to_dict
from pipeline.errors import JobFailed, UserError
from pipeline.lease import holds_output_lease
from pipeline.run_layout import BEST_MODEL, SUMMARY
from pipeline.runtime import init_ray
from pipeline.shards import ShardChecksumError, ShardEntry, read_index
from pipeline.storage import StorageError, local_copy, open_storage
from pipeline.summary import JobSummary
from pipeline.train.config import TrainConfig, cadence_warnings
from pipeline.train.data import steps_per_epoch
from pipeline.train.loop import train_loop_per_worker
from pipeline.train.restarts import RestartRecorder, count_restarts

log = logging.getLogger(__name__)

__all__ = ["FLAGS", "TrainInputError", "resolve_shards", "check_inputs", "build_trainer", "run"]

FLAGS = {
    "--data": "data.url",
    "--storage": "storage",
    "--run-name": "run_name",
    "--num-workers": "num_workers",
    "--use-gpu": ("use_gpu", True),
    "--init-checkpoint": "model.init_checkpoint",
    "--max-steps": "optim.max_steps",
}
"""Command-line shortcuts of ``jobs/train.py`` (flag -> config field)."""

FINAL_METRICS = ("loss", "val_JF_mean", "best_val_JF_mean", "clips_per_s")
"""Metrics of the last report recorded in the summary as ``final_<name>``."""


class TrainInputError(UserError, ValueError):
    """The job's inputs are unusable (missing/empty shards, bad checksum, missing checkpoint); names the URL."""


def resolve_shards(data_url: str, split: str, verify: bool, need_masks: bool) -> tuple[list[ShardEntry], int]:
    """The committed shards of ``split`` in the shard set at ``data_url``, from its index.

    Returns ``(shards, samples left out)``: with ``need_masks``, samples without any ground-truth mask are left out
    (the official sampler needs a mask for every sampled frame). With ``verify``, every shard's SHA-256 is checked
    against the index by the worker that first reads it (not here: no whole-corpus work before the run).
    """
    try:
        table = read_index(data_url)
    except (StorageError, FileNotFoundError, OSError) as e:
        raise TrainInputError(
            f"shard index of {data_url} cannot be read ({e}); run jobs/precompute_flow.py first"
        ) from e
    root = open_storage(data_url)
    columns = ["shard", "split", "offset", "bytes", "n_masks", "shard_sha256"]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TrainInputError(f"shard index of {data_url} lacks columns {missing}")
    rows = [r for r in table.select(columns).to_pylist() if r["split"] == split]
    by_shard: dict[str, list[dict]] = {}
    left_out = 0
    for row in rows:
        if need_masks and int(row["n_masks"]) == 0:
            left_out += 1
            continue
        by_shard.setdefault(row["shard"], []).append(row)
    entries = []
    for shard in sorted(by_shard):
        samples = sorted(by_shard[shard], key=lambda r: r["offset"])
        entries.append(
            ShardEntry(
                url=root.join(shard),
                offsets=[r["offset"] for r in samples],
                sizes=[r["bytes"] for r in samples],
                # verified by the worker that reads the shard first (pipeline.shards.read_samples)
                checksum=samples[0]["shard_sha256"] if verify else None,
            )
        )
    return entries, left_out


def check_inputs(cfg: TrainConfig) -> tuple[list[ShardEntry], list[ShardEntry]]:
    """Validate the job's inputs; returns (train shards, validation shards). Raises ``TrainInputError``."""
    for name in ("storage", "run_name"):
        if not getattr(cfg, name):
            raise ConfigError(name, getattr(cfg, name), "is required")
    if not cfg.data.url:
        raise ConfigError("data.url", cfg.data.url, "is required (--data URL)")
    train, left_out = resolve_shards(
        cfg.data.url, cfg.data.train_split, cfg.data.verify_checksums, need_masks=True
    )
    if left_out:
        log.warning(
            "%d '%s' samples have no ground-truth mask and are not used for training",
            left_out,
            cfg.data.train_split,
        )
    if not train:
        raise TrainInputError(
            f"no training samples: split '{cfg.data.train_split}' of {cfg.data.url} has no "
            f"shards with annotated samples"
        )
    if steps_per_epoch(train, cfg.num_workers, cfg.data.batch_size_per_worker) < 1:
        total = sum(s.num_samples for s in train)
        raise TrainInputError(
            f"{total} training samples in {cfg.data.url} cannot fill one step of {cfg.num_workers} workers x "
            f"{cfg.data.batch_size_per_worker} clips"
        )
    val: list[ShardEntry] = []
    if cfg.validation.every_steps > 0 and cfg.data.val_split:
        val, _ = resolve_shards(cfg.data.url, cfg.data.val_split, cfg.data.verify_checksums, need_masks=True)
        if not val:
            log.warning("no '%s' shards in %s: validation is skipped", cfg.data.val_split, cfg.data.url)
    recorded = check_init_checkpoint(cfg) if cfg.model.init_checkpoint else None
    cfg.model = cfg.model.resolved(recorded)  # the workers get concrete sizes; checkpoints record them
    return train, val


def check_init_checkpoint(cfg: TrainConfig) -> ModelSettings | None:
    """Fetch ``model.init_checkpoint`` and load it into the configured model on the driver (CPU), so a missing,
    corrupt or mismatched file fails here with its name rather than in every worker. Returns the model settings
    the file records (None for official and ImageNet files)."""
    url = cfg.model.init_checkpoint
    try:
        with local_copy(url, prefix="hmhi-init-") as path:
            net = create_model(cfg.model.name, **cfg.model.architecture())
            report = load_checkpoint(net, path, strict=cfg.model.init_strict)
    except (FileNotFoundError, StorageError) as e:  # StorageNotFoundError is both
        if isinstance(e, FileNotFoundError):
            raise TrainInputError(f"init checkpoint {url} does not exist (model.init_checkpoint)") from e
        raise TrainInputError(f"init checkpoint {url} cannot be used (model.init_checkpoint): {e}") from e
    except CheckpointError as e:
        raise TrainInputError(f"init checkpoint {url} cannot be used (model.init_checkpoint): {e}") from e
    log.info("init checkpoint %s: %s format, loads into %s", url, report.format, cfg.model.name)
    return report.settings


def build_loop_config(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry]) -> dict[str, Any]:
    """The ``train_loop_per_worker`` config: the job config plus the resolved shard lists."""
    return {
        "train": config_to_dict(cfg),
        "shards": [asdict(s) for s in train],
        "val_shards": [asdict(s) for s in val],
    }


def build_trainer(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry], callbacks=()):
    """A ``TorchTrainer`` writing to ``<storage>/<run_name>`` (gloo on CPU, NCCL on GPU); ``callbacks`` are Ray
    Train callbacks of the run (the job's :class:`~pipeline.train.restarts.RestartRecorder`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fs, root = open_storage(cfg.storage).pyarrow()
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=build_loop_config(cfg, train, val),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=root,  # no scheme: the filesystem object carries it (Ray rejects both together)
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
            callbacks=list(callbacks),
        ),
    )


def _checksum_failure(error: BaseException | None) -> str | None:
    """The message of the ShardChecksumError a worker raised, if that is what failed the run (Ray Train wraps
    worker errors: walk causes and ``worker_failures``; the text is the last resort)."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ShardChecksumError):  # Ray's RayTaskError(ShardChecksumError) is one too
            return str(e).strip().splitlines()[-1]
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    found = re.search(r"shard \S+: SHA-256 \S+ does not match the index \(\S+\)", str(error or ""))
    return found.group(0) if found else None


def _run_root(cfg: TrainConfig) -> str:
    """The run's own folder ``<storage>/<run_name>``: what the lease protects ("" until both are set)."""
    return open_storage(cfg.storage).child(cfg.run_name).url if cfg.storage and cfg.run_name else ""


# One driver per run folder (pipeline/lease.py). The lease is the driver's: Ray Train's worker-group restarts
# (FailureConfig) happen inside this one call and keep it; a resubmission after the run finished finds it released,
# and one after the driver was killed takes the dead holder's lease over (at once on its host, else after the TTL).
@holds_output_lease("train", output=_run_root)
def run(cfg: TrainConfig) -> dict[str, Any]:
    """Check the inputs, train, and return the job summary (also written to ``<storage>/<run_name>/summary.json``).

    Input problems raise a :class:`~pipeline.errors.UserError` before any worker starts. A run whose workers fail
    beyond ``max_failures`` restarts still writes its summary (the run rejected, with the error), then raises
    :class:`~pipeline.errors.JobFailed`.
    """
    from ray.train import TrainingFailedError

    train, val = check_inputs(cfg)
    summary = JobSummary("train", config=config_to_dict(cfg))
    for warning in cadence_warnings(cfg):
        log.warning("%s", warning)
    # With the dashboard, unlike the other jobs: Ray Train's placement-group cleaner asks the State API (served by
    # the dashboard) every second whether the training controller still lives, and without one it logs a warning
    # each time (hundreds per run). None: started when Ray's dashboard packages are installed.
    init_ray(include_dashboard=None)
    log.info(
        "training on %d shards (%d samples), validating on %d shards; run %s/%s",
        len(train),
        sum(s.num_samples for s in train),
        len(val),
        cfg.storage,
        cfg.run_name,
    )
    run_storage = open_storage(cfg.storage).child(cfg.run_name)
    summary.set("run", run_storage.url)
    submission = uuid.uuid4().hex[:12]  # names this job run's restart records in the run folder
    try:
        result = build_trainer(cfg, train, val, [RestartRecorder(run_storage, submission)]).fit()
        error = result.error
    except TrainingFailedError as e:  # Ray Train 2.x raises once the workers have used up max_failures
        result, error = None, e
    for cause, count in count_restarts(run_storage, submission).items():  # preemptions apart from failures
        summary.set(f"restarts_after_{cause}", count)
    bad = _checksum_failure(error)
    if bad is not None:  # a shard failed its checksum in the worker that read it first: the input is bad
        raise TrainInputError(bad) from error
    if error is not None:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = f"training failed: {lines[-1] if lines else type(error).__name__}"
        summary.rejected("run", cfg.run_name, reason=reason)
        d = summary.finish(storage=run_storage, rel="summary.json")
        raise JobFailed(
            f"training run {run_storage.url} {reason} (summary: {run_storage.join('summary.json')})",
            summary=d,
        ) from error
    metrics = result.metrics or {}
    summary.done("run", cfg.run_name)
    summary.set("steps", int(metrics.get("step", 0)))
    summary.set("resumed_from_step", int(metrics.get("start_step", 0)))
    for key in FINAL_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            summary.set(f"final_{key}", float(value))
    if result.checkpoint is not None:
        summary.set(
            "latest_checkpoint", run_storage.join(result.checkpoint.path.rstrip("/").rpartition("/")[2])
        )
    if run_storage.exists(BEST_MODEL):
        summary.set("best_model", run_storage.join(BEST_MODEL))
    return summary.finish(storage=run_storage, rel=SUMMARY)

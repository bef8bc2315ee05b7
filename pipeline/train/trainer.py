"""Driver side of the training job: checks the inputs, then runs ``TorchTrainer`` on the worker loop.

Everything that can be wrong with the inputs is checked here, before any worker starts: the shard index and its
training split (missing or empty), each shard's checksum, the checkpoint to initialise from. A run's state lives
only in ``--storage``: Ray Train checkpoints under ``<storage>/<run_name>/checkpoint_<step>/``, our CSV and
TensorBoard logs under ``<storage>/<run_name>/logs/``, the best model by validation J&F under ``best/``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from pipeline.config import ConfigError, config_to_dict
from pipeline.storage import StorageError, open_storage
from pipeline.train.config import TrainConfig
from pipeline.train.data import ShardEntry, steps_per_epoch

log = logging.getLogger(__name__)

__all__ = ["TrainInputError", "resolve_shards", "check_inputs", "build_trainer", "run_training"]


class TrainInputError(ValueError):
    """The job's inputs are unusable (missing/empty shards, bad checksum, missing checkpoint); names the URL."""


def resolve_shards(data_url: str, split: str, verify: bool) -> list[ShardEntry]:
    """The shards of ``split`` in the shard set at ``data_url`` (from its index), optionally checksum-verified."""
    from pipeline import shards as shard_io

    try:
        entries = shard_io.index_entries(data_url, split=split)
    except (StorageError, FileNotFoundError) as e:
        raise TrainInputError(f"shard index of {data_url} cannot be read: {e}") from e
    out = []
    for entry in entries:
        if verify:
            try:
                shard_io.verify_shard(entry.url, entry.checksum)
            except (ValueError, StorageError, FileNotFoundError) as e:
                raise TrainInputError(f"shard {entry.url} failed verification: {e}") from e
        out.append(ShardEntry(url=entry.url, num_samples=int(entry.num_samples), checksum=entry.checksum))
    return out


def check_inputs(cfg: TrainConfig) -> tuple[list[ShardEntry], list[ShardEntry]]:
    """Validate the job's inputs; returns (train shards, validation shards). Raises ``TrainInputError``."""
    for name in ("storage", "run_name"):
        if not getattr(cfg, name):
            raise ConfigError(name, getattr(cfg, name), "is required")
    if not cfg.data.url:
        raise ConfigError("data.url", cfg.data.url, "is required (--data URL)")
    train = resolve_shards(cfg.data.url, cfg.data.train_split, cfg.data.verify_checksums)
    if not train or sum(s.num_samples for s in train) == 0:
        raise TrainInputError(f"no training samples: split '{cfg.data.train_split}' of {cfg.data.url} is empty")
    if steps_per_epoch(train, cfg.num_workers, cfg.data.batch_size_per_worker) < 1:
        total = sum(s.num_samples for s in train)
        raise TrainInputError(
            f"{total} training samples in {cfg.data.url} cannot fill one step of {cfg.num_workers} workers x "
            f"{cfg.data.batch_size_per_worker} clips"
        )
    val: list[ShardEntry] = []
    if cfg.validation.every_steps > 0 and cfg.data.val_split:
        val = resolve_shards(cfg.data.url, cfg.data.val_split, cfg.data.verify_checksums)
        if not val:
            log.warning("no '%s' shards in %s: validation is skipped", cfg.data.val_split, cfg.data.url)
    if cfg.model.init_checkpoint:
        parent, _, name = cfg.model.init_checkpoint.rstrip("/").rpartition("/")
        try:
            exists = open_storage(parent or ".").exists(name)
        except StorageError as e:
            raise TrainInputError(f"init checkpoint {cfg.model.init_checkpoint} cannot be read: {e}") from e
        if not exists:
            raise TrainInputError(f"init checkpoint {cfg.model.init_checkpoint} does not exist (model.init_checkpoint)")
    return train, val


def build_loop_config(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry]) -> dict[str, Any]:
    return {"train": config_to_dict(cfg), "shards": [asdict(s) for s in train], "val_shards": [asdict(s) for s in val]}


def build_trainer(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry]):
    """A ``TorchTrainer`` writing to ``<storage>/<run_name>`` (gloo on CPU, NCCL on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.train.loop import train_loop_per_worker

    fs, root = open_storage(cfg.storage).pyarrow()
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=build_loop_config(cfg, train, val),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=root,  # no scheme: the filesystem object carries it (Ray rejects both together)
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
        ),
    )


def run_training(cfg: TrainConfig):
    """Check inputs, train, and return the Ray ``Result``."""
    train, val = check_inputs(cfg)
    log.info("training on %d shards (%d samples), validating on %d shards; run %s/%s", len(train),
             sum(s.num_samples for s in train), len(val), cfg.storage, cfg.run_name)
    return build_trainer(cfg, train, val).fit()

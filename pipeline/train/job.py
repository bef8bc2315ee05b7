"""Driver side of the training job: checks the inputs, then runs ``TorchTrainer`` on the worker loop.

Everything that can be wrong with the inputs is checked here, before any worker starts: the shard index and its
training split (missing or empty), each shard's checksum, the checkpoint to initialise from. A run's state lives
only in ``--storage``: Ray Train checkpoints under ``<storage>/<run_name>/checkpoint_<step>/``, our CSV and
TensorBoard logs under ``<storage>/<run_name>/logs/``, the best model by validation J&F under ``best/``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from pipeline.config import ConfigError, config_to_dict
from pipeline.jobs import UserError
from pipeline.storage import StorageError, open_storage
from pipeline.train.config import TrainConfig
from pipeline.train.data import ShardEntry, steps_per_epoch

log = logging.getLogger(__name__)

__all__ = ["TrainInputError", "resolve_shards", "check_inputs", "build_trainer", "run_training"]


class TrainInputError(UserError, ValueError):
    """The job's inputs are unusable (missing/empty shards, bad checksum, missing checkpoint); names the URL."""


def resolve_shards(data_url: str, split: str, verify: bool, need_masks: bool) -> tuple[list[ShardEntry], int]:
    """The committed shards of ``split`` in the shard set at ``data_url``, from its index.

    Returns ``(shards, samples left out)``: with ``need_masks``, samples without any ground-truth mask are left out
    (the official sampler needs a mask for every sampled frame). With ``verify``, every shard's SHA-256 is checked
    against the index (in parallel threads).
    """
    from pipeline.shards import read_index, verify_shard

    try:
        table = read_index(data_url)
    except (StorageError, FileNotFoundError, OSError) as e:
        raise TrainInputError(f"shard index of {data_url} cannot be read ({e}); run jobs/precompute_flow.py first") from e
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
        entries.append(ShardEntry(url=root.join(shard), offsets=[r["offset"] for r in samples],
                                  sizes=[r["bytes"] for r in samples], checksum=samples[0]["shard_sha256"]))
    if verify and entries:
        def check(entry: ShardEntry) -> None:
            try:
                verify_shard(entry.url, entry.checksum)
            except (ValueError, StorageError, FileNotFoundError, OSError) as e:
                raise TrainInputError(f"shard {entry.url} failed verification: {e}") from e

        with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
            list(pool.map(check, entries))
    return entries, left_out


def check_inputs(cfg: TrainConfig) -> tuple[list[ShardEntry], list[ShardEntry]]:
    """Validate the job's inputs; returns (train shards, validation shards). Raises ``TrainInputError``."""
    for name in ("storage", "run_name"):
        if not getattr(cfg, name):
            raise ConfigError(name, getattr(cfg, name), "is required")
    if not cfg.data.url:
        raise ConfigError("data.url", cfg.data.url, "is required (--data URL)")
    train, left_out = resolve_shards(cfg.data.url, cfg.data.train_split, cfg.data.verify_checksums, need_masks=True)
    if left_out:
        log.warning("%d '%s' samples have no ground-truth mask and are not used for training", left_out,
                    cfg.data.train_split)
    if not train:
        raise TrainInputError(f"no training samples: split '{cfg.data.train_split}' of {cfg.data.url} has no "
                              f"shards with annotated samples")
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
    if cfg.model.init_checkpoint:
        check_init_checkpoint(cfg)
    return train, val


def check_init_checkpoint(cfg: TrainConfig) -> None:
    """Fetch ``model.init_checkpoint`` and load it into the configured model on the driver (CPU), so a missing,
    corrupt or mismatched file fails here with its name rather than in every worker."""
    from model import CheckpointError, create_model, load_checkpoint

    url = cfg.model.init_checkpoint
    parent, _, name = url.rstrip("/").rpartition("/")
    st = open_storage(parent or ".")
    try:
        if not st.exists(name):
            raise TrainInputError(f"init checkpoint {url} does not exist (model.init_checkpoint)")
        with tempfile.TemporaryDirectory(prefix="hmhi-init-") as tmp:
            local = os.path.join(st.root, name) if st.is_local else os.path.join(tmp, name)
            if not st.is_local:
                st.download_file(name, local)
            net = create_model(cfg.model.name, memory_size=cfg.model.memory_size,
                               decoder_width=cfg.model.decoder_width)
            report = load_checkpoint(net, local, strict=cfg.model.init_strict)
    except (StorageError, CheckpointError, FileNotFoundError) as e:
        raise TrainInputError(f"init checkpoint {url} cannot be used (model.init_checkpoint): {e}") from e
    log.info("init checkpoint %s: %s format, loads into %s", url, report.format, cfg.model.name)


def build_loop_config(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry]) -> dict[str, Any]:
    """The ``train_loop_per_worker`` config: the job config plus the resolved shard lists."""
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

"""The training job (``jobs/train.py``): checks the inputs, runs ``TorchTrainer`` on the worker loop, and
returns the job summary.

Everything that can be wrong with the inputs is checked by :func:`preflight`, on the driver before Ray starts: the
shard index and its training split (missing or empty), the checkpoint to initialise from (read, its recorded model
settings taken as defaults, and loaded into the model once), the run folder (writable, not the data). A run's state
lives
only in ``--storage``: Ray Train checkpoints under ``<storage>/<run_name>/checkpoint_<step>/``, our CSV and
TensorBoard logs under ``<storage>/<run_name>/logs/``, the best model by validation J&F under ``best/``, and the
summary in ``<storage>/<run_name>/summary.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from model.errors import CheckpointError
from pipeline.cli import JobSpec
from pipeline.config import ConfigError, config_to_dict
from pipeline.errors import JobFailed, UserError
from pipeline.lease import check_lease, fenced, holds_output_lease
from pipeline.preflight import check_disjoint, check_input, check_output
from pipeline.run_layout import BEST_MODEL, SUMMARY, checkpoint_step, count_restarts, latest_checkpoint
from pipeline.runtime import init_ray
from pipeline.shards import ShardChecksumError, ShardEntry, read_index, shard_set_provenance
from pipeline.storage import Storage, StorageError, local_copy, open_storage
from pipeline.summary import JobSummary
from pipeline.train.config import TrainConfig, cadence_warnings
from pipeline.train.epochs import steps_per_epoch

if TYPE_CHECKING:
    from model.checkpoint_file import CheckpointInfo

log = logging.getLogger(__name__)

__all__ = [
    "FLAGS",
    "JOB",
    "TrainInputError",
    "build_trainer",
    "check_inputs",
    "preflight",
    "resolve_shards",
    "run",
]

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
    check_input("data.url", cfg.data.url)
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
    return train, val


@contextlib.contextmanager
def _init_checkpoint_errors(url: str) -> Iterator[None]:
    """The errors of reading ``model.init_checkpoint`` as a :class:`TrainInputError` naming the field and URL."""
    try:
        yield
    except (FileNotFoundError, StorageError) as e:  # StorageNotFoundError is both
        if isinstance(e, FileNotFoundError):
            raise TrainInputError(f"init checkpoint {url} does not exist (model.init_checkpoint)") from e
        raise TrainInputError(f"init checkpoint {url} cannot be used (model.init_checkpoint): {e}") from e
    except CheckpointError as e:
        raise TrainInputError(f"init checkpoint {url} cannot be used (model.init_checkpoint): {e}") from e


def resolve_model(cfg: TrainConfig, info: CheckpointInfo | None) -> None:
    """Fill ``cfg.model``'s unset fields from the init checkpoint's record (``info``; None without one), else the
    official defaults, so that the workers get concrete settings and every checkpoint records them. A field set to
    another value than the record is honoured with a warning naming both; an architecture the weights cannot fit
    is a :class:`TrainInputError`."""
    recorded = info.settings if info is not None else None
    errors, warnings = cfg.model.conflicts(recorded)
    if errors:
        raise TrainInputError(
            f"init checkpoint {cfg.model.init_checkpoint} (model.init_checkpoint): {errors[0]}; "
            "leave it unset to use the checkpoint's"
        )
    for warning in warnings:
        log.warning("init checkpoint %s: %s", cfg.model.init_checkpoint, warning)
    cfg.model = cfg.model.resolved(recorded)


def check_init_checkpoint(cfg: TrainConfig) -> None:
    """Fetch ``model.init_checkpoint`` once, take its recorded model settings as defaults (:func:`resolve_model`)
    and load it into that model on the driver (CPU), so that a missing, corrupt or mismatched file fails here with
    its name rather than in every worker."""
    # The model imports torch: only a run with an init checkpoint pays for it, here.
    from model import create_model, describe_checkpoint, load_checkpoint

    url = cfg.model.init_checkpoint
    with _init_checkpoint_errors(url), local_copy(url, prefix="hmhi-init-") as path:
        resolve_model(cfg, describe_checkpoint(path))
        net = create_model(cfg.model.name, **cfg.model.architecture())
        report = load_checkpoint(net, path, strict=cfg.model.init_strict)
    log.info("init checkpoint %s: %s format, loads into %s", url, report.format, cfg.model.name)


def _settled(cfg: TrainConfig) -> bool:
    """True once the model settings have been resolved (by the pre-flight): nothing left for a record to fill."""
    m = cfg.model
    return None not in (m.name, m.options, m.memory_size, m.input_size, m.mean, m.std)


def preflight(cfg: TrainConfig) -> None:
    """Before Ray and before any write: the run folder (writable; not the data, not inside it, not around it), the
    init checkpoint (read once, its record taken as defaults, loaded into the model) and the shards (index,
    training split)."""
    for name in ("storage", "run_name"):
        if not getattr(cfg, name):
            raise ConfigError(name, getattr(cfg, name), "is required")
    run_root = _run_root(cfg)
    check_output("storage", run_root)
    check_disjoint(
        "storage/run_name",
        run_root,
        {"data.url": cfg.data.url, "model.init_checkpoint": cfg.model.init_checkpoint},
    )
    if cfg.model.init_checkpoint:
        check_init_checkpoint(cfg)
    else:
        resolve_model(cfg, None)
    check_inputs(cfg)


def training_provenance(cfg: TrainConfig) -> dict[str, Any]:
    """What every checkpoint of the run records about its training (``save_checkpoint(provenance=...)``): the
    shard set (URL, fingerprint, the flow its samples were made with) and the checkpoint it started from."""
    return {"training_data": shard_set_provenance(cfg.data.url), "init_checkpoint": cfg.model.init_checkpoint}


def build_loop_config(cfg: TrainConfig, train: list[ShardEntry], val: list[ShardEntry]) -> dict[str, Any]:
    """The ``train_loop_per_worker`` config: the job config, the resolved shard lists and the run folder, fenced by
    the driver's lease (it travels to the workers as its ``LeaseFence``)."""
    return {
        "train": config_to_dict(cfg),
        "shards": [asdict(s) for s in train],
        "val_shards": [asdict(s) for s in val],
        "provenance": training_provenance(cfg),
        "run": fenced(open_storage(cfg.storage).child(cfg.run_name)),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The entry :func:`build_trainer` hands to Ray Train, which ships it to every worker:
    :func:`pipeline.train.loop.train_loop_per_worker`."""
    # The loop imports torch and the model: the workers need them, the driver (and every command line) does not.
    from pipeline.train.loop import train_loop_per_worker as loop

    loop(config)


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


def _checksum_failure(error: BaseException | None) -> ShardChecksumError | None:
    """The ShardChecksumError a worker raised, if that is what failed the run.

    Ray Train raises a ``WorkerGroupError`` whose ``worker_failures`` map each failed rank to the exception its
    training function raised (already unwrapped from Ray's traceback wrapper); in-process errors chain it as a
    cause. Workers raise it unwrapped: the shard reader does not retry a checksum mismatch (pipeline.train.data).
    """
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ShardChecksumError):  # Ray's RayTaskError(ShardChecksumError) is one too
            return e
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return None


def finished_checkpoint(cfg: TrainConfig, run: Storage) -> str | None:
    """The run folder's latest checkpoint (relative to ``run``) when it has reached ``optim.max_steps``, else None.

    Such a resubmission has nothing to train: the driver answers it from the folder without starting Ray Train
    (which took a minute to start two workers that only loaded the checkpoint and stopped). The checkpoint must still
    load into the model asked for, as a resume would load it: one it does not fit is a :class:`TrainInputError`
    naming it.
    """
    latest = latest_checkpoint(run)
    if latest is None or checkpoint_step(latest) < cfg.optim.max_steps:
        return None
    from model import create_model, load_checkpoint  # torch: only where a checkpoint is read

    url = run.join(latest)
    with local_copy(url, prefix="hmhi-finished-") as path:
        try:
            load_checkpoint(create_model(cfg.model.name, **cfg.model.architecture()), path, strict=True)
        except CheckpointError as e:
            detail = str(e).replace(path, url)  # the local copy's name means nothing to the user
            raise TrainInputError(f"run {run.url} was trained with another model: {detail}") from e
    return latest


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
    train, val = check_inputs(cfg)
    if not _settled(cfg):  # run() called without the pre-flight: the record still fills the defaults
        info = None
        if cfg.model.init_checkpoint:
            from model import describe_checkpoint  # torch: only where a checkpoint is read

            with _init_checkpoint_errors(cfg.model.init_checkpoint):
                with local_copy(cfg.model.init_checkpoint, prefix="hmhi-init-") as path:
                    info = describe_checkpoint(path)
        resolve_model(cfg, info)
    summary = JobSummary("train", config=config_to_dict(cfg))
    for warning in cadence_warnings(cfg):
        log.warning("%s", warning)
    run_storage = fenced(open_storage(cfg.storage).child(cfg.run_name))  # the summary checks the lease too
    summary.set("run", run_storage.url)
    submission = uuid.uuid4().hex[:12]  # names this job run's restart records in the run folder
    finished = finished_checkpoint(cfg, run_storage)
    if finished is not None:  # a resubmission of a finished run: nothing to train, only a summary to write
        step = checkpoint_step(finished)
        log.info(
            "run %s already reached step %d (optim.max_steps=%d)", run_storage.url, step, cfg.optim.max_steps
        )
        metrics = {"step": step, "start_step": step}
        return _finish(summary, cfg, run_storage, submission, metrics, finished.partition("/")[0])
    from ray.train import TrainingFailedError

    from pipeline.train.restarts import RestartRecorder  # Ray Train: a second to import

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
    try:
        result = build_trainer(cfg, train, val, [RestartRecorder(run_storage, submission)]).fit()
        error = result.error
    except TrainingFailedError as e:  # Ray Train 2.x raises once the workers have used up max_failures
        result, error = None, e
    check_lease()  # a driver that lost the run folder (paused past the TTL) reports nothing as its own
    bad = _checksum_failure(error)
    if bad is not None:  # a shard failed its checksum in the worker that read it first: the input is bad
        raise TrainInputError(str(bad).strip().splitlines()[-1]) from error
    if error is not None:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = f"training failed: {lines[-1] if lines else type(error).__name__}"
        _count_restarts(summary, run_storage, submission)
        summary.rejected("run", cfg.run_name, reason=reason)
        d = summary.finish(storage=run_storage, rel="summary.json")
        raise JobFailed(
            f"training run {run_storage.url} {reason} (summary: {run_storage.join('summary.json')})",
            summary=d,
        ) from error
    latest = result.checkpoint.path.rstrip("/").rpartition("/")[2] if result.checkpoint is not None else None
    return _finish(summary, cfg, run_storage, submission, result.metrics or {}, latest)


def _count_restarts(summary: JobSummary, run: Storage, submission: str) -> None:
    for cause, count in count_restarts(run, submission).items():  # preemptions apart from failures
        summary.set(f"restarts_after_{cause}", count)


def _finish(
    summary: JobSummary,
    cfg: TrainConfig,
    run: Storage,
    submission: str,
    metrics: dict[str, Any],
    latest: str | None,
) -> dict[str, Any]:
    """The summary of a run that reached its last step: ``metrics`` of its last report, ``latest`` its newest
    checkpoint folder."""
    _count_restarts(summary, run, submission)
    summary.done("run", cfg.run_name)
    summary.set("steps", int(metrics.get("step", 0)))
    summary.set("resumed_from_step", int(metrics.get("start_step", 0)))
    for key in FINAL_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            summary.set(f"final_{key}", float(value))
    if latest is not None:
        summary.set("latest_checkpoint", run.join(latest))
    if run.exists(BEST_MODEL):
        summary.set("best_model", run.join(BEST_MODEL))
    return summary.finish(storage=run, rel=SUMMARY)


JOB = JobSpec(
    name="train",
    summary="HMHI-Net training with Ray Train DDP on the flow job's shards; resumable runs",
    config=TrainConfig,
    run=run,
    preflight=preflight,
    flags=FLAGS,
    description="""Train HMHI-Net with Ray Train DDP on the flow job's WebDataset shards.

Writes below <storage>/<run_name>: checkpoint_NNNNNNNN/checkpoint.pt (the resume points), best/model.pt (the best
model by validation J&F; best/meta.json names it), logs/metrics.csv, logs/tensorboard/ and summary.json. Every
checkpoint records its model settings (architecture, input size, normalisation), the training data's fingerprint
and flow settings: segment and --init-checkpoint take their defaults from it. Resubmitting the same --run-name
and --storage resumes from the latest checkpoint at the next step; a run that already reached --max-steps is
answered from its folder (its summary) without starting any worker.""",
    examples=(
        "{prog} --config configs/tiny_cpu.yaml --data runs/shards --storage runs/train --run-name tiny "
        "--num-workers 2 --max-steps 400",
        "{prog} --config configs/finetune_davis16.yaml --data s3://bucket/shards/davis16 --storage s3://bucket/runs "
        "--run-name davis16 --init-checkpoint s3://bucket/runs/pretrain/best/model.pt --use-gpu --num-workers 4",
    ),
)
"""The training job on the command line (``hmhi-uvos train``, ``jobs/train.py``)."""

"""The layout of a training run's folder ``<storage>/<run_name>``: the contract between ``train`` (which writes it)
and ``segment``, the demo and users (which read its models). Nothing else spells these paths::

    checkpoint_NNNNNNNN/checkpoint.pt   full training state at step N (the resume points; Ray Train keeps the last few)
    best/model-NNNNNNNN.pt              the best model by validation J&F, under a versioned, never rewritten name
    best/meta.json                      step, scores and the versioned file's name: written last, the commit point
    best/model.pt                       a copy of the best model under a fixed name
    logs/metrics.csv, logs/tensorboard/ training metrics
    restarts/<submission>-NNNN.json     one record per restart of the worker group, with its cause
    summary.json                        the job summary
"""

from __future__ import annotations

from typing import Any

from pipeline.storage import Storage

__all__ = [
    "BEST_DIR",
    "BEST_META",
    "BEST_MODEL",
    "CHECKPOINT_FILE",
    "CHECKPOINT_PREFIX",
    "METRICS_CSV",
    "RESTARTS_DIR",
    "SUMMARY",
    "TENSORBOARD_DIR",
    "RESTART_CAUSES",
    "checkpoint_dir",
    "checkpoint_file",
    "checkpoint_step",
    "commit_best_model",
    "count_restarts",
    "final_model",
    "latest_checkpoint",
    "restart_record",
]

CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_FILE = "checkpoint.pt"
"""File name of the training state inside a checkpoint folder (project checkpoint format)."""
BEST_DIR = "best"
BEST_META = f"{BEST_DIR}/meta.json"
BEST_MODEL = f"{BEST_DIR}/model.pt"
METRICS_CSV = "logs/metrics.csv"
TENSORBOARD_DIR = "logs/tensorboard"
RESTARTS_DIR = "restarts"
SUMMARY = "summary.json"


def checkpoint_dir(step: int) -> str:
    """The folder of the checkpoint at ``step`` (what Ray Train's ``checkpoint_dir_name`` is given)."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: str) -> int:
    """The step of a checkpoint folder or file (``checkpoint_00000008`` or ``checkpoint_00000008/checkpoint.pt``)."""
    folder = path.partition("/")[0]
    if not _is_checkpoint_folder(folder):
        raise ValueError(f"{path!r} is not a checkpoint folder ({CHECKPOINT_PREFIX}NNNNNNNN)")
    return int(folder[len(CHECKPOINT_PREFIX) :])


def _is_checkpoint_folder(name: str) -> bool:
    """``checkpoint_NNNNNNNN``: not Ray Train's checkpoint_manager_snapshot.json, nor a folder someone else named
    ``checkpoint_final``."""
    return name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit()


def restart_record(submission: str, n: int) -> str:
    """The record of the ``n``-th restart (from 1) of the worker group during the job run ``submission``."""
    return f"{RESTARTS_DIR}/{submission}-{n:04d}.json"


def checkpoint_file(step: int) -> str:
    return f"{checkpoint_dir(step)}/{CHECKPOINT_FILE}"


def _best_versioned(step: int) -> str:
    return f"model-{step:08d}.pt"


def commit_best_model(run: Storage, local_path: str, step: int, scores: dict[str, Any]) -> None:
    """Publish a new best model so that a reader never pairs one model with another's metadata.

    The model file carries its own step and scores (``save_checkpoint`` extra). It is uploaded first under a
    versioned, never rewritten name (``best/model-<step>.pt``); ``best/meta.json`` (step, scores, and ``model``, the
    versioned file's name) is written last and is the commit point: read it, then the file it names. The same file
    is then copied to ``best/model.pt``, the fixed name for tools that want "the best model" (it still says which
    step it is from inside), and the previous versioned file is deleted. Every write is atomic (pipeline.storage).
    """
    name = _best_versioned(step)
    previous = run.read_json(BEST_META).get("model") if run.exists(BEST_META) else None
    run.upload_file(local_path, f"{BEST_DIR}/{name}")
    run.write_json(BEST_META, {"step": step, "val": scores, "model": name})
    run.upload_file(local_path, BEST_MODEL)
    if previous and previous != name:
        run.delete(f"{BEST_DIR}/{previous}")


RESTART_CAUSES = ("preemption", "failure")
"""Why the worker group restarted (the ``cause`` of a restart record)."""


def count_restarts(run: Storage, submission: str) -> dict[str, int]:
    """Restarts of the job run ``submission`` recorded in ``run``, by cause (every cause present, 0 or more)."""
    counts = dict.fromkeys(RESTART_CAUSES, 0)
    if not run.isdir(RESTARTS_DIR):
        return counts
    for name in run.list(RESTARTS_DIR, suffix=".json"):
        if name.startswith(f"{submission}-"):
            cause = run.read_json(f"{RESTARTS_DIR}/{name}").get("cause", "failure")
            counts[cause if cause in counts else "failure"] += 1
    return counts


def latest_checkpoint(run: Storage) -> str | None:
    """The path (relative to ``run``) of the newest complete checkpoint file, or None."""
    names = sorted(n for n in run.list() if _is_checkpoint_folder(n))
    for name in reversed(names):
        if run.exists(f"{name}/{CHECKPOINT_FILE}"):
            return f"{name}/{CHECKPOINT_FILE}"
    return None


def final_model(run: Storage) -> tuple[str, dict[str, Any]] | None:
    """``(URL, best/meta.json)`` of the model to use from a run: ``best/model.pt`` (the best by validation J&F),
    else the latest checkpoint (a run without a validation split) with an empty meta; None when the run has
    neither."""
    if run.exists(BEST_MODEL):
        meta = run.read_json(BEST_META) if run.exists(BEST_META) else {}
        return run.join(BEST_MODEL), meta
    latest = latest_checkpoint(run)
    return (run.join(latest), {}) if latest else None

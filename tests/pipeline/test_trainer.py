"""Unit tests of ``pipeline.train.trainer`` without Ray: one process (world size 1, no process group), a tiny
HMHI-Net at 32x32, real shards written with the data pipeline's own writer, checkpoints through real files."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

import pipeline.train.trainer as trainer_module
from model import create_model
from model.checkpoint_file import read_checkpoint
from pipeline.shards import decode_clip
from pipeline.storage import open_storage
from pipeline.train.config import (
    CheckpointingConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
)
from pipeline.train.data import DataPosition, TrainStream
from pipeline.train.job import resolve_shards
from pipeline.train.metrics import CSV_COLUMNS, read_metrics_csv
from pipeline.train.trainer import LOSS_PARTS, StepPlan, Trainer, lr_lambda, state_digest
from tests.media import write_train_shards

CHECKPOINT_KEYS = {
    "format",
    "version",
    "model_name",
    "model_kwargs",
    "settings",
    "provenance",
    "project_version",
    "model",
    "optimizer",
    "scheduler",
    "step",
    "best_jf",
    "data_positions",
    "rng_states",
    "world_size",
    "config",
    "resume_info",
    "reason",
}


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    """The trainer builds the registered model with narrow readout layers (the config names only the model, its
    memory and decoder width): a few seconds per test instead of a minute on the shared 2 cores."""
    monkeypatch.setattr(
        trainer_module,
        "create_model",
        functools.partial(create_model, readout_ffn_dim=32, semantic_mask_hidden=16),
    )


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as a Ray Train worker with one CPU has: with two, on the shared 2-core machine under
    load, a step of the tiny model took 20-27 s instead of 0.3 s (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    write_train_shards(root)
    entries, _ = resolve_shards(root, "train", verify=True, need_masks=True)
    return entries


def _config(tmp_path, run_name="run", max_steps=2, **optim) -> TrainConfig:
    return TrainConfig(
        storage=str(tmp_path / "runs"),
        run_name=run_name,
        log_every_steps=1,
        model=ModelConfig(name="hmhi_mit_b0", memory_size=3, options={"decoder_width": 16}, input_size=32),
        data=DataConfig(clip_length=3, batch_size_per_worker=1, shuffle_buffer=3, prefetch_batches=1),
        optim=OptimConfig(lr=1e-3, max_steps=max_steps, seed=5, **optim),
        checkpoint=CheckpointingConfig(every_steps=1),
        validation=ValidationConfig(every_steps=0, max_samples=2),
    )


def test_one_step_changes_the_weights_and_returns_finite_loss_parts(shards, tmp_path):
    with Trainer(_config(tmp_path), shards, [], scratch=str(tmp_path)) as trainer:
        before = state_digest(trainer.module.state_dict())
        batch = trainer.next_batch()
        parts = trainer.train_step(batch)
        assert set(parts) == set(LOSS_PARTS)
        assert all(np.isfinite(v) for v in parts.values()) and parts["grad_norm"] > 0
        assert parts["loss"] == pytest.approx(
            parts["loss_focal"] + parts["loss_bce"] + parts["loss_dice"], rel=1e-5
        )
        assert state_digest(trainer.module.state_dict()) != before
        assert trainer.state.step == 1 and trainer.state.position == batch.position
        assert trainer.scheduler.last_epoch == 1 and all(
            s["step"] == 1 for s in trainer.optimizer.state.values()
        )


def test_a_resumed_trainer_continues_bit_identically_with_the_lr_schedule(shards, tmp_path):
    """Checkpoint after step 1, load the file into a fresh trainer: step 2 gives the same loss, weights, optimiser
    state and learning rate as an uninterrupted run (a warm-up then cosine schedule, so every step's LR differs)."""
    cfg = _config(tmp_path, max_steps=3, schedule="cosine", warmup_steps=1, min_lr_ratio=0.1)
    expected_lr = [cfg.optim.lr * lr_lambda(cfg.optim)(s) for s in (1, 2)]
    with Trainer(cfg, shards, [], scratch=str(tmp_path)) as straight:
        straight.train_step(straight.next_batch())
        assert straight.scheduler.get_last_lr()[0] == pytest.approx(expected_lr[0])
        loss_2 = straight.train_step(straight.next_batch())["loss"]
        weights_2 = state_digest(straight.module.state_dict())
        optimizer_2 = state_digest(straight.optimizer.state_dict())
        lr_2 = straight.scheduler.get_last_lr()[0]
    assert lr_2 == pytest.approx(expected_lr[1]) and lr_2 != pytest.approx(expected_lr[0])

    path = str(tmp_path / "checkpoint.pt")
    with Trainer(cfg, shards, [], scratch=str(tmp_path)) as first:
        first.train_step(first.next_batch())
        assert first.write_checkpoint(path)
    state = read_checkpoint(path)
    assert set(state) == CHECKPOINT_KEYS
    assert state["step"] == 1 and state["world_size"] == 1 and state["resume_info"] == {}
    assert state["reason"] == "cadence"  # not taken on a preemption notice
    assert (
        len(state["data_positions"]) == len(state["rng_states"]) == 1
        and state["scheduler"]["last_epoch"] == 1
    )

    torch.manual_seed(12345)  # whatever the process's RNG holds now, the checkpoint's states are restored
    with Trainer(cfg, shards, [], scratch=str(tmp_path), resume=state) as resumed:
        assert resumed.state.step == resumed.state.start_step == 1
        assert resumed.state.resume_info == {
            "from_step": 1,
            "optimizer_sha256": state_digest(state["optimizer"]),
        }
        assert resumed.train_step(resumed.next_batch())["loss"] == loss_2
        assert state_digest(resumed.module.state_dict()) == weights_2
        assert state_digest(resumed.optimizer.state_dict()) == optimizer_2
        assert resumed.scheduler.get_last_lr()[0] == lr_2


def test_the_optimiser_is_fused_and_resumes_a_checkpoint_of_an_unfused_one(shards, tmp_path):
    """AdamW runs fused (one kernel over all parameters); a checkpoint written by an unfused AdamW (this project
    before the change, or another tool) still resumes: its optimiser state loads and the next step moves it on."""
    cfg = _config(tmp_path, max_steps=3)
    path = str(tmp_path / "checkpoint.pt")
    with Trainer(cfg, shards, [], scratch=str(tmp_path)) as first:
        assert all(group["fused"] for group in first.optimizer.param_groups)
        first.train_step(first.next_batch())
        assert first.write_checkpoint(path)
        fused_state = first.optimizer.state_dict()
    state = read_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:  # as an unfused optimiser writes its groups
        group["fused"], group["foreach"] = None, None
    with Trainer(cfg, shards, [], scratch=str(tmp_path), resume=state) as resumed:
        before = {k: v["exp_avg"].clone() for k, v in resumed.optimizer.state_dict()["state"].items()}
        assert before.keys() == fused_state["state"].keys()
        resumed.train_step(resumed.next_batch())
        after = resumed.optimizer.state_dict()["state"]
        assert all(after[k]["step"] == 2 for k in before)
        assert any(not torch.equal(after[k]["exp_avg"], before[k]) for k in before)


def test_lr_schedule_warmup_constant_and_cosine():
    const = lr_lambda(OptimConfig(schedule="constant", max_steps=100))
    assert [const(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    cos = lr_lambda(OptimConfig(schedule="cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1))
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert all(np.diff([cos(s) for s in range(10, 111)]) <= 1e-12)


def test_another_world_size_resumes_at_the_next_epoch_with_a_new_seed(shards, tmp_path, caplog):
    """A checkpoint of 2 ranks loaded by 1: the old split cannot continue, so the stream starts the epoch after the
    furthest one, and the RNG is seeded from the step and rank."""
    cfg = _config(tmp_path, max_steps=10)
    path = str(tmp_path / "checkpoint.pt")
    with Trainer(cfg, shards, [], scratch=str(tmp_path)) as fresh:
        assert fresh.write_checkpoint(path)  # step 0
    state = read_checkpoint(path)
    state["step"] = 4
    state["data_positions"] = [
        {"epoch": 0, "draws": 3, "step_in_epoch": 3},
        {"epoch": 1, "draws": 1, "step_in_epoch": 1},
    ]
    state["rng_states"] = state["rng_states"] * 2
    with caplog.at_level(logging.WARNING, logger="pipeline.train.trainer"):
        with Trainer(cfg, shards, [], scratch=str(tmp_path), resume=state) as resumed:
            assert resumed.state.position == DataPosition(epoch=2)
            assert torch.initial_seed() == cfg.optim.seed + 1000 * 4
            keys = resumed.next_batch().keys
    assert "world size changed (2 -> 1): data resumes at epoch 2" in caplog.text
    expected = next(
        iter(
            TrainStream(
                shards,
                cfg.data,
                cfg.augment,
                32,
                cfg.optim.seed,
                1,
                0,
                decode_clip,
                start=DataPosition(epoch=2),
            )
        )
    )
    assert keys == expected.keys


def test_plan_follows_the_cadences_and_everything_is_due_at_the_last_step(shards, tmp_path):
    cfg = _config(tmp_path, max_steps=7)
    cfg.log_every_steps, cfg.validation.every_steps, cfg.checkpoint.every_steps = 2, 3, 4
    with Trainer(cfg, shards, shards, scratch=str(tmp_path)) as trainer:
        plans = {}
        for step in range(1, 8):
            trainer.state.step = step
            plans[step] = trainer.plan()
    assert plans[1] == StepPlan(log=False, validate=False, checkpoint=False) and not plans[1].anything
    assert plans[2] == StepPlan(log=True, validate=False, checkpoint=False) and not plans[2].report
    assert plans[3] == StepPlan(log=False, validate=True, checkpoint=False) and plans[3].report
    assert plans[4] == StepPlan(log=True, validate=False, checkpoint=True)
    assert plans[6] == StepPlan(log=True, validate=True, checkpoint=False)
    assert plans[7] == StepPlan(log=True, validate=True, checkpoint=True)  # the last step
    with Trainer(cfg, shards, [], scratch=str(tmp_path)) as no_val:
        no_val.state.step = 6
        assert not no_val.plan().validate  # nothing to validate on


def test_a_validation_step_publishes_the_best_model_and_writes_the_metrics_row(shards, tmp_path, caplog):
    cfg = _config(tmp_path, max_steps=1)
    cfg.validation.every_steps = 1
    with caplog.at_level(logging.INFO, logger="pipeline.train.trainer"):
        with Trainer(cfg, shards, shards, scratch=str(tmp_path)) as trainer:
            parts = trainer.train_step(trainer.next_batch())
            assert trainer.finished
            plan = trainer.plan()
            assert plan == StepPlan(log=True, validate=True, checkpoint=True)
            metrics = trainer.step_metrics(plan)
    assert (
        metrics["step"] == 1
        and metrics["start_step"] == 0
        and metrics["loss"] == pytest.approx(parts["loss"])
    )
    assert metrics["val_sequences"] == 2 and 0.0 <= metrics["val_JF_mean"] <= 1.0
    assert metrics["best_val_JF_mean"] == metrics["val_JF_mean"] == trainer.state.best_jf
    assert metrics["clips_per_s"] == metrics["clips_per_s_per_worker"] > 0 and metrics["lr"] == cfg.optim.lr
    run = open_storage(cfg.storage).child(cfg.run_name)
    meta = run.read_json("best/meta.json")
    assert meta["step"] == 1 and meta["model"] == "model-00000001.pt"
    best = read_checkpoint(str(tmp_path / "runs" / "run" / "best" / "model.pt"))
    assert best["step"] == 1 and best["val"]["JF_mean"] == metrics["val_JF_mean"]
    rows = read_metrics_csv(run)  # uploaded when the trainer closed
    assert [int(r["step"]) for r in rows] == [1] and tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["val_sequences"] == "2" and float(rows[0]["loss"]) == pytest.approx(
        parts["loss"], rel=1e-5
    )
    assert (
        "step 1/1  loss " in caplog.text and "val J&F" in caplog.text and "all done" in caplog.text
    )  # its ETA


def test_checkpoints_record_the_model_settings_they_were_trained_with(shards, tmp_path):
    """Every checkpoint the trainer writes records its ModelSettings (input size, normalisation, precision...) and
    what it was trained on, so segment and fine-tuning take their defaults from it."""
    from model import IMAGENET_MEAN, IMAGENET_STD, describe_checkpoint, project_version

    cfg = _config(tmp_path)
    path = str(tmp_path / "checkpoint.pt")
    provenance = {"training_data": {"fingerprint": "sha256:abc", "flow": {"engine": "dis", "preset": "fast"}}}
    with Trainer(cfg, shards, [], scratch=str(tmp_path), provenance=provenance) as trainer:
        trainer.train_step(trainer.next_batch())
        assert trainer.write_checkpoint(path)
    info = describe_checkpoint(path)
    settings = info.settings
    assert (settings.name, settings.input_size, settings.memory_size) == ("hmhi_mit_b0", 32, 3)
    assert settings.options["decoder_width"] == 16 and settings.precision == cfg.model.precision
    assert (settings.mean, settings.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert info.provenance == provenance and info.project_version == project_version()

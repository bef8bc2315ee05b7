"""Unit tests of the training building blocks: clip sampler, augmentation, loss, config errors, best-model commit,
metrics uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, load_config
from pipeline.train.augment import flip_clip, photometric_distort, prepare_clip
from pipeline.train.config import AugmentConfig, LossConfig, OptimConfig, TrainConfig, cadence_warnings
from pipeline.train.losses import clip_loss, dice_loss, focal_loss
from pipeline.train.sampler import sample_clip_indices


def test_sampler_picks_sorted_unique_eligible_frames_within_window():
    eligible = list(range(0, 60, 2))  # only even frames carry masks
    for seed in range(200):
        picks = sample_clip_indices(eligible, 5, 7, np.random.default_rng(seed))
        assert picks == sorted(picks) and len(set(picks)) == 5
        assert set(picks) <= set(eligible)
        # each pick is within 7 positions (+ removed ones) of another pick: the span of 5 picks is bounded
        pos = [eligible.index(p) for p in picks]
        assert max(pos) - min(pos) <= 4 * 7 + 4


def test_sampler_window_excludes_last_remaining_and_falls_back_to_all():
    # With 2 eligible frames the window after the first pick is empty when prev is the last one, so the
    # sampler falls back to every remaining frame; all picks are the two frames, padded with the last.
    seen = set()
    for seed in range(50):
        picks = sample_clip_indices([3, 9], 5, 7, np.random.default_rng(seed))
        assert picks[:2] == [3, 9] and picks[2:] == [9, 9, 9]
        seen.add(tuple(picks))
    assert seen == {(3, 9, 9, 9, 9)}


def test_sampler_short_video_repeats_last_frame_and_rejects_empty():
    assert sample_clip_indices([4], 5, 7, np.random.default_rng(0)) == [4] * 5
    with pytest.raises(ValueError, match="no eligible frames"):
        sample_clip_indices([], 5, 7, np.random.default_rng(0))


def test_sampler_first_pick_is_uniform_over_long_videos():
    counts = np.zeros(100)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        counts[sample_clip_indices(range(100), 5, 7, rng)] += 1
    # every frame gets picked (the first pick is uniform) and the ends are not starved
    assert counts.min() > 0 and counts[:10].sum() > 0.3 * counts[45:55].sum()


def _official_clip(num_video_frames: int, num_frames: int, rnd) -> list[int]:
    """The clip sampler of ZhengxyFlow/HMHI-Net ``utils/dataloader.py`` (``__getitem__``), transcribed as it is
    (fixed skip of 7, Python's ``random``), the oracle of the statistical test below."""
    selected_frames = []
    all_frames = list(range(num_video_frames))
    first_frame = rnd.sample(all_frames, 1)
    selected_frames.append(first_frame[0])
    all_frames.pop(first_frame[0])
    for i in range(num_frames - 1):
        if len(all_frames) < 1:
            break
        last_select = selected_frames[i]
        select_range = all_frames[max(0, last_select - 7) : min(last_select + 7, len(all_frames) - 1)]
        if len(select_range) < 1:
            select_range = all_frames
        selected_frame = rnd.sample(select_range, 1)
        selected_frames.append(selected_frame[0])
        before_num = 0
        for j in range(len(selected_frames)):
            if selected_frames[j] < selected_frame[0]:
                before_num += 1
        all_frames.pop(selected_frame[0] - before_num)
    selected_frames.sort()
    if len(selected_frames) != num_frames:
        for _ in range(num_frames - len(selected_frames)):
            selected_frames.append(selected_frames[-1])
    return selected_frames


def test_sampler_matches_the_official_loop_statistically():
    """Issue 12: the window is centred on the previous pick's frame index. On 36-frame videos the mean clip span
    is ~11.5 frames (official) and the per-frame pick frequencies agree; the position-centred sampler gave 10.7."""
    import random

    n, draws = 36, 20000
    rnd, rng = random.Random(0), np.random.default_rng(0)
    official = np.array([_official_clip(n, 5, rnd) for _ in range(draws)])
    ours = np.array([sample_clip_indices(range(n), 5, 7, rng) for _ in range(draws)])
    span_official = (official[:, -1] - official[:, 0]).mean()
    span_ours = (ours[:, -1] - ours[:, 0]).mean()
    assert 11.2 < span_official < 11.8  # the figure the issue quotes
    # spans have a standard deviation of ~4 frames: 20000 draws give a standard error of ~0.03 per mean
    assert abs(span_ours - span_official) < 0.15, (span_ours, span_official)
    # the gap between consecutive sorted picks and the frequency of every frame agree too
    np.testing.assert_allclose(np.diff(ours, axis=1).mean(0), np.diff(official, axis=1).mean(0), atol=0.1)
    freq_ours = np.bincount(ours.ravel(), minlength=n) / ours.size
    freq_official = np.bincount(official.ravel(), minlength=n) / official.size
    np.testing.assert_allclose(freq_ours, freq_official, atol=0.004)
    # sparse annotations: the sampler works on the annotated frames' order and returns their frame numbers
    eligible = list(range(0, 72, 2))
    sparse = np.array([sample_clip_indices(eligible, 5, 7, np.random.default_rng(s)) for s in range(2000)])
    assert set(sparse.ravel()) <= set(eligible)
    assert abs((sparse[:, -1] - sparse[:, 0]).mean() / 2 - span_official) < 0.5


def _clip(num=5, h=40, w=48):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (num, h, w, 3), dtype=np.uint8)
    flows = rng.normal(size=(num, h, w, 2)).astype(np.float32)
    masks = np.zeros((num, h, w), bool)
    masks[:, 5:20, 3:10] = True
    return frames, flows, masks


def test_flip_per_frame_flips_image_flow_mask_together_without_negating_flow():
    frames, flows, masks = _clip()
    cfg = AugmentConfig(flip_prob=0.5, flip_mode="per_frame")
    out_f, out_fl, out_m, flipped = flip_clip(frames, flows, masks, np.random.default_rng(3), cfg)
    assert flipped.any() and not flipped.all()  # seed 3 mixes flipped and unflipped frames
    for i in range(len(frames)):
        if flipped[i]:
            np.testing.assert_array_equal(out_f[i], frames[i, :, ::-1])
            np.testing.assert_array_equal(out_fl[i], flows[i, :, ::-1])  # colours not corrected (official)
            np.testing.assert_array_equal(out_m[i], masks[i, :, ::-1])
        else:
            np.testing.assert_array_equal(out_f[i], frames[i])


def test_flip_clip_mode_is_consistent_and_negates_dx():
    frames, flows, masks = _clip()
    cfg = AugmentConfig(flip_prob=1.0, flip_mode="clip")
    _, out_fl, out_m, flipped = flip_clip(frames, flows, masks, np.random.default_rng(0), cfg)
    assert flipped.all()
    np.testing.assert_array_equal(out_fl[..., 0], -flows[:, :, ::-1, 0])
    np.testing.assert_array_equal(out_fl[..., 1], flows[:, :, ::-1, 1])
    np.testing.assert_array_equal(out_m, masks[:, :, ::-1])


def test_photometric_changes_rgb_only_within_bounds():
    frames, _, _ = _clip()
    cfg = AugmentConfig()
    changed = 0
    for seed in range(20):
        out = photometric_distort(frames[0], np.random.default_rng(seed), cfg)
        assert out.dtype == np.uint8 and out.shape == frames[0].shape
        changed += int(not np.array_equal(out, frames[0]))
    assert changed >= 10


def test_prepare_clip_shapes_normalisation_and_mask_resize():
    frames, flows, masks = _clip()
    clip = prepare_clip(frames, flows, masks, 32, None, None)
    assert clip.frames.shape == (5, 3, 32, 32) and clip.flows.shape == (5, 3, 32, 32)
    assert clip.masks.shape == (5, 1, 32, 32)
    assert set(torch.unique(clip.masks).tolist()) == {0.0, 1.0}
    # ImageNet normalisation: a white pixel maps to (1 - mean) / std
    white = prepare_clip(
        np.full((1, 32, 32, 3), 255, np.uint8),
        np.zeros((1, 32, 32, 2), np.float32),
        np.zeros((1, 32, 32), bool),
        32,
        None,
        None,
    )
    np.testing.assert_allclose(
        white.frames[0, :, 0, 0].numpy(),
        (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        rtol=1e-5,
    )
    # zero flow renders white as well
    np.testing.assert_allclose(white.flows[0].numpy(), white.frames[0].numpy(), rtol=1e-5)


def test_focal_and_dice_match_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    pt = target * p + (1 - target) * (1 - p)
    expected_focal = (bce * (1 - pt) ** 2 * (0.25 * target + 0.75 * (1 - target))).mean()
    torch.testing.assert_close(focal_loss(logits, target), expected_focal)
    expected_dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    torch.testing.assert_close(dice_loss(logits, target), expected_dice)


def _focal_reference(logits, target, alpha, gamma):
    """The focal loss as this project wrote it by hand before torchvision's (the official formula)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = target * p + (1 - target) * (1 - p)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (bce * (1 - p_t).pow(gamma) * weight).mean()


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.0, 2.0), (1.0, 2.0), (0.6, 0.0), (0.25, 3.5)])
def test_focal_loss_is_unchanged_by_torchvision(alpha, gamma):
    """torchvision's sigmoid_focal_loss gives the hand-written loss: value and gradient, hard and soft targets,
    mean reduction, and the official alpha weighting of foreground and background (alpha 0 and 1 included)."""
    gen = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 1, 16, 16, generator=gen, dtype=torch.float64)).requires_grad_()
    for target in (
        (torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64) > 0.6).double(),
        torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64),  # soft targets (resized masks)
    ):
        ours = focal_loss(logits, target, alpha, gamma)
        (grad,) = torch.autograd.grad(ours, logits)
        expected = _focal_reference(logits, target, alpha, gamma)
        (expected_grad,) = torch.autograd.grad(expected, logits)
        assert ours.shape == ()  # one number: the mean over every pixel
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-15)


def test_clip_loss_sums_frames_with_official_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 1, 8, 8)
    target = (torch.rand(2, 5, 1, 8, 8) > 0.5).float()
    total, parts = clip_loss(logits, target, LossConfig())
    expected = sum(
        20 * focal_loss(logits[:, t], target[:, t])
        + 10 * F.binary_cross_entropy_with_logits(logits[:, t], target[:, t])
        + dice_loss(logits[:, t], target[:, t])
        for t in range(5)
    )
    torch.testing.assert_close(total, expected)
    assert parts["focal"] + parts["bce"] + parts["dice"] == pytest.approx(float(total), rel=1e-5)
    zero_dice, _ = clip_loss(logits, target, LossConfig(dice_weight=0.0))
    assert float(zero_dice) < float(total)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.input_size"):
        load_config(TrainConfig, None, ["model.input_size=100"])
    with pytest.raises(ConfigError, match="augment.flip_mode"):
        load_config(TrainConfig, None, ["augment.flip_mode=sometimes"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(TrainConfig, None, ["optim.lr=0"])
    with pytest.raises(ConfigError, match="'lr' = -1"):
        OptimConfig(lr=-1)


@pytest.mark.parametrize("name", ["pretrain_ytvos", "finetune_davis16", "tiny_cpu", "synthetic", "test"])
def test_shipped_configs_load(name):
    from tests.conftest import REPO_ROOT

    cfg = load_config(TrainConfig, str(REPO_ROOT / "configs" / f"{name}.yaml"))
    # the official 5, but for the tests' own config (configs/test.yaml says why)
    assert cfg.data.clip_length == (3 if name == "test" else 5)
    if name in ("pretrain_ytvos", "finetune_davis16"):
        assert cfg.model.input_size == 512 and cfg.optim.lr == pytest.approx(6e-5)
        assert cfg.optim.weight_decay == pytest.approx(5e-4)
    # every shipped config's own cadence fits its own run length (the test config's 8-step run included)
    assert cadence_warnings(cfg) == []


def test_cadence_warning_for_a_checkpoint_bound_run():
    from tests.conftest import REPO_ROOT

    configs = REPO_ROOT / "configs"
    # the test config's cadence on a long run: the case issue 17 met (200 checkpoints, 100 validations)
    long_test = load_config(TrainConfig, str(configs / "test.yaml"), ["optim.max_steps=800"])
    warnings = cadence_warnings(long_test)
    assert len(warnings) == 2
    assert "checkpoint.every_steps=4" in warnings[0] and "200 checkpoints" in warnings[0]
    assert "validation.every_steps=8" in warnings[1] and "100 validations" in warnings[1]
    # the laptop config at the length a new user tries, and at 8x its default: no warning
    for steps in (800, 3200):
        assert (
            cadence_warnings(
                load_config(TrainConfig, str(configs / "tiny_cpu.yaml"), [f"optim.max_steps={steps}"])
            )
            == []
        )
    # dense but few (a short run), or frequent but far apart (a long run): neither is checkpoint-bound
    assert (
        cadence_warnings(
            load_config(
                TrainConfig,
                None,
                ["optim.max_steps=80", "checkpoint.every_steps=4", "validation.every_steps=0"],
            )
        )
        == []
    )
    assert (
        cadence_warnings(
            load_config(
                TrainConfig,
                None,
                ["optim.max_steps=200000", "checkpoint.every_steps=500", "validation.every_steps=0"],
            )
        )
        == []
    )
    # validation disabled is never flagged; a dense validation cadence is
    only_val = cadence_warnings(
        load_config(TrainConfig, None, ["optim.max_steps=1000", "validation.every_steps=10"])
    )
    assert len(only_val) == 1 and only_val[0].startswith("validation.every_steps=10")


def test_best_model_commit_pointer_is_written_last_and_names_a_matching_file(tmp_path):
    from pipeline.run_layout import commit_best_model
    from pipeline.storage import open_storage

    run = open_storage(str(tmp_path / "run"))
    for step, jf in ((8, 0.5), (16, 0.7)):
        local = tmp_path / f"best-{step}.pt"
        torch.save({"step": step, "val": {"JF_mean": jf}}, local)
        commit_best_model(run, str(local), step, {"JF_mean": jf})
        meta = run.read_json("best/meta.json")
        assert meta == {"step": step, "val": {"JF_mean": jf}, "model": f"model-{step:08d}.pt"}
        # the file the pointer names, and the fixed name, hold the same model with the same step inside
        for rel in (f"best/{meta['model']}", "best/model.pt"):
            inside = torch.load(io.BytesIO(run.read_bytes(rel)), weights_only=True)
            assert inside["step"] == step
    assert sorted(run.list("best")) == [
        "meta.json",
        "model-00000016.pt",
        "model.pt",
    ]  # the old version is gone


def test_metrics_uploads_are_best_effort_and_retried(tmp_path, caplog):
    """Issue 14: a failed metrics upload logs a warning and is retried with later rows; training never sees it."""
    import logging
    import time

    from pipeline.retry import Backoff, RetryPolicy
    from pipeline.storage import Storage, StorageError
    from pipeline.train.metrics import MetricsWriter, read_metrics_csv

    class FlakyStorage(Storage):
        """Local storage whose first two CSV writes fail as a storage outage would."""

        failures_left = 2

        def write_text(self, rel, text):
            if FlakyStorage.failures_left > 0:
                FlakyStorage.failures_left -= 1
                raise StorageError(f"write {self.join(rel)}: 503 SlowDown")
            return super().write_text(rel, text)

        def child(self, rel):
            return FlakyStorage(self.join(rel))

    run = FlakyStorage(str(tmp_path / "run"))
    # Quick retries for the test: waits of at most 0.2 s.
    writer = MetricsWriter(run, resume_step=0, upload_retry=RetryPolicy(Backoff(first_s=0.05, max_s=0.2)))
    with caplog.at_level(logging.WARNING, logger="pipeline.train.metrics"):
        start = time.perf_counter()
        for step in range(1, 6):
            writer.write(step, {"step": step, "loss": 1.0 / step})  # never raises, never waits on storage
        assert time.perf_counter() - start < 1.0
        deadline = time.time() + 30
        while len(read_metrics_csv(Storage(run.url))) < 5 and time.time() < deadline:
            time.sleep(0.1)
        writer.close()
    assert [int(r["step"]) for r in read_metrics_csv(Storage(run.url))] == [1, 2, 3, 4, 5]
    assert writer.failed_uploads == 2
    assert sum("metrics upload to" in r.message and "503 SlowDown" in r.message for r in caplog.records) == 2


def test_hue_shift_draws_integers_from_minus_18_to_17_like_the_official_code():
    """numpy.random.randint(-18, 18) in the official PhotoMetricDistortion excludes +18 (issue 12)."""
    import cv2

    hues = np.arange(180, dtype=np.uint8)
    full = np.full(180, 255, np.uint8)
    # Every hue at full saturation and value: the HSV round trip is exact, so the shift is read back exactly.
    img = cv2.cvtColor(np.stack([hues, full, full], -1)[None], cv2.COLOR_HSV2BGR)
    cfg = AugmentConfig(brightness_delta=0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0))
    shifts = set()
    for seed in range(1500):  # seeded: each of the 36 shifts is drawn (p = 1/72 per seed)
        out = photometric_distort(img, np.random.default_rng(seed), cfg)
        delta = (cv2.cvtColor(out, cv2.COLOR_BGR2HSV)[0, :, 0].astype(int) - hues) % 180
        assert len(set(delta.tolist())) == 1  # one shift for the whole frame
        shifts.add((int(delta[0]) + 90) % 180 - 90)
    assert shifts == set(range(-18, 18))


def test_run_name_is_one_folder_below_the_storage(tmp_path, capsys):
    """'.' would put the run, and its lease, on the storage root itself; '../x' outside it."""
    from jobs.train import main
    from pipeline.cli import run_job_main

    for bad in (".", "..", "../x", "a/b", "x\n"):
        with pytest.raises(ConfigError, match="'run_name'.*one folder name below storage"):
            TrainConfig(run_name=bad)
    assert TrainConfig(run_name="run-1").run_name == "run-1"
    status = run_job_main(main, ["--storage", str(tmp_path), "--run-name", "../x", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: config field 'run_name'") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_restarts_are_told_apart_by_cause_as_ray_train_charges_them():
    """Ray Train's PreemptionError and a worker that died with its preempted node (its health check failing with
    a preempted actor error) are preemptions; anything else, a worker's own exception included, is a failure."""
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError
    from ray.train.v2.api.preemption import PreemptionInfo

    from pipeline.train.restarts import restart_cause

    notice = PreemptionError(PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n1": [0]}))
    died = WorkerHealthCheckFailedError("worker died", RayActorError(preempted=True))
    crashed = WorkerHealthCheckFailedError("worker died", RayActorError(preempted=False))
    assert restart_cause(notice) == "preemption"
    assert (
        restart_cause(WorkerGroupError("rank 0 gone", {0: died, 1: RuntimeError("peer gone")}))
        == "preemption"
    )
    assert restart_cause(WorkerGroupError("rank 0 gone", {0: crashed})) == "failure"
    assert restart_cause(WorkerGroupError("bug", {0: ValueError("bug")})) == "failure"
    assert restart_cause(None) == "failure"


def test_restart_records_are_counted_per_submission_and_cause(tmp_path):
    from pipeline.run_layout import count_restarts, restart_record
    from pipeline.storage import open_storage

    run = open_storage(str(tmp_path / "run"))
    assert count_restarts(run, "abc") == {"preemption": 0, "failure": 0}  # no restarts folder yet
    run.write_json(restart_record("abc", 1), {"cause": "preemption"})
    run.write_json(restart_record("abc", 2), {"cause": "failure"})
    run.write_json(restart_record("abc", 3), {"cause": "preemption"})
    run.write_json(restart_record("earlier", 1), {"cause": "failure"})  # another submission of the same run
    assert count_restarts(run, "abc") == {"preemption": 2, "failure": 1}
    assert count_restarts(run, "earlier") == {"preemption": 0, "failure": 1}


def test_checkpoint_folders_of_dead_workers_are_removed_and_live_ones_kept(tmp_path):
    """A worker that failed during an asynchronous upload leaves its local checkpoint folder; the next attempt
    removes it, never the folder of a live process (its upload may be in flight)."""
    import os
    import subprocess
    import sys

    from pipeline.train.loop import CHECKPOINT_FOLDER_PREFIX, remove_orphan_checkpoint_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid names no process now
    dead = tmp_path / f"{CHECKPOINT_FOLDER_PREFIX}{gone.pid}-x1"
    live = tmp_path / f"{CHECKPOINT_FOLDER_PREFIX}{os.getpid()}-x2"
    other = tmp_path / "hmhi-train-scratch"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(b"weights")
    assert remove_orphan_checkpoint_folders(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and (live / "checkpoint.pt").exists() and (other / "checkpoint.pt").exists()


def test_latest_checkpoint_is_the_highest_complete_step_and_ignores_other_checkpoint_names(tmp_path):
    from pipeline.run_layout import checkpoint_step, latest_checkpoint
    from pipeline.storage import open_storage

    run = open_storage(str(tmp_path / "run"))
    assert latest_checkpoint(run) is None
    run.write_bytes("checkpoint_00000004/checkpoint.pt", b"4")
    run.write_bytes("checkpoint_00000012/checkpoint.pt", b"12")
    run.write_bytes("checkpoint_00000016/other.txt", b"an upload that never finished")
    run.write_json("checkpoint_manager_snapshot.json", {})  # Ray Train's own file
    run.write_bytes("checkpoint_final/checkpoint.pt", b"someone else's")
    assert latest_checkpoint(run) == "checkpoint_00000012/checkpoint.pt"
    assert checkpoint_step(latest_checkpoint(run)) == 12 and checkpoint_step("checkpoint_00000004") == 4
    with pytest.raises(ValueError, match="checkpoint_final"):
        checkpoint_step("checkpoint_final/checkpoint.pt")


@pytest.mark.parametrize(
    ("upload", "reason", "mode"),
    [("async", "cadence", "ASYNC"), ("sync", "cadence", "SYNC"), ("async", "preemption", "SYNC")],
)
def test_a_checkpoint_report_uploads_as_configured_and_a_preemption_checkpoint_synchronously(
    monkeypatch, tmp_path, upload, reason, mode
):
    """What the loop asks of Ray Train for a checkpoint (tests/faults/test_train_slow_storage.py shows what the
    asynchronous upload does against a slow store): the configured mode, except a preemption's checkpoint, which
    must be stored before the node goes."""
    import types

    import ray.train

    from pipeline.train import loop
    from pipeline.train.trainer import StepPlan

    reports = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kwargs: reports.append((metrics, kwargs)))
    monkeypatch.setattr(
        ray.train.Checkpoint, "from_directory", staticmethod(lambda path: ("checkpoint", path))
    )
    monkeypatch.setattr(loop.tempfile, "mkdtemp", lambda prefix: str(tmp_path / prefix))
    written = []
    trainer = types.SimpleNamespace(
        rank=0,
        cfg=load_config(TrainConfig, None, [f"checkpoint.upload={upload}"]),
        state=types.SimpleNamespace(step=12),
        write_checkpoint=lambda path, reason: written.append((path, reason)) or True,
        check_lease=lambda: None,
    )
    loop._report(trainer, {"step": 12}, StepPlan(log=True, validate=False, checkpoint=True), reason)
    [(metrics, kwargs)] = reports
    assert metrics == {"step": 12} and written[0][1] == reason
    assert kwargs["checkpoint"][0] == "checkpoint" and kwargs["checkpoint_dir_name"] == "checkpoint_00000012"
    assert kwargs["checkpoint_upload_mode"] == getattr(ray.train.CheckpointUploadMode, mode)
    assert kwargs["delete_local_checkpoint_after_upload"] is True

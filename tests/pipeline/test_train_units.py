"""Unit tests of the training building blocks: clip sampler, augmentation, loss, LR schedule, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, load_config
from pipeline.train.augment import flip_clip, photometric_distort, prepare_clip
from pipeline.train.config import AugmentConfig, LossConfig, OptimConfig, TrainConfig
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
    white = prepare_clip(np.full((1, 32, 32, 3), 255, np.uint8), np.zeros((1, 32, 32, 2), np.float32),
                         np.zeros((1, 32, 32), bool), 32, None, None)
    np.testing.assert_allclose(white.frames[0, :, 0, 0].numpy(), (1 - np.array([0.485, 0.456, 0.406])) /
                               np.array([0.229, 0.224, 0.225]), rtol=1e-5)
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


def test_clip_loss_sums_frames_with_official_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 1, 8, 8)
    target = (torch.rand(2, 5, 1, 8, 8) > 0.5).float()
    total, parts = clip_loss(logits, target, LossConfig())
    expected = sum(20 * focal_loss(logits[:, t], target[:, t]) + 10 * F.binary_cross_entropy_with_logits(
        logits[:, t], target[:, t]) + dice_loss(logits[:, t], target[:, t]) for t in range(5))
    torch.testing.assert_close(total, expected)
    assert parts["focal"] + parts["bce"] + parts["dice"] == pytest.approx(float(total), rel=1e-5)
    zero_dice, _ = clip_loss(logits, target, LossConfig(dice_weight=0.0))
    assert float(zero_dice) < float(total)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.image_size"):
        load_config(TrainConfig, None, ["model.image_size=100"])
    with pytest.raises(ConfigError, match="augment.flip_mode"):
        load_config(TrainConfig, None, ["augment.flip_mode=sometimes"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(TrainConfig, None, ["optim.lr=0"])
    with pytest.raises(ConfigError, match="'lr' = -1"):
        OptimConfig(lr=-1)


@pytest.mark.parametrize("name", ["pretrain_ytvos", "finetune_davis16", "tiny_cpu"])
def test_shipped_configs_load(name):
    from tests.conftest import REPO_ROOT

    cfg = load_config(TrainConfig, str(REPO_ROOT / "configs" / f"{name}.yaml"))
    assert cfg.data.clip_length == 5
    if name != "tiny_cpu":
        assert cfg.model.image_size == 512 and cfg.optim.lr == pytest.approx(6e-5)
        assert cfg.optim.weight_decay == pytest.approx(5e-4)

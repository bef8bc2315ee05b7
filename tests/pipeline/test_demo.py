"""The demo driver's own pieces: J&F on paused/occluded frames from evaluate's per_frame.csv, the overlay GIF, the
config checks. (The stages it runs are the real jobs, tested in tests/jobs/.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError
from pipeline.demo import DemoConfig, _overlay_gif, slice_scores


def test_slice_scores_pool_paused_and_occluded_frames_without_first_and_last():
    rows = ["sequence,frame,J,F,prediction"]
    for seq, j_of in (("a", lambda t: t / 10), ("b", lambda t: 1.0), ("other", lambda t: 0.0)):
        rows += [f"{seq},{t:05d},{j_of(t)},{j_of(t) / 2},ok" for t in range(6)]
    metas = {"a": {"frames": 6, "paused_frames": [0, 2, 3], "occluded_frames": [4, 5]},
             "b": {"frames": 6, "paused_frames": [], "occluded_frames": [1]}}
    out = slice_scores("\n".join(rows) + "\n", metas)
    # 'other' has no meta: ignored. Frames 0 and 5 of each sequence are left out (DAVIS-2016).
    assert out["all"]["frames"] == 8
    assert out["paused"]["frames"] == 2 and out["paused"]["J"] == pytest.approx((0.2 + 0.3) / 2)
    assert out["occluded"]["frames"] == 2 and out["occluded"]["J"] == pytest.approx((0.4 + 1.0) / 2)
    assert out["occluded"]["JF"] == pytest.approx((0.7 + 0.35) / 2)
    kept = slice_scores("\n".join(rows) + "\n", metas, drop_first_last=False)
    assert kept["paused"]["frames"] == 3 and kept["all"]["frames"] == 12


def test_overlay_gif_has_one_frame_per_video_frame_and_marks_prediction_and_outline():
    frames = [np.full((32, 32, 3), 100 + 10 * i, np.uint8) for i in range(4)]  # distinct: GIF merges repeats
    preds = [np.zeros((32, 32), bool) for _ in range(4)]
    gts = [np.zeros((32, 32), bool) for _ in range(4)]
    preds[1][8:16, 8:16] = True
    gts[1][20:28, 20:28] = True
    gif = Image.open(io.BytesIO(_overlay_gif(frames, preds, gts, fps=5)))
    assert gif.n_frames == 4 and gif.size == (512, 256)  # frame | overlay, upscaled to 256 px high
    gif.seek(1)
    right = np.asarray(gif.convert("RGB"))[:, 256:].astype(int)
    red = right[12 * 8, 12 * 8]
    assert red[0] > red[1] + 50  # predicted pixels tinted red
    green = right[20 * 8, 24 * 8]
    assert green[1] > green[0] + 50  # ground-truth outline in green
    assert np.abs(np.asarray(gif.convert("RGB"))[:, :256].astype(int) - 110).max() <= 8  # left: the frame as is


@pytest.mark.parametrize("field, value", [("train_steps", 0), ("validate_every", -1), ("flow_preset", "slow"),
                                          ("storage", "")])
def test_demo_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        DemoConfig(**{field: value})


def test_demo_corpus_settings_are_the_synthetic_config():
    from pipeline.config import load_config
    from pipeline.synthetic import SyntheticConfig

    cfg = load_config(DemoConfig, None, ["corpus.videos=8", "corpus.clutter=0"])
    assert cfg.corpus == SyntheticConfig(videos=8, clutter=0)
    with pytest.raises(ConfigError, match="'corpus.videos'"):
        load_config(DemoConfig, None, ["corpus.videos=1"])
    with pytest.raises(ConfigError, match="'corpus.out'"):
        load_config(DemoConfig, None, ["corpus.out=/tmp/elsewhere"])

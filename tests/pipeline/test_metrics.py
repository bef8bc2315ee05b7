"""DAVIS J/F metrics against the worked values of docs/evaluation.md §8 and the official functions.

`segmetric` (esdft-segmetric) is an exact copy of the official davis2017-evaluation metric functions
and is used here as the oracle, frame by frame.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from segmetric.metrics import _seg2bmap as official_seg2bmap
from segmetric.metrics import db_eval_boundary as official_boundary
from segmetric.metrics import db_eval_iou as official_iou
from segmetric.utils import db_statistics as official_statistics

from pipeline.metrics import (
    aggregate_results,
    boundary_radius,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    evaluate_frames,
    evaluate_sequence,
    seg2bmap,
    sequence_statistics,
)

H, W = 480, 854
TOL = 1e-4  # the worked values are given to 4 decimals


def disc(cx: float, cy: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2


def box(rows: tuple[int, int], cols: tuple[int, int], h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


EMPTY = np.zeros((H, W), dtype=bool)
FULL = np.ones((H, W), dtype=bool)
GT_DISC = disc(427, 240, 100)


def shifted(s: int) -> np.ndarray:
    return disc(427 + s, 240, 100)


@pytest.mark.parametrize(
    "shape, radius",
    [((480, 854), 8), ((1080, 1920), 18), ((720, 1280), 12), ((512, 512), 6), ((144, 176), 2)],
)
def test_boundary_radius(shape, radius):
    assert boundary_radius(shape) == radius
    assert boundary_radius(shape, bound_th=3) == 3


def test_boundary_maps_on_6x6():
    square = box((2, 3), (2, 3), 6, 6)
    expected = box((1, 3), (1, 3), 6, 6)
    expected[2, 2] = False
    np.testing.assert_array_equal(seg2bmap(square), expected)
    corner = box((0, 2), (0, 2), 6, 6)
    assert sorted(zip(*np.nonzero(seg2bmap(corner)), strict=True)) == [(0, 2), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert not seg2bmap(np.ones((6, 6), bool)).any()
    assert not seg2bmap(np.zeros((6, 6), bool)).any()
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((9, 13)) > 0.6
        np.testing.assert_array_equal(seg2bmap(mask), official_seg2bmap(mask.copy()))


SHIFT_CASES = [
    (0, 1.0, 1.0),
    (1, 0.9873, 1.0),
    (2, 0.9749, 1.0),
    (4, 0.9505, 1.0),
    (6, 0.9267, 1.0),
    (8, 0.9034, 1.0),
    (9, 0.8920, 0.7836),
    (10, 0.8808, 0.6493),
    (12, 0.8586, 0.5025),
    (16, 0.8159, 0.3408),
    (20, 0.7750, 0.2562),
    (30, 0.6806, 0.1642),
    (50, 0.5213, 0.1070),
]


@pytest.mark.parametrize("shift, j, f", SHIFT_CASES)
def test_shifted_disc_worked_values(shift, j, f):
    pred = shifted(shift)
    assert db_eval_iou(GT_DISC, pred) == pytest.approx(j, abs=TOL)
    assert db_eval_boundary(GT_DISC, pred) == pytest.approx(f, abs=TOL)


@pytest.mark.parametrize("shift, j, f", [(18, 0.9033, 1.0), (19, 0.8982, 0.8592), (20, 0.8931, 0.7672)])
def test_full_hd_tolerance_is_18px(shift, j, f):
    gt = disc(960, 540, 225, 1080, 1920)
    pred = disc(960 + shift, 540, 225, 1080, 1920)
    assert db_eval_iou(gt, pred) == pytest.approx(j, abs=TOL)
    assert db_eval_boundary(gt, pred) == pytest.approx(f, abs=TOL)


BOX_GT = box((0, 199), (0, 299))
BOX_PRED = box((0, 204), (0, 299))
SINGLE_FRAME_CASES = {
    "empty/empty": (EMPTY, EMPTY, 1.0, 1.0),
    "empty/disc": (EMPTY, GT_DISC, 0.0, 0.0),
    "disc/empty": (GT_DISC, EMPTY, 0.0, 0.0),
    "empty/full": (EMPTY, FULL, 0.0, 1.0),  # a full frame has no boundary pixels
    "full/full": (FULL, FULL, 1.0, 1.0),
    "full/disc": (FULL, GT_DISC, 0.0766, 0.0),
    "border box": (BOX_GT, BOX_PRED, 0.9756, 1.0),
}


@pytest.mark.parametrize("name", list(SINGLE_FRAME_CASES))
def test_single_frame_worked_values_and_oracle(name):
    gt, pred, j, f = SINGLE_FRAME_CASES[name]
    assert db_eval_iou(gt, pred) == pytest.approx(j, abs=TOL)
    assert db_eval_boundary(gt, pred) == pytest.approx(f, abs=TOL)
    assert db_eval_iou(gt, pred) == pytest.approx(float(official_iou(gt, pred)), abs=1e-12)
    assert db_eval_boundary(gt, pred) == pytest.approx(float(official_boundary(gt, pred)), abs=1e-12)


def test_stacks_match_official_frame_by_frame():
    # Non-binary inputs too: any non-zero value is foreground in both implementations.
    rng = np.random.default_rng(1)
    gt = np.stack([disc(60 + 3 * i, 40, 25, 96, 160) for i in range(6)]).astype(np.uint8) * 255
    pred = np.stack(
        [disc(60 + 3 * i + s, 40 + s, 25 - s, 96, 160) for i, s in enumerate(rng.integers(0, 9, 6))]
    )
    pred[2] = False
    pred[3] = True
    pred = pred.astype(np.uint8) * 7
    ours_j, ours_f = db_eval_iou(gt, pred), db_eval_boundary(gt, pred)
    np.testing.assert_allclose(ours_j, official_iou(gt, pred), atol=1e-12)
    np.testing.assert_allclose(ours_f, official_boundary(gt, pred), atol=1e-12)
    j_frames, f_frames = evaluate_frames(list(gt), list(pred))
    np.testing.assert_allclose(j_frames, ours_j, atol=0)
    np.testing.assert_allclose(f_frames, ours_f, atol=0)


def test_random_blobs_match_official():
    rng = np.random.default_rng(2)
    for _ in range(6):
        h, w = rng.integers(20, 120, 2)
        gt = disc(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 40), h, w)
        pred = disc(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 40), h, w) | (
            rng.random((h, w)) > 0.97
        )
        assert db_eval_iou(gt, pred) == pytest.approx(float(official_iou(gt, pred)), abs=1e-12)
        assert db_eval_boundary(gt, pred) == pytest.approx(float(official_boundary(gt, pred)), abs=1e-12)
        assert db_eval_boundary(gt, pred, bound_th=2) == pytest.approx(
            float(official_boundary(gt, pred, bound_th=2)), abs=1e-12
        )


def test_statistics_worked_values():
    m, o, d = db_statistics(np.linspace(1, 0, 10))
    assert (m, o, d) == pytest.approx((0.5, 0.5, 0.7778), abs=TOL)
    m, o, d = db_statistics([1, np.nan, 0.4, 0.6])
    assert (m, o, d) == pytest.approx((0.6667, 0.5, 0.5), abs=TOL)
    assert db_statistics(np.linspace(1, 0, 255))[2] == pytest.approx(0.75, abs=TOL)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 10, 37, 255])
def test_statistics_match_official_below_256(n):
    values = np.random.default_rng(n).random(n)
    values[::7] = np.nan
    ours = db_statistics(values)
    official = official_statistics(values)
    np.testing.assert_allclose(ours, official, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("n", [256, 300, 600])
def test_decay_is_correct_where_official_uint8_overflows(n):
    values = np.linspace(1, 0, n)
    assert math.isnan(official_statistics(values)[2])  # the quirk we deliberately do not reproduce
    ids = np.round(np.linspace(1, n, 5) + 1e-10).astype(int) - 1
    expected = values[ids[0] : ids[1] + 1].mean() - values[ids[3] : ids[4] + 1].mean()
    assert db_statistics(values)[2] == pytest.approx(expected, abs=1e-12)
    assert db_statistics(values)[2] == pytest.approx(0.75, abs=1e-2)


def test_statistics_empty_and_all_nan():
    assert all(math.isnan(v) for v in db_statistics([]))
    m, o, d = db_statistics([np.nan, np.nan])
    assert math.isnan(m) and o == 0.0 and math.isnan(d)


# Sequences of docs/evaluation.md §8: (GT, prediction) per frame.
def _sequences() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return {
        "disc_shift": [(GT_DISC, shifted(s)) for s in (0, 2, 4, 6, 8, 10, 12, 16, 20, 30)],
        "perfect": [(disc(300 + 10 * i, 200, 80),) * 2 for i in range(6)],
        "disc_shrink": [(GT_DISC, disc(427, 240, r)) for r in (100, 96, 92, 88, 80, 70, 60)],
        "empty_cases": [
            (GT_DISC, GT_DISC),
            (EMPTY, EMPTY),
            (EMPTY, GT_DISC),
            (GT_DISC, EMPTY),
            (EMPTY, FULL),
            (GT_DISC, GT_DISC),
        ],
        "border": [(BOX_GT, BOX_PRED)] * 5,
    }


SEQUENCE_MEANS = {  # protocol -> sequence -> (n, J-M, F-M, J&F)
    "davis2016": {
        "disc_shift": (8, 0.8857, 0.7186, 0.8021),
        "perfect": (4, 1, 1, 1),
        "disc_shrink": (5, 0.7337, 0.3576, 0.5456),
        "empty_cases": (4, 0.25, 0.50, 0.375),
        "border": (3, 0.9756, 1, 0.9878),
    },
    "all": {
        "disc_shift": (10, 0.8766, 0.6913, 0.7840),
        "perfect": (6, 1, 1, 1),
        "disc_shrink": (7, 0.7182, 0.3983, 0.5582),
        "empty_cases": (6, 0.50, 0.6667, 0.5833),
        "border": (5, 0.9756, 1, 0.9878),
    },
}
DATASET_MEANS = {"davis2016": (0.7690, 0.7152, 0.7421), "all": (0.8141, 0.7512, 0.7827)}
RECALL_DECAY = {  # (J-O, J-D, F-O, F-D)
    "davis2016": {"disc_shift": (1.0, 0.1342, 0.75, 0.6335), "disc_shrink": (0.8, 0.3187, 0.4, 0.8939)},
    "all": {"disc_shift": (1.0, 0.2179, 0.7, 0.7463), "disc_shrink": (0.7143, 0.4977, 0.4286, 0.9293)},
}


@pytest.fixture(scope="module")
def frame_values() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-frame (J, F) of every worked sequence, checked against the official functions once."""
    values = {}
    for name, pairs in _sequences().items():
        j, f = evaluate_frames([g for g, _ in pairs], [p for _, p in pairs])
        gt = np.stack([g for g, _ in pairs])
        pred = np.stack([p for _, p in pairs])
        np.testing.assert_allclose(j, official_iou(gt, pred), atol=1e-12)
        np.testing.assert_allclose(f, official_boundary(gt, pred), atol=1e-12)
        values[name] = (j, f)
    return values


@pytest.mark.parametrize("protocol", ["davis2016", "all"])
def test_worked_sequences_and_dataset_means(frame_values, protocol):
    rows = {}
    for name, (n, jm, fm, jf) in SEQUENCE_MEANS[protocol].items():
        row = sequence_statistics(*frame_values[name], protocol=protocol)
        assert row["n_frames"] == n
        assert (row["J_mean"], row["F_mean"], row["JF_mean"]) == pytest.approx((jm, fm, jf), abs=TOL), name
        rows[name] = row
    for name, (jo, jd, fo, fd) in RECALL_DECAY[protocol].items():
        row = rows[name]
        assert (row["J_recall"], row["J_decay"], row["F_recall"], row["F_decay"]) == pytest.approx(
            (jo, jd, fo, fd), abs=TOL
        ), name
    summary = aggregate_results(rows)
    assert (summary["J_mean"], summary["F_mean"], summary["JF_mean"]) == pytest.approx(
        DATASET_MEANS[protocol], abs=TOL
    )
    assert summary["n_sequences"] == 5 and summary["excluded"] == []
    assert summary["n_frames"] == sum(v[0] for v in SEQUENCE_MEANS[protocol].values())


def test_protocol_frames_match_official_statistics(frame_values):
    # davis2016 = official db_statistics on [1:-1]; all = on every frame; hmhi_official mixes them.
    for j, f in frame_values.values():
        for protocol, mean_sl, stat_sl in [
            ("davis2016", slice(1, -1), slice(1, -1)),
            ("all", slice(None), slice(None)),
            ("hmhi_official", slice(None), slice(1, -1)),
        ]:
            row = sequence_statistics(j, f, protocol=protocol)
            assert row["J_mean"] == pytest.approx(official_statistics(j[mean_sl])[0], abs=1e-12)
            assert row["F_mean"] == pytest.approx(official_statistics(f[mean_sl])[0], abs=1e-12)
            assert (row["J_recall"], row["J_decay"]) == pytest.approx(
                official_statistics(j[stat_sl])[1:], abs=1e-12
            )
            assert (row["F_recall"], row["F_decay"]) == pytest.approx(
                official_statistics(f[stat_sl])[1:], abs=1e-12
            )


def test_empty_cases_inner_frames():
    pairs = _sequences()["empty_cases"]
    j, f = evaluate_frames([g for g, _ in pairs], [p for _, p in pairs])
    assert j[1:-1].tolist() == [1, 0, 0, 0] and f[1:-1].tolist() == [1, 0, 0, 1]


def test_evaluate_sequence_end_to_end_and_errors():
    gts = [disc(40 + i, 30, 12, 64, 96) for i in range(5)]
    preds = [disc(41 + i, 30, 12, 64, 96) for i in range(5)]
    row = evaluate_sequence(gts, preds, protocol="all")
    assert set(row) == {
        "J_mean",
        "J_recall",
        "J_decay",
        "F_mean",
        "F_recall",
        "F_decay",
        "JF_mean",
        "n_frames",
    }
    assert row["n_frames"] == 5 and 0.8 < row["J_mean"] < 1 and row["F_mean"] == 1.0
    short = evaluate_sequence(gts[:2], preds[:2], protocol="davis2016")
    assert short["n_frames"] == 0 and math.isnan(short["JF_mean"])
    summary = aggregate_results({"a": row, "b": short})
    assert summary["n_sequences"] == 1 and summary["excluded"] == ["b"]
    assert summary["JF_mean"] == pytest.approx(row["JF_mean"])
    with pytest.raises(ValueError, match="protocol"):
        evaluate_sequence(gts, preds, protocol="davis2017")
    with pytest.raises(ValueError, match="frame 1"):
        evaluate_sequence(gts, [preds[0], preds[1][:10]], protocol="all")
    with pytest.raises(ValueError):
        evaluate_sequence(gts, preds[:3], protocol="all")


def test_youtube_objects_class_of_a_sequence():
    """The archive's class folder when known, else the official rule: the name up to its first '0'
    (ZhengxyFlow/HMHI-Net utils/val_zvos.py); names outside the ten classes have none."""
    from pipeline.evaluate.job import sequence_class

    assert sequence_class("cat_0001", {"cat_0001": "cat"}) == "cat"
    assert sequence_class("aeroplane0001", {}) == "aeroplane"
    assert sequence_class("motorbike_0012", {}) == "motorbike"
    assert sequence_class("bear", {}) is None and sequence_class("car-roundabout", {}) is None


def test_evaluate_config_official_preset_and_validation():
    from pipeline.config import ConfigError
    from pipeline.evaluate.config import EvaluateConfig

    cfg = EvaluateConfig(pred="p", gt="g", preset="official")
    assert cfg.protocol == "hmhi_official" and cfg.official and cfg.effective_threshold == 128 / 255
    assert EvaluateConfig(pred="p", gt="g").protocol == "davis2016"  # the default stays
    for bad, field in (
        ({"preset": "official", "protocol": "all"}, "protocol"),
        ({"preset": "official", "threshold": 0.5}, "threshold"),
        ({"preset": "paper"}, "preset"),
        ({"gt_format": "kitti"}, "gt_format"),
        ({"gt_splits": ["valid"]}, "gt_splits"),
    ):
        with pytest.raises(ConfigError, match=f"'{field}'"):
            EvaluateConfig(pred="p", gt="g", **bad)

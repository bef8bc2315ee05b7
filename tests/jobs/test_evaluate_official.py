"""``jobs/evaluate.py --preset official`` against the official HMHI-Net evaluation, on FBMS-59 and YouTube-Objects
miniatures written as distributed (sparse ground truth with its own names and extensions).

The official rules are transcribed below on numpy from ZhengxyFlow/HMHI-Net ``utils/val_zvos.py``
(``_read_and_eval_file``, ``get_mean_recall_decay_for_video``, ``get_method_average_score_dict``, the per-class
means of ``eval_JF_from_data``) and ``utils/metrics/vos/{jaccard,f_boundary}.py``; only the file reading differs
(the official code reads its own converted archives, here the ground truth comes from the miniature's truth).
"""

from __future__ import annotations

import csv
import io
import math
import warnings

import cv2
import numpy as np
import pytest
from skimage.morphology import binary_dilation, disk

from jobs.evaluate import main
from pipeline.masks import encode_prob_png
from pipeline.storage import open_storage
from tests.archives import write_fbms, write_hmhi, write_ytobj

# The transcription keeps the official skimage call, deprecated in scikit-image 0.26.
pytestmark = pytest.mark.filterwarnings("ignore:`binary_dilation` is deprecated:FutureWarning")

# -- the official evaluation, transcribed ---------------------------------------------------------------------------


def official_iou(annotation: np.ndarray, segmentation: np.ndarray) -> float:
    annotation, segmentation = annotation.astype(np.bool_), segmentation.astype(np.bool_)
    if np.isclose(np.sum(annotation), 0) and np.isclose(np.sum(segmentation), 0):
        return 1
    return np.sum(annotation & segmentation) / np.sum(annotation | segmentation, dtype=np.float32)


def official_seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(np.bool_)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def official_boundary(foreground_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float = 0.008) -> float:
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary, gt_boundary = official_seg2bmap(foreground_mask), official_seg2bmap(gt_mask)
    fg_dil = binary_dilation(fg_boundary, disk(bound_pix))
    gt_dil = binary_dilation(gt_boundary, disk(bound_pix))
    gt_match, fg_match = gt_boundary * fg_dil, fg_boundary * gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def official_frame(gt_mask_u8: np.ndarray, pred_png: bytes) -> tuple[float, float]:
    frame_mask = gt_mask_u8
    h, w = frame_mask.shape
    frame_pred = cv2.imdecode(np.frombuffer(pred_png, np.uint8), 0)  # cv2.imread(path, 0)
    frame_pred = cv2.resize(frame_pred, (w, h), cv2.INTER_NEAREST)  # sic: the flag lands in `dst`
    binary_frame_mask = (frame_mask > 0).astype(np.float32)
    binary_frame_pred = (frame_pred > 128).astype(np.float32)
    return (
        official_iou(binary_frame_mask, binary_frame_pred),
        official_boundary(binary_frame_pred, binary_frame_mask),
    )


def official_mean_recall_decay(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = np.nanmean(per_frame_values)
        o = np.nanmean(per_frame_values[1:-1] > 0.5)
    per_frame_values = per_frame_values[1:-1]
    ids = (np.round(np.linspace(1, len(per_frame_values), 5) + 1e-10) - 1).astype(np.int32)
    d_bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        d = np.nanmean(d_bins[0]) - np.nanmean(d_bins[3])
    return m, o, d


# -- known predictions ------------------------------------------------------------------------------------------------


def soft_prediction(mask: np.ndarray, t: int, size: tuple[int, int] | None) -> bytes:
    """A model-like probability map (blurred, shifted, noisy), stretched and truncated the official way."""
    rng = np.random.default_rng(t)
    prob = cv2.GaussianBlur(np.roll(mask.astype(np.float32), t % 3 - 1, axis=1), (5, 5), 1.5)
    prob = np.clip(0.15 + 0.7 * prob + 0.1 * rng.standard_normal(mask.shape), 0, 1)
    if size is not None:
        prob = cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return encode_prob_png(prob, mode="official_minmax")


def write_predictions(pred, truth: dict, frame_stem, resize: set[str]) -> dict[str, dict[int, bytes]]:
    """Soft maps for *every* frame (as segment writes them) under <pred>/<video>/<frame stem>.png."""
    written = {}
    for video, (frames, masks, _) in truth.items():
        written[video] = {}
        for t in range(len(frames)):
            size = (2 * masks.shape[1] + 3, 2 * masks.shape[2] - 5) if video in resize else None
            data = soft_prediction(masks[t], t, size)
            pred.write_bytes(f"{video}/{frame_stem(video, t)}.png", data)
            written[video][t] = data
    return written


def expected_scores(truth: dict, written: dict) -> dict[str, dict[str, float]]:
    out = {}
    for video, (_, masks, annotated) in truth.items():
        scores = np.asarray(
            [official_frame(masks[t].astype(np.uint8) * 255, written[video][t]) for t in annotated]
        )
        (jm, jo, jd), (fm, fo, fd) = (official_mean_recall_decay(scores[:, i]) for i in range(2))
        out[video] = {
            "J_mean": jm,
            "J_recall": jo,
            "J_decay": jd,
            "F_mean": fm,
            "F_recall": fo,
            "F_decay": fd,
        }
    return out


def assert_rows_match(rows: list[dict], expected: dict[str, dict[str, float]]) -> None:
    assert sorted(r["sequence"] for r in rows) == sorted(expected)
    for row in rows:
        for key, value in expected[row["sequence"]].items():
            ours = float(row[key])
            if math.isnan(value):
                assert math.isnan(ours), (row["sequence"], key)
            else:
                assert ours == pytest.approx(float(value), abs=1e-6), (row["sequence"], key)


def fbms_frame_name(video: str, t: int) -> str:
    """The file stem of frame ``t`` in the FBMS-59 miniature (tests/archives.py: tennis is numbered from 0)."""
    return f"tennis{t:03d}" if video == "tennis" else f"{video}_{t + 1:02d}"


def test_official_preset_on_fbms59(tmp_path, ray_cluster):
    truth = {k: v for k, v in write_fbms(tmp_path / "FBMS").items() if k != "bear01"}  # Testset only
    out = open_storage(str(tmp_path / "seg"))
    written = write_predictions(out.child("probs"), truth, fbms_frame_name, resize={"dogs01"})
    out.write_bytes("masks/cars1/cars1_01.png", b"binary masks are not what the official protocol reads")
    summary = main(
        [
            "--preset",
            "official",
            "--pred",
            out.url,
            "--gt",
            str(tmp_path / "FBMS"),
            "--output",
            str(tmp_path / "eval"),
        ]
    )
    figures = summary["figures"]
    assert (figures["preset"], figures["protocol"], figures["gt_format"]) == (
        "official",
        "hmhi_official",
        "fbms",
    )
    assert figures["n_sequences"] == 3 and figures["n_frames"] == 8  # the annotated frames only
    assert figures["pred"].endswith("/probs")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "per_sequence.csv").read_text())))
    expected = expected_scores(truth, written)
    assert_rows_match(rows, expected)
    j = np.mean([e["J_mean"] for e in expected.values()])
    f = np.mean([e["F_mean"] for e in expected.values()])
    assert figures["J_mean"] == pytest.approx(j, abs=1e-9) and round(figures["J_mean"], 3) == round(j, 3)
    assert figures["F_mean"] == pytest.approx(f, abs=1e-9)
    frames = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "per_frame.csv").read_text())))
    assert [r["frame"] for r in frames if r["sequence"] == "cars1"] == ["cars1_01", "cars1_04", "cars1_07"]
    assert [r["frame"] for r in frames if r["sequence"] == "tennis"] == [
        "tennis001",
        "tennis004",
    ]  # by Def.dat
    # the official rule differs from the default one on these soft maps (> 128 after a bilinear resize)
    default = main(
        ["--pred", out.url + "/probs", "--gt", str(tmp_path / "FBMS"), "--protocol", "hmhi_official"]
    )
    assert default["figures"]["J_mean"] != pytest.approx(j, abs=1e-6)


def test_official_preset_on_youtube_objects(tmp_path, ray_cluster):
    # the per-class layout with every frame and sparse masks (the other layout reads the same: test_ingest.py)
    truth = write_ytobj(tmp_path / "YTO", "class")
    pred = open_storage(str(tmp_path / "probs"))
    written = write_predictions(pred, truth, lambda v, t: f"{t + 1:05d}", resize={"aeroplane_0002"})
    summary = main(
        [
            "--preset",
            "official",
            "--pred",
            pred.url,
            "--gt",
            str(tmp_path / "YTO"),
            "--output",
            str(tmp_path / "eval"),
        ]
    )
    figures = summary["figures"]
    assert figures["gt_format"] == "ytobj" and figures["n_frames"] == 8
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "per_sequence.csv").read_text())))
    expected = expected_scores(truth, written)
    assert_rows_match(
        rows, expected
    )  # cat_0001 has 2 annotated frames: recall and decay are NaN, as officially
    assert figures["J_mean"] == pytest.approx(np.mean([e["J_mean"] for e in expected.values()]), abs=1e-9)
    # per-class means, as eval_JF_from_data prints them (mean of the per-video J means of the class)
    per_class = figures["per_class"]
    assert sorted(per_class) == ["aeroplane", "cat"]
    aeroplane = np.mean([expected["aeroplane_0001"]["J_mean"], expected["aeroplane_0002"]["J_mean"]])
    assert per_class["aeroplane"]["J_mean"] == pytest.approx(aeroplane, abs=1e-9)
    assert per_class["cat"]["J_mean"] == pytest.approx(expected["cat_0001"]["J_mean"], abs=1e-9)
    assert figures["J_mean_over_classes"] == pytest.approx((aeroplane + expected["cat_0001"]["J_mean"]) / 2)


def test_official_preset_on_the_official_archive(tmp_path, ray_cluster):
    """The authors' own layout (frame|flow|mask/<split>/<video>/; the README's naming reads the same:
    test_ingest.py): its val split is scored, every mask frame, predictions named after the frames
    (<video>_<NNNNN>.png, as save_images names them)."""
    truth = write_hmhi(
        tmp_path / "DAVIS2SEG_byvideo",
        "code",
        videos={"train": {"bear": 3}, "val": {"blackswan": 4, "cows": 3}},
    )
    truth = {k: v for k, v in truth.items() if k != "bear"}
    pred = open_storage(str(tmp_path / "probs"))
    written = write_predictions(pred, truth, lambda v, t: f"{v}_{t:05d}", resize={"cows"})
    figures = main(
        [
            "--preset",
            "official",
            "--pred",
            pred.url,
            "--gt",
            str(tmp_path / "DAVIS2SEG_byvideo"),
            "--output",
            str(tmp_path / "eval"),
        ]
    )["figures"]
    assert figures["gt_format"] == "hmhi" and figures["n_sequences"] == 2 and figures["n_frames"] == 7
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "per_sequence.csv").read_text())))
    expected = expected_scores(truth, written)
    assert_rows_match(rows, expected)
    jf = np.mean([(e["J_mean"] + e["F_mean"]) / 2 for e in expected.values()])
    assert figures["JF_mean"] == pytest.approx(jf, abs=1e-9) and "per_class" not in figures

"""Scoring one sequence from storage (``pipeline.evaluate.dataset``), without Ray: what every Ray task of
``jobs/evaluate.py`` runs, called directly on real PNG files in a local folder.

The per-sequence J/F statistics are compared with the official davis2017-evaluation functions (``segmetric``, an
exact copy) over the frames each protocol keeps; missing and undecodable prediction frames, soft maps and their
threshold, predictions at another size and ground-truth roots of every layout are covered here. The job's own
wiring (Ray tasks, the result files, the summary, S3) is tests/jobs/test_evaluate.py.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from segmetric.metrics import db_eval_boundary as official_boundary
from segmetric.metrics import db_eval_iou as official_iou
from segmetric.utils import db_statistics as official_statistics

from pipeline.evaluate.config import HMHI_OFFICIAL_THRESHOLD, EvaluateConfig
from pipeline.evaluate.dataset import list_frames, read_ground_truth, resolve_gt_root, score_sequence
from pipeline.masks import encode_mask_png, encode_prob_png
from pipeline.storage import Storage, open_storage

H, W = 60, 100


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2


def grey_png(mask: np.ndarray) -> bytes:
    """A 0/255 greyscale PNG, as DAVIS ground truth is stored."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def make_corpus(root_url: str) -> dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]]:
    """DAVIS-2016 layout ground truth (``DAVIS/Annotations/480p``, 0/255 greyscale) and palette predictions
    (``pred``) of three sequences; dog's frame 2 has no prediction and its frame 3 is a truncated PNG.

    Returns {sequence: (ground truths, predictions)}, with None for the two dog frames that are scored as empty.
    """
    root = open_storage(root_url)
    sequences = {
        "bear": ([disc(30 + 4 * i, 30, 15) for i in range(6)], [disc(31 + 4 * i, 30, 15) for i in range(6)]),
        "cows": ([disc(50, 30, 10 + i) for i in range(5)], [disc(50, 30, 10 + i) for i in range(5)]),
        "dog": ([disc(40, 25 + i, 12) for i in range(5)], [disc(42, 25 + i, 12) for i in range(5)]),
    }
    for seq, (gts, preds) in sequences.items():
        for i, (gt, pred) in enumerate(zip(gts, preds, strict=True)):
            root.write_bytes(f"DAVIS/Annotations/480p/{seq}/{i:05d}.png", grey_png(gt))
            if seq == "dog" and i == 2:
                continue
            data = encode_mask_png(pred)
            root.write_bytes(f"pred/{seq}/{i:05d}.png", data[:50] if seq == "dog" and i == 3 else data)
    sequences["dog"][1][2] = None
    sequences["dog"][1][3] = None
    return sequences


def expected_row(gts, preds, protocol: str) -> dict:
    """The official functions' J/F statistics of a sequence (None predictions scored as empty masks)."""
    gt = np.stack(gts)
    pred = np.stack([np.zeros_like(g) if p is None else p for g, p in zip(gts, preds, strict=True)])
    j, f = official_iou(gt, pred), official_boundary(gt, pred)
    kept = slice(1, -1) if protocol == "davis2016" else slice(None)
    jm, jo, jd = official_statistics(j[kept])
    fm, fo, fd = official_statistics(f[kept])
    return {
        "J_mean": jm,
        "J_recall": jo,
        "J_decay": jd,
        "F_mean": fm,
        "F_recall": fo,
        "F_decay": fd,
        "JF_mean": (jm + fm) / 2,
    }


def _score(gt: Storage, pred: Storage, seq: str, protocol: str = "all", **kwargs):
    return score_sequence(
        seq, gt, list_frames(gt)[seq], pred, list_frames(pred).get(seq, {}), protocol, **kwargs
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    sequences = make_corpus(str(root))
    return open_storage(str(root)), sequences


@pytest.mark.parametrize("protocol", ["davis2016", "all"])
def test_sequences_match_the_official_functions(corpus, protocol):
    root, sequences = corpus
    truth = read_ground_truth(root.child("DAVIS"))
    assert truth.format == "folders" and truth.root.url == root.join("DAVIS/Annotations/480p")
    assert list(truth.frames) == ["bear", "cows", "dog"]
    pred = root.child("pred")
    for seq, (gts, preds) in sequences.items():
        result = _score(truth.root, pred, seq, protocol)
        assert result.error is None and result.resolution == (H, W) and result.resized == 0
        for key, value in expected_row(gts, preds, protocol).items():
            assert result.metrics[key] == pytest.approx(value, abs=1e-6), (seq, key)
        assert result.metrics["n_frames"] == (len(gts) - 2 if protocol == "davis2016" else len(gts))
        # Every frame with ground truth is listed with its J and F, whatever the protocol keeps.
        assert [stem for stem, _, _ in result.frames] == [f"{i:05d}" for i in range(len(gts))]


def test_missing_and_unreadable_frames_are_scored_empty_and_named(corpus):
    root, sequences = corpus
    result = _score(root.child("DAVIS/Annotations/480p"), root.child("pred"), "dog")
    assert result.missing == ["00002"] and result.unreadable == ["00003"]
    j = {stem: value for stem, value, _ in result.frames}
    assert j["00002"] == j["00003"] == 0.0 and j["00001"] > 0.5
    warnings = "\n".join(result.warnings)
    assert root.join("pred/dog/00003.png") in warnings  # the undecodable file, by its URL
    assert (
        "00002" in warnings and root.join("pred/dog") in warnings
    )  # the frame without a prediction, and where
    clean = _score(root.child("DAVIS/Annotations/480p"), root.child("pred"), "bear")
    assert clean.missing == clean.unreadable == clean.warnings == []


def test_unreadable_ground_truth_is_an_error_of_the_sequence(tmp_path):
    gt, pred = open_storage(str(tmp_path / "gt")), open_storage(str(tmp_path / "pred"))
    gt.write_bytes("seq/00000.png", b"not a png")
    pred.write_bytes("seq/00000.png", encode_mask_png(disc(50, 30, 15)))
    result = _score(gt, pred, "seq")
    assert result.error and gt.join("seq/00000.png") in result.error
    assert math.isnan(result.metrics["JF_mean"])


@pytest.fixture(scope="module")
def soft_maps(tmp_path_factory):
    """A root that directly holds a sequence (no Annotations folder): 5 frames of one disc; soft predictions of 0.7
    on the disc and 0.2 around it, except the first and last frames, 0.4 on the disc (below 0.5, not zero)."""
    root = tmp_path_factory.mktemp("soft")
    gt, pred = open_storage(str(root / "gt")), open_storage(str(root / "pred"))
    for i in range(5):
        inside = 0.4 if i in (0, 4) else 0.7
        gt.write_bytes(f"seq/{i:05d}.png", grey_png(disc(50, 30, 15)))
        pred.write_bytes(f"seq/{i:05d}.png", encode_prob_png(np.where(disc(50, 30, 15), inside, 0.2)))
    return gt, pred


def test_a_root_of_sequence_folders_is_read_as_it_is(soft_maps):
    gt, _ = soft_maps
    assert resolve_gt_root(gt).url == gt.url
    truth = read_ground_truth(gt)
    assert truth.format == "folders" and truth.frames == {
        "seq": {f"{i:05d}": f"seq/{i:05d}.png" for i in range(5)}
    }


def test_soft_maps_threshold_and_protocols(soft_maps):
    gt, pred = soft_maps
    # No threshold: any non-zero pixel is foreground, so the 0.2 background is too.
    nonzero = _score(gt, pred, "seq", "all")
    assert nonzero.metrics["J_mean"] == pytest.approx(disc(50, 30, 15).sum() / (H * W))
    # value/255 > 0.5: frames 0 and 4 are empty; davis2016 leaves them out, all does not.
    soft_all = _score(gt, pred, "seq", "all", threshold=0.5)
    soft_2016 = _score(gt, pred, "seq", "davis2016", threshold=0.5)
    assert soft_2016.metrics["J_mean"] == 1.0 and soft_2016.metrics["n_frames"] == 3
    assert soft_all.metrics["J_mean"] == pytest.approx(3 / 5) and soft_all.metrics["n_frames"] == 5


def test_hmhi_official_protocol_thresholds_at_128_and_means_every_frame(soft_maps):
    gt, pred = soft_maps
    cfg = EvaluateConfig(pred=pred.url, gt=gt.url, protocol="hmhi_official")
    assert not cfg.official and cfg.effective_threshold == HMHI_OFFICIAL_THRESHOLD == 128 / 255
    official = _score(gt, pred, "seq", "hmhi_official", threshold=cfg.effective_threshold)
    assert official.metrics["n_frames"] == 5 and official.metrics["J_mean"] == pytest.approx(3 / 5)


def test_predictions_at_another_size_are_resized_to_the_ground_truth(tmp_path):
    gt, pred = open_storage(str(tmp_path / "gt")), open_storage(str(tmp_path / "pred"))
    for i in range(4):
        gt.write_bytes(f"long/{i:05d}.png", grey_png(disc(50, 30, 15)))
        big = np.kron(disc(50, 30, 15), np.ones((2, 2), dtype=bool))  # predicted at twice the size
        pred.write_bytes(f"long/{i:05d}.png", encode_mask_png(big))
    result = _score(gt, pred, "long", "davis2016")
    assert result.resized == 4 and result.resolution == (H, W)
    assert result.metrics["J_mean"] == 1.0 and result.metrics["F_mean"] == 1.0
    assert any("4 prediction frames resized" in w and "nearest neighbour" in w for w in result.warnings)


def test_a_sequence_too_short_for_the_protocol_is_not_scored(tmp_path):
    gt, pred = open_storage(str(tmp_path / "gt")), open_storage(str(tmp_path / "pred"))
    for i in range(2):
        gt.write_bytes(f"short/{i:05d}.png", grey_png(disc(50, 30, 15)))
        pred.write_bytes(f"short/{i:05d}.png", encode_mask_png(disc(50, 30, 15)))
    result = _score(gt, pred, "short", "davis2016")
    assert result.error is None and result.metrics["n_frames"] == 0 and math.isnan(result.metrics["JF_mean"])
    assert len(result.frames) == 2 and any("too few" in w for w in result.warnings)
    assert _score(gt, pred, "short", "all").metrics["JF_mean"] == 1.0

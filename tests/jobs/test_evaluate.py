"""jobs/evaluate.py end to end on a real local Ray cluster, local folders and the moto S3 server."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from segmetric.metrics import db_eval_boundary as official_boundary
from segmetric.metrics import db_eval_iou as official_iou
from segmetric.utils import db_statistics as official_statistics

from jobs.evaluate import main
from pipeline.errors import UserError
from pipeline.evaluate.job import CSV_COLUMNS
from pipeline.masks import encode_mask_png, encode_prob_png
from pipeline.storage import open_storage

REPO_ROOT = Path(__file__).resolve().parents[2]
H, W = 60, 100


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2


def grey_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def make_corpus(root_url: str) -> dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]]:
    """DAVIS-2016 layout GT (0/255 greyscale) + palette predictions; returns {seq: (gts, preds)}."""
    root = open_storage(root_url)
    sequences = {
        "bear": ([disc(30 + 4 * i, 30, 15) for i in range(6)], [disc(31 + 4 * i, 30, 15) for i in range(6)]),
        "cows": ([disc(50, 30, 10 + i) for i in range(5)], [disc(50, 30, 10 + i) for i in range(5)]),
        # frame 2 missing, frame 3 corrupt: both scored as empty
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
    gt = np.stack(gts)
    pred = np.stack([np.zeros_like(g) if p is None else p for g, p in zip(gts, preds, strict=True)])
    j, f = official_iou(gt, pred), official_boundary(gt, pred)
    sl = slice(1, -1) if protocol == "davis2016" else slice(None)
    jm, jo, jd = official_statistics(j[sl])
    fm, fo, fd = official_statistics(f[sl])
    return {
        "J_mean": jm,
        "J_recall": jo,
        "J_decay": jd,
        "F_mean": fm,
        "F_recall": fo,
        "F_decay": fd,
        "JF_mean": (jm + fm) / 2,
    }


@pytest.mark.parametrize("protocol", ["davis2016", "all"])
def test_evaluate_matches_official_functions(storage_url, ray_cluster, protocol, caplog):
    corpus = make_corpus(storage_url)
    root = open_storage(storage_url)
    summary = main(
        [
            "--pred",
            root.join("pred"),
            "--gt",
            root.join("DAVIS"),
            "--output",
            root.join("eval"),
            "--protocol",
            protocol,
        ]
    )
    out = root.child("eval")
    rows = list(csv.DictReader(io.StringIO(out.read_text("per_sequence.csv"))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r["sequence"] for r in rows] == ["bear", "cows", "dog"]
    for row in rows:
        expected = expected_row(*corpus[row["sequence"]], protocol)
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), (row["sequence"], key)
    full = out.read_json("summary.json")
    assert full["job"] == "evaluate" and full["config"]["protocol"] == protocol and full["counts"]["sequence"]
    assert summary["figures"] == full["figures"]
    stored = full["figures"]  # the scores of the common job summary
    jf = np.mean([float(r["JF_mean"]) for r in rows])
    assert stored["JF_mean"] == pytest.approx(jf, abs=1e-9)
    assert stored["J_mean"] == pytest.approx(np.mean([float(r["J_mean"]) for r in rows]), abs=1e-9)
    assert stored["protocol"] == protocol and stored["threshold"] is None
    assert stored["gt_resolutions"] == [f"{W}x{H}"]
    assert stored["n_sequences"] == 3 and stored["n_frames"] == (16 - 6 if protocol == "davis2016" else 16)
    assert stored["missing_prediction_frames"] == {"dog": ["00002"]}
    assert stored["unreadable_prediction_frames"] == {"dog": ["00003"]}
    assert "00002" in caplog.text and "pred/dog/00003.png" in caplog.text  # warnings name the frames/files
    frames = list(csv.DictReader(io.StringIO(out.read_text("per_frame.csv"))))
    assert len(frames) == 16 and {f["prediction"] for f in frames if f["sequence"] == "dog"} == {
        "ok",
        "missing",
        "unreadable",
    }
    plot = Image.open(io.BytesIO(out.read_bytes("jf_per_sequence.png")))
    assert plot.format == "PNG" and plot.size[0] > 100


def test_protocols_differ_and_soft_threshold(tmp_path, ray_cluster):
    # A sequence whose first and last frames are bad: davis2016 ignores them, all does not.
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    gts = [disc(50, 30, 15)] * 5
    probs = [np.where(disc(50, 30, 15), 0.7, 0.2)] * 5
    probs[0] = probs[-1] = np.where(disc(50, 30, 15), 0.4, 0.2)  # below 0.5 but non-zero
    store_gt, store_pred = open_storage(str(gt_root)), open_storage(str(pred_root))
    for i, (gt, prob) in enumerate(zip(gts, probs, strict=True)):
        store_gt.write_bytes(f"seq/{i:05d}.png", grey_png(gt))  # a root that directly holds sequences
        store_pred.write_bytes(f"seq/{i:05d}.png", encode_prob_png(prob))
    common = ["--pred", str(pred_root), "--gt", str(gt_root)]
    # any non-zero: the 0.2 background is foreground everywhere
    nonzero = main([*common, "--protocol", "all"])["figures"]
    assert nonzero["J_mean"] == pytest.approx(disc(50, 30, 15).sum() / (H * W))
    soft_all = main([*common, "--protocol", "all", "--threshold", "0.5"])["figures"]
    soft_2016 = main([*common, "--protocol", "davis2016", "--threshold", "0.5"])["figures"]
    assert soft_2016["J_mean"] == 1.0 and soft_2016["n_frames"] == 3
    assert soft_all["J_mean"] == pytest.approx(3 / 5) and soft_all["n_frames"] == 5
    assert soft_all["threshold"] == 0.5
    # hmhi_official: > 128 of 255 by default; means over all frames
    official = main([*common, "--protocol", "hmhi_official"])["figures"]
    assert official["threshold"] == pytest.approx(128 / 255) and official["n_frames"] == 5
    assert official["J_mean"] == pytest.approx(3 / 5)


def test_sequence_subset_short_sequences_and_resize(tmp_path, ray_cluster):
    gt, pred = open_storage(str(tmp_path / "gt")), open_storage(str(tmp_path / "pred"))
    for i in range(4):
        gt.write_bytes(f"long/{i:05d}.png", grey_png(disc(50, 30, 15)))
        big = np.kron(disc(50, 30, 15), np.ones((2, 2), dtype=bool))  # predicted at twice the size
        pred.write_bytes(f"long/{i:05d}.png", encode_mask_png(big))
    for i in range(2):
        gt.write_bytes(f"short/{i:05d}.png", grey_png(disc(50, 30, 15)))
        pred.write_bytes(f"short/{i:05d}.png", encode_mask_png(disc(50, 30, 15)))
    gt.write_bytes("val.txt", b"long\nshort\nghost\n")
    summary = main(
        [
            "--pred",
            pred.url,
            "--gt",
            gt.url,
            "--output",
            str(tmp_path / "out"),
            "--set",
            "sequence_list=val.txt",
        ]
    )["figures"]
    assert summary["J_mean"] == 1.0 and summary["n_sequences"] == 1
    assert summary["excluded"] == ["short"]  # 2 frames: nothing left once first/last are dropped
    stored = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert stored["figures"]["excluded"] == ["short"] and stored["counts"]["sequence"]["rejected"] == 1
    assert "ghost" in json.dumps(stored["rejected"])
    rows = (tmp_path / "out" / "per_sequence.csv").read_text().splitlines()
    assert rows[2].startswith("short,nan")
    only = main(["--pred", pred.url, "--gt", gt.url, "--sequences", "long", "--protocol", "all"])["figures"]
    assert only["n_sequences"] == 1 and only["n_frames"] == 4


def test_cli_plain_python_attaches_to_cluster(tmp_path, ray_cluster):
    make_corpus(str(tmp_path))
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/evaluate.py",
            "--pred",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "DAVIS"),
            "--output",
            str(tmp_path / "eval"),
            "--protocol",
            "all",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads((tmp_path / "eval" / "summary.json").read_text())["figures"]  # also printed, once
    assert printed["protocol"] == "all" and 0 < printed["JF_mean"] < 1
    assert sum(line.split()[:1] == ["JF_mean"] for line in proc.stdout.splitlines()) == 1
    assert (tmp_path / "eval" / "per_sequence.csv").exists()
    bad = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--gt", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "pred" in bad.stderr
    # An empty ground truth is a user error naming the URL (run_job_main prints it in one line, exit status 2).
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=str(tmp_path / "empty")):
        main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "empty")])


def test_a_prediction_over_the_pixel_limit_is_unreadable_and_the_job_goes_on(tmp_path, ray_cluster):
    from tests.media import bomb_png

    gt, pred = open_storage(str(tmp_path / "gt")), open_storage(str(tmp_path / "pred"))
    for seq in ("calm", "bombed"):
        for i in range(4):
            gt.write_bytes(f"{seq}/{i:05d}.png", grey_png(disc(50, 30, 15)))
            pred.write_bytes(f"{seq}/{i:05d}.png", encode_mask_png(disc(50, 30, 15)))
    pred.write_bytes("bombed/00001.png", bomb_png())  # 49 kB, 20000x20000
    gt.write_bytes("calm/00002.png", bomb_png())  # ground truth is refused the same way
    summary = main(
        ["--pred", pred.url, "--gt", gt.url, "--output", str(tmp_path / "out"), "--protocol", "all"]
    )
    figures = summary["figures"]
    assert figures["unreadable_prediction_frames"] == {"bombed": ["00001"]}  # scored as empty
    assert figures["n_sequences"] == 1 and figures["n_frames"] == 4
    assert summary["counts"]["sequence"]["rejected"] == 1
    assert (
        "calm/00002.png" in summary["rejected"][0]["reason"] and "pixels" in summary["rejected"][0]["reason"]
    )
    assert (tmp_path / "out" / "summary.json").exists()

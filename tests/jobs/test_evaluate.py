"""jobs/evaluate.py as a job: its command line, one Ray task per sequence, the result files and the summary, on the
moto S3 server and the shared local Ray cluster.

The scoring itself (J/F statistics against the official functions, missing and unreadable frames, thresholds and
protocols, resizing, ground-truth layouts) is unit-tested without Ray in tests/pipeline/test_evaluate_scoring.py;
the J/F arithmetic in tests/pipeline/test_metrics.py. This file proves that the job puts those pieces together.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from jobs.evaluate import main
from pipeline.cli import run_job_main
from pipeline.errors import UserError
from pipeline.evaluate.job import CSV_COLUMNS
from pipeline.masks import encode_mask_png
from pipeline.storage import open_storage
from tests.pipeline.test_evaluate_scoring import H, W, disc, expected_row, grey_png, make_corpus


def test_the_job_scores_every_sequence_and_writes_its_results(s3_bucket, ray_cluster, caplog, capsys):
    corpus = make_corpus(s3_bucket)
    root = open_storage(s3_bucket)
    # A sequence too short for davis2016 (skipped), and a list that names one without ground truth (rejected).
    for i in range(2):
        root.write_bytes(f"DAVIS/Annotations/480p/short/{i:05d}.png", grey_png(disc(50, 30, 15)))
        root.write_bytes(f"pred/short/{i:05d}.png", encode_mask_png(disc(50, 30, 15)))
    root.write_text("DAVIS/val.txt", "# sequences\nbear\ncows\nshort\nghost\n")
    argv = ["--pred", root.join("pred"), "--gt", root.join("DAVIS"), "--output", root.join("eval")]
    assert run_job_main(main, [*argv, "--sequences", "dog", "--set", "sequence_list=val.txt"]) == 0

    out = root.child("eval")
    rows = list(csv.DictReader(io.StringIO(out.read_text("per_sequence.csv"))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r["sequence"] for r in rows] == ["bear", "cows", "dog", "short"]
    for row in rows[:3]:  # the Ray tasks' scores, as the official functions give them
        expected = expected_row(*corpus[row["sequence"]], "davis2016")
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), (row["sequence"], key)
    assert rows[3]["JF_mean"] == "nan"

    full = out.read_json("summary.json")
    assert full["job"] == "evaluate" and full["config"]["protocol"] == "davis2016"
    assert full["counts"]["sequence"] == {"done": 3, "skipped": 1, "rejected": 1}
    assert "ghost" in json.dumps(full["rejected"])
    figures = full["figures"]
    assert figures["JF_mean"] == pytest.approx(np.mean([float(r["JF_mean"]) for r in rows[:3]]), abs=1e-9)
    assert figures["J_mean"] == pytest.approx(np.mean([float(r["J_mean"]) for r in rows[:3]]), abs=1e-9)
    assert figures["protocol"] == "davis2016" and figures["threshold"] is None
    assert figures["gt_resolutions"] == [f"{W}x{H}"] and figures["excluded"] == ["short"]
    assert figures["n_sequences"] == 3 and figures["n_frames"] == 16 - 6
    assert figures["missing_prediction_frames"] == {"dog": ["00002"]}
    assert figures["unreadable_prediction_frames"] == {"dog": ["00003"]}
    assert (
        "00002" in caplog.text and root.join("pred/dog/00003.png") in caplog.text
    )  # the job logs the tasks' warnings
    # The scores are printed once, in the job summary.
    stdout = capsys.readouterr().out
    assert sum(line.split()[:1] == ["JF_mean"] for line in stdout.splitlines()) == 1, stdout

    frames = list(csv.DictReader(io.StringIO(out.read_text("per_frame.csv"))))
    assert len(frames) == 16 + 2
    assert [f["prediction"] for f in frames if f["sequence"] == "dog"] == [
        "ok",
        "ok",
        "missing",
        "unreadable",
        "ok",
    ]
    plot = Image.open(io.BytesIO(out.read_bytes("jf_per_sequence.png")))
    assert plot.format == "PNG" and plot.size[0] > 100
    assert figures["report"] == out.join("report.html") and "bear" in out.read_text("report.html")


def test_command_line_errors_name_the_field_or_the_url(tmp_path, capsys):
    """Found before any work starts (no Ray): one line, exit status 2."""
    assert run_job_main(main, ["--gt", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'pred'" in err and len(err.strip().splitlines()) == 1
    # An empty ground truth is a user error naming the URL.
    (tmp_path / "pred").mkdir()
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

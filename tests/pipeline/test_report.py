"""evaluate's report.html: written by the real evaluate job, rendered by a real headless Chromium, and checked on
the screenshot (the table's J&F colours, the plot, the prediction and ground truth tinted over the frames)."""

from __future__ import annotations

import colorsys
import io
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from jobs.evaluate import main as evaluate_main
from pipeline.evaluate.dataset import list_frames, score_sequence
from pipeline.evaluate.report import GT_RGB, PRED_RGB, jf_colour, write_report
from pipeline.masks import encode_mask_png
from pipeline.storage import open_storage

H, W = 60, 80
FRAME_RGB = np.array([30, 60, 200])


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (as root); otherwise a clear failure."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    if os.geteuid() != 0:
        pytest.fail("the report test needs Chromium: run `apt-get install -y chromium` as root (Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"installing Chromium failed: {' '.join(cmd)}: {done.stderr[-2000:]}")
    exe = shutil.which("chromium")
    if not exe:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH")
    return exe


def screenshot(chromium: str, page: str, out: str, size=(1280, 1600), wait_ms: int = 0) -> np.ndarray:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={out}.profile",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out}",
        "file://" + page,
    ]
    if wait_ms:  # let media load before the picture is taken
        cmd.insert(-1, f"--virtual-time-budget={wait_ms}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.exists(out), done.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def near(picture: np.ndarray, rgb, tolerance: int = 14) -> np.ndarray:
    return (np.abs(picture - np.asarray(rgb)) <= tolerance).all(axis=2)


def rect(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + height, left : left + width] = True
    return mask


def make_davis(root_url: str, with_frames: bool = True) -> None:
    """Two sequences of 5 frames: GT a box; 'good' predicted well but for frame 00002, 'poor' shifted everywhere."""
    root = open_storage(root_url)
    for seq in ("good", "poor"):
        for t in range(5):
            stem = f"{t:05d}"
            gt = rect(10, 10 + 4 * t, 40, 30)
            pred = rect(10, 14 + 4 * t, 40, 30) if seq == "good" and t != 2 else rect(10, 40, 40, 30)
            root.write_bytes(f"DAVIS/Annotations/480p/{seq}/{stem}.png", encode_mask_png(gt))
            root.write_bytes(f"pred/{seq}/{stem}.png", encode_mask_png(pred))
            if with_frames:
                buffer = io.BytesIO()
                Image.fromarray(np.broadcast_to(FRAME_RGB.astype(np.uint8), (H, W, 3)).copy()).save(
                    buffer, "JPEG", quality=95
                )
                root.write_bytes(f"DAVIS/JPEGImages/480p/{seq}/{stem}.jpg", buffer.getvalue())


def test_evaluate_writes_a_report_the_browser_shows(tmp_path, ray_cluster, chromium):
    make_davis(str(tmp_path))
    summary = evaluate_main(
        [
            "--pred",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "DAVIS"),
            "--output",
            str(tmp_path / "eval"),
        ]
    )
    page = tmp_path / "eval" / "report.html"
    assert summary["figures"]["report"] == str(page) and (tmp_path / "eval" / "per_sequence.csv").exists()
    text = page.read_text()
    assert 'src="http' not in text and 'src="/' not in text  # self-contained: every image a data URI
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', text)) == 6  # 3 worst frames x 2 sequences
    good = re.search(r'id="seq-good".*?</section>', text, re.S).group(0)
    assert "frame 00002" in good.split("<figure>")[1]  # the worst frame of 'good' comes first
    assert "drawn over black" not in text and "JPEGImages/480p" in text

    shot = screenshot(chromium, str(page), str(tmp_path / "shot.png"))
    # The table: each sequence's J&F cell in its colour.
    for seq in ("good", "poor"):
        hue = int(re.search(r"hsl\((\d+),", jf_colour(_seq_jf(tmp_path, seq))).group(1))
        expected = np.round(np.array(colorsys.hls_to_rgb(hue / 360, 0.72, 0.75)) * 255)
        assert near(shot, expected, 3).sum() > 200, f"no J&F cell coloured for {seq}"
    assert near(shot, (76, 114, 176), 3).sum() > 2000  # the plot's bars (#4c72b0)
    # The worst frames: prediction (red over the blue frame) left of ground truth (green over it), side by side.
    pred_px = near(shot, 0.5 * FRAME_RGB + 0.5 * np.array(PRED_RGB))
    gt_px = near(shot, 0.5 * FRAME_RGB + 0.5 * np.array(GT_RGB))
    frame_px = near(shot, FRAME_RGB)
    assert pred_px.sum() > 3000 and gt_px.sum() > 3000 and frame_px.sum() > 3000
    pred_rows, pred_cols = np.nonzero(pred_px)
    gt_rows, gt_cols = np.nonzero(gt_px)
    first = pred_rows.min()
    assert abs(gt_rows.min() - first) < 10  # the same row of pictures
    assert pred_cols[pred_rows < first + 40].min() < gt_cols[gt_rows < first + 40].min()


def _seq_jf(tmp_path, seq: str) -> float:
    import csv

    rows = csv.DictReader(io.StringIO((tmp_path / "eval" / "per_sequence.csv").read_text()))
    return next(float(r["JF_mean"]) for r in rows if r["sequence"] == seq)


def test_report_without_frames_draws_over_black_and_says_so(tmp_path):
    make_davis(str(tmp_path), with_frames=False)
    gt, pred = open_storage(str(tmp_path / "DAVIS/Annotations/480p")), open_storage(str(tmp_path / "pred"))
    gt_frames, pred_frames = list_frames(gt), list_frames(pred)
    results = [score_sequence(s, gt, gt_frames[s], pred, pred_frames[s], "all") for s in gt_frames]
    summary = {
        "JF_mean": 0.5,
        "J_mean": 0.5,
        "F_mean": 0.5,
        "protocol": "all",
        "threshold": None,
        "n_sequences": 2,
        "n_frames": 10,
    }
    url = write_report(
        open_storage(str(tmp_path / "eval")),
        results,
        summary,
        gt=gt,
        gt_frames=gt_frames,
        pred=pred,
        pred_frames=pred_frames,
        frames=None,
        worst_frames=2,
    )
    text = open(url).read()
    assert text.count("masks drawn over black") == 2 and "No frame images" in text
    assert text.count("<figure>") == 4
    # Many sequences: worst frames only for the lowest-J&F ones, and the page says so.
    url = write_report(
        open_storage(str(tmp_path / "eval")),
        results,
        summary,
        gt=gt,
        gt_frames=gt_frames,
        pred=pred,
        pred_frames=pred_frames,
        worst_frames=1,
        max_sequences=1,
    )
    text = open(url).read()
    worst = min(results, key=lambda r: r.metrics["JF_mean"]).sequence
    assert 'id="seq-poor"' in text and 'id="seq-good"' not in text and worst == "poor"
    assert "Shown for the 1 sequences with the lowest J&amp;F of 2" in text and text.count("<figure>") == 1


def test_overlay_index_shows_the_overlay_videos(tmp_path, chromium):
    from pipeline.formats import write_overlay_index
    from tests.pipeline.test_export import write_segment_outputs

    write_segment_outputs(str(tmp_path), overlay_video="dog")
    page = write_overlay_index(open_storage(str(tmp_path)))
    assert page == str(tmp_path / "overlays" / "index.html")
    # The video's first frame is on the page: grey with the predicted square tinted red. Chromium decodes the
    # video in a media process of its own, which virtual time does not wait for: on a loaded machine (make test's
    # two pytest processes beside a Ray job) a screenshot can come before the first frame, three times in a row
    # (seen once), so the tries are spread over real time.
    for wait_ms in (4000, 8000, 16000, 16000, 16000, 16000):
        shot = screenshot(chromium, page, str(tmp_path / "shot.png"), size=(800, 600), wait_ms=wait_ms)
        red = (shot[..., 0] > 140) & (shot[..., 1] < 90) & (shot[..., 2] < 90)
        if red.sum() > 3000:
            break
        time.sleep(2)
    assert red.sum() > 3000
    rows, cols = np.nonzero(red)
    assert rows.min() > 100 and cols.max() < 520  # inside the 480 px wide video below the heading


def test_pages_escape_names_and_reasons(tmp_path):
    """Sequence, video and file names are data, never markup: '<', '&' and quotes in them are escaped in
    report.html and overlays/index.html (jinja2 autoescaping), and the page reads back as the names written."""
    from html.parser import HTMLParser

    from pipeline.formats import write_overlay_index

    class Page(HTMLParser):
        """The page's tags and text (entities decoded)."""

        def __init__(self, text: str):
            super().__init__(convert_charrefs=True)
            self.tags: list[str] = []
            self.ids: list[str] = []
            self.text = ""
            self.feed(text)

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.ids += [v for k, v in attrs if k == "id"]

        def handle_data(self, data):
            self.text += data

    name = "<em>bold<em> & \"q\" 'x'"  # no '/': a sequence is a folder
    root = open_storage(str(tmp_path))
    for t in range(2):
        root.write_bytes(f"gt/{name}/{t:05d}.png", encode_mask_png(rect(10, 10, 20, 20)))
        root.write_bytes(f"pred/{name}/{t:05d}.png", encode_mask_png(rect(12, 10, 20, 20)))
    gt, pred = root.child("gt"), root.child("pred")
    gt_frames, pred_frames = list_frames(gt), list_frames(pred)
    results = [score_sequence(name, gt, gt_frames[name], pred, pred_frames[name], "all")]
    summary = {"JF_mean": 0.9, "J_mean": 0.9, "F_mean": float("nan"), "protocol": "all", "threshold": None}
    url = write_report(
        root.child("eval"),
        results,
        summary,
        gt=gt,
        gt_frames=gt_frames,
        pred=pred,
        pred_frames=pred_frames,
        rejected={"<script>alert(1)</script>": 'bad "mask" <here> & there'},
    )
    text = open(url).read()
    assert "<em>" not in text and "<script>" not in text and "&lt;em&gt;bold&lt;em&gt; &amp; " in text
    page = Page(text)
    assert "em" not in page.tags and "script" not in page.tags  # no markup came in with the names
    assert f"seq-{name}" in page.ids and f"{name} J&F " in page.text
    assert '<script>alert(1)</script>: bad "mask" <here> & there' in page.text
    assert "J 0.900, F \u2013" in page.text  # a missing score is an en dash

    seg = root.child("seg")
    seg.write_bytes(f"overlays/{name}.mp4", b"")
    seg.write_json(f"done/{name}.json", {"frames": 2, "width": 80, "height": 60})
    text = open(write_overlay_index(seg)).read()
    page = Page(text)
    assert "<em>" not in text and "em" not in page.tags and page.ids == [name]
    assert f"{name} 2 frames, 80x60" in page.text
    assert 'src="%3Cem%3Ebold%3Cem%3E%20%26%20%22q%22%20%27x%27.mp4"' in text  # the link: URL-quoted

"""The pixel limit (pipeline/imaging.py): an image is sized from its header and refused before it is decoded, in
every reader of frames, masks and predictions, within a second and without the memory its pixels would take."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.imaging import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, check_pixels, decode_rgb
from pipeline.masks import MaskError, read_mask
from tests.conftest import REPO_ROOT
from tests.media import bomb_png

# In a fresh process, so that its peak RSS says what the refusals cost: every reader of an untrusted image.
_REFUSE_ALL = """
import json, resource, sys, time
from pipeline.imaging import decode_rgb
from pipeline.masks import read_mask, read_mask_grey, read_mask_values
import cv2, numpy, PIL.PngImagePlugin  # loaded before the baseline: their code is not what is measured

data = open(sys.argv[1], "rb").read()
readers = {
    "frame (opencv)": lambda: decode_rgb(data, "frame bomb.png", "opencv"),
    "frame (pil)": lambda: decode_rgb(data, "frame bomb.png", "pil"),
    "mask": lambda: read_mask(data, name="bomb.png"),
    "mask values (flow job)": lambda: read_mask_values(data, name="bomb.png"),
    "prediction (threshold)": lambda: read_mask(data, threshold=0.5, name="bomb.png"),
    "prediction (official grey)": lambda: read_mask_grey(data, name="bomb.png"),
}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for what, read in readers.items():
    t0 = time.perf_counter()
    try:
        read()
        out[what] = {"error": None}
    except ValueError as err:  # ImageTooLargeError, MaskError
        out[what] = {"error": f"{type(err).__name__}: {err}"}
    out[what]["seconds"] = time.perf_counter() - t0
out["rss_increase_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def test_a_20000_pixel_square_png_is_refused_by_every_reader_fast_and_small(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000))
    assert path.stat().st_size < 64_000  # 49 kB of PNG for 400 megapixels
    proc = subprocess.run(
        [sys.executable, "-c", _REFUSE_ALL, str(path)],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = result.pop("rss_increase_mb")
    print(json.dumps(result, indent=1), f"peak RSS up by {rss:.1f} MB")
    for what, outcome in result.items():
        assert (
            outcome["error"] and "bomb.png" in outcome["error"] and "400,000,000 pixels" in outcome["error"]
        ), what
        assert outcome["seconds"] < 1.0, (what, outcome)
    assert rss < 300, f"peak RSS went up by {rss:.0f} MB"


def test_the_limit_is_configurable_and_names_the_file(monkeypatch):
    frame = np.zeros((40, 60, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert decode_rgb(data, "frame small.png").shape == (40, 60, 3)
    monkeypatch.setenv("HMHI_MAX_IMAGE_PIXELS", "2000")  # below 60x40
    for decoder in ("opencv", "pil"):
        with pytest.raises(
            ImageTooLargeError,
            match=r"frame small.png is 60x40 = 2,400 pixels, more than the limit of 2,000 \(HMHI_MAX_IMAGE_PIXELS\)",
        ):
            decode_rgb(data, "frame small.png", decoder)
    with pytest.raises(MaskError, match="small.png is 60x40"):
        read_mask(data, name="small.png")
    monkeypatch.setenv("HMHI_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="HMHI_MAX_IMAGE_PIXELS='lots'"):
        check_pixels(1, 1, "x")
    monkeypatch.delenv("HMHI_MAX_IMAGE_PIXELS")
    check_pixels(
        8000, DEFAULT_MAX_IMAGE_PIXELS // 8000, "an 8K-wide frame at the limit"
    )  # at the limit: fine
    with pytest.raises(ImageTooLargeError):
        check_pixels(8000, DEFAULT_MAX_IMAGE_PIXELS // 8000 + 1, "one row more")


def test_pils_warning_zone_is_refused_too():
    """10000x10000 is past Pillow's warning threshold (~89 MP) but not its error (~179 MP): still refused."""
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        decode_rgb(bomb_png(10000), "frame warn.png", "pil")

"""pipeline.video's two decoders: torchcodec where it loads (the 'video' extra and FFmpeg's libraries), PyAV always.

Both decode real files made by the project's encoder (PyAV, libx264 and mpeg4) to the same RGB frames, stop at
``max_frames``, and refuse broken files with a VideoError naming the file. The torchcodec cases run where the
extra is installed (the container image; ``make test`` without it covers PyAV, the fallback).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline import video
from pipeline.video import DECODER_ENV, VideoError, decode_video, iter_video_frames, video_decoder
from tests.media import make_scene, write_mp4

HAS_TORCHCODEC = video._torchcodec_problem() is None
DECODERS = [
    "pyav",
    pytest.param("torchcodec", marks=pytest.mark.skipif(not HAS_TORCHCODEC, reason="no torchcodec")),
]


@pytest.fixture(params=DECODERS)
def decoder(request, monkeypatch) -> str:
    monkeypatch.setenv(DECODER_ENV, request.param)
    assert video_decoder() == request.param
    return request.param


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (file, the frames encoded into it): H.264 with an odd size, and MPEG-4 part 2."""
    root = tmp_path_factory.mktemp("clips")
    frames, _ = make_scene(11, size=(57, 83), seed=3)
    out = {}
    for name, codec in (("h264", "libx264"), ("mpeg4", "mpeg4")):
        path = root / f"{name}.mp4"
        write_mp4(path, frames, codec=codec)
        out[name] = (str(path), frames)
    return out


def test_both_decoders_give_the_same_frames(clips, monkeypatch):
    """Same FFmpeg conversion to RGB: bit-identical frames (the decoder choice never changes a job's output)."""
    for name, (path, encoded) in clips.items():
        monkeypatch.setenv(DECODER_ENV, "pyav")
        reference, info = decode_video(path)
        assert reference.shape[0] == len(encoded) and info.frame_count == len(encoded)
        assert (
            np.abs(reference[:, :57, :83].astype(int) - encoded).mean() < 8
        )  # lossy codecs, yet the same scene
        if HAS_TORCHCODEC:
            monkeypatch.setenv(DECODER_ENV, "torchcodec")
            frames, _ = decode_video(path)
            assert frames.dtype == np.uint8 and frames.shape == reference.shape, name
            assert np.array_equal(frames, reference), name


def test_max_frames_and_file_objects(clips, decoder):
    path, encoded = clips["h264"]
    assert len(list(iter_video_frames(path, max_frames=4))) == 4
    with open(path, "rb") as f:  # a binary file object, as Storage.open_read gives
        frames, info = decode_video(io.BytesIO(f.read()), name="clip from storage")
    assert len(frames) == info.frame_count == len(encoded)


def test_broken_files_are_refused_naming_the_file(clips, decoder, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 300)
    head = tmp_path / "head.mp4"  # the first third: no index (moov) to play it from
    data = open(clips["h264"][0], "rb").read()
    head.write_bytes(data[: len(data) // 3])
    for path, message in ((empty, "is empty"), (junk, "junk.mp4"), (head, "head.mp4")):
        with pytest.raises(VideoError, match=message):
            list(iter_video_frames(str(path)))


def test_the_decoder_setting_is_checked(monkeypatch):
    monkeypatch.setenv(DECODER_ENV, "gstreamer")
    with pytest.raises(VideoError, match="HMHI_VIDEO_DECODER='gstreamer': must be auto, torchcodec or pyav"):
        video_decoder()
    monkeypatch.setenv(DECODER_ENV, "auto")
    assert video_decoder() == ("torchcodec" if HAS_TORCHCODEC else "pyav")

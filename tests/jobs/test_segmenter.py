"""VideoSegmenter (pipeline.segment) against the segment job on the same video, and segment --overwrite with a video
that fails: real mp4 files, a small random-init HMHI-Net on CPU, the shared local Ray cluster."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.segment import main
from pipeline.errors import JobFailed
from pipeline.flow.config import FlowConfig
from pipeline.masks import decode_mask_png
from pipeline.segment import VideoSegmenter
from pipeline.storage import open_storage
from tests.jobs.test_segment import common_args, moving_square_frames, mp4_bytes


def test_video_segmenter_equals_the_job(tmp_path, ray_cluster, tiny_checkpoint):
    corpus = open_storage(str(tmp_path / "corpus"))
    corpus.write_bytes("clip.mp4", mp4_bytes(moving_square_frames(11)))
    out = open_storage(str(tmp_path / "out"))
    # One video in flight and one torch thread in the actor: the same arithmetic as the segmenter below.
    summary = main(
        [
            *common_args(tiny_checkpoint, corpus.url, out.url),
            "--save-probs",
            "--precision",
            "fp32",
            "--set",
            "runtime.videos_in_flight=1",
            "--set",
            "runtime.cpus_per_actor=1",
        ]
    )
    assert summary["counts"]["video"]["done"] == 1

    flow = FlowConfig(engine="dis", preset="ultrafast", max_side=128)  # as common_args sets them
    segmenter = VideoSegmenter(
        tiny_checkpoint, flow=flow, input_size=64, precision="fp32", device="cpu", chunk_frames=4
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = list(segmenter.segment(str(tmp_path / "corpus" / "clip.mp4")))
        from_arrays = list(segmenter.segment(iter(decoded_frames(tmp_path / "corpus" / "clip.mp4"))))
    finally:
        torch.set_num_threads(threads)
    assert [index for index, _, _ in results] == list(range(11))
    for index, mask, prob in results:
        assert mask.dtype == bool and mask.shape == prob.shape == (48, 80)
        written = np.asarray(Image.open(io.BytesIO(out.read_bytes(f"probs/clip/{index:05d}.png")))).astype(
            int
        )
        assert np.abs(written - np.round(prob * 255)).max() <= 1
        np.testing.assert_array_equal(decode_mask_png(out.read_bytes(f"masks/clip/{index:05d}.png")), mask)
    # An iterator of frames gives the same probabilities as the file, to float noise (masks are not compared: this
    # random-init model's probabilities all lie within 1e-5 of 0.5, so float noise decides them; the official init,
    # fuser blocks starting as copies, moved the noise here from under 2e-6 to 2.9e-6).
    for (i, _, prob), (j, _, prob2) in zip(results, from_arrays, strict=True):
        assert i == j
        np.testing.assert_allclose(prob, prob2, atol=5e-6)


def decoded_frames(path):
    from pipeline.video import iter_video_frames

    yield from iter_video_frames(str(path))


def test_overwrite_with_a_failing_video_leaves_no_outputs(tmp_path, ray_cluster, tiny_checkpoint):
    corpus = open_storage(str(tmp_path / "corpus"))
    good = mp4_bytes(moving_square_frames(7))
    corpus.write_bytes("clip.mp4", good)
    out = open_storage(str(tmp_path / "out"))
    args = [*common_args(tiny_checkpoint, corpus.url, out.url), "--save-probs", "--overlay"]
    assert main(args)["counts"]["video"]["done"] == 1
    assert out.exists("done/clip.json") and out.exists("overlays/clip.mp4") and out.list("probs/clip")

    # The video is replaced by one that decodes for a few frames and then breaks: the rerun starts it, fails.
    corpus.write_bytes("clip.mp4", good[: len(good) * 2 // 3])
    with pytest.raises(JobFailed, match="every item was rejected") as failed:  # its only video: exit status 1
        main([*args, "--overwrite"])
    summary = failed.value.summary
    assert summary["counts"]["video"] == {"done": 0, "skipped": 0, "rejected": 1}
    assert "clip.mp4" in summary["rejected"][0]["reason"]
    assert not out.exists("done/clip.json"), "a failed video must not stay marked done"
    for rel in ("masks/clip", "probs/clip", "rle/clip.parquet", "overlays/clip.mp4"):
        assert not out.exists(rel) or not out.list(rel), f"leftover {rel}"
    # A later run (the video fixed) redoes it.
    corpus.write_bytes("clip.mp4", good)
    again = main(args)
    assert again["counts"]["video"] == {"done": 1, "skipped": 0, "rejected": 0}
    assert len(out.list("masks/clip")) == 7

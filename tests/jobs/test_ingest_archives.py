"""A dataset archive, written as distributed, through the real shard-building job (jobs/precompute_flow.py):
sparse ground truth with its own names and extensions arrives in the shards on the frames it annotates."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from jobs.precompute_flow import main
from pipeline.shards import decode_clip
from pipeline.storage import open_storage
from tests.archives import write_fbms

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_sparse_archive_shards_with_its_annotated_frames(tmp_path):
    # FBMS-59 (the trickiest: GroundTruth/ names, .pgm and white-background .ppm, PROB files); the other archives'
    # records are checked against their miniatures in tests/pipeline/test_ingest.py, and they share this path.
    archive = "fbms"
    truth = write_fbms(tmp_path / "in")
    out = str(tmp_path / "out")
    summary = main(["--input", str(tmp_path / "in"), "--output", out, "--clip-length", "8"])
    assert summary["counts"]["video"] == {"done": len(truth), "skipped": 0, "rejected": 0}
    manifest = {r["video_id"]: r for r in open_storage(out).read_parquet("manifest.parquet").to_pylist()}
    assert sorted(manifest) == sorted(truth)
    for vid, (_, _, annotated) in truth.items():
        assert manifest[vid]["annotated_frames"] == annotated and manifest[vid]["format"] == archive
    from pipeline.shards import shard_urls

    seen = set()
    for sample in wds.WebDataset(shard_urls(out), shardshuffle=False):
        clip = decode_clip(sample)
        _, masks, annotated = truth[clip.video_id]
        idx = list(clip.frame_indices)
        assert clip.mask_valid.tolist() == [t in annotated for t in idx]
        for k, t in enumerate(idx):
            if t in annotated:  # FBMS .ppm: white background is background
                assert np.array_equal(clip.masks[k], masks[t]), (clip.video_id, t)
        seen.add(clip.video_id)
    assert seen == set(truth)

"""The authors' archive layout end to end through the four real jobs: an official HMHI-Net archive (README naming,
with its flow pictures) -> shards with the pictures (--flow-model pictures) -> training from those shards ->
segment from the shards (the pictures fed as they are) -> evaluate against the archive's own ground truth."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from jobs.evaluate import main as evaluate_main
from jobs.precompute_flow import main as flow_main
from jobs.segment import main as segment_main
from jobs.train import main as train_main
from pipeline.shards import shard_urls
from pipeline.storage import open_storage, open_url
from tests.archives import write_hmhi
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_official_archive_with_flow_pictures_shards_trains_segments_and_evaluates(tmp_path):
    archive = tmp_path / "HMHI"
    truth = write_hmhi(archive, naming="readme", videos={"train": {"bear": 6, "camel": 6}, "val": {"blackswan": 5}})
    shards, runs, seg, ev = (str(tmp_path / p) for p in ("shards", "runs", "seg", "eval"))

    flow = flow_main(["--input", str(archive), "--output", shards, "--flow-model", "pictures", "--clip-length", "6"])
    assert flow["counts"]["video"] == {"done": 3, "skipped": 0, "rejected": 0}
    # The pictures' bytes are in the shards unchanged, and the samples say where their flow came from.
    pictures = {}
    for url in shard_urls(shards):
        parent, leaf = open_url(url)
        with tarfile.open(fileobj=io.BytesIO(parent.read_bytes(leaf))) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith("meta.json"):
                    assert json.loads(data)["flow_source"] == "pictures"
                elif ".flowpic." in member.name:
                    pictures[member.name] = data
    assert len(pictures) == 6 + 6 + 5
    bear0 = (archive / "Flows" / "train" / "bear" / "bear_00000.jpg").read_bytes()
    assert bear0 in pictures.values()

    # Training from the authors' flow pictures (4 steps, 2 DDP workers) leaves a checkpoint to segment with.
    train = train_main(["--config", str(REPO_ROOT / "configs" / "test.yaml"), "--data", shards, "--storage", runs,
                        "--run-name", "pictures", "--set", "model.image_size=64", "--max-steps", "4"])
    assert train["counts"]["run"]["done"] == 1 and train["figures"]["steps"] == 4
    checkpoint = open_storage(train["figures"]["latest_checkpoint"]).join("checkpoint.pt")

    # Segment from the shards: frames and flow pictures come from them.
    summary = segment_main(["--input", shards, "--output", seg, "--checkpoint", checkpoint, "--input-size", "64",
                            "--precision", "fp32"])  # fmt: skip
    assert summary["counts"]["video"] == {"done": 3, "skipped": 0, "rejected": 0}
    assert summary["figures"]["frames"] == 17
    assert len(open_storage(seg).list("masks/blackswan")) == 5

    # Evaluate against the archive's ground truth: its test split (the official 'val') is scored, every frame.
    scores = evaluate_main(["--pred", seg, "--gt", str(archive), "--output", ev, "--protocol", "all"])
    assert scores["counts"]["sequence"]["done"] == 1 and scores["figures"]["n_frames"] == 5
    assert 0.0 <= scores["figures"]["JF_mean"] <= 1.0
    assert set(truth) == {"bear", "camel", "blackswan"}

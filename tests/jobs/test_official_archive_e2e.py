"""Every dataset archive, written as distributed (tests/archives.py, tests/media.py; each layout's public source is
cited in pipeline/ingest/formats.py), end to end through the four real jobs: the archive -> shards (the flow job:
the archive's own flow pictures where it ships them, DIS otherwise) -> two training steps from those shards ->
segment from the shards -> evaluate against the archive's own ground truth.

One case per archive: the official HMHI-Net layout in both namings, DAVIS-2016, FBMS-59, YouTube-Objects and
YouTube-VOS. What each case checks is what the archive makes hard: sparse annotation arriving on the frames it
annotates (FBMS's ``Def.dat`` placing ``tennis``'s ground truth, YouTube-Objects' N-th-frame masks, YouTube-VOS's
first-frame-only ``valid``), flow pictures going into the shards unchanged, and evaluation scoring exactly the
annotated frames of the benchmark split under the frame names ``segment`` wrote. Training is two steps at 64x64 of the
train job's own pieces, in this process: its input checks (``check_inputs``: the split's shards, verified, samples
without ground truth left out) and the ``Trainer`` that every Ray Train worker runs, on one rank (the train job's
Ray Train runs, DDP, resume and failures are tests/jobs/test_train.py's; a Ray Train start per archive would cost
more than the rest of the case). YouTube-Objects has no training split (all of it is the benchmark), so its case
trains on its test shards (``data.train_split=test``) to prove they are trainable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from jobs.evaluate import main as evaluate_main
from jobs.precompute_flow import main as flow_main
from jobs.segment import main as segment_main
from pipeline.config import load_config
from pipeline.shards import shard_urls
from pipeline.storage import open_storage, open_url
from pipeline.train.config import TrainConfig
from pipeline.train.job import check_inputs
from pipeline.train.trainer import Trainer
from tests.archives import write_fbms, write_hmhi, write_ytobj, write_ytvos
from tests.conftest import REPO_ROOT
from tests.media import write_davis

pytestmark = pytest.mark.usefixtures("ray_cluster")

SIZE = (24, 32)


@dataclass(frozen=True)
class ArchiveCase:
    """One archive miniature and what the jobs must make of it."""

    write: Callable[[Path], dict]
    """Writes the miniature under a root; returns ``{video: (frames, masks[, annotated])}`` (tests/archives.py)."""
    flow_pictures: str | None
    """The archive's flow-picture folder name (its pictures go into the shards), or None (DIS computes flow)."""
    test_videos: tuple[str, ...]
    """Video ids of the benchmark split, the ones evaluation scores."""
    frame_stem: Callable[[str, int], str]
    """The file stem of frame ``t`` of a video (what segment names its masks and evaluation its rows)."""
    train_split: str = "train"
    """The shard split trained on."""
    gt_format: str = "auto"
    """evaluate's --gt-format: auto reads every archive by its own layout except a DAVIS root, which it reads as
    folders (every sequence); ``davis2016`` reads it as the archive, so its benchmark split (val) is scored."""


def _davis(root: Path) -> dict:
    truth = write_davis(
        root,
        {"bear": 6, "camel": 6, "blackswan": 5},
        size=SIZE,
        splits={"train": ["bear", "camel"], "val": ["blackswan"]},
    )
    return {v: (frames, masks, list(range(len(frames)))) for v, (frames, masks) in truth.items()}


CASES: dict[str, ArchiveCase] = {
    "hmhi_readme": ArchiveCase(
        lambda root: write_hmhi(root, "readme", {"train": {"bear": 6, "camel": 6}, "val": {"blackswan": 5}}),
        "Flows",
        ("blackswan",),
        lambda v, t: f"{v}_{t:05d}",
    ),
    "hmhi_code": ArchiveCase(
        lambda root: write_hmhi(root, "code", {"train": {"bear": 5}, "val": {"blackswan": 4}}),
        "flow",
        ("blackswan",),
        lambda v, t: f"{v}_{t:05d}",
    ),
    "davis2016": ArchiveCase(_davis, None, ("blackswan",), lambda v, t: f"{t:05d}", gt_format="davis2016"),
    "fbms": ArchiveCase(
        write_fbms,
        None,
        ("cars1", "dogs01", "tennis"),
        lambda v, t: f"tennis{t:03d}" if v == "tennis" else f"{v}_{t + 1:02d}",
    ),
    "ytobj": ArchiveCase(
        lambda root: write_ytobj(root, "class"),
        "JPEGFlows",
        ("aeroplane_0001", "aeroplane_0002", "cat_0001"),
        lambda v, t: f"{t + 1:05d}",
        train_split="test",
    ),
    "ytvos": ArchiveCase(write_ytvos, None, ("0062f687f1",), lambda v, t: f"{5 * t:05d}"),
}


def _shard_members(shards: str) -> tuple[list[dict], list[bytes]]:
    """(every sample's meta.json, every flow picture's bytes) in the shard set."""
    metas, pictures = [], []
    for url in shard_urls(shards):
        parent, leaf = open_url(url)
        with tarfile.open(fileobj=io.BytesIO(parent.read_bytes(leaf))) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith("meta.json"):
                    metas.append(json.loads(data))
                elif ".flowpic." in member.name:
                    pictures.append(data)
    return metas, pictures


def _train_two_steps(shards: str, split: str, scratch: Path) -> str:
    """Two steps of configs/test.yaml at 64x64 on the ``split`` shards, as one training worker takes them; returns
    the checkpoint written after them."""
    cfg = load_config(
        TrainConfig,
        str(REPO_ROOT / "configs" / "test.yaml"),
        [
            f"data.url={shards}",
            f"data.train_split={split}",
            f"storage={scratch / 'runs'}",
            "run_name=e2e",
            "num_workers=1",
            "optim.max_steps=2",
            "model.input_size=64",
        ],
    )
    train, val = check_inputs(cfg)
    assert train, f"no '{split}' shards with ground truth in {shards}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a one-CPU training worker runs with
    try:
        with Trainer(cfg, train, val, scratch=str(scratch)) as trainer:
            while not trainer.finished:
                parts = trainer.train_step(trainer.next_batch())
            path = str(scratch / "checkpoint.pt")
            assert trainer.write_checkpoint(path)
    finally:
        torch.set_num_threads(threads)
    assert trainer.state.step == 2 and math.isfinite(parts["loss"]) and parts["loss"] > 0
    return path


@pytest.mark.parametrize("archive", list(CASES))
def test_archive_ingests_shards_trains_segments_and_evaluates(tmp_path, archive):
    case = CASES[archive]
    root = tmp_path / archive
    truth = case.write(root)
    shards, seg, ev = (str(tmp_path / p) for p in ("shards", "seg", "eval"))

    # Shards: every video, its annotated frames where the archive annotates them, flow from where it comes.
    flow_model = ["--flow-model", "pictures"] if case.flow_pictures else []
    flow = flow_main(["--input", str(root), "--output", shards, "--clip-length", "4", *flow_model])
    assert flow["counts"]["video"] == {"done": len(truth), "skipped": 0, "rejected": 0}
    manifest = {r["video_id"]: r for r in open_storage(shards).read_parquet("manifest.parquet").to_pylist()}
    assert sorted(manifest) == sorted(truth)
    for video, (_, _, annotated) in truth.items():
        assert manifest[video]["annotated_frames"] == annotated, video
    metas, pictures = _shard_members(shards)
    assert {m["flow_source"] for m in metas} == {"pictures" if case.flow_pictures else "computed"}
    if case.flow_pictures:  # the archive's pictures, byte for byte
        shipped = {p.read_bytes() for p in root.rglob("*.jpg") if case.flow_pictures in p.parts}
        assert pictures and set(pictures) <= shipped

    # Training from this archive's own shards.
    checkpoint = _train_two_steps(shards, case.train_split, tmp_path / "train")

    # Segment every video from the shards with that checkpoint.
    summary = segment_main(
        [
            "--input",
            shards,
            "--output",
            seg,
            "--checkpoint",
            checkpoint,
            "--input-size",
            "64",
            "--precision",
            "fp32",
        ]
    )
    assert summary["counts"]["video"] == {"done": len(truth), "skipped": 0, "rejected": 0}
    assert summary["figures"]["frames"] == sum(len(frames) for frames, _, _ in truth.values())

    # Evaluate against the archive: its benchmark split, exactly its annotated frames, under segment's names.
    scores = evaluate_main(
        ["--pred", seg, "--gt", str(root), "--output", ev, "--protocol", "all", "--gt-format", case.gt_format]
    )
    assert scores["counts"]["sequence"] == {"done": len(case.test_videos), "skipped": 0, "rejected": 0}
    rows = list(csv.DictReader(io.StringIO((Path(ev) / "per_frame.csv").read_text())))
    expected = sorted((v, case.frame_stem(v, t)) for v in case.test_videos for t in truth[v][2])
    assert sorted((r["sequence"], r["frame"]) for r in rows) == expected
    assert scores["figures"]["n_frames"] == len(expected)
    assert 0.0 <= scores["figures"]["J_mean"] <= 1.0

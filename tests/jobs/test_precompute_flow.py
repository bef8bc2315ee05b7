"""End-to-end tests of jobs/precompute_flow.py on a real local Ray cluster, local disk and the moto S3 server.

Every shard is read back with ``webdataset`` and with ``ray.data.read_webdataset`` and every frame, flow and
mask is compared with the input; a real subprocess running the job is killed (SIGKILL) half-way and resumed;
bad inputs are rejected or repaired while the job goes on with the rest.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
import webdataset as wds

from jobs.precompute_flow import main
from pipeline.config import ConfigError
from pipeline.flow.engines import create_flow_engine
from pipeline.flow.render import RENDER_VERSION
from pipeline.shards import decode_clip, read_index, shard_urls, verify_shard
from pipeline.storage import open_storage, open_url, storage_filesystem
from tests.conftest import REPO_ROOT
from tests.media import make_scene, truncate_file, upload_tree, write_davis, write_jpeg, write_mp4
from tests.plugins.faults import subprocess_env

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _corpus_url(local_dir, storage_url: str, name: str) -> str:
    """The corpus at ``local_dir`` as an input URL next to ``storage_url`` (uploaded when that is on S3)."""
    if storage_url.startswith("s3://"):
        url = f"{storage_url}-inputs/{name}"
        upload_tree(local_dir, url)
        return url
    return str(local_dir)


def _wds_samples(urls: list[str]) -> list[dict]:
    def s3_open(url, mode="rb", bufsize=8192, **kw):
        parent, leaf = open_url(url)
        return parent.open_stream(leaf)

    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = (
        s3_open  # webdataset 1.0.2 has no s3:// handler
    )
    return list(wds.WebDataset(urls, shardshuffle=False))


def _ray_samples(urls: list[str]) -> list[dict]:
    import ray.data

    fs, _ = storage_filesystem(urls[0])
    paths = [u[len("s3://") :] if u.startswith("s3://") else u for u in urls]
    return ray.data.read_webdataset(paths, filesystem=fs, decoder=None).take_all()


def _check_round_trip(
    out_url: str,
    truth: dict[str, tuple[np.ndarray, np.ndarray | None]],
    split_of: dict[str, str],
    frame_tol: float = 3.0,
):
    """Every sample decodes; all frames of every video appear exactly once, equal to the input (JPEG tolerance),
    with the DIS flow of the whole video and the input masks."""
    index = read_index(out_url)
    keys = index.column("key").to_pylist()
    assert len(keys) == len(set(keys))
    for shard, checksum in set(
        zip(index.column("shard").to_pylist(), index.column("shard_sha256").to_pylist(), strict=True)
    ):
        verify_shard(open_storage(out_url).join(shard), checksum)
    urls = shard_urls(out_url)
    by_wds = {s["__key__"]: decode_clip(s) for s in _wds_samples(urls)}
    by_ray = {s["__key__"]: decode_clip(s) for s in _ray_samples(urls)}
    assert sorted(by_wds) == sorted(by_ray) == sorted(keys)
    engine = create_flow_engine("dis", preset="medium")
    seen = defaultdict(list)
    for key, clip in by_wds.items():
        other = by_ray[key]
        assert np.array_equal(clip.frames, other.frames) and np.array_equal(clip.flows, other.flows)
        assert np.array_equal(clip.masks, other.masks) and clip.meta == other.meta
        frames, masks = truth[clip.video_id]
        idx = clip.frame_indices
        seen[clip.video_id].extend(idx)
        assert clip.split == split_of[clip.video_id]
        assert np.abs(clip.frames.astype(int) - frames[idx]).mean() < frame_tol
        if masks is None:
            assert not clip.mask_valid.any()
        else:
            assert clip.mask_valid.all() and np.array_equal(clip.masks, masks[idx])
        expected_flow = engine.compute(frames)[idx]
        np.testing.assert_allclose(clip.flows, expected_flow, atol=0.02, rtol=2e-3)
        assert clip.meta["flow"]["engine"] == "dis" and clip.meta["render_version"] == RENDER_VERSION
    for vid, (frames, _) in truth.items():
        assert sorted(seen[vid]) == list(range(len(frames))), vid


# S3 only: the job reaches storage through the same Storage and pyarrow filesystem for both kinds (each tested on
# both in tests/pipeline/test_storage.py), and local outputs are end to end in test_first_hour and the archive tests.
@pytest.mark.parametrize("storage_url", ["s3"], indirect=True)
def test_end_to_end_round_trip_and_idempotent_rerun(storage_url, tmp_path):
    gt = write_davis(
        tmp_path / "davis",
        {"bear": 10, "car shadow": 9, "cows": 7},
        splits={"train": ["bear", "car shadow"], "val": ["cows"]},
    )
    frames, _ = make_scene(8, (96, 160), seed=11)
    write_mp4(tmp_path / "videos" / "street.mp4", frames)
    write_mp4(tmp_path / "videos" / "sub" / "park.mkv", frames[:5], codec="mpeg4")
    davis_in = _corpus_url(tmp_path / "davis", storage_url, "davis")
    videos_in = _corpus_url(tmp_path / "videos", storage_url, "videos")
    out = f"{storage_url}/davis"

    summary = main(["--input", davis_in, "--output", out, "--clip-length", "4", "--shard-size-mb", "0.2"])
    assert summary["figures"]["format"] == "davis2016"
    assert summary["counts"]["video"] == {"done": 3, "skipped": 0, "rejected": 0}
    assert summary["figures"]["frames"] == 26 and summary["figures"]["masks"] == 26
    assert summary["figures"]["shards_written"] >= 3
    ids = {"bear": "bear", "cows": "cows"}
    ids.update(
        {
            n: r["video_id"]
            for n, r in [
                (x["name"], x) for x in open_storage(out).read_parquet("manifest.parquet").to_pylist()
            ]
        }
    )
    truth = {ids[name]: v for name, v in gt.items()}
    _check_round_trip(out, truth, {ids["bear"]: "train", ids["car shadow"]: "train", ids["cows"]: "test"})
    manifest = {r["name"]: r for r in open_storage(out).read_parquet("manifest.parquet").to_pylist()}
    assert manifest["bear"]["frame_count"] == 10 and manifest["bear"]["height"] == 96
    assert manifest["cows"]["annotated_frames"] == list(range(7)) and manifest["cows"]["status"] == "done"
    assert open_storage(out).read_json("summary.json")["counts"]["video"]["done"] == 3

    # A rerun with the same inputs writes nothing new.
    st = open_storage(out)
    before = {n: st.read_bytes(f"shards/{n}") for n in st.list("shards")}
    index_before = st.read_bytes("index.parquet")
    again = main(["--input", davis_in, "--output", out, "--clip-length", "4", "--shard-size-mb", "0.2"])
    assert again["counts"]["video"] == {"done": 0, "skipped": 3, "rejected": 0}
    assert again["figures"]["shards_written"] == 0
    assert {n: st.read_bytes(f"shards/{n}") for n in st.list("shards")} == before
    assert st.read_bytes("index.parquet") == index_before
    # Changing a setting that changes sample content is refused instead of mixing samples.
    with pytest.raises(ConfigError, match="clip_length"):
        main(["--input", davis_in, "--output", out, "--clip-length", "5"])

    # Video files (mp4 + mkv), decoded with PyAV; a deterministic val split since they have none.
    vout = f"{storage_url}/videos"
    vsum = main(["--input", videos_in, "--output", vout, "--clip-length", "3", "--val-fraction", "0.5"])
    assert vsum["figures"]["format"] == "videos" and vsum["counts"]["video"]["done"] == 2
    from pipeline.video import decode_video

    local = {
        "street": tmp_path / "videos" / "street.mp4",
        "sub__park": tmp_path / "videos" / "sub" / "park.mkv",
    }
    vtruth = {vid: (decode_video(str(p))[0], None) for vid, p in local.items()}
    splits = {
        r["video_id"]: r["split"] for r in open_storage(vout).read_parquet("manifest.parquet").to_pylist()
    }
    assert sorted(splits.values()) == ["train", "val"]
    _check_round_trip(vout, vtruth, splits)


def test_killed_run_resumes_with_every_video_exactly_once(s3_bucket, tmp_path, ray_cluster):
    write_davis(tmp_path / "c", {f"v{i}": 8 for i in range(4)}, size=(48, 64))
    corpus = f"{s3_bucket}/corpus"
    upload_tree(tmp_path / "c", corpus)
    out = f"{s3_bucket}/out"
    args = [
        "--input",
        corpus,
        "--output",
        out,
        "--clip-length",
        "4",
        "--shard-size-mb",
        "0.01",
        "--set",
        "shards.group_videos=1",
    ]
    # The driver SIGKILLs itself right after its third commit (tests.plugins.faults, installed at its start-up).
    env = subprocess_env(dict(os.environ, RAY_ADDRESS=ray_cluster), REPO_ROOT, kill_after_commits=3)
    proc = subprocess.run(
        [sys.executable, "jobs/precompute_flow.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL, as a crashed node would die
    st = open_storage(out)
    # Three groups (one video each) were committed: three index parts, and only their videos in the index.
    assert len(st.list("index")) == 3 and not st.exists("index.parquet")
    assert len(set(read_index(out).column("video_id").to_pylist())) == 3
    assert not st.exists("summary.json")
    # Leftovers of an interrupted upload that never reached the index must not survive the resume; a .tar that is
    # not named like this job's shards is not this job's to delete.
    st.write_bytes("shards/train-0123456789ab-0000.tar", b"partial")
    st.write_bytes("shards/notes.tar", b"someone else's")

    summary = main(args)
    index = read_index(out)
    keys = index.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 8  # 4 videos x 2 clips, none twice
    per_video = defaultdict(list)
    for vid, fi in zip(
        index.column("video_id").to_pylist(), index.column("frame_indices").to_pylist(), strict=True
    ):
        per_video[vid].extend(fi)
    assert {v: sorted(f) for v, f in per_video.items()} == {f"v{i}": list(range(8)) for i in range(4)}
    c = summary["counts"]["video"]
    assert c["done"] + c["skipped"] == 4 and c["rejected"] == 0 and c["skipped"] >= 1
    assert sorted(st.list("shards")) == sorted(
        ["notes.tar", *(s.split("/")[1] for s in set(index.column("shard").to_pylist()))]
    )
    assert st.read_bytes("shards/notes.tar") == b"someone else's"
    assert len(_wds_samples(shard_urls(out))) == 8


def test_bad_inputs_are_rejected_or_repaired_and_the_job_goes_on(s3_server, s3_bucket, tmp_path):
    import cv2

    root = tmp_path / "c"
    write_davis(
        root, {"good": 6, "trunc": 5, "sizes": 5, "single": 1, "with space": 4, "ünïcødé": 4}, size=(48, 64)
    )
    jpeg = root / "JPEGImages" / "480p"
    ann = root / "Annotations" / "480p"
    truncate_file(jpeg / "trunc" / "00003.jpg", 0.5)
    write_jpeg(jpeg / "sizes" / "00002.jpg", make_scene(1, (40, 64))[0][0])
    cv2.imwrite(str(ann / "good" / "00001.png"), np.full((96, 128), 255, np.uint8))  # 2x size: resized
    (ann / "good" / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # corrupt: dropped
    corpus = f"{s3_bucket}/corpus"
    upload_tree(root, corpus)
    # A key with '..' (possible on S3; our storage layer refuses to write one): must not escape the corpus root.
    evil = make_scene(2, (48, 64))[0]
    for t in range(2):
        write_jpeg(tmp_path / "evil" / f"{t:05d}.jpg", evil[t])
        s3_server.client().put_object(
            Bucket=s3_bucket[len("s3://") :],
            Body=(tmp_path / "evil" / f"{t:05d}.jpg").read_bytes(),
            Key=f"corpus/JPEGImages/480p/x/../../evil/{t:05d}.jpg",
        )
    out = f"{s3_bucket}/out"
    summary = main(["--input", corpus, "--output", out, "--format", "davis2016", "--clip-length", "4"])
    c = summary["counts"]["video"]
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert c["done"] + c["rejected"] == 6 + 0  # the '..' folder is not a JPEGImages/480p/<seq>/ sequence
    assert c["done"] == 3 and set(reasons) == {"trunc", "sizes", "single"}
    assert "00003.jpg" in reasons["trunc"] and "truncated" in reasons["trunc"]
    assert "00002.jpg" in reasons["sizes"] and "different sizes" in reasons["sizes"]
    assert "only 1 frame" in reasons["single"]
    assert summary["figures"]["warnings"] >= 2
    index = read_index(out)
    assert sorted(set(index.column("video_id").to_pylist())) == sorted(
        ["good", summary_id(out, "with space"), summary_id(out, "ünïcødé")]
    )
    clips = {s["__key__"]: decode_clip(s) for s in _wds_samples(shard_urls(out))}
    good = [clips[k] for k in sorted(clips) if k.startswith("good__")]
    valid = np.concatenate([g.mask_valid for g in good])
    assert valid.tolist() == [True, True, False, True, True, True]
    assert any("resized" in w for w in good[0].meta["warnings"])
    manifest = {r["name"]: r for r in open_storage(out).read_parquet("manifest.parquet").to_pylist()}
    assert manifest["trunc"]["status"] == "rejected" and "00003.jpg" in manifest["trunc"]["reason"]

    # The same corpus read as plain frame folders: the '..' folder is found, and refused.
    fsum = main(
        [
            "--input",
            f"{corpus}/JPEGImages",
            "--output",
            f"{s3_bucket}/out2",
            "--format",
            "frames",
            "--clip-length",
            "4",
        ]
    )
    freasons = {r["name"]: r["reason"] for r in fsum["rejected"]}
    evil_name = [n for n in freasons if ".." in n]
    assert evil_name and "unsafe path" in freasons[evil_name[0]]
    assert fsum["counts"]["video"]["done"] + fsum["counts"]["video"]["rejected"] == 7

    # Zero-byte and undecodable video files next to a good one.
    vids = tmp_path / "v"
    vids.mkdir()
    (vids / "empty.mp4").write_bytes(b"")
    (vids / "junk.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + b"junk" * 100)
    write_mp4(vids / "ok.mp4", make_scene(5, (48, 64))[0])
    vsum = main(["--input", str(vids), "--output", str(tmp_path / "vout"), "--clip-length", "4"])
    vreasons = {r["name"]: r["reason"] for r in vsum["rejected"]}
    assert vsum["counts"]["video"] == {"done": 1, "skipped": 0, "rejected": 2}
    assert "empty.mp4 is empty" in vreasons["empty"] and "junk.mkv" in vreasons["junk"]


def summary_id(out: str, name: str) -> str:
    rows = open_storage(out).read_parquet("manifest.parquet").to_pylist()
    return next(r["video_id"] for r in rows if r["name"] == name)


def test_ptlflow_engine_with_a_local_checkpoint(tmp_path):
    from pipeline.flow.engines import create_flow_engine as make

    torch.manual_seed(0)
    engine = make("rapidflow_it1", random_init=True, max_side=64)
    ckpt = tmp_path / "rapidflow_it1.ckpt"
    torch.save({"state_dict": engine.net.state_dict()}, ckpt)
    gt = write_davis(tmp_path / "c", {"a": 5}, size=(48, 64))
    out = tmp_path / "out"
    summary = main(
        [
            "--input",
            str(tmp_path / "c"),
            "--output",
            str(out),
            "--flow-model",
            "rapidflow_it1",
            "--flow-ckpt",
            str(ckpt),
            "--max-side",
            "64",
            "--clip-length",
            "8",
            "--set",
            "compute.fused=false",
        ]
    )  # the staged pipeline of GPU nodes: decode -> flow actors -> encode
    assert summary["counts"]["video"]["done"] == 1
    (clip,) = [decode_clip(s) for s in _wds_samples(shard_urls(str(out)))]
    prov = clip.meta["flow"]
    assert prov["engine"] == "ptlflow" and prov["model"] == "rapidflow_it1" and prov["random_init"] is False
    from pipeline.storage import url_sha256

    assert prov["checkpoint_sha256"] == url_sha256(str(ckpt))
    expected = engine.compute(gt["a"][0])
    np.testing.assert_allclose(clip.flows, expected, atol=0.02 + 2e-3 * np.abs(expected).max())
    assert json.loads(json.dumps(summary))  # the summary is plain JSON


def _part_writers(out: str) -> dict[str, str]:
    """Index part -> the worker process (host:ray-node-id:pid) that wrote its shards, from the parts' own metadata."""
    import pyarrow.parquet as pq

    st = open_storage(out)
    return {
        p: pq.read_schema(st.join(f"index/{p}")).metadata[b"hmhi.writer"].decode() for p in st.list("index")
    }


def test_workers_write_the_shards_and_a_rerun_writes_nothing(tmp_path, monkeypatch):
    """Two Ray worker processes make and upload shards in one run; the driver only commits index parts; both
    ``wids.ShardListDataset`` (webdataset's indexed reader, from the written ``<split>.wids.json``) and plain
    ``webdataset`` read every sample; a rerun changes no object."""
    import wids

    import pipeline.dataset.job
    from tests.plugins.flow_probes import group_stage_meeting

    # Both actors hold a group before either goes on: on a loaded machine the first could otherwise take all six
    # before the second is up (seen once, in a 20-minute make test).
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    monkeypatch.setattr(pipeline.dataset.job, "GroupStage", group_stage_meeting(str(meeting), actors=2))
    gt = write_davis(tmp_path / "c", {f"v{i}": 4 for i in range(6)}, size=(32, 48))
    out = tmp_path / "out"
    args = [
        "--input",
        str(tmp_path / "c"),
        "--output",
        str(out),
        "--clip-length",
        "2",
        "--flow-preset",
        "ultrafast",
        "--concurrency",
        "2",
        "--set",
        "shards.group_videos=1",
        "--val-fraction",
        "0.3",
    ]
    summary = main(args)
    assert summary["counts"]["video"]["done"] == 6
    writers = _part_writers(str(out))
    assert len(writers) == 6 and len(set(writers.values())) == 2  # shards of one run made by two processes
    assert summary["figures"]["writer_processes"] == 2
    assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in writers.values()}  # not by the driver
    import ray

    node = ray.get_runtime_context().get_node_id()  # the test cluster's one node, recorded with each writer
    assert {w.rsplit(":", 2)[1] for w in writers.values()} == {node}
    assert summary["figures"]["groups_by_writer_node"] == {node: 6}
    index = read_index(str(out))
    keys = sorted(index.column("key").to_pylist())
    assert len(keys) == 12
    # Shard names are the group's: shards/<split>-<group>-NNNN.tar, and each group's shards hold only its video.
    for shard, vid in zip(
        index.column("shard").to_pylist(), index.column("video_id").to_pylist(), strict=True
    ):
        assert shard.startswith("shards/") and shard.endswith("-0000.tar")
        assert (
            len(
                {
                    v
                    for s, v in zip(
                        index.column("shard").to_pylist(), index.column("video_id").to_pylist(), strict=True
                    )
                    if s == shard
                }
            )
            == 1
        ), vid

    by_wids = {}
    for split in ("train", "val"):
        doc = json.loads((out / f"{split}.wids.json").read_text())
        assert doc["__kind__"] == "wids-shard-index-v1" and doc["wids_version"] == 1
        assert all(not s["url"].startswith("/") for s in doc["shardlist"])  # relative to the output root
        ds = wids.ShardListDataset(
            str(out / f"{split}.wids.json"), cache_dir=str(tmp_path / "wids-cache"), transformations=[]
        )
        assert len(ds) == sum(s["nsamples"] for s in doc["shardlist"])
        for i in range(len(ds)):
            sample = ds[i]
            # wids yields members as file objects keyed ".<ext>"
            clip = decode_clip(
                {k.lstrip("."): v.read() if hasattr(v, "read") else v for k, v in sample.items()}
            )
            assert clip.split == split
            by_wids[clip.key] = clip
    by_wds = {s["__key__"]: decode_clip(s) for s in _wds_samples(shard_urls(str(out)))}
    assert sorted(by_wids) == sorted(by_wds) == keys
    for key, clip in by_wds.items():
        assert np.array_equal(clip.frames, by_wids[key].frames) and np.array_equal(
            clip.flows, by_wids[key].flows
        )
        assert (
            np.abs(clip.frames.astype(int) - gt[clip.video_id][0][clip.frame_indices]).mean() < 5
        )  # JPEG q90

    def snapshot():
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "summary.json"
        }

    before = snapshot()
    again = main(args)
    assert again["counts"]["video"] == {"done": 0, "skipped": 6, "rejected": 0}
    assert again["figures"]["shards_written"] == 0 and again["figures"]["groups_planned"] == 0
    assert snapshot() == before  # no shard, part, index, wids list or manifest changed


def test_flow_pictures_go_into_the_shards_unchanged_and_feed_training(tmp_path):
    """``--flow-model pictures``: the corpus's flow picture files are stored byte for byte, decoded as
    ``ClipSample.flow_pictures`` and fed to training as they are (no flow rendering); a video without pictures is
    rejected with a reason naming it."""
    import cv2

    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import plan_groups
    from pipeline.dataset.stages import GroupStage
    from pipeline.ingest.formats import VideoRecord
    from pipeline.shards import consolidate_index, write_index_part
    from pipeline.train.augment import normalize_images, resize_rgb
    from pipeline.train.config import AugmentConfig
    from pipeline.train.data import make_training_clip

    root = tmp_path / "archive"
    records, pictures = [], {}
    for v, name in enumerate(["bear", "nopics"]):
        frames, masks = make_scene(5, (48, 64), seed=v)
        rel_frames, rel_flows = [], []
        for t in range(5):
            write_jpeg(root / "frame" / name / f"{t:05d}.jpg", frames[t])
            rel_frames.append(f"frame/{name}/{t:05d}.jpg")
            if name == "bear":  # a flow picture per frame, at another size than the frame (as some archives)
                pic = np.random.default_rng(t).integers(0, 255, (24, 32, 3), np.uint8)
                write_jpeg(root / "flow" / name / f"{t:05d}.jpg", pic)
                rel_flows.append(f"flow/{name}/{t:05d}.jpg")
                pictures[t] = (root / "flow" / name / f"{t:05d}.jpg").read_bytes()
        masks_rel = {}
        for t in range(5):
            p = root / "mask" / name / f"{t:05d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), masks[t].astype(np.uint8) * 255)
            masks_rel[t] = f"mask/{name}/{t:05d}.png"
        records.append(
            VideoRecord(
                video_id=name,
                name=name,
                format="hmhi",
                split="train",
                source_split="train",
                kind="frames",
                source=f"frame/{name}",
                frames=rel_frames,
                masks=masks_rel,
                flows=rel_flows,
            )
        )
    out = tmp_path / "out"
    cfg = PrecomputeFlowConfig(input=str(root), output=str(out))
    cfg.flow.engine = "pictures"
    cfg.shards.clip_length = 3
    stage = GroupStage(
        cfg.flow,
        "cpu",
        1,
        load_kwargs={"input_url": str(root), "clip_length": 3, "flow_pictures": True},
        encode_kwargs={"jpeg_quality": 90, "flow_level": 1},
        output=str(out),
        target_bytes=10**9,
    )
    (group,) = plan_groups(
        [{"video_id": r.video_id, "record": json.dumps(r.to_dict()), "skip_keys": "[]"} for r in records],
        group_videos=2,
    )
    result = stage(group)
    videos = json.loads(result["videos"])
    assert videos["nopics"]["status"] == "rejected"
    assert (
        "nopics" in videos["nopics"]["reason"]
        and "0 flow pictures for 5 frames" in videos["nopics"]["reason"]
    )
    write_index_part(str(out), result["group"], json.loads(result["rows"]))
    consolidate_index(str(out))

    (url,) = shard_urls(str(out))
    samples = _wds_samples([url])
    assert [s["__key__"] for s in samples] == ["bear__000000", "bear__000002"]  # clips of 2 and 3 frames
    for s in samples:
        meta = json.loads(s["meta.json"])
        assert meta["flow_source"] == "pictures" and meta["flow"]["engine"] == "pictures"
        assert not [k for k in s if k.startswith("flow.")]  # no computed flow members
        for i, t in enumerate(meta["frame_indices"]):
            assert s[f"flowpic.{i:03d}.jpg"] == pictures[t]  # the file's bytes, not re-encoded
    clip = decode_clip(samples[1])
    assert (
        clip.flows is None and clip.flow_pictures.shape == (3, 24, 32, 3) and clip.frame_indices == [2, 3, 4]
    )
    expected = cv2.imdecode(np.frombuffer(pictures[3], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(clip.flow_pictures[1], expected)

    # A training clip from the sample feeds the picture itself (resized, normalised): no flow_to_rgb.
    no_aug = AugmentConfig(flip_prob=0.0, photometric=False)
    tensors = make_training_clip(samples[1], 1, decode_clip, 0, 0, 0, 3, 1, 32, no_aug)
    sampled = decode_clip(samples[1], positions=list(range(3)))
    want = normalize_images(np.stack([resize_rgb(p, 32) for p in sampled.flow_pictures]))
    assert tensors.flows.shape[0] == 3
    assert all(
        any(torch.equal(fed, w) for w in want) for fed in tensors.flows
    )  # every frame's input: a picture


def test_settings_guard_hashes_a_flow_checkpoint_read_from_s3(s3_bucket):
    """Resume trusts only what is complete: the fingerprint holds the checkpoint's SHA-256, not just its URL, so
    new weights at the same URL are refused."""
    import hashlib

    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import _check_settings, _settings

    weights = open_storage(f"{s3_bucket}/weights")
    weights.write_bytes("flow.ckpt", b"first weights")
    cfg = PrecomputeFlowConfig(input="unused", output=f"{s3_bucket}/out")
    cfg.flow.engine, cfg.flow.checkpoint = "rapidflow_it1", f"{s3_bucket}/weights/flow.ckpt"
    assert _settings(cfg)["flow_checkpoint_sha256"] == hashlib.sha256(b"first weights").hexdigest()
    out = open_storage(cfg.output)
    _check_settings(out, cfg)
    _check_settings(out, cfg)  # same weights: accepted
    weights.write_bytes("flow.ckpt", b"other weights, same URL")
    with pytest.raises(ConfigError, match="flow_checkpoint_sha256"):
        _check_settings(out, cfg)
    cfg.flow.checkpoint = f"{s3_bucket}/weights/missing.ckpt"
    with pytest.raises(ConfigError, match=r"flow.checkpoint.*missing.ckpt"):
        _settings(cfg)


def test_growing_a_corpus_never_moves_a_finished_video_between_splits(tmp_path):
    from pipeline.ingest.formats import VideoRecord
    from pipeline.ingest.manifest import assign_val_split
    from tests.media import write_frames_folder

    def fresh_splits(names):  # what a stateless assignment would give for this corpus
        recs = [
            VideoRecord(
                video_id=n, name=n, format="frames", split="train", source_split="", kind="frames", source=n
            )
            for n in names
        ]
        assign_val_split(recs, 0.25)
        return {r.video_id: r.split for r in recs}

    first = [f"a{i}" for i in range(4)]
    # Added videos chosen so that a stateless assignment of the grown corpus would move a finished video.
    added = next(
        extra
        for k in range(50)
        for extra in [[f"b{k}_{i}" for i in range(4)]]
        if any(fresh_splits(first + extra)[n] != fresh_splits(first)[n] for n in first)
    )
    corpus = tmp_path / "c"
    for n in first:
        write_frames_folder(corpus, n, make_scene(3, (32, 32), seed=len(n))[0])
    out = str(tmp_path / "out")
    args = [
        "--input",
        str(corpus),
        "--output",
        out,
        "--format",
        "frames",
        "--clip-length",
        "3",
        "--flow-preset",
        "ultrafast",
        "--val-fraction",
        "0.25",
    ]
    main(args)

    def splits():
        rows = open_storage(out).read_parquet("manifest.parquet").to_pylist()
        return {r["video_id"]: r["split"] for r in rows}

    before = splits()
    assert sorted(before.values()) == ["train", "train", "train", "val"]
    for n in added:
        write_frames_folder(corpus, n, make_scene(3, (32, 32), seed=len(n))[0])
    summary = main(args)
    assert summary["counts"]["video"] == {"done": 4, "skipped": 4, "rejected": 0}
    after = splits()
    assert {n: after[n] for n in first} == before  # finished videos keep their split
    assert "val" in {after[n] for n in added}  # new videos get their own share of val
    index = read_index(out)
    for vid, split in zip(
        index.column("video_id").to_pylist(), index.column("split").to_pylist(), strict=True
    ):
        assert after[vid] == split


def test_a_folder_with_foreign_tar_files_is_refused_untouched(tmp_path):
    """precompute_flow deletes only its own uncommitted shards, and only in its own output: a folder that holds
    other files is refused before anything is written or deleted (exit 2, one line)."""
    write_davis(tmp_path / "c", {"v0": 6}, size=(48, 64))
    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    tars = {"train-0123456789ab-0000.tar": b"looks like ours", "backup.tar": b"someone else's"}
    for name, data in tars.items():
        (foreign / "shards" / name).write_bytes(data)
    args = ["--input", str(tmp_path / "c"), "--output", str(foreign), "--clip-length", "4"]
    proc = subprocess.run(
        [sys.executable, "jobs/precompute_flow.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "is not empty" in error_lines[0] and str(foreign) in error_lines[0]
    assert sorted(p.name for p in foreign.rglob("*")) == sorted(
        ["shards", *tars]
    )  # nothing written or removed
    assert all((foreign / "shards" / name).read_bytes() == data for name, data in tars.items())


def test_images_over_the_pixel_limit_reject_their_video_or_drop_their_mask(tmp_path):
    """A 20000x20000 frame rejects its video naming the file; such a mask is dropped like other bad masks; the other
    videos are whole."""
    from tests.media import bomb_png

    root = tmp_path / "c"
    write_davis(root, {"calm": 6, "bad_mask": 6, "bad_frame": 6}, size=(48, 64))
    (root / "Annotations" / "480p" / "bad_mask" / "00002.png").write_bytes(bomb_png())
    (root / "JPEGImages" / "480p" / "bad_frame" / "00003.jpg").write_bytes(bomb_png())
    out = str(tmp_path / "out")
    summary = main(["--input", str(root), "--output", out, "--clip-length", "3"])
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 1}
    rejected = summary["rejected"][0]
    assert rejected["name"] == "bad_frame" and "bad_frame/00003.jpg" in rejected["reason"]
    assert "400,000,000 pixels" in rejected["reason"]
    manifest = {r["video_id"]: r for r in open_storage(out).read_parquet("manifest.parquet").to_pylist()}
    assert manifest["bad_mask"]["annotated_frames"] == [0, 1, 3, 4, 5]  # the bomb mask dropped
    assert manifest["calm"]["annotated_frames"] == list(range(6))
    assert set(read_index(out).column("video_id").to_pylist()) == {"calm", "bad_mask"}

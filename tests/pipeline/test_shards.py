"""Shard samples, the writer and the index: round trips, member order, atomic commit, checksums, storage."""

import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from pipeline.shards import (
    INDEX_NAME,
    ShardChecksumError,
    ShardWriter,
    decode_clip,
    encode_clip,
    read_index,
    sample_key,
    shard_urls,
    verify_shard,
)
from pipeline.storage import open_storage
from tests.media import make_scene


def _sample(video="vid", start=0, n=4, seed=0):
    frames, masks = make_scene(n, (48, 64), seed=seed)
    rng = np.random.default_rng(seed)
    flows = rng.normal(scale=3.0, size=(n, 48, 64, 2)).astype(np.float32)
    valid = np.array([i % 2 == 0 for i in range(n)])
    meta = {"video_id": video, "split": "train", "frame_indices": list(range(start, start + n))}
    key = sample_key(video, start)
    return key, frames, flows, masks & valid[:, None, None], valid, meta


def test_encode_decode_round_trip():
    key, frames, flows, masks, valid, meta = _sample()
    members = encode_clip(key, frames, flows, masks, valid, meta, jpeg_quality=95)
    assert list(members) == sorted(members)
    assert [k for k in members if k.startswith("mask")] == ["mask.000.png", "mask.002.png"]  # only annotated
    clip = decode_clip(members)
    assert clip.key == key == "vid__000000" and clip.video_id == "vid" and clip.split == "train"
    assert clip.frame_indices == [0, 1, 2, 3]
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3  # JPEG q95
    np.testing.assert_allclose(clip.flows, flows, atol=np.abs(flows).max() * 2 ** -10)  # float16
    assert np.array_equal(clip.masks, masks) and np.array_equal(clip.mask_valid, valid)
    assert clip.meta["sample_version"] == 2
    assert [k for k in members if k.startswith("flow")] == [f"flow.{i:03d}.f16.zst" for i in range(4)]


def test_partial_decode_and_uncompressed_flows():
    key, frames, flows, masks, valid, meta = _sample(n=6)
    members = encode_clip(key, frames, flows, masks, valid, meta, flow_level=0)
    assert all(len(members[f"flow.{i:03d}.f16"]) == flows[i].size * 2 for i in range(6))  # stored raw
    assert np.array_equal(decode_clip(members).flows, flows.astype(np.float16))
    full = decode_clip(members)
    part = decode_clip(members, positions=[4, 1, 2])
    assert part.frame_indices == [4, 1, 2] and part.mask_valid.tolist() == [True, False, True]
    assert np.array_equal(part.frames, full.frames[[4, 1, 2]]) and np.array_equal(part.flows, full.flows[[4, 1, 2]])
    assert np.array_equal(part.masks, full.masks[[4, 1, 2]])
    with pytest.raises(IndexError, match="outside"):
        decode_clip(members, positions=[6])


def test_encode_refuses_inconsistent_samples():
    key, frames, flows, masks, valid, meta = _sample()
    with pytest.raises(ValueError, match="shapes disagree"):
        encode_clip(key, frames, flows[:3], masks, valid, meta)
    with pytest.raises(ValueError, match="must not contain"):
        encode_clip("a.b", frames, flows, masks, valid, meta)


def test_decode_reports_missing_members():
    key, frames, flows, masks, valid, meta = _sample()
    members = encode_clip(key, frames, flows, masks, valid, meta)
    del members["frame.001.jpg"]
    with pytest.raises(KeyError, match="frame.001.jpg"):
        decode_clip(members)
    with pytest.raises(KeyError, match="meta.json"):
        decode_clip({"__key__": "x", "flow.000.f16.zst": b""})
    members = encode_clip(key, frames, flows, masks, valid, meta)
    members["flow.002.f16.zst"] = members["flow.002.f16.zst"][:50]
    with pytest.raises(ValueError, match=r"vid__000000\.flow\.002\.f16\.zst"):
        decode_clip(members)
    # Bytes damaged in place (zstd frames carry no checksum): caught by the CRC-32 in meta.json.
    members = encode_clip(key, frames, flows, masks, valid, meta)
    damaged = bytearray(members["flow.001.f16.zst"])
    damaged[len(damaged) // 2] ^= 0x40
    members["flow.001.f16.zst"] = bytes(damaged)
    with pytest.raises(ValueError, match=r"vid__000000\.flow\.001\.f16\.zst: damaged"):
        decode_clip(members)


def test_decode_reads_version_1_samples():
    """Shards written before per-frame flow members (one zip-deflated flows.npz per sample) still decode."""
    import io
    import json
    import zipfile

    key, frames, flows, masks, valid, meta = _sample(n=3)
    members = {k: v for k, v in encode_clip(key, frames, flows, masks, valid, meta).items()
               if not k.startswith("flow.")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("flows.npy", "w") as f:
        np.lib.format.write_array(f, flows.astype(np.float16))
    members["flows.npz"] = buf.getvalue()
    members["meta.json"] = json.dumps(dict(json.loads(members["meta.json"]), sample_version=1)).encode()
    clip = decode_clip(members, positions=[2, 0])
    assert np.array_equal(clip.flows, flows.astype(np.float16)[[2, 0]])


def test_writer_commits_shards_then_indexes_them(storage_url):
    st = open_storage(storage_url)
    committed = []
    # stream_bytes below the shard size: each shard is streamed to storage in several pieces while it grows.
    writer = ShardWriter(st, target_bytes=60_000, stream_bytes=15_000,
                         on_commit=lambda name, rows: committed.append(name))
    expected = {}
    for v, split in (("a", "train"), ("b", "train"), ("c", "val")):
        for start in (0, 4):
            key, frames, flows, masks, valid, meta = _sample(v, start, seed=start + ord(v))
            meta["split"] = split
            members = encode_clip(key, frames, flows, masks, valid, meta)
            expected[key] = (frames, flows, masks)
            writer.add(split, key, members, {"video_id": v, "clip_index": start // 4, "n_clips": 2,
                                             "frame_indices": list(range(start, start + 4)), "n_frames": 4,
                                             "n_masks": int(valid.sum()), "height": 48, "width": 64})
            if split == "train" and v == "a" and start == 0:
                assert not st.exists(INDEX_NAME)  # nothing is indexed before its shard is uploaded
    writer.close()
    index = read_index(storage_url)
    assert sorted(index.column("key").to_pylist()) == sorted(expected)
    assert committed and set(committed) == set(index.column("shard").to_pylist())
    names = [s.rsplit("/", 1)[1] for s in shard_urls(storage_url)]
    assert names[0] == "train-000000.tar" and all(n.startswith(("train-", "val-")) for n in names)
    assert all("/val-" in u for u in shard_urls(storage_url, split="val"))
    # Every sample is contiguous and sorted in its tar, at the recorded offset, with the recorded checksum.
    for shard in set(index.column("shard").to_pylist()):
        data = st.read_bytes(shard)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = [m.name for m in tar.getmembers()]
        keys = [m.split(".", 1)[0] for m in members]
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(runs))  # each sample's members are contiguous
        for k in set(keys):
            own = [m for m in members if m.split(".", 1)[0] == k]
            assert own == sorted(own)
        rows = [r for r in index.to_pylist() if r["shard"] == shard]
        verify_shard(st.join(shard), rows[0]["shard_sha256"])
        for r in rows:
            with tarfile.open(fileobj=io.BytesIO(data[r["offset"]:r["offset"] + r["bytes"]] + b"\0" * 1024)) as t:
                assert {m.name.split(".", 1)[0] for m in t.getmembers()} == {r["key"]}
    # And webdataset reads them back (local files; s3 via its gopen needs a handler, see the job tests).
    if st.is_local:
        for sample in wds.WebDataset(shard_urls(storage_url), shardshuffle=False):
            clip = decode_clip(sample)
            frames, flows, masks = expected[clip.key]
            assert np.array_equal(clip.masks, masks & clip.mask_valid[:, None, None])
            np.testing.assert_allclose(clip.flows, flows, atol=0.02)


def test_aborted_writer_publishes_no_shard(storage_url):
    """Samples already streamed to storage stay invisible when the writer aborts (a killed job's shard)."""
    st = open_storage(storage_url)
    writer = ShardWriter(st, target_bytes=1 << 30, stream_bytes=10_000)
    for start in range(0, 24, 4):
        key, frames, flows, masks, valid, meta = _sample("v", start, seed=start)
        writer.add("train", key, encode_clip(key, frames, flows, masks, valid, meta),
                   {"video_id": "v", "clip_index": start // 4, "n_clips": 6,
                    "frame_indices": list(range(start, start + 4)), "n_frames": 4, "n_masks": 2,
                    "height": 48, "width": 64})
    (shard,) = writer._open.values()
    for push in shard.pushes:
        push.result()
    assert len(shard.pushes) >= 2 and shard.sent > 0  # bytes went out before the shard was complete
    writer.abort()
    assert st.list(recursive=True) == []


def test_verify_shard_detects_corruption(tmp_path):
    st = open_storage(str(tmp_path))
    writer = ShardWriter(st, target_bytes=1)
    key, frames, flows, masks, valid, meta = _sample()
    writer.add("train", key, encode_clip(key, frames, flows, masks, valid, meta),
               {"video_id": "vid", "clip_index": 0, "n_clips": 1, "frame_indices": [0, 1, 2, 3], "n_frames": 4,
                "n_masks": 2, "height": 48, "width": 64})
    writer.close()
    row = read_index(str(tmp_path)).to_pylist()[0]
    url = st.join(row["shard"])
    verify_shard(url, row["shard_sha256"])
    data = bytearray(st.read_bytes(row["shard"]))
    data[700] ^= 0xFF
    st.write_bytes(row["shard"], bytes(data))
    with pytest.raises(ShardChecksumError, match="train-000000.tar"):
        verify_shard(url, row["shard_sha256"])


def test_writer_continues_numbering_from_an_existing_index(tmp_path):
    st = open_storage(str(tmp_path))
    for round_ in range(2):
        index = st.read_parquet(INDEX_NAME) if st.exists(INDEX_NAME) else None
        writer = ShardWriter(st, target_bytes=1, index=index)
        key, frames, flows, masks, valid, meta = _sample(f"v{round_}")
        writer.add("train", key, encode_clip(key, frames, flows, masks, valid, meta),
                   {"video_id": f"v{round_}", "clip_index": 0, "n_clips": 1, "frame_indices": [0, 1, 2, 3],
                    "n_frames": 4, "n_masks": 2, "height": 48, "width": 64})
        writer.close()
    index = read_index(str(tmp_path))
    assert index.column("shard").to_pylist() == ["shards/train-000000.tar", "shards/train-000001.tar"]

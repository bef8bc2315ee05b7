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
    np.testing.assert_allclose(clip.flows, flows, atol=np.abs(flows).max() * 2**-10)  # float16
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
    assert np.array_equal(part.frames, full.frames[[4, 1, 2]]) and np.array_equal(
        part.flows, full.flows[[4, 1, 2]]
    )
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
    members = {
        k: v
        for k, v in encode_clip(key, frames, flows, masks, valid, meta).items()
        if not k.startswith("flow.")
    }
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
    writer = ShardWriter(
        st, target_bytes=60_000, stream_bytes=15_000, on_commit=lambda name, rows: committed.append(name)
    )
    expected = {}
    for v, split in (("a", "train"), ("b", "train"), ("c", "val")):
        for start in (0, 4):
            key, frames, flows, masks, valid, meta = _sample(v, start, seed=start + ord(v))
            meta["split"] = split
            members = encode_clip(key, frames, flows, masks, valid, meta)
            expected[key] = (frames, flows, masks)
            writer.add(
                split,
                key,
                members,
                {
                    "video_id": v,
                    "clip_index": start // 4,
                    "n_clips": 2,
                    "frame_indices": list(range(start, start + 4)),
                    "n_frames": 4,
                    "n_masks": int(valid.sum()),
                    "height": 48,
                    "width": 64,
                },
            )
            if split == "train" and v == "a" and start == 0:
                # Nothing is indexed before its shard is uploaded (the upload thread may already have finished).
                indexed = read_index(storage_url).column("shard").to_pylist() if st.exists(INDEX_NAME) else []
                assert all(st.exists(shard) for shard in indexed)
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
            with tarfile.open(
                fileobj=io.BytesIO(data[r["offset"] : r["offset"] + r["bytes"]] + b"\0" * 1024)
            ) as t:
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
        writer.add(
            "train",
            key,
            encode_clip(key, frames, flows, masks, valid, meta),
            {
                "video_id": "v",
                "clip_index": start // 4,
                "n_clips": 6,
                "frame_indices": list(range(start, start + 4)),
                "n_frames": 4,
                "n_masks": 2,
                "height": 48,
                "width": 64,
            },
        )
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
    writer.add(
        "train",
        key,
        encode_clip(key, frames, flows, masks, valid, meta),
        {
            "video_id": "vid",
            "clip_index": 0,
            "n_clips": 1,
            "frame_indices": [0, 1, 2, 3],
            "n_frames": 4,
            "n_masks": 2,
            "height": 48,
            "width": 64,
        },
    )
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
        writer.add(
            "train",
            key,
            encode_clip(key, frames, flows, masks, valid, meta),
            {
                "video_id": f"v{round_}",
                "clip_index": 0,
                "n_clips": 1,
                "frame_indices": [0, 1, 2, 3],
                "n_frames": 4,
                "n_masks": 2,
                "height": 48,
                "width": 64,
            },
        )
        writer.close()
    index = read_index(str(tmp_path))
    assert index.column("shard").to_pylist() == ["shards/train-000000.tar", "shards/train-000001.tar"]


def _rows(shard: str, keys: list[str], split: str = "train") -> list[dict]:
    return [
        {
            "key": k,
            "shard": shard,
            "split": split,
            "video_id": k.split("__")[0],
            "clip_index": i,
            "n_clips": 1,
            "frame_indices": [0],
            "n_frames": 1,
            "n_masks": 1,
            "height": 8,
            "width": 8,
            "offset": 512 * i,
            "bytes": 512,
            "sha256": "s",
            "shard_bytes": 4096,
            "shard_sha256": "x",
        }
        for i, k in enumerate(keys)
    ]


def test_index_parts_are_unioned_consolidated_and_listed_for_wids(storage_url):
    from pipeline.shards import consolidate_index, list_index_parts, read_index_parts, write_index_part

    st = open_storage(storage_url)
    with pytest.raises(FileNotFoundError, match="no shard index"):
        read_index(storage_url)
    write_index_part(
        st,
        "g1",
        _rows("shards/train-g1-0000.tar", ["a__000000", "b__000000"]),
        videos={"a": {"frame_count": 1}},
        writer="host:1",
    )
    write_index_part(st, "g2", _rows("shards/val-g2-0000.tar", ["c__000000"], split="val"), writer="host:2")
    assert list_index_parts(st) == ["index/g1.parquet", "index/g2.parquet"]
    assert not st.exists(INDEX_NAME)
    assert sorted(read_index(storage_url).column("key").to_pylist()) == [
        "a__000000",
        "b__000000",
        "c__000000",
    ]
    _, videos, writers = read_index_parts(storage_url)
    assert videos == {"a": {"frame_count": 1}} and set(writers.values()) == {"host:1", "host:2"}

    consolidate_index(storage_url)
    whole = st.read_bytes(INDEX_NAME)
    assert read_index(storage_url).num_rows == 3 and read_index_parts(storage_url)[1] == {}  # parts are held
    consolidate_index(storage_url)
    assert st.read_bytes(INDEX_NAME) == whole  # nothing new: nothing rewritten
    doc = st.read_json("train.wids.json")
    assert doc["__kind__"] == "wids-shard-index-v1" and doc["wids_version"] == 1
    assert doc["shardlist"] == [{"url": "shards/train-g1-0000.tar", "nsamples": 2, "filesize": 4096}]
    assert [s["url"] for s in st.read_json("val.wids.json")["shardlist"]] == ["shards/val-g2-0000.tar"]

    # A part committed after the consolidation is seen at once, and the next consolidation takes it in.
    write_index_part(st, "g3", _rows("shards/train-g3-0000.tar", ["d__000000"]))
    assert read_index(storage_url).num_rows == 4
    consolidate_index(storage_url)
    assert [s["nsamples"] for s in st.read_json("train.wids.json")["shardlist"]] == [2, 1]
    assert sorted(shard_urls(storage_url)) == sorted(
        st.join(s) for s in ["shards/train-g1-0000.tar", "shards/val-g2-0000.tar", "shards/train-g3-0000.tar"]
    )


def test_a_commit_does_not_read_or_rewrite_what_is_committed(tmp_path):
    """Constant-cost commits: committing a part writes one small object, whatever the number of parts."""
    from pipeline.shards import write_index_part

    st = open_storage(str(tmp_path))
    for g in range(50):
        write_index_part(st, f"g{g:03d}", _rows(f"shards/train-g{g:03d}-0000.tar", [f"v{g}__000000"]))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    write_index_part(st, "g999", _rows("shards/train-g999-0000.tar", ["w__000000"]))
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {tmp_path / "index" / "g999.parquet"}
    assert all(after[p] == t for p, t in before.items())


def test_read_samples_verifies_the_shard_once_in_the_reading_process(tmp_path, monkeypatch):
    import pipeline.shards as shards_mod
    from pipeline.shards import ShardEntry, read_samples

    st = open_storage(str(tmp_path))
    writer = ShardWriter(st, target_bytes=1 << 30)
    for start in (0, 4):
        key, frames, flows, masks, valid, meta = _sample("v", start, seed=start)
        writer.add(
            "train",
            key,
            encode_clip(key, frames, flows, masks, valid, meta),
            {
                "video_id": "v",
                "clip_index": start // 4,
                "n_clips": 2,
                "frame_indices": [0, 1, 2, 3],
                "n_frames": 4,
                "n_masks": 2,
                "height": 48,
                "width": 64,
            },
        )
    writer.close()
    rows = read_index(str(tmp_path)).to_pylist()
    entry = ShardEntry(
        url=st.join(rows[0]["shard"]),
        offsets=[r["offset"] for r in rows],
        sizes=[r["bytes"] for r in rows],
        checksum=rows[0]["shard_sha256"],
    )
    calls = []
    real = shards_mod.verify_shard
    monkeypatch.setattr(shards_mod, "verify_shard", lambda url, sha: (calls.append(url), real(url, sha)))
    assert [s["__key__"] for s in read_samples(entry, 0, 1)] == ["v__000000"]
    assert [s["__key__"] for s in read_samples(entry, 1, 2)] == ["v__000004"]
    assert calls == [entry.url]  # the first read verified the whole shard; the second did not again
    bad = ShardEntry(url=entry.url, offsets=entry.offsets, sizes=entry.sizes, checksum="0" * 64)
    with pytest.raises(ShardChecksumError, match="train-000000.tar"):
        next(read_samples(bad, 0, 1))


def test_flow_pictures_are_stored_unchanged_and_decoded(tmp_path):
    import cv2

    key, frames, _, masks, valid, meta = _sample(n=3)
    pics = []
    for i in range(3):
        ok, buf = cv2.imencode(".png" if i == 1 else ".jpg", np.full((20, 30, 3), 40 * i, np.uint8))
        pics.append((f"{i:05d}{'.png' if i == 1 else '.jpg'}", buf.tobytes()))
    members = encode_clip(key, frames, None, masks, valid, meta, flow_pictures=pics)
    assert [m for m in members if m.startswith("flow")] == [
        "flowpic.000.jpg",
        "flowpic.001.png",
        "flowpic.002.jpg",
    ]
    assert members["flowpic.001.png"] == pics[1][1]
    clip = decode_clip(members, positions=[2, 1])
    assert clip.flows is None and clip.meta["flow_source"] == "pictures"
    assert clip.flow_pictures.shape == (2, 20, 30, 3) and int(clip.flow_pictures[1].mean()) == 40
    assert clip.flow_images() is clip.flow_pictures
    with pytest.raises(ValueError, match="only JPEG or PNG"):
        encode_clip(key, frames, None, masks, valid, meta, flow_pictures=[("a.bmp", b"x")] * 3)


def test_shards_are_what_webdataset_writes_and_read_back_by_wids_and_read_samples(tmp_path):
    """The shard writer's bytes equal webdataset.TarWriter's for the same samples (the format is webdataset's,
    member for member); wids opens them from <split>.wids.json, and read_samples (webdataset's tar iterators
    over a byte range) gives the same samples from any offset of the index."""
    import wids

    from pipeline.shards import ShardEntry, read_samples, write_wids_index

    st = open_storage(str(tmp_path / "out"))
    writer = ShardWriter(st, target_bytes=1 << 30)
    written = []
    for v in range(3):
        key, frames, flows, masks, valid, meta = _sample(f"v{v}", 4 * v, n=3, seed=v)
        members = encode_clip(key, frames, flows, masks, valid, meta)
        written.append({"__key__": key, **members})
        writer.add(
            "train",
            key,
            members,
            {
                "video_id": f"v{v}",
                "clip_index": 0,
                "n_clips": 1,
                "frame_indices": meta["frame_indices"],
                "n_frames": 3,
                "n_masks": int(valid.sum()),
                "height": 48,
                "width": 64,
            },
        )
    writer.close()

    expected = io.BytesIO()
    tar_writer = wds.TarWriter(expected, encoder=False, user="", group="", mode=0o644, mtime=0)
    for sample in written:
        tar_writer.write(sample)
    tar_writer.close()  # ends the tar; the stream stays open
    assert st.read_bytes("shards/train-000000.tar") == expected.getvalue()

    index = read_index(st)
    write_wids_index(st, index)
    dataset = wids.ShardListDataset(
        st.join("train.wids.json"), cache_dir=str(tmp_path / "wids-cache"), transformations=[]
    )
    by_wids = [
        {k.lstrip("."): v.read() for k, v in dataset[i].items() if k.startswith(".")} for i in range(3)
    ]
    assert by_wids == [{k: v for k, v in s.items() if k != "__key__"} for s in written]

    rows = index.to_pylist()
    entry = ShardEntry(
        url=st.join(rows[0]["shard"]),
        offsets=[r["offset"] for r in rows],
        sizes=[r["bytes"] for r in rows],
        checksum=rows[0]["shard_sha256"],
    )
    for start in range(3):
        got = list(read_samples(entry, start))
        assert [s["__key__"] for s in got] == [s["__key__"] for s in written[start:]]
        assert all(s["__url__"] == entry.url for s in got)
        assert [{k: v for k, v in s.items() if k != "__url__"} for s in got] == written[start:]

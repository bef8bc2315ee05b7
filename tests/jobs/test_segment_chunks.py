"""The CPU stage of jobs/segment.py (pipeline.segment.source): chunked decode + flow equals whole-video flow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.flow.config import FlowConfig
from pipeline.flow.engines import create_flow_engine
from pipeline.flow.render import flow_to_rgb
from pipeline.ingest.formats import VideoRecord
from pipeline.segment.source import Chunk, Preprocessing, video_chunks
from pipeline.storage import open_storage
from pipeline.transforms import resize_rgb

H, W, SIZE = 40, 56, 32


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")  # lossless, so decoded frames equal the originals
    return buffer.getvalue()


def prep(chunk_frames: int, flow: FlowConfig, **kw) -> Preprocessing:
    return Preprocessing(input_size=SIZE, chunk_frames=chunk_frames, flow=flow, **kw)


def folder_record(storage, n: int, name: str = "seq", shapes=None) -> tuple[VideoRecord, np.ndarray]:
    rng = np.random.default_rng(n)
    base = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 2 * i, axis=1) for i in range(n)])
    rels = []
    for i, frame in enumerate(frames):
        if shapes and i in shapes:
            frame = frame[: shapes[i]]
        rels.append(f"{name}/f{i:03d}.png")
        storage.write_bytes(rels[-1], png(frame))
    rec = VideoRecord(
        video_id=name,
        name=name,
        format="frames",
        split="train",
        source_split="",
        kind="frames",
        source=name,
        frames=rels,
    )
    return rec, frames


@pytest.mark.parametrize("n, chunk", [(9, 4), (8, 4), (5, 8), (2, 1), (7, 3)])
def test_chunks_match_whole_video_flow(tmp_path, n, chunk):
    storage = open_storage(str(tmp_path))
    rec, frames = folder_record(storage, n)
    flow_cfg = FlowConfig(engine="dis", preset="ultrafast", max_side=64)
    items = list(video_chunks(storage, rec.to_dict(), prep(chunk, flow_cfg, keep_original=True)))
    assert all(isinstance(c, Chunk) for c in items)
    assert [c.last for c in items] == [False] * (len(items) - 1) + [True]
    assert [c.indices[0] for c in items] == list(range(0, n, chunk))[: len(items)]
    assert [i for c in items for i in c.indices] == list(range(n))
    names = [name for c in items for name in c.names]
    assert names == [f"f{i:03d}" for i in range(n)]
    got_flows = np.concatenate([c.flows for c in items])
    got_frames = np.concatenate([c.frames for c in items])
    np.testing.assert_array_equal(np.concatenate([c.original for c in items]), frames)
    engine = create_flow_engine("dis", max_side=64, preset="ultrafast")
    expected = np.stack([resize_rgb(flow_to_rgb(f), SIZE) for f in engine.compute(frames)])
    np.testing.assert_array_equal(got_flows, expected)
    np.testing.assert_array_equal(got_frames, np.stack([resize_rgb(f, SIZE) for f in frames]))
    assert all((c.height, c.width) == (H, W) for c in items)


def test_bad_inputs_end_with_an_error_item(tmp_path):
    storage = open_storage(str(tmp_path))
    flow_cfg = FlowConfig(engine="dis", preset="ultrafast")
    single, _ = folder_record(storage, 1, name="one")
    items = list(video_chunks(storage, single.to_dict(), prep(4, flow_cfg)))
    assert len(items) == 1 and "only 1 frame" in items[0]["error"]
    mixed, _ = folder_record(storage, 6, name="mixed", shapes={5: 30})
    items = list(video_chunks(storage, mixed.to_dict(), prep(2, flow_cfg)))
    assert (
        isinstance(items[0], Chunk)
        and "mixed/f005.png" in items[-1]["error"]
        and "different sizes" in items[-1]["error"]
    )
    storage.write_bytes("bad/f000.png", png(np.zeros((H, W, 3), np.uint8)))
    storage.write_bytes("bad/f001.png", b"\x89PNG\r\n\x1a\n truncated")
    bad = VideoRecord(
        video_id="bad",
        name="bad",
        format="frames",
        split="train",
        source_split="",
        kind="frames",
        source="bad",
        frames=["bad/f000.png", "bad/f001.png"],
    )
    items = list(video_chunks(storage, bad.to_dict(), prep(4, flow_cfg)))
    assert "bad/f001.png" in items[-1]["error"]
    missing = VideoRecord(
        video_id="gone",
        name="gone",
        format="videos",
        split="train",
        source_split="",
        kind="video",
        source="gone.mp4",
    )
    items = list(video_chunks(storage, missing.to_dict(), prep(4, flow_cfg)))
    assert "gone" in items[-1]["error"]


def write_shards(
    storage, video_id: str, n: int, clips: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """A video of ``n`` frames stored as the data pipeline does: clips (first, last) in WebDataset shards."""
    from pipeline.shards import INDEX_NAME, ShardWriter, encode_clip, read_index, sample_key

    rng = np.random.default_rng(7)
    frames = rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8)
    flows = rng.normal(0, 3, (n, H, W, 2)).astype(np.float16).astype(np.float32)
    index = read_index(storage.url) if storage.exists(INDEX_NAME) else None
    writer = ShardWriter(storage, target_bytes=1 << 30, index=index)
    for number, (first, last) in enumerate(clips):
        sl = slice(first, last + 1)
        key = sample_key(video_id, first)
        members = encode_clip(
            key,
            frames[sl],
            flows[sl],
            np.zeros((last + 1 - first, H, W), bool),
            np.zeros(last + 1 - first, bool),
            {"video_id": video_id, "split": "val", "frame_indices": list(range(first, last + 1))},
        )
        writer.add(
            "val",
            key,
            members,
            {
                "video_id": video_id,
                "clip_index": number,
                "n_clips": len(clips),
                "frame_indices": list(range(first, last + 1)),
                "n_frames": last + 1 - first,
                "n_masks": 0,
                "height": H,
                "width": W,
            },
        )
    writer.close()
    return frames, flows


def test_shards_give_frames_and_stored_flow(tmp_path):
    from pipeline.segment.source import shard_records

    storage = open_storage(str(tmp_path / "shards"))
    _, flows = write_shards(storage, "bear", 7, [(3, 6), (0, 3)])  # overlapping, written out of order
    write_shards(storage, "cows", 3, [(0, 2)])
    records = shard_records(storage)
    assert [r["video_id"] for r in records] == ["bear", "cows"] and records[0]["kind"] == "shards"
    items = list(video_chunks(storage, records[0], prep(3, FlowConfig(), keep_original=True)))
    assert [c.names for c in items] == [["00000", "00001", "00002"], ["00003", "00004", "00005"], ["00006"]]
    assert [c.last for c in items] == [False, False, True] and (items[0].height, items[0].width) == (H, W)
    expected = np.stack([resize_rgb(flow_to_rgb(f), SIZE) for f in flows])  # the stored flow, not recomputed
    np.testing.assert_array_equal(np.concatenate([c.flows for c in items]), expected)
    # A damaged shard: the sample's bytes no longer decode.
    shard = storage.list("shards")[0]
    data = bytearray(storage.read_bytes(f"shards/{shard}"))
    offset = records[0]["samples"][0]["offset"]
    data[offset + 600 : offset + 2000] = b"\0" * 1400
    storage.write_bytes(f"shards/{shard}", bytes(data))
    items = list(video_chunks(storage, shard_records(storage)[0], prep(3, FlowConfig())))
    assert "bear" in items[-1]["error"] and shard in items[-1]["error"]

"""jobs/segment.py end to end: a real mp4 and DAVIS frame folders through a small random-init HMHI-Net on CPU,
on the shared local Ray cluster, writing to local disk and to the moto S3 server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.segment import main
from pipeline.masks import decode_mask_png, rle_to_mask
from pipeline.storage import open_storage
from pipeline.video import encode_video

REPO_ROOT = Path(__file__).resolve().parents[2]
H, W = 48, 80  # deliberately not square and not a multiple of 32


def moving_square_frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.empty((n, H, W, 3), np.uint8)
    background = rng.integers(40, 120, (H, W, 3), dtype=np.uint8)
    for i in range(n):
        frames[i] = background
        x = 5 + 3 * i
        frames[i, 15:35, x : x + 20] = (220, 60, 30)
    return frames


def mp4_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    encode_video(frames, buffer, fps=10, codec="libx264", container_format="mp4")
    return buffer.getvalue()


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def common_args(tiny_checkpoint: str, input_url: str, output_url: str) -> list[str]:
    return [
        "--input",
        input_url,
        "--output",
        output_url,
        "--checkpoint",
        tiny_checkpoint,
        "--input-size",
        "64",
        "--set",
        "runtime.videos_in_flight=2",
        "--set",
        "runtime.chunk_frames=4",
        "--set",
        "flow.preset=ultrafast",
        "--set",
        "flow.max_side=128",
    ]


def check_video_outputs(out, video_id: str, n: int, names: list[str] | None = None) -> None:
    names = names or [f"{i:05d}" for i in range(n)]
    assert out.list(f"masks/{video_id}") == [f"{name}.png" for name in names]
    table = out.read_parquet(f"rle/{video_id}.parquet").to_pylist()
    assert [row["frame"] for row in table] == names and [row["frame_index"] for row in table] == list(
        range(n)
    )
    for row in table[:: max(1, n // 3)]:
        png = decode_mask_png(out.read_bytes(f"masks/{video_id}/{row['frame']}.png"))
        assert png.shape == (H, W)  # original resolution
        rle = rle_to_mask({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        np.testing.assert_array_equal(rle, png)
        assert row["area"] == int(png.sum())
    marker = out.read_json(f"done/{video_id}.json")
    assert marker["frames"] == n and marker["height"] == H and marker["width"] == W


# S3 only: the job reaches storage through Storage for both kinds (each tested on both in
# tests/pipeline/test_storage.py), and local outputs are end to end in the other tests of this module.
@pytest.mark.parametrize("storage_url", ["s3"], indirect=True)
def test_segment_videos_with_a_corrupt_one(storage_url, ray_cluster, tiny_checkpoint):
    corpus = open_storage(storage_url).child("corpus")
    corpus.write_bytes("clip.mp4", mp4_bytes(moving_square_frames(9)))
    corpus.write_bytes("sub/other clip.mp4", mp4_bytes(moving_square_frames(5, seed=1)))
    good = mp4_bytes(moving_square_frames(9, seed=2))
    corpus.write_bytes("broken.mp4", good[: len(good) // 3])  # truncated
    out_url = open_storage(storage_url).join("out")
    summary = main(
        [*common_args(tiny_checkpoint, corpus.url, out_url), "--save-probs", "--overlay", "--export", "coco"]
    )

    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 1}
    rejected = summary["rejected"][0]
    assert rejected["name"] == "broken" and "broken.mp4" in rejected["reason"]
    assert summary["figures"]["frames"] == 14 and summary["figures"]["frames_per_second"] > 0
    out = open_storage(out_url)
    check_video_outputs(out, "clip", 9)
    other = [v for v in out.list("done")][0 if out.list("done")[0] != "clip.json" else 1].removesuffix(
        ".json"
    )
    assert other.startswith("sub__other_clip-")  # sanitised id, with a hash of the original name
    check_video_outputs(out, other, 5)
    assert not out.exists("done/broken.json") and out.list("masks/broken") == []
    probs = np.asarray(Image.open(io.BytesIO(out.read_bytes("probs/clip/00004.png"))))
    assert probs.shape == (H, W) and probs.dtype == np.uint8
    overlay = out.read_bytes("overlays/clip.mp4")
    from pipeline.video import decode_video

    frames, info = decode_video(io.BytesIO(overlay), name="overlay")
    assert frames.shape[0] == 9 and (info.width, info.height) == (W, H)
    assert out.read_json("summary.json")["counts"]["video"]["done"] == 2
    # --export and --overlay: the COCO file covers both finished videos, the overlay page links the overlays.
    coco = out.read_json("exports/instances_ytvis.json")
    assert len(coco["videos"]) == 2 and {v["length"] for v in coco["videos"]} == {9, 5}
    assert 'href="clip.mp4"' in out.read_text("overlays/index.html")  # relative to overlays/

    # Rerun: finished videos are skipped, the corrupt one is reported again.
    again = main(common_args(tiny_checkpoint, corpus.url, out_url))
    assert again["counts"]["video"] == {"done": 0, "skipped": 2, "rejected": 1}


def test_segment_davis_frames_then_evaluate(tmp_path, ray_cluster, tiny_checkpoint):
    """Two annotated DAVIS sequences segmented side by side and evaluated; a third whose frame 3 is a 49 kB PNG of
    20000x20000 pixels is rejected naming the file (sized from its header, never decoded), and only it."""
    from jobs.evaluate import main as evaluate
    from tests.media import bomb_png

    corpus = open_storage(str(tmp_path / "DAVIS"))
    frames = moving_square_frames(6)
    for seq in ("bear", "cows"):
        for i, frame in enumerate(frames):
            corpus.write_bytes(f"JPEGImages/480p/{seq}/{i:05d}.jpg", jpeg(frame))
            gt = np.zeros((H, W), np.uint8)
            gt[15:35, 5 + 3 * i : 25 + 3 * i] = 255
            buffer = io.BytesIO()
            Image.fromarray(gt).save(buffer, format="PNG")
            corpus.write_bytes(f"Annotations/480p/{seq}/{i:05d}.png", buffer.getvalue())
    for i, frame in enumerate(frames[:5]):
        corpus.write_bytes(f"JPEGImages/480p/goat/{i:05d}.jpg", bomb_png() if i == 3 else jpeg(frame))
    out = tmp_path / "out"
    # fp32: the check below that two videos stepped side by side get identical masks holds bit for bit in fp32
    # only (bf16 kernels may round batch rows differently).
    summary = main(
        [
            *common_args(tiny_checkpoint, corpus.url, str(out)),
            "--set",
            "runtime.videos_in_flight=4",
            "--binarize",
            "official_minmax",
            "--precision",
            "fp32",
        ]
    )
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 1}
    reason = summary["rejected"][0]["reason"]
    assert summary["rejected"][0]["name"] == "goat" and "goat/00003.jpg" in reason
    assert "400,000,000 pixels" in reason
    store = open_storage(str(out))
    for seq in ("bear", "cows"):
        check_video_outputs(store, seq, 6)
    assert not store.exists("done/goat.json") and store.list("masks/goat") == []
    # Same weights, same frames: two videos stepped side by side get identical masks.
    for i in range(6):
        assert store.read_bytes(f"masks/bear/{i:05d}.png") == store.read_bytes(f"masks/cows/{i:05d}.png")
    # official min-max keeps some foreground in every frame
    assert all(row["area"] > 0 for row in store.read_parquet("rle/bear.parquet").to_pylist())
    # The segment output root is accepted as --pred (its masks/ folder is used).
    scores = evaluate(["--pred", str(out), "--gt", corpus.url, "--protocol", "all"])["figures"]
    assert scores["n_sequences"] == 2 and scores["n_frames"] == 12
    assert scores["missing_prediction_frames"] == {} and 0 <= scores["JF_mean"] <= 1


def test_killed_run_resumes(tmp_path, ray_cluster, tiny_checkpoint):
    corpus = open_storage(str(tmp_path / "corpus"))
    for k in range(4):
        corpus.write_bytes(f"v{k}.mp4", mp4_bytes(moving_square_frames(24, seed=k)))
    out = open_storage(str(tmp_path / "out"))
    args = [
        *common_args(tiny_checkpoint, corpus.url, out.url),
        "--set",
        "runtime.videos_in_flight=1",
        "--set",
        "runtime.videos_per_batch=1",
    ]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "jobs/segment.py", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.list("done") and out.list("masks"):
                break
            time.sleep(0.2)
        first_done = out.list("done")
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert 1 <= len(first_done) < 4
    summary = main(args)
    counts = summary["counts"]["video"]
    assert counts["rejected"] == 0 and counts["done"] + counts["skipped"] == 4 and counts["skipped"] >= 1
    assert sorted(out.list("done")) == [f"v{k}.json" for k in range(4)]
    for k in range(4):
        check_video_outputs(out, f"v{k}", 24)
    assert json.loads(json.dumps(summary["config"]))["runtime"]["videos_in_flight"] == 1


def test_segment_from_shards_and_a_crafted_index_touches_no_other_video(
    tmp_path, ray_cluster, tiny_checkpoint
):
    """A video segmented from its shards; then a shard index whose added rows say ``.``, ``..``, ``a/b`` or ``''``:
    those ids are rejected by name, and the other video's masks and done marker stay byte for byte (``masks/.`` is
    the folder of every video)."""
    import pyarrow as pa

    from pipeline.shards import INDEX_NAME
    from tests.jobs.test_segment_chunks import write_shards

    shards = open_storage(str(tmp_path / "shards"))
    write_shards(shards, "bear", 6, [(0, 3), (3, 5)])
    out = open_storage(str(tmp_path / "out"))
    summary = main(common_args(tiny_checkpoint, shards.url, out.url))
    assert summary["counts"]["video"]["done"] == 1
    table = out.read_parquet("rle/bear.parquet").to_pylist()
    assert [row["frame"] for row in table] == [f"{i:05d}" for i in range(6)]
    assert (table[0]["height"], table[0]["width"]) == (40, 56)  # the shards' frame size
    assert out.read_json("done/bear.json")["frames"] == 6
    # The scale figures: the driver's CPU and the wall time beyond the model, per finished video.
    figures = summary["figures"]
    assert 0 < figures["driver_cpu_ms_per_video"] < 1000 * summary["elapsed_s"] + 1
    assert figures["model_seconds"] > 0
    assert figures["overhead_ms_per_video"] == pytest.approx(
        1000 * (summary["elapsed_s"] - figures["model_seconds"]), abs=1000 * 0.1 * summary["elapsed_s"] + 50
    )

    before = {
        rel: out.read_bytes(rel) for rel in out.list(recursive=True) if rel.startswith(("masks/", "done/"))
    }
    assert {"done/bear.json", "masks/bear/00005.png"} <= set(before)
    index = shards.read_parquet(INDEX_NAME).replace_schema_metadata(None)
    bear = index.to_pylist()
    crafted = [dict(row, video_id=bad) for bad in (".", "..", "a/b", "") for row in bear]
    shards.write_parquet(INDEX_NAME, pa.Table.from_pylist(bear + crafted, schema=index.schema))

    summary = main(common_args(tiny_checkpoint, shards.url, out.url))  # a rerun over the crafted index
    rejected = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert set(rejected) == {"'.'", "'..'", "'a/b'", "''"}
    assert all("cannot be a file or folder name" in reason for reason in rejected.values())
    assert summary["counts"]["video"] == {"done": 0, "skipped": 1, "rejected": 4}
    after = {
        rel: out.read_bytes(rel) for rel in out.list(recursive=True) if rel.startswith(("masks/", "done/"))
    }
    assert after == before  # nothing written under another name, nothing removed, nothing changed


def test_actor_runs_the_model_on_the_thread_that_loaded_it(tmp_path, ray_cluster, tiny_checkpoint):
    """An actor's method may run on another thread than its __init__ (Ray Data's map actors, threaded actors). The
    actor still steps the model on the one thread that loaded it: a second thread doing torch work starts a second
    OpenMP team, and with more OpenMP threads than cores libgomp sleeps at every barrier (steps 10-30% slower, see
    SegmentActor.__init__)."""
    import threading

    from pipeline.config import config_from_dict, config_to_dict
    from pipeline.ingest.formats import VideoRecord
    from pipeline.segment.config import SegmentConfig
    from pipeline.segment.runner import SegmentActor

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "clip.mp4").write_bytes(mp4_bytes(moving_square_frames(6)))
    cfg = config_from_dict(
        SegmentConfig,
        {
            "input": str(corpus),
            "output": str(tmp_path / "out"),
            "model": {"checkpoint": tiny_checkpoint, "input_size": 64},
            "runtime": {"chunk_frames": 4, "cpus_per_actor": 1},
            "flow": {"preset": "ultrafast", "max_side": 128},
        },
    )
    actor = SegmentActor(config_to_dict(cfg))
    loader = actor._model_thread.submit(
        threading.get_ident
    ).result()  # the actor's one pool thread loaded the model
    stepped_on = set()
    actor.segmenter.net.backbone.register_forward_pre_hook(lambda *_: stepped_on.add(threading.get_ident()))
    record = VideoRecord(
        video_id="clip",
        name="clip.mp4",
        format="videos",
        split="test",
        source_split="",
        kind="video",
        source="clip.mp4",
    )
    results = []
    caller = threading.Thread(
        target=lambda: results.extend(actor.segment_batch([json.dumps(record.to_dict())]))
    )
    caller.start()  # as Ray Data does: a thread that is not the one that ran __init__
    caller.join()
    assert [(r["status"], r["frames"]) for r in results] == [("done", 6)]
    assert stepped_on == {loader} and caller.ident not in stepped_on

"""Benchmark of the flow-precompute job and of reading its shards. One JSON line per setting on stdout.

1. Job throughput: frames/s of the flow job (``pipeline.dataset.job.run``) end to end (list, decode JPEGs, flow, encode, upload shards,
   index) on a generated 480p corpus, for DIS presets and light ptlflow models (random weights: the speed of a
   model does not depend on its weights), with Ray limited to 1 and to 2 CPUs. Each line carries a same-run
   baseline: the job's work in one plain process, no Ray (read the JPEGs from the same storage, decode, flow,
   encode, write the shards to the same storage), and the ratio (issue 26's target: at least 0.85).
2. Shard reading: training clips/s (a clip = 5 frames with flows and masks) reading the shards sequentially
   with ``webdataset`` + ``decode_clip``, against reading the same frames, flows and masks as one file per frame
   (the official loader's way), from the same storage, in the same run. Storage is the moto S3 server on
   loopback (``--storage s3``, default) or a local directory.

    python bench/flow_throughput.py                     # full run (~10 min on 2 cores)
    python bench/flow_throughput.py --quick             # DIS only, fewer frames

Figures on a shared machine are noisy: the load average at start is recorded in every line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
from common import machine, moto_s3, panning_scene

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_corpus(st, videos: int, frames: int, h: int, w: int) -> list[np.ndarray]:
    """DAVIS-2016 layout with JPEG frames and 0/255 masks; returns the frames."""
    import cv2

    all_frames = []
    for v in range(videos):
        fr = panning_scene(frames, h, w, seed=v)
        for t in range(frames):
            ok, buf = cv2.imencode(".jpg", fr[t][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            st.write_bytes(f"JPEGImages/480p/v{v}/{t:05d}.jpg", buf.tobytes())
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2, w // 4 : w // 2] = 255
            st.write_bytes(f"Annotations/480p/v{v}/{t:05d}.png", cv2.imencode(".png", mask)[1].tobytes())
        all_frames.append(fr)
    return all_frames


def baseline_fps(
    engine_name: str, opts: dict, corpus_url: str, out_url: str, clip_length: int, max_frames: int
) -> float:
    """The flow job's work in one plain process, no Ray: read each video's JPEGs from the corpus storage, decode
    them, compute the flow, encode the samples and write them as shards to the same storage (``ShardWriter``, as
    the job's workers do), on the frames the job gets."""
    import cv2

    from pipeline.flow.engines import create_flow_engine
    from pipeline.shards import ShardWriter, encode_clip
    from pipeline.storage import open_storage

    with contextlib.redirect_stdout(sys.stderr):  # ptlflow prints notices on import
        engine = create_flow_engine(engine_name, **opts)
    corpus = open_storage(corpus_url)
    writer = ShardWriter(open_storage(out_url), 256 << 20, index_name=None)
    done = 0
    t0 = time.perf_counter()
    for video in corpus.list("JPEGImages/480p"):
        names = corpus.list(f"JPEGImages/480p/{video}", suffix=".jpg")[:max_frames]
        frames = np.stack(
            [
                cv2.imdecode(
                    np.frombuffer(corpus.read_bytes(f"JPEGImages/480p/{video}/{name}"), np.uint8),
                    cv2.IMREAD_COLOR,
                )[..., ::-1]
                for name in names
            ]
        )
        flows = engine.compute(frames)
        for s in range(0, len(frames), clip_length):
            n = min(clip_length, len(frames) - s)
            key = f"{video}__{s:06d}"
            members = encode_clip(
                key,
                frames[s : s + n],
                flows[s : s + n].astype(np.float16),
                np.zeros((n,) + frames.shape[1:3], bool),
                np.zeros(n, bool),
                {},
            )
            writer.add("train", key, members, {"video_id": video, "start": s, "n_frames": n, "n_masks": 0})
        done += len(frames)
    writer.close()
    return done / (time.perf_counter() - t0)


def run_job(
    input_url: str,
    output_url: str,
    engine: str,
    preset: str,
    ckpt_free: bool,
    max_videos: int,
    clip_length: int,
    flow_level: int = 1,
) -> dict:
    from pipeline.config import load_config
    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import run as run_precompute

    overrides = [
        f"input={input_url}",
        f"output={output_url}",
        f"flow.engine={engine}",
        f"shards.clip_length={clip_length}",
        f"max_videos={max_videos}",
        f"shards.flow_compress_level={flow_level}",
    ]
    if engine == "dis":
        overrides.append(f"flow.preset={preset}")
    if ckpt_free:
        overrides.append("flow.random_init=true")
    cfg = load_config(PrecomputeFlowConfig, None, overrides)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the job's summary; stdout carries only the JSON lines
        summary = run_precompute(cfg)
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "frames": int(summary["figures"]["frames"]),
        "fps": round(summary["figures"]["frames"] / wall, 2),
        "bytes_written": int(summary["figures"]["bytes_written"]),
        # how the work was spread: groups planned, and how many worker processes wrote their shards
        "groups": int(summary["figures"]["groups_planned"]),
        "writer_processes": int(summary["figures"]["writer_processes"]),
    }


def read_rates(out_url: str, per_file_url: str, clip_frames: int = 5, rounds: int = 3) -> dict:
    """Clips/s reading every frame, flow and mask of the shards vs the same data as one file per frame."""
    import webdataset as wds

    from pipeline.masks import decode_mask_png
    from pipeline.shards import decode_clip, decode_flow, shard_urls
    from pipeline.storage import open_storage, open_url

    def s3_open(url, mode="rb", bufsize=8192, **kw):
        parent, leaf = open_url(url)
        return parent.open_stream(leaf)

    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = s3_open
    urls = shard_urls(out_url)

    import cv2

    cv2.setNumThreads(1)  # as in the trainer's decode workers; both paths decode with the same functions
    # Lay the same member bytes out one file per frame (frame JPEG, zstd float16 flow, mask PNG).
    pf = open_storage(per_file_url)
    listing = []
    first_clip = []  # per sample: its first `clip_frames` frames (one training clip per sample)
    for sample in wds.WebDataset(urls, shardshuffle=False):
        clip = decode_clip(sample)
        h, w = clip.frames.shape[1:3]
        for i, fi in enumerate(clip.frame_indices):
            base = f"{clip.video_id}/{fi:05d}"
            pf.write_bytes(f"{base}.jpg", sample[f"frame.{i:03d}.jpg"])
            pf.write_bytes(f"{base}.f16.zst", sample[f"flow.{i:03d}.f16.zst"])
            if clip.mask_valid[i]:
                pf.write_bytes(f"{base}.png", sample[f"mask.{i:03d}.png"])
            listing.append((base, bool(clip.mask_valid[i]), h, w))
        first_clip.append(listing[-len(clip.frame_indices) :][:clip_frames])

    def read_shards() -> int:
        frames = 0
        for sample in wds.WebDataset(urls, shardshuffle=False):
            frames += len(decode_clip(sample).frame_indices)
        return frames

    def read_files(items):
        for base, has_mask, h, w in items:
            cv2.imdecode(np.frombuffer(pf.read_bytes(f"{base}.jpg"), np.uint8), cv2.IMREAD_COLOR)
            decode_flow(pf.read_bytes(f"{base}.f16.zst"), h, w, f"{base}.f16.zst")
            if has_mask:
                decode_mask_png(pf.read_bytes(f"{base}.png"))

    def one_clip_per_sample() -> int:
        # What a trainer drawing one clip from each sample reads: the shard path streams the whole sample but
        # decodes only the clip's frames; the per-file path reads only those files.
        n = 0
        for sample in wds.WebDataset(urls, shardshuffle=False):
            decode_clip(sample, positions=range(clip_frames))
            n += 1
        return n

    # Alternating rounds, medians: the machine's load drifts between the two paths otherwise.
    shard_s, file_s, one_shard_s, one_file_s = [], [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n_shard_frames = read_shards()
        shard_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_files(listing)
        file_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n_clips = one_clip_per_sample()
        one_shard_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for items in first_clip:
            read_files(items)
        one_file_s.append(time.perf_counter() - t0)
    med = statistics.median
    shard_rate = n_shard_frames / clip_frames / med(shard_s)
    file_rate = len(listing) / clip_frames / med(file_s)
    one_shard_rate = n_clips / med(one_shard_s)
    one_file_rate = len(first_clip) / med(one_file_s)
    ratios = sorted(f / s for s, f in zip(shard_s, file_s, strict=True))
    return {
        "frames": n_shard_frames,
        "shard_clips_per_s": round(shard_rate, 2),
        "per_file_clips_per_s": round(file_rate, 2),
        "ratio_shards_vs_per_file": round(shard_rate / file_rate, 2),
        "rounds": rounds,
        "ratio_per_round": [round(r, 2) for r in ratios],
        "one_clip_per_sample": {
            "shard_clips_per_s": round(one_shard_rate, 2),
            "per_file_clips_per_s": round(one_file_rate, 2),
            "ratio": round(one_shard_rate / one_file_rate, 2),
        },
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=32, help="frames per video (DIS settings)")
    ap.add_argument("--ptlflow-frames", type=int, default=8, help="frames per video for ptlflow settings")
    ap.add_argument("--size", default="480x854")
    ap.add_argument("--settings", default="dis:ultrafast,dis:fast,dis:medium,rapidflow_it1,neuflow")
    ap.add_argument("--cpus", default="1,2", help="Ray CPU counts to try")
    ap.add_argument("--storage", choices=["s3", "local"], default="s3")
    ap.add_argument("--clip-length", type=int, default=32)
    ap.add_argument("--flow-compress-level", type=int, default=1, help="0 stores flows uncompressed")
    ap.add_argument("--quick", action="store_true", help="DIS medium only, 2 CPUs, 2 videos x 24 frames")
    args = ap.parse_args(argv)
    if args.quick:
        args.settings, args.cpus, args.videos, args.frames = "dis:medium", "2", 2, 24
    h, w = (int(x) for x in args.size.lower().split("x"))

    import logging

    import ray

    from pipeline.storage import open_storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    cleanup = contextlib.ExitStack()
    if args.storage == "s3":
        root = cleanup.enter_context(moto_s3("bench"))
    else:
        root = tempfile.mkdtemp(prefix="flow-bench-")
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
    desc = machine()
    corpus = f"{root}/corpus"
    write_corpus(open_storage(corpus), args.videos, max(args.frames, args.ptlflow_frames), h, w)
    try:
        last_out = None
        for setting in args.settings.split(","):
            engine, _, preset = setting.partition(":")
            is_dis = engine == "dis"
            n_frames = args.frames if is_dis else args.ptlflow_frames
            sub = f"{root}/corpus-{n_frames}"
            if not open_storage(sub).exists("JPEGImages"):
                write_corpus(open_storage(sub), args.videos, n_frames, h, w)
            opts = {"preset": preset or "medium"} if is_dis else {"random_init": True}
            base_out = f"{root}/baseline-{engine}-{preset or 'x'}-{uuid.uuid4().hex[:6]}"
            base = baseline_fps(engine, dict(opts, max_side=1024), sub, base_out, args.clip_length, n_frames)
            for cpus in (int(c) for c in args.cpus.split(",")):
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
                try:
                    out = f"{root}/out-{engine}-{preset or 'x'}-{cpus}-{uuid.uuid4().hex[:6]}"
                    res = run_job(
                        sub,
                        out,
                        engine,
                        preset or "medium",
                        not is_dis,
                        args.videos,
                        args.clip_length,
                        args.flow_compress_level,
                    )
                finally:
                    ray.shutdown()
                line = {
                    "bench": "flow_job",
                    "setting": setting,
                    "ray_cpus": cpus,
                    "size": f"{h}x{w}",
                    "storage": args.storage,
                    **res,
                    "baseline_single_process_fps": round(base, 2),
                    "ratio_vs_baseline": round(res["fps"] / base, 2),
                    "machine": desc,
                }
                print(json.dumps(line), flush=True)
                if setting == "dis:medium":
                    last_out = out
        if last_out:
            rates = read_rates(last_out, f"{root}/per-file-{uuid.uuid4().hex[:6]}")
            print(
                json.dumps(
                    {
                        "bench": "shard_read",
                        "storage": args.storage,
                        "size": f"{h}x{w}",
                        "clip_frames": 5,
                        "flow_compress_level": args.flow_compress_level,
                        **rates,
                        "machine": desc,
                    }
                ),
                flush=True,
            )
    finally:
        cleanup.close()


if __name__ == "__main__":
    sys.exit(main())

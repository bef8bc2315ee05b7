"""Training throughput: clips/s per worker and the fraction of time the step waits for data.

Two input pipelines feed the *same* training step (HMHI-Net forward over 5-frame clips, official loss, AdamW):
- ``shards``: this project's loader (``pipeline.train.data.TrainStream``: WebDataset shards read by byte range,
  shuffle buffer, decode + official sampler + augmentation in ``decode_workers`` processes, a prefetch thread);
- ``per_file`` (the baseline, the official way): a plain ``torch.utils.data.DataLoader`` with ``num_workers``
  processes over per-frame files (RGB JPEG, pre-rendered flow JPEG, mask PNG) holding the same frames, exported
  from the shards once before timing.

Prints one JSON line per (precision, loader) with the machine description and, for ``shards``, the clips/s ratio
against the baseline of the same run. On a GPU both fp32 and bf16 run; on CPU fp32 only.

    python bench/train_throughput.py                                   # tiny CPU config, synthetic shards
    python bench/train_throughput.py --device cuda --size 512 --model hmhi_mit_b1 --decoder-width 256 \
        --batch 2 --workers 6 --steps 30                               # the official 512x512 setting on a GPU
    python bench/train_throughput.py --data s3://bucket/shards/davis16 ...   # existing shards
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
from common import machine
from PIL import Image


def synthetic_shards(root: str, videos: int, frames: int, size: str) -> str:
    """Synthetic DAVIS-layout corpus -> the data pipeline's precompute_flow job -> shards under ``root``."""
    import ray

    from pipeline.config import load_config
    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.dataset.job import run as run_precompute
    from pipeline.synthetic import main as synth_main

    corpus, shards = os.path.join(root, "corpus"), os.path.join(root, "shards")
    synth_main(
        [
            "--out",
            corpus,
            "--videos",
            str(videos),
            "--frames",
            str(frames),
            "--size",
            size,
            "--set",
            "val_fraction=0.0",
        ]
    )
    if not ray.is_initialized():
        ray.init(num_cpus=min(8, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    run_precompute(
        load_config(
            PrecomputeFlowConfig, None, [f"input={corpus}", f"output={shards}", "shards.clip_length=16"]
        )
    )
    ray.shutdown()
    return shards


def export_per_file(shards, root: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Write the frames of every training sample as per-frame files; returns video -> [(rgb, flow, mask)]."""
    from pipeline.flow.render import flow_to_rgb
    from pipeline.shards import decode_clip, read_samples

    videos: dict[str, list[tuple[int, tuple[str, str, str | None]]]] = defaultdict(list)
    for entry in shards:
        for sample in read_samples(entry):
            clip = decode_clip(sample)
            folder = os.path.join(root, clip.video_id)
            os.makedirs(folder, exist_ok=True)
            for i, index in enumerate(clip.frame_indices):
                rgb, flow = (
                    os.path.join(folder, f"{index:05d}.jpg"),
                    os.path.join(folder, f"{index:05d}.flow.jpg"),
                )
                Image.fromarray(clip.frames[i]).save(rgb, quality=90)
                Image.fromarray(flow_to_rgb(clip.flows[i])).save(flow, quality=90)
                mask = None
                if clip.mask_valid[i]:
                    mask = os.path.join(folder, f"{index:05d}.png")
                    Image.fromarray(clip.masks[i].astype(np.uint8) * 255).save(mask)
                videos[clip.video_id].append((index, (rgb, flow, mask)))
    return {v: [f for _, f in sorted(items)] for v, items in videos.items()}


class PerFileClips(torch.utils.data.Dataset):
    """The official-style dataset: one random clip per video per item, read from per-frame files."""

    def __init__(self, videos: dict, size: int, repeat: int, seed: int):
        self.videos = [v for v in videos.values() if any(m is not None for _, _, m in v)]
        self.size, self.repeat, self.seed = size, repeat, seed

    def __len__(self) -> int:
        return len(self.videos) * self.repeat

    def __getitem__(self, index: int):
        from pipeline.train.augment import normalize_images, photometric_distort, resize_mask, resize_rgb
        from pipeline.train.config import AugmentConfig
        from pipeline.train.sampler import sample_clip_indices

        rng = np.random.default_rng()  # fresh entropy per item, like the official random module use
        files = self.videos[index % len(self.videos)]
        eligible = [i for i, (_, _, m) in enumerate(files) if m is not None]
        picks = sample_clip_indices(eligible, 5, 7, rng)
        rgb = np.stack([np.asarray(Image.open(files[i][0]).convert("RGB")) for i in picks])
        flow_img = np.stack([np.asarray(Image.open(files[i][1]).convert("RGB")) for i in picks])
        masks = np.stack([np.asarray(Image.open(files[i][2])) > 0 for i in picks])
        cfg = AugmentConfig()
        # Per-frame flips of image, flow image and mask (official; flow colours are not corrected).
        flipped = rng.random(len(picks)) < cfg.flip_prob
        rgb, flow_img, masks = rgb.copy(), flow_img.copy(), masks.copy()
        for i in np.flatnonzero(flipped):
            rgb[i], flow_img[i], masks[i] = rgb[i, :, ::-1], flow_img[i, :, ::-1], masks[i, :, ::-1]
        rgb = np.stack(
            [resize_rgb(np.ascontiguousarray(photometric_distort(x, rng, cfg)), self.size) for x in rgb]
        )
        flow_img = np.stack([resize_rgb(np.ascontiguousarray(x), self.size) for x in flow_img])
        gt = np.stack([resize_mask(np.ascontiguousarray(m), self.size) for m in masks])
        return (
            normalize_images(rgb),
            normalize_images(flow_img),
            torch.from_numpy(gt[:, None].astype(np.float32)),
        )


def timed_training(batches, net, optimizer, device, amp: bool, steps: int, warmup: int) -> dict:
    """Run ``warmup + steps`` training steps; time the waits for data and the whole loop after warm-up."""
    from pipeline.train.config import LossConfig
    from pipeline.train.losses import clip_loss

    it = iter(batches)
    wait = 0.0
    step_times = []
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, wait = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        frames, flows, masks = next(it)
        t1 = time.perf_counter()
        wait += t1 - t0
        frames, flows, masks = (x.to(device, non_blocking=True) for x in (frames, flows, masks))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            full, _ = net(frames, flows)
        loss, _ = clip_loss(full, masks, LossConfig())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            step_times.append(time.perf_counter() - t1)
    total = time.perf_counter() - start
    return {"total_s": total, "idle_frac": wait / total, "step_s_median": statistics.median(step_times)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="shard set URL (default: build a synthetic one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="hmhi_mit_b0")
    p.add_argument("--decoder-width", type=int, default=64)
    p.add_argument("--size", type=int, default=96, help="training input size (square)")
    p.add_argument("--batch", type=int, default=1, help="clips per step")
    p.add_argument(
        "--workers", type=int, default=1, help="decode processes (shards) = DataLoader workers (baseline)"
    )
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loader-batches", type=int, default=40, help="batches timed for the loader-only rate")
    p.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per loader (medians kept)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = leave as is)")
    p.add_argument("--synthetic-size", default="128x128", help="frame size of the synthetic corpus")
    p.add_argument("--synthetic-videos", type=int, default=8)
    p.add_argument(
        "--precisions", default="", help="comma list of fp32,bf16 (default: both on GPU, fp32 on CPU)"
    )
    args = p.parse_args(argv)

    from model import create_model
    from pipeline.shards import decode_clip
    from pipeline.train.config import AugmentConfig, DataConfig
    from pipeline.train.data import Prefetcher, TrainStream
    from pipeline.train.job import resolve_shards

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = [x for x in args.precisions.split(",") if x] or (
        ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    )
    with tempfile.TemporaryDirectory(
        prefix="bench-train-"
    ) as scratch:  # synthetic shards and per-frame files
        data = args.data or synthetic_shards(scratch, args.synthetic_videos, 32, args.synthetic_size)
        shards, _ = resolve_shards(data, "train", verify=False, need_masks=True)
        per_file = export_per_file(shards, os.path.join(scratch, "per_file"))
        n_batches = args.warmup + args.steps

        def shard_batches(n_batches: int = n_batches):
            cfg = DataConfig(
                batch_size_per_worker=args.batch,
                shuffle_buffer=16,
                prefetch_batches=4,
                decode_workers=args.workers,
            )
            stream = TrainStream(shards, cfg, AugmentConfig(), args.size, 0, 1, 0, decode_clip)
            return ((b.frames, b.flows, b.masks) for b in Prefetcher(stream, cfg.prefetch_batches))

        def file_batches(n_batches: int = n_batches):
            ds = PerFileClips(
                per_file, args.size, repeat=max(1, -(-n_batches * args.batch // len(per_file)) + 1), seed=0
            )
            return torch.utils.data.DataLoader(
                ds,
                batch_size=args.batch,
                shuffle=True,
                drop_last=True,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
                persistent_workers=args.workers > 0,
                prefetch_factor=4 if args.workers > 0 else None,
            )

        # Data-only rate of each loader (no training step): what the input pipeline alone can deliver.
        loader_only = {}
        for loader, make in (("per_file", file_batches), ("shards", shard_batches)):
            it = iter(make(args.loader_batches + 1))
            next(it)  # start-up (worker processes, first shard) is not counted
            t0 = time.perf_counter()
            for _ in range(args.loader_batches):
                next(it)
            loader_only[loader] = args.loader_batches * args.batch / (time.perf_counter() - t0)
            del it

        results = []
        for precision in precisions:
            # Alternate the loaders over rounds and keep medians: the machine may be shared and noisy.
            timings: dict[str, list[dict]] = {"per_file": [], "shards": []}
            for _ in range(args.rounds):
                for loader, make in (("per_file", file_batches), ("shards", shard_batches)):
                    torch.manual_seed(0)
                    net = (
                        create_model(args.model, memory_size=5, decoder_width=args.decoder_width)
                        .to(device)
                        .train()
                    )
                    # fused, as pipeline.train.trainer.Trainer's
                    opt = torch.optim.AdamW(net.parameters(), lr=6e-5, weight_decay=5e-4, fused=True)
                    timings[loader].append(
                        timed_training(make(), net, opt, device, precision == "bf16", args.steps, args.warmup)
                    )
                    del net, opt
            rows = {}
            for loader, runs in timings.items():
                rows[loader] = {
                    "bench": "train_throughput",
                    "loader": loader,
                    "device": device.type,
                    "precision": precision,
                    "model": args.model,
                    "decoder_width": args.decoder_width,
                    "image_size": args.size,
                    "clips_per_step": args.batch,
                    "data_workers": args.workers,
                    "steps": args.steps,
                    "rounds": args.rounds,
                    "clips_per_s_per_worker": round(
                        statistics.median(args.steps * args.batch / t["total_s"] for t in runs), 4
                    ),
                    "data_idle_frac": round(statistics.median(t["idle_frac"] for t in runs), 4),
                    "step_s_median": round(statistics.median(t["step_s_median"] for t in runs), 4),
                    "loader_only_clips_per_s": round(loader_only[loader], 3),
                    "data": data if args.data else "synthetic",
                    "machine": machine(),
                }
            base = rows["per_file"]["clips_per_s_per_worker"]
            rows["per_file"]["ratio_vs_baseline"] = 1.0
            rows["shards"]["ratio_vs_baseline"] = round(rows["shards"]["clips_per_s_per_worker"] / base, 3)
            rows["shards"]["loader_only_ratio_vs_baseline"] = round(
                loader_only["shards"] / loader_only["per_file"], 3
            )
            for row in rows.values():
                print(json.dumps(row), flush=True)
                results.append(row)
        if device.type == "cuda" and len(precisions) == 2:
            fp32 = next(r for r in results if r["precision"] == "fp32" and r["loader"] == "shards")
            bf16 = next(r for r in results if r["precision"] == "bf16" and r["loader"] == "shards")
            print(
                json.dumps(
                    {
                        "bench": "train_throughput",
                        "summary": "bf16_vs_fp32",
                        "loader": "shards",
                        "ratio": round(bf16["clips_per_s_per_worker"] / fp32["clips_per_s_per_worker"], 3),
                        "machine": machine(),
                    }
                ),
                flush=True,
            )
        return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

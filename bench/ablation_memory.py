"""Memory ablation of HMHI-Net on the synthetic corpus: does the shallow (pixel, level-1) memory help?

Four variants, trained from the same initial weights on the same clips in the same order for the same number of
steps, then scored on the held-out synthetic videos (DAVIS-2016 J&F), overall and on the frames where memory
should matter: the object **paused** (its flow matches the background's) and **occluded** (a background pole hides
part of it), as listed in each video's meta.json.

- ``none``:          no memory read (every frame is segmented on its own);
- ``semantic``:      the level-3 (semantic) memory only, read out directly (no SGIM/PLAM);
- ``hierarchical``:  both memories (level 1 pixel + level 3 semantic), read out directly (no SGIM/PLAM);
- ``full``:          both memories with SGIM and PLAM (the official HMHI-Net).

Training runs in this process (one process, ``--threads`` torch threads): a variant is a subclass of the official
network that changes only what the memory read returns, so every other module, the data, the loss
(pipeline.train.losses), the augmentation (pipeline.train.augment) and the clip sampler (pipeline.train.sampler)
are shared with jobs/train.py. Prints one JSON line per variant (with the machine and the ratio to the same-run
``none`` baseline) and, with ``--results-md``, writes the table into that Markdown file.

    python bench/ablation_memory.py --videos 24 --frames 24 --size 128 --steps 400 --results-md bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import machine

VARIANTS = ("none", "semantic", "hierarchical", "full")


def _ablated_class():
    from model.hmhi import HMHINet

    class AblatedHMHINet(HMHINet):
        """HMHI-Net whose memory read is restricted to ``variant`` (see the module docstring)."""

        def __init__(self, config, variant: str):
            super().__init__(config, model_name=f"hmhi_{config.encoder}_{variant}")
            if variant not in VARIANTS:
                raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
            self.variant = variant

        def _read(self, z1, z3, pixel_kv, semantic_kv, key_valid=(None, None), trace=None, prefix=""):
            if self.variant == "full":
                return super()._read(z1, z3, pixel_kv, semantic_kv, key_valid, trace, prefix)
            if self.variant == "none":
                return z1, z3
            semantic = self.semantic_memory.readout(z3, *semantic_kv, key_valid[1])
            if self.variant == "semantic":
                return z1, semantic
            return self.pixel_memory.readout(z1, *pixel_kv, key_valid[0]), semantic

    return AblatedHMHINet


def build_corpus(videos: int, frames: int, size: int, seed: int, val_fraction: float, flow_preset: str):
    """Render the synthetic videos (as pipeline.synthetic writes them) and their DIS flow, in memory."""
    from pipeline.flow.engines import create_flow_engine
    from pipeline.synthetic import render_video, sample_scene, scene_meta, split_sequences

    engine = create_flow_engine("dis", preset=flow_preset)
    data = []
    for index in range(videos):
        scene = sample_scene(seed, index, size, size, frames)
        rendered = render_video(scene)
        data.append(
            {
                "frames": rendered["frames"],
                "flows": engine.compute(rendered["frames"]),
                "masks": rendered["masks"],
                "meta": scene_meta(scene, rendered),
            }
        )
    train, val = split_sequences(list(range(videos)), val_fraction, seed)
    return data, train, val


def train_variant(variant: str, data, train_ids, args, init_state: dict | None, val_ids=()):
    from model.hmhi import HMHIConfig
    from pipeline.train.augment import prepare_clip
    from pipeline.train.config import AugmentConfig, LossConfig
    from pipeline.train.losses import clip_loss
    from pipeline.train.sampler import sample_clip_indices

    torch.manual_seed(args.seed)
    config = HMHIConfig(encoder=args.encoder, decoder_width=args.decoder_width, memory_size=args.memory_size)
    net = _ablated_class()(config, variant)
    if init_state is not None:
        net.load_state_dict(init_state)  # every variant starts from the same weights
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)  # the same clips, in the same order, for every variant
    augment, loss_cfg = AugmentConfig(), LossConfig()
    net.train()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        frames, flows, masks = [], [], []
        for _ in range(args.batch):
            video = data[train_ids[int(rng.integers(len(train_ids)))]]
            picks = sample_clip_indices(list(range(len(video["frames"]))), args.clip_length, 7, rng)
            clip = prepare_clip(
                video["frames"][picks],
                video["flows"][picks],
                video["masks"][picks],
                args.image_size,
                rng,
                augment,
            )
            frames.append(clip.frames)
            flows.append(clip.flows)
            masks.append(clip.masks)
        logits, _ = net.forward_clip(torch.stack(frames), torch.stack(flows))
        loss, _ = clip_loss(logits, torch.stack(masks), loss_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(
                f"  [{variant}] step {step}/{args.steps} loss {float(loss.detach()):.3f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            curve = evaluate_variant(net, data, val_ids, args.image_size)
            net.train()
            print(
                json.dumps(
                    {
                        "bench": "ablation_memory_curve",
                        "variant": variant,
                        "step": step,
                        "train_s": round(time.perf_counter() - started, 1),
                        **{k: round(v, 4) for k, v in curve.items()},
                    }
                ),
                flush=True,
            )
    return net, time.perf_counter() - started


@torch.no_grad()
def evaluate_variant(net, data, val_ids, image_size: int) -> dict:
    from pipeline.metrics import aggregate_results, evaluate_frames, sequence_statistics
    from pipeline.train.augment import prepare_clip

    net.eval()
    per_sequence, pools = {}, {"paused": ([], []), "occluded": ([], [])}
    for vid in val_ids:
        video = data[vid]
        clip = prepare_clip(video["frames"], video["flows"], video["masks"], image_size, None, None)
        logits, _ = net.forward_clip(clip.frames[None], clip.flows[None])  # fresh memory, FIFO of T frames
        size = video["masks"].shape[1:]
        prob = torch.sigmoid(F.interpolate(logits[0], size=size, mode="bilinear", align_corners=False))[:, 0]
        j, f = evaluate_frames(video["masks"], (prob > 0.5).numpy())
        per_sequence[str(vid)] = sequence_statistics(j, f, "davis2016")
        inner = range(1, len(j) - 1)  # DAVIS-2016 leaves out the first and last frames
        for tag, key in (("paused", "paused_frames"), ("occluded", "occluded_frames")):
            for t in video["meta"][key]:
                if t in inner:
                    pools[tag][0].append(j[t])
                    pools[tag][1].append(f[t])
    overall = aggregate_results(per_sequence)
    out = {"JF": overall["JF_mean"], "J": overall["J_mean"], "F": overall["F_mean"]}
    for tag, (js, fs) in pools.items():
        out[f"JF_{tag}"] = float((np.mean(js) + np.mean(fs)) / 2) if js else math.nan
        out[f"n_{tag}_frames"] = len(js)
    return out


def write_results_md(path: str, rows: list[dict], args) -> None:
    """Replace (or append) the ablation section of a Markdown results file."""
    begin, end = "<!-- ablation_memory:begin -->", "<!-- ablation_memory:end -->"
    base = (
        next(r for r in rows if r["variant"] == "none") if any(r["variant"] == "none" for r in rows) else None
    )
    lines = [
        begin,
        "## Memory ablation on the synthetic corpus (`bench/ablation_memory.py`)",
        "",
        f"Same data, initial weights, clips and budget for every variant: {args.videos} videos x {args.frames} "
        f"frames at {args.size}x{args.size} (seed {args.seed}; {rows[0]['n_val_videos']} held out), "
        f"{args.encoder} at {args.image_size}x{args.image_size}, {args.steps} steps of {args.batch} clips x "
        f"{args.clip_length} frames, lr {args.lr}. DAVIS-2016 protocol (first/last frames left out); "
        "'paused' and 'occluded' pool the per-frame J and F of those frames over the validation videos.",
        "",
        "| variant | J&F | J | F | J&F paused | J&F occluded | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['JF']:.3f} | {r['J']:.3f} | {r['F']:.3f} | {r['JF_paused']:.3f} | "
            f"{r['JF_occluded']:.3f} | {r['train_s']:.0f} |"
        )
    lines.append("")
    if base is not None and {"semantic", "hierarchical"} <= {r["variant"] for r in rows}:
        sem = next(r for r in rows if r["variant"] == "semantic")
        hie = next(r for r in rows if r["variant"] == "hierarchical")
        verdict = "helps" if hie["JF"] > sem["JF"] else "does not help"
        lines.append(
            f"Shallow (pixel) memory on top of the semantic memory {verdict} here: J&F "
            f"{sem['JF']:.3f} -> {hie['JF']:.3f} overall, {sem['JF_paused']:.3f} -> {hie['JF_paused']:.3f} "
            f"on paused frames, {sem['JF_occluded']:.3f} -> {hie['JF_occluded']:.3f} on occluded frames. "
            "One seed and a short CPU budget: differences of a few points are within run-to-run noise."
        )
    lines += [f"Machine: {json.dumps(rows[0]['machine'])}.", end]
    block = "\n".join(lines) + "\n"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="synthetic frame side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--clip-length", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--encoder", default="mit_b0")
    parser.add_argument("--decoder-width", type=int, default=64)
    parser.add_argument("--memory-size", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    # One intra-op thread: on the shared 2-core machine, 2 threads spun so much under load that steps were ~20x slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flow-preset", default="medium")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--eval-every", type=int, default=0, help="also score the validation videos every N steps"
    )
    parser.add_argument("--results-md", default="", help="Markdown file to write the table into")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; choose from {VARIANTS}")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data, train_ids, val_ids = build_corpus(
        args.videos, args.frames, args.size, args.seed, args.val_fraction, args.flow_preset
    )
    print(
        f"corpus + flow: {len(train_ids)} train / {len(val_ids)} val videos in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    from model.hmhi import HMHIConfig

    torch.manual_seed(args.seed)
    init = _ablated_class()(
        HMHIConfig(encoder=args.encoder, decoder_width=args.decoder_width, memory_size=args.memory_size),
        "full",
    ).state_dict()
    rows = []
    for variant in variants:
        net, train_s = train_variant(variant, data, train_ids, args, init, val_ids)
        scores = evaluate_variant(net, data, val_ids, args.image_size)
        row = {
            "bench": "ablation_memory",
            "variant": variant,
            **scores,
            "train_s": round(train_s, 1),
            "steps": args.steps,
            "n_val_videos": len(val_ids),
            "machine": {**machine(), "note": "shared 2-core machine: timings are noisy"},
        }
        base = next((r for r in rows if r["variant"] == "none"), None)
        row["JF_ratio_to_none"] = round(row["JF"] / base["JF"], 4) if base and base["JF"] > 0 else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.results_md:
        write_results_md(args.results_md, rows, args)
        print(f"wrote {args.results_md}", flush=True)
    return rows


if __name__ == "__main__":
    main()

"""Optical-flow engines side by side: DIS and the ptlflow models in one run. One JSON line per engine.

    python bench/flow_engines.py                                  # CPU, 480p: DIS (3 presets), neuflow2, rapidflow, raft_small
    python bench/flow_engines.py --device cuda --frames 33        # the GPU run of bench/gpu_all.sh
    python bench/flow_engines.py --engines dis:medium,neuflow2 --size 256x448 --frames 5

Each engine runs through the project's own interface (``pipeline.flow.engines.create_flow_engine``, what the flow
job and segment use): ``compute(frames)`` on a clip of ``--frames`` frames of a synthetic 480p scene gives one flow
per frame (forward, the last one backward), at the full frame size (``max_side`` = the frame's longest side: no
downscale). ptlflow models have random weights (``random_init``; their speed does not depend on the weights) and
run in fp32 batches of ``--batch-size`` pairs; DIS runs on one CPU thread per actor, as the flow job's actors do.
Every line has the median seconds per flow over ``--rounds`` interleaved rounds (after a warm-up round), the
machine, and the same-run ratio to DIS medium, the flow job's default engine (``speed_vs_dis_medium`` < 1: slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

from common import machine, panning_scene

from pipeline.flow.engines import create_flow_engine

DEFAULT_ENGINES = "dis:ultrafast,dis:fast,dis:medium,neuflow2,rapidflow,raft_small"
BASELINE = "dis:medium"


def build(spec: str, device: str, max_side: int, batch_size: int, threads: int):
    """The engine of ``spec`` (``dis:<preset>`` or a ptlflow model name) as the jobs build it."""
    if spec.startswith("dis"):
        preset = spec.partition(":")[2] or "medium"
        return create_flow_engine("dis", max_side=max_side, preset=preset, threads=1)
    with contextlib.redirect_stdout(sys.stderr):  # ptlflow prints notices on import
        return create_flow_engine(
            spec, device=device, max_side=max_side, batch_size=batch_size, random_init=True, threads=threads
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help="dis:<preset> and ptlflow model names")
    parser.add_argument("--size", default="480x854", help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip (= flows computed per round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="frame pairs per ptlflow forward pass")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the ptlflow models on CPU")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    frames = panning_scene(args.frames, height, width)
    specs = args.engines.split(",")
    if BASELINE not in specs:
        specs.append(BASELINE)
    engines = {s: build(s, args.device, max(height, width), args.batch_size, args.threads) for s in specs}
    times: dict[str, list[float]] = {s: [] for s in specs}
    for _ in range(args.rounds + 1):  # round 0 warms up (cuDNN autotuning, allocator, caches) and is dropped
        for spec, engine in engines.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            flows = engine.compute(frames)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[spec].append((time.perf_counter() - started) / len(frames))
            assert flows.shape == (len(frames), height, width, 2)
    baseline = statistics.median(times[BASELINE][1:])
    for spec in specs:
        per_flow = statistics.median(times[spec][1:])
        provenance = engines[spec].provenance
        params = getattr(getattr(engines[spec], "net", None), "parameters", None)
        print(
            json.dumps(
                {
                    "bench": "flow_engines",
                    "engine": spec,
                    "device": "cpu" if spec.startswith("dis") else args.device,
                    "size": f"{width}x{height}",
                    "params_m": round(sum(p.numel() for p in params()) / 1e6, 2) if params else None,
                    "s_per_flow": round(per_flow, 4),
                    "flows_per_s": round(1 / per_flow, 2),
                    "rounds_s_per_flow": [round(t, 4) for t in times[spec][1:]],
                    "speed_vs_dis_medium": round(baseline / per_flow, 3),
                    "version": provenance.get("version"),
                    "weights": "random (speed only)" if provenance.get("random_init") else None,
                    "machine": machine(args.device),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

"""HMHI-Net inference speed and memory: one JSON line per setting.

    python bench/model_speed.py                         # CPU, 2 threads, 512x512, T=5, batches 1 and 4, fp32+bf16
    python bench/model_speed.py --batches 1 --no-baseline --skip memory   # issue 16's bf16-vs-fp32 CPU figure
    python bench/model_speed.py --device cuda           # GPU: fp32 and bf16, batches 1, 4, 16
    python bench/model_speed.py --memory-check-size 512 # the memory-flatness run at full size (slow on CPU)

Settings:
- ``steady_state``: per-frame latency of :meth:`HMHINet.step` once the memory holds T frames (the first T+1 frames
  are warm-up), median over ``--steady-frames`` steps. fp32 and bf16 (``net.step`` under ``model.autocast``) are
  timed in one interleaved run; the bf16 line carries ``speedup_vs_fp32_same_run``. Every line also carries a
  same-run baseline (``--no-baseline`` drops it): the same model
  with the official top-k formulation (full T*4096-wide logits, -inf mask, dense softmax @ v, see
  ``model.memory.dense_topk_attention``), and a same-run dense-GEMM throughput so figures taken on a shared,
  loaded machine can be normalised (``efficiency`` = official FLOPs per frame / time / GEMM rate).
  ``gemm_bound_s_per_frame`` is a frame's FLOPs at that GEMM rate, a floor for any implementation on the machine,
  and ``target_above_gemm_bound`` says whether the CPU target can be met at all (issue 16's bf16 0.35 s needs
  ~600 GFLOP/s; this 2-core AVX-512 BF16 CPU without AMX peaks near 400).
- ``memory``: peak memory after 50 and 500 streamed frames (resident set size on CPU, ``max_memory_allocated`` on
  GPU); ``flat`` is true when the 500-frame peak is within 10% of the 50-frame peak. On CPU this runs at
  ``--memory-check-size`` (default 128 px, so 500 frames take a minute rather than an hour); the ring buffers are
  sized by T whatever the frame size.
Random weights (speed does not depend on them). Reference figures (hmhi-architecture.md): the official model takes
2.43 s per frame on this CPU (2 threads, 512x512, T=5; 2.13 s with T=3), about 209 GFLOP per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from common import machine as machine_description

from model import autocast, create_model, resolve_precision
from model.memory import dense_topk_attention

OFFICIAL_GFLOP_PER_FRAME = {5: 209.0, 3: 191.0}  # 512x512 steady state (hmhi-architecture.md §11)
OFFICIAL_CPU_S_PER_FRAME = {5: 2.43, 3: 2.13}  # official code, this CPU, 2 threads, batch 1
OFFICIAL_CPU_TIME_PER_FRAME = {5: 4.76, 3: 4.20}  # same runs, process CPU time over both threads
CPU_TARGET_S_PER_FRAME = {"fp32": 1.3, "bf16": 0.35}  # issue 16: bf16 also >= 2.7x fp32, same run
QUIET_GEMM_GFLOPS_PER_THREAD = 100.0  # 1024^3 fp32 matmul on this CPU when idle: 180-220 GFLOP/s on 2 threads


def gemm_gflops(device: str, dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Dense matmul throughput right now (a same-run yardstick for a shared machine)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(args, dense_topk: bool = False):
    torch.manual_seed(0)
    net = create_model(args.model, memory_size=args.memory_size).eval().to(args.device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dense_topk:
        net.pixel_memory.readout.topk_attention = dense_topk_attention
    if args.compile:
        net.backbone = torch.compile(net.backbone)
        net.decoder = torch.compile(net.decoder)
    return net


def time_steps(nets: dict, args, batch: int, size: int, steady: int) -> dict:
    """Per-model step timings, the models' steps interleaved so all see the same machine load.

    ``nets`` maps a name to ``(net, dtype)``; each step runs under that dtype's autocast. Returns
    {name: {"wall": [...], "cpu": [...], "gemm": [...]}} for ``steady`` steps after T+1 warm-up steps; "gemm" is the
    dense-GEMM rate (GFLOP/s, in the model's dtype) measured around each timed step.
    """
    g = torch.Generator().manual_seed(1)
    frame = torch.randn(batch, 3, size, size, generator=g).to(args.device)
    flow = torch.randn(batch, 3, size, size, generator=g).to(args.device)
    if args.channels_last:
        frame = frame.contiguous(memory_format=torch.channels_last)
        flow = flow.contiguous(memory_format=torch.channels_last)
    states = {name: net.init_state(batch, device=args.device) for name, (net, _) in nets.items()}
    out = {name: {"wall": [], "cpu": [], "gemm": []} for name in nets}
    with torch.inference_mode():
        for i in range(args.memory_size + 1 + steady):
            for name, (net, dtype) in nets.items():
                gemm_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
                timed = i > args.memory_size
                rate_before = (
                    gemm_gflops(args.device, gemm_dtype, args.gemm_size, repeats=3) if timed else 0.0
                )
                sync(args.device)
                start, cpu_start = time.perf_counter(), time.process_time()
                with autocast(args.device, resolve_precision(dtype, args.device)):
                    _, states[name] = net.step(frame, flow, states[name])
                sync(args.device)
                if timed:
                    out[name]["wall"].append(time.perf_counter() - start)
                    out[name]["cpu"].append(time.process_time() - cpu_start)
                    out[name]["gemm"].append(
                        (rate_before + gemm_gflops(args.device, gemm_dtype, args.gemm_size, repeats=3)) / 2
                    )
    return out


def steady_state(args, batch: int, dtypes: list[str]) -> list[dict]:
    """One line per dtype; all dtypes (and baselines) are timed in the same interleaved run, so their ratio
    (``speedup_vs_fp32_same_run`` on the bf16 line) is not skewed by a shared machine's changing load."""
    nets = {}
    for dtype in dtypes:
        nets[dtype] = (build(args), dtype)
        if args.baseline:
            nets[f"baseline_{dtype}"] = (build(args, dense_topk=True), dtype)
    timings = time_steps(nets, args, batch, args.size, args.steady_frames)
    lines = [_steady_line(args, batch, dtype, timings) for dtype in dtypes]
    if "fp32" in timings:
        fp32_s = statistics.median(timings["fp32"]["wall"])
        for line in lines:
            if line["dtype"] != "fp32":
                line["fp32_s_per_frame_same_run"] = round(fp32_s / batch, 4)
                line["speedup_vs_fp32_same_run"] = round(fp32_s / (line["s_per_frame"] * batch), 3)
                line["cpu_speedup_vs_fp32_same_run"] = round(
                    statistics.median(timings["fp32"]["cpu"]) / (line["cpu_s_per_frame"] * batch), 3
                )
    return lines


def _steady_line(args, batch: int, dtype: str, timings: dict) -> dict:
    ours = timings[dtype]
    step_s = statistics.median(ours["wall"])
    rate = statistics.median(ours["gemm"])
    line = {
        "bench": "model_speed",
        "setting": "steady_state",
        "model": args.model,
        "device": args.device,
        "dtype": dtype,
        "channels_last": args.channels_last,
        "compiled": args.compile,
        "batch": batch,
        "size": args.size,
        "memory_size": args.memory_size,
        "steady_steps": len(ours["wall"]),
        "s_per_step": round(step_s, 4),
        "s_per_step_min": round(min(ours["wall"]), 4),
        "s_per_frame": round(step_s / batch, 4),
        "frames_per_s": round(batch / step_s, 2),
        "cpu_s_per_frame": round(statistics.median(ours["cpu"]) / batch, 4),  # process CPU time, all threads
        "gemm_gflops_during": round(rate, 1),
    }
    if args.device == "cpu" and dtype == "fp32":
        # What the same step would take with the GEMM rate of a quiet machine (a projection, not a measurement):
        # each step's wall time scaled by (GEMM rate around that step / quiet GEMM rate).
        quiet = QUIET_GEMM_GFLOPS_PER_THREAD * args.threads
        projected = statistics.median(w * r / quiet for w, r in zip(ours["wall"], ours["gemm"]))
        line["quiet_gemm_gflops_assumed"] = quiet
        line["projected_quiet_s_per_frame"] = round(projected / batch, 4)
    if args.size == 512 and args.memory_size in OFFICIAL_GFLOP_PER_FRAME:
        line["efficiency_vs_gemm"] = round(
            OFFICIAL_GFLOP_PER_FRAME[args.memory_size] * batch / step_s / rate, 3
        )
        # The fastest a frame could go if all its FLOPs ran at this run's dense-GEMM rate: a floor for any target.
        line["gemm_bound_s_per_frame"] = round(OFFICIAL_GFLOP_PER_FRAME[args.memory_size] / rate, 4)
        if args.device == "cpu":
            line["official_s_per_frame_documented"] = OFFICIAL_CPU_S_PER_FRAME[args.memory_size]
            line["official_cpu_s_per_frame_documented"] = OFFICIAL_CPU_TIME_PER_FRAME[args.memory_size]
            target = CPU_TARGET_S_PER_FRAME[dtype]
            line["target_s_per_frame"] = target
            line["target_above_gemm_bound"] = target >= line["gemm_bound_s_per_frame"]
            if args.threads == 2 and "projected_quiet_s_per_frame" in line:  # the target is for 2 threads
                line["meets_target_projected"] = line["projected_quiet_s_per_frame"] <= target
    if args.baseline:
        base_s = statistics.median(timings[f"baseline_{dtype}"]["wall"])
        line["baseline"] = "same model with the official dense top-k read-out, steps interleaved with ours"
        line["baseline_s_per_step"] = round(base_s, 4)
        line["speedup_vs_baseline"] = round(base_s / step_s, 3)
    return line


def memory_flatness(args, dtype: str) -> dict:
    net = build(args)
    size = args.memory_check_size
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(8, 1, 3, size, size, generator=g).to(args.device)
    state = net.init_state(1, device=args.device)
    checkpoints = sorted(args.memory_check_frames)
    peaks = {}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.inference_mode(), autocast(args.device, resolve_precision(dtype, args.device)):
        for i in range(checkpoints[-1]):
            _, state = net.step(frames[i % 8], frames[(i + 3) % 8], state)
            if i + 1 in checkpoints:
                sync(args.device)
                if args.device == "cuda":
                    peaks[i + 1] = torch.cuda.max_memory_allocated()
                else:
                    peaks[i + 1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                    peaks[f"rss_now_{i + 1}"] = rss_bytes()
    first, last = checkpoints[0], checkpoints[-1]
    return {
        "bench": "model_speed",
        "setting": "memory",
        "model": args.model,
        "device": args.device,
        "dtype": dtype,
        "batch": 1,
        "size": size,
        "memory_size": args.memory_size,
        "frames": checkpoints,
        "peak_bytes": {str(k): v for k, v in peaks.items() if isinstance(k, int)},
        "current_rss_bytes": {k[len("rss_now_") :]: v for k, v in peaks.items() if isinstance(k, str)},
        "peak_growth": round(peaks[last] / peaks[first] - 1, 4),
        "flat": peaks[last] <= 1.10 * peaks[first],
        "ring_buffer_frames": int(state.pixel_keys.shape[1]),
        "measure": "ru_maxrss (process peak RSS)"
        if args.device == "cpu"
        else "torch.cuda.max_memory_allocated",
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="hmhi_mit_b1")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--memory-size", type=int, default=5, help="memory window T")
    parser.add_argument("--batches", default=None, help="comma list (default cpu: 1,4; cuda: 1,4,16)")
    parser.add_argument(
        "--dtypes", default=None, help="comma list of fp32,bf16 (default: both, timed in one interleaved run)"
    )
    parser.add_argument("--steady-frames", type=int, default=4)
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=1024,
        help="side of the square matmul timed around each step as the machine's yardstick (default 1024)",
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    parser.add_argument(
        "--memory-check-size",
        type=int,
        default=None,
        help="frame size of the memory run (default 128 on cpu, --size on cuda)",
    )
    parser.add_argument("--memory-check-frames", default="50,500")
    parser.add_argument("--skip", default="", help="comma list of settings to skip: steady_state,memory")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in (args.batches or ("1,4" if args.device == "cpu" else "1,4,16")).split(",")]
    dtypes = (args.dtypes or "fp32,bf16").split(",")
    if not set(dtypes) <= {"fp32", "bf16"}:
        parser.error(f"--dtypes {args.dtypes}: expected a comma list of fp32, bf16")
    args.memory_check_frames = [int(n) for n in args.memory_check_frames.split(",")]
    if args.memory_check_size is None:
        args.memory_check_size = 128 if args.device == "cpu" else args.size
    skip = set(filter(None, args.skip.split(",")))
    machine = machine_description(args.device)
    if "steady_state" not in skip:
        for batch in batches:
            for line in steady_state(args, batch, dtypes):
                print(json.dumps({**line, "machine": machine}), flush=True)
    if "memory" not in skip:
        for dtype in dtypes:
            print(json.dumps({**memory_flatness(args, dtype), "machine": machine}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

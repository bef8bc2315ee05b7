"""HMHI-Net inference speed against this machine's limits and the official code: one JSON line per setting.

    python bench/model_speed.py                         # CPU, 2 threads, 512x512, T=5, batches 1 and 4, fp32+bf16
    python bench/model_speed.py --batches 1 --no-baseline --skip memory   # the fp32-vs-bf16 CPU figure
    python bench/model_speed.py --dtypes fp32 --batches 1 --skip memory --official ~/src/HMHI-Net
    python bench/model_speed.py --device cuda           # GPU: fp32 and bf16, batches 1, 4, 16
    python bench/model_speed.py --memory-check-size 512 # the memory-flatness run at full size (slow on CPU)

Settings:
- ``steady_state``: per-frame latency of :meth:`HMHINet.step` once the memory holds T frames (the first T+1 frames
  are warm-up), median over ``--steady-frames`` steps. fp32 and bf16 (``net.step`` under ``model.autocast``) are
  timed in one interleaved run; the bf16 line carries ``speedup_vs_fp32_same_run``. Around every timed step the
  bench measures the dense-GEMM rate of the step's dtype (``gemm_gflops_during``): a frame's FLOPs at that rate is
  the floor no implementation can beat on this machine (``gemm_bound_s_per_frame``), and ``ratio_to_floor`` is the
  step's time over that floor (issue 26's target: at most ``TARGET_RATIO_TO_FLOOR``). Every line also carries a
  same-run baseline (``--no-baseline`` drops it): the same model with the official top-k formulation (full
  T*4096-wide logits, -inf mask, dense softmax @ v, see ``model.memory.dense_topk_attention``).
- ``vs_official`` (``--official DIR``, a local copy of the authors' repository ZhengxyFlow/HMHI-Net; never
  downloaded here): the official model built from DIR, random weights (its own init) loaded into ours through
  the official-checkpoint path, both run on the same frames. Whole clips alternate (ours stepped frame by frame,
  the official eval forward over the clip; its per-frame times are taken between its backbone calls), and the
  line gives both steady-state times, the speed-up and the largest logit difference between the two on the
  clip's last frame. hmhi_mit_b1 only (the official code builds nothing else here).
- ``memory``: peak memory after 50 and 500 streamed frames (resident set size on CPU, ``max_memory_allocated`` on
  GPU); ``flat`` is true when the 500-frame peak is within 10% of the 50-frame peak. On CPU this runs at
  ``--memory-check-size`` (default 128 px, so 500 frames take a minute rather than an hour); the ring buffers are
  sized by T whatever the frame size.
Random weights (speed does not depend on them); about 209 GFLOP per 512x512 frame with T=5 (hmhi-architecture.md
§11). On a CPU without native bf16 (AVX2 only) bf16 is emulated at ~1% of the fp32 rate: a bf16 frame takes
minutes there, so run it with ``--steady-frames 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from common import machine as machine_description

from model import autocast, create_model, load_checkpoint, resolve_precision
from model.memory import dense_topk_attention

OFFICIAL_GFLOP_PER_FRAME = {5: 209.0, 3: 191.0}  # 512x512 steady state (hmhi-architecture.md §11)
TARGET_RATIO_TO_FLOOR = 1.3  # issue 26: a frame within 1.3x of its FLOPs at the same run's dense-GEMM rate


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


def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.float32 if dtype == "fp32" else torch.bfloat16


def _gemm_around(args, dtype: str) -> float:
    return gemm_gflops(args.device, _torch_dtype(dtype), args.gemm_size, repeats=3)


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
                timed = i > args.memory_size
                rate_before = _gemm_around(args, dtype) if timed else 0.0
                sync(args.device)
                start, cpu_start = time.perf_counter(), time.process_time()
                with autocast(args.device, resolve_precision(dtype, args.device)):
                    _, states[name] = net.step(frame, flow, states[name])
                sync(args.device)
                if timed:
                    out[name]["wall"].append(time.perf_counter() - start)
                    out[name]["cpu"].append(time.process_time() - cpu_start)
                    out[name]["gemm"].append((rate_before + _gemm_around(args, dtype)) / 2)
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


def _floor_figures(args, batch: int, step_s: float, rate: float) -> dict:
    """The GEMM-bound floor of a frame at this run's GEMM rate, and how far the step is from it."""
    if args.size != 512 or args.memory_size not in OFFICIAL_GFLOP_PER_FRAME:
        return {}  # the FLOP count is for 512x512 frames
    floor = OFFICIAL_GFLOP_PER_FRAME[args.memory_size] / rate
    ratio = step_s / batch / floor
    return {
        "gflop_per_frame": OFFICIAL_GFLOP_PER_FRAME[args.memory_size],
        "gemm_bound_s_per_frame": round(floor, 4),
        "efficiency_vs_gemm": round(1 / ratio, 3),
        "ratio_to_floor": round(ratio, 3),
        "target_ratio_to_floor": TARGET_RATIO_TO_FLOOR,
        "within_target": ratio <= TARGET_RATIO_TO_FLOOR,
    }


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
        "threads": args.threads,
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
        **_floor_figures(args, batch, step_s, rate),
    }
    if args.baseline:
        base_s = statistics.median(timings[f"baseline_{dtype}"]["wall"])
        line["baseline"] = "same model with the official dense top-k read-out, steps interleaved with ours"
        line["baseline_s_per_step"] = round(base_s, 4)
        line["speedup_vs_baseline"] = round(base_s / step_s, 3)
    return line


# -- the official implementation (--official DIR) -----------------------------------------------------------------


@contextlib.contextmanager
def _working_dir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def build_official(directory: Path, memory_size: int) -> torch.nn.Module:
    """The authors' HMHI_Net from their repository at ``directory``, as their inference script builds it
    (``--encoder mit_b1``, both memories, SGIM and PLAM), with T = ``memory_size``, in eval mode.

    Their code imports its packages from the repository root and ``lib/`` (it puts them on ``sys.path`` itself
    with ``_init_paths``), so both go on ``sys.path`` for this process. Two things it needs are absent here and
    have no effect on its outputs: the ``visualizer`` package (its ``get_local`` decorator only records attention
    maps when activated; a pass-through stands in for it) and the ImageNet MiT-B1 file the constructor loads
    from ``./checkpoint/pretrained/mit/mit_b1.pth`` with ``strict=False`` (an empty state dict in a scratch
    directory stands in: the weights are random either way).
    """
    for path in (directory / "lib", directory):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if "visualizer" not in sys.modules:
        visualizer = types.ModuleType("visualizer")
        visualizer.get_local = lambda *names: lambda function: function
        sys.modules["visualizer"] = visualizer
    # The official code, from ``directory`` (named at run time: it is no dependency of this project).
    HMHI_Net = importlib.import_module("lib.HMHI_Net").HMHI_Net

    options = types.SimpleNamespace(
        encoder="mit_b1",
        num_points=121,
        add_mem0=True,
        add_mem1=True,
        add_obj_to_pixel=True,
        add_pixel_to_obj=True,
        train_num_frame=memory_size,
    )
    with tempfile.TemporaryDirectory() as scratch:
        pretrained = Path(scratch) / "checkpoint" / "pretrained" / "mit" / "mit_b1.pth"
        pretrained.parent.mkdir(parents=True)
        torch.save({}, pretrained)
        with _working_dir(Path(scratch)):
            torch.manual_seed(0)
            return HMHI_Net(options).eval()


def _official_clip_times(official, frames, flows) -> tuple[list[float], list[float], torch.Tensor]:
    """Run the official eval forward over one clip; per-frame wall and CPU times (each frame starts with its
    backbone call) and the last frame's logits."""
    marks: list[tuple[float, float]] = []
    hook = official.backbone.register_forward_pre_hook(
        lambda module, inputs: marks.append((time.perf_counter(), time.process_time()))
    )
    try:
        with torch.no_grad():  # as the official inference script runs it
            outputs = official(frames, flows, mode="val")
    finally:
        hook.remove()
    marks.append((time.perf_counter(), time.process_time()))
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return wall, cpu, outputs[-1]


def vs_official(args, dtypes: list[str]) -> list[dict]:
    """Ours against the official implementation, same weights and frames, whole clips alternating."""
    official = build_official(Path(args.official), args.memory_size)
    buffer = io.BytesIO()
    torch.save({"network": official.state_dict()}, buffer)
    buffer.seek(0)
    ours = create_model(args.model, memory_size=args.memory_size).eval()
    load_checkpoint(ours, buffer)  # strict: every official tensor mapped, the dead ones dropped
    length = args.memory_size + 1 + args.steady_frames
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(1, length, 3, args.size, args.size, generator=g)
    flows = torch.randn(1, length, 3, args.size, args.size, generator=g)
    lines = []
    for dtype in dtypes:
        times = {name: {"wall": [], "cpu": []} for name in ("ours", "official")}
        rates, diffs = [], []
        for _ in range(args.official_rounds):
            rates.append(_gemm_around(args, dtype))
            state = ours.init_state(1)
            with torch.inference_mode(), autocast("cpu", resolve_precision(dtype, "cpu")):
                for t in range(length):
                    start, cpu_start = time.perf_counter(), time.process_time()
                    logits, state = ours.step(frames[:, t], flows[:, t], state)
                    if t > args.memory_size:
                        times["ours"]["wall"].append(time.perf_counter() - start)
                        times["ours"]["cpu"].append(time.process_time() - cpu_start)
            with autocast("cpu", resolve_precision(dtype, "cpu")):
                wall, cpu, official_logits = _official_clip_times(official, frames, flows)
            times["official"]["wall"] += wall[args.memory_size + 1 :]
            times["official"]["cpu"] += cpu[args.memory_size + 1 :]
            diffs.append(float((logits.float() - official_logits.float()).abs().max()))
            rates.append(_gemm_around(args, dtype))
        lines.append(_official_line(args, dtype, times, statistics.median(rates), max(diffs)))
    return lines


def _official_line(args, dtype: str, times: dict, rate: float, max_diff: float) -> dict:
    ours_s, official_s = (statistics.median(times[name]["wall"]) for name in ("ours", "official"))
    ours_cpu, official_cpu = (statistics.median(times[name]["cpu"]) for name in ("ours", "official"))
    return {
        "bench": "model_speed",
        "setting": "vs_official",
        "model": args.model,
        "device": "cpu",
        "dtype": dtype,
        "threads": args.threads,
        "batch": 1,
        "size": args.size,
        "memory_size": args.memory_size,
        "rounds": args.official_rounds,
        "steady_frames_each": len(times["ours"]["wall"]),
        "s_per_frame": round(ours_s, 4),
        "official_s_per_frame": round(official_s, 4),
        "speedup_vs_official": round(official_s / ours_s, 3),
        "cpu_s_per_frame": round(ours_cpu, 4),
        "official_cpu_s_per_frame": round(official_cpu, 4),
        "cpu_speedup_vs_official": round(official_cpu / ours_cpu, 3),
        "max_abs_logit_diff_last_frame": max_diff,
        "gemm_gflops_during": round(rate, 1),
        **_floor_figures(args, 1, ours_s, rate),
        "official_ratio_to_floor": _floor_figures(args, 1, official_s, rate).get("ratio_to_floor"),
        "official_source": str(Path(args.official).resolve()),
    }


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
    parser.add_argument(
        "--official",
        metavar="DIR",
        default=None,
        help="a local copy of the authors' repository (ZhengxyFlow/HMHI-Net): adds the vs_official line(s)",
    )
    parser.add_argument("--official-rounds", type=int, default=2, help="clips per model in vs_official")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.official is not None:
        if not (Path(args.official) / "lib" / "HMHI_Net.py").is_file():
            parser.error(
                f"--official {args.official}: no lib/HMHI_Net.py there (a copy of ZhengxyFlow/HMHI-Net)"
            )
        if args.model != "hmhi_mit_b1" or args.device != "cpu":
            parser.error("--official: compares hmhi_mit_b1 on the CPU only")
        if args.official_rounds < 1:
            parser.error(f"--official-rounds {args.official_rounds}: must be >= 1")
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

    def emit(line: dict) -> None:
        # The machine's load at the start and when the line's setting ended: on a shared machine it drifts.
        print(
            json.dumps({**line, "load_avg_1m_end": round(os.getloadavg()[0], 2), "machine": machine}),
            flush=True,
        )

    if "steady_state" not in skip:
        for batch in batches:
            for line in steady_state(args, batch, dtypes):
                emit(line)
    if args.official is not None:
        for line in vs_official(args, dtypes):
            emit(line)
    if "memory" not in skip:
        for dtype in dtypes:
            emit(memory_flatness(args, dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())

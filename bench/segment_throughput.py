"""Throughput and peak memory of batch inference (jobs/segment.py), and the model alone.

    python bench/segment_throughput.py                       # CPU: 50- and 500-frame videos, small model
    python bench/segment_throughput.py --frames 50 500 --size 320x180 --input-size 128
    python bench/segment_throughput.py --gpu                 # also: videos in flight 1, 4, 16 on one GPU actor
    python bench/segment_throughput.py --model hmhi_mit_b1 --input-size 512 --size 512x512 --frames 8 40  # issue 16

Each setting runs for every ``--precision`` (default fp32 and bf16), one job per video length (``--frames``, two
or more). Per precision, in the same run:

- ``model_only_fps_all_cores``: the model alone as the actor runs it (``VideoSegmenter.step``: same model, input
  size, precision, on frames and DIS flow pictures prepared from the shortest video beforehand) with every core
  (``--cpus`` torch threads), no decoding, flow or writing while it is timed, timed right before and right after the
  jobs (``model_only_fps_before`` / ``_after``) and averaged, because this machine's speed drifts by 10-30%
  within minutes (a shared host);
- ``steady_state_fps``: the job's steady-state end-to-end rate, (longest - shortest video's frames) over the
  difference of their times in the actor (first chunk request to done marker: decode, flow, model and writes
  overlapped), so Ray start, model load, the first chunk's latency and warm-up cancel out;
  ``ratio_steady_state_vs_model_only`` is their ratio (issue 16's target: >= 0.9 with ``--model hmhi_mit_b1
  --input-size 512``). ``--repeats N`` runs the whole measurement N times (each line carries its ``repeat``) and
  ends with one ``summary`` line per precision: the median ratio and its range;
- ``actor_cpu_s_per_frame_steady`` / ``decode_cpu_s_per_frame_steady``: CPU seconds per extra frame of the model
  actor and of the decode+flow task processes (/proc, same difference), against ``model_only_cpu_s_per_frame``;
- ``startup_s``: the job's wall time less the video's own time in the actor (Ray start, imports, model load,
  scheduling), and ``startup_parts``: ``ray.init`` and the model actor's torch import and model load as the job
  logs them, the actor's torch threads, and the driver's imports (a fresh interpreter importing jobs.segment);
- ``end_to_end_fps`` (whole job, start-up included), ``streaming_fps`` (a video's frames over its time in the
  actor) and ``actor_model_fps`` (frames over the actor's time inside step + post-processing).

Peak memory: the peak resident memory of the job's process tree (driver, raylet, GCS, Ray workers), sampled every
50 ms from /proc (Linux only; the job runs as ``python jobs/segment.py`` in its own process with its own local Ray
cluster). It should not grow with video length (the job streams chunks); ``memory_ratio_vs_shortest`` compares
each length with the shortest. ``actor_peak_rss_mb`` / ``decode_task_peak_rss_mb`` are the high-water marks
(VmHWM) of the model actor and of the decode+flow task processes alone, which exclude the fixed Ray overhead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from common import machine


def _status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/<pid>/status in bytes (VmRSS: resident now; VmHWM: the process' peak)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (the job's driver, its raylet and Ray workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


class PeakMemory:
    """Samples the summed RSS of the job's process (``extra_pid``) and all its descendants (raylet, Ray workers)."""

    def __init__(self, interval: float = 0.2, extra_pid: int | None = None):
        # 0.2 s, not faster: each sample walks /proc, and the sampler's CPU competes with the job it measures.
        # Only the job's own process tree: other Ray clusters on the machine must not count.
        self.interval = interval
        self.extra_pid = extra_pid
        self.peak = 0
        self.roles: dict[int, str] = {}  # pid -> "actor" / "decode", seen while the process ran that work
        self.role_peaks: dict[str, int] = {}
        self.cpu: dict[int, float] = {}  # pid -> its last sampled CPU seconds (kept after the process exits)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _descendants(self.extra_pid) if self.extra_pid else set()
            total = sum(_status_bytes(p) for p in pids)
            self.peak = max(self.peak, total)
            for pid in pids:
                cmd = _cmdline(pid)
                if b"SegmentActor" in cmd:
                    self.roles[pid] = "actor"
                elif b"video_chunks" in cmd:
                    self.roles[pid] = "decode"
            for pid, role in self.roles.items():
                self.role_peaks[role] = max(self.role_peaks.get(role, 0), _status_bytes(pid, "VmHWM"))
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))
            self._stop.wait(self.interval)

    def role_cpu_s(self, role: str) -> float:
        """CPU seconds of the processes seen doing ``role`` work (a Ray worker's whole life, start-up included)."""
        return sum(cpu for pid, cpu in self.cpu.items() if self.roles.get(pid) == role)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def synthetic_video(n: int, width: int, height: int, seed: int = 0) -> bytes:
    """A textured background with a moving disc, encoded as H.264 MP4 in memory."""
    from pipeline.video import encode_video

    rng = np.random.default_rng(seed)
    background = rng.integers(30, 140, (height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        cx = width * (0.2 + 0.6 * (i % 100) / 100)
        disc = (cols - cx) ** 2 + (rows - height / 2) ** 2 <= (height / 5) ** 2
        frames[i] = background
        frames[i][disc] = (230, 70, 40)
    buffer = io.BytesIO()
    encode_video(frames, buffer, fps=25, codec="libx264", container_format="mp4")
    return buffer.getvalue()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL_MODEL = "hmhi_mit_b0 (decoder 32, ffn 64, T=3), random init"


def small_model(path: str, device: str, name: str = "small"):
    import torch

    from model import create_model, save_checkpoint

    torch.manual_seed(0)
    if name == "small":
        net = create_model(
            "hmhi_mit_b0", decoder_width=32, readout_ffn_dim=64, semantic_mask_hidden=32, memory_size=3
        )
    else:
        net = create_model(name)
    save_checkpoint(net, path)
    return net.eval().to(device)


def model_only_fps(
    net, input_size: int, videos: int, steps: int, device: str, precision: str = "fp32"
) -> float:
    import torch

    from model import autocast, resolve_precision

    state = net.init_state(videos, device=device)
    frame = torch.randn(videos, 3, input_size, input_size, device=device)
    with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
        for _ in range(5):  # warm-up; also fills the memory to its steady-state size
            _, state = net.step(frame, frame, state)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            _, state = net.step(frame, frame, state)
        if device == "cuda":
            torch.cuda.synchronize()
    return videos * steps / (time.perf_counter() - start)


def end_to_end(
    corpus: str,
    out: str,
    checkpoint: str,
    input_size: int,
    videos_in_flight: int,
    gpu: bool,
    cpus: int,
    precision: str = "auto",
) -> tuple[dict, PeakMemory, str]:
    """Run ``python jobs/segment.py`` as its own process on a fresh local Ray cluster; (summary, memory, its log)."""
    args = [
        sys.executable,
        os.path.join(REPO, "jobs", "segment.py"),
        "--input",
        corpus,
        "--output",
        out,
        "--checkpoint",
        checkpoint,
        "--input-size",
        str(input_size),
        "--videos-in-flight",
        str(videos_in_flight),
        "--set",
        "runtime.chunk_frames=8",
        "--precision",
        precision,
    ]
    if gpu:
        args += ["--set", "runtime.gpus_per_actor=1"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # a fresh cluster per setting, so peaks are not shared
    with PeakMemory(extra_pid=None) as memory:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        memory.extra_pid = proc.pid
        _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"segment failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f), memory, stderr.decode(errors="replace")


def model_only_rate(
    checkpoint: str, video: str, input_size: int, precision: str, threads: int, steps: int
) -> dict:
    """The model alone as the actor runs it: ``VideoSegmenter.step`` (same model, input size, precision and
    preprocessing) on frames and DIS flow pictures already prepared from ``video``, with ``threads`` torch threads;
    no decoding, flow, post-processing or writing while it is timed. Wall and CPU time per frame, steady state."""
    import torch

    from pipeline.runtime import keep_freed_memory
    from pipeline.segment import VideoSegmenter

    keep_freed_memory()  # as the segment actor does at start-up
    torch.set_num_threads(threads)
    segmenter = VideoSegmenter(
        checkpoint, flow="dis", input_size=input_size, precision=precision, device="cpu"
    )
    chunks = list(segmenter.chunks(video))
    frames = np.concatenate([c.frames for c in chunks])
    flows = np.concatenate([c.flows for c in chunks])
    state = segmenter.new_state(1)
    warmup = 3  # fills the memory window towards its steady size and warms oneDNN's kernel caches
    for i in range(warmup):
        segmenter.step(frames[i : i + 1], flows[i : i + 1], state, [i == 0], [True])
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(steps):
        i = (warmup + k) % len(frames)
        segmenter.step(frames[i : i + 1], flows[i : i + 1], state, [False], [True])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"fps": steps / wall, "cpu_s_per_frame": cpu / steps, "threads": torch.get_num_threads()}


_ACTOR_READY = re.compile(
    r"model actor ready in ([0-9.]+) s \(torch import ([0-9.]+) s, model build \+ load "
    r"([0-9.]+) s\); (\d+) torch threads"
)
_RAY_INIT = re.compile(r"Ray: .*\(ray\.init ([0-9.]+) s\)")


def startup_parts(log_text: str) -> dict:
    """Start-up figures the job logs: ray.init, and the model actor's imports and model load (and its threads)."""
    parts = {}
    if m := _RAY_INIT.search(log_text):
        parts["ray_init_s"] = float(m.group(1))
    if m := _ACTOR_READY.search(log_text):
        parts.update(
            actor_init_s=float(m.group(1)),
            actor_torch_import_s=float(m.group(2)),
            actor_model_load_s=float(m.group(3)),
            actor_torch_threads=int(m.group(4)),
        )
    return parts


def driver_import_s() -> float:
    """Seconds for a fresh interpreter to import the segment job's driver side, less a bare interpreter's start."""

    def timed(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        return time.perf_counter() - started

    return max(0.0, timed("import jobs.segment") - timed("pass"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 500], help="video lengths to time")
    parser.add_argument("--size", default="320x180", help="frame size WxH of the synthetic videos")
    parser.add_argument("--input-size", type=int, default=128, help="model input side (multiple of 32)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--gpu", action="store_true", help="also time 1, 4 and 16 videos in flight on a GPU")
    parser.add_argument("--gpu-frames", type=int, default=100, help="frames per video in the GPU settings")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="model precisions to time")
    parser.add_argument(
        "--model", default="small", help="'small' (b0, narrow, T=3) or a registered model name"
    )
    parser.add_argument(
        "--model-steps",
        type=int,
        default=0,
        help="steps timed for the model-only rate (0: 10 at input >= 384, else 30)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the CPU measurement; a summary line per precision gives the median ratio",
    )
    args = parser.parse_args(argv)
    if len(args.frames) < 2:
        parser.error("--frames needs two lengths or more: the steady-state rate is their difference")
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import torch

    torch.set_num_threads(args.cpus)  # the model-only reference gets every core
    info = machine()
    work = tempfile.mkdtemp(prefix="bench-segment-")
    try:
        checkpoint = os.path.join(work, "small.pth")
        net = small_model(checkpoint, "cpu", args.model)
        model_name = (
            SMALL_MODEL
            if args.model == "small"
            else f"{args.model} (T={net.config.memory_size}), random init"
        )
        lengths = sorted(args.frames)
        corpora = {}
        for n in lengths:
            corpus = corpora[n] = os.path.join(work, f"corpus{n}")
            os.makedirs(corpus)
            with open(os.path.join(corpus, f"video{n}.mp4"), "wb") as f:
                f.write(synthetic_video(n, width, height))
        imports_s = driver_import_s()
        ratios: dict[str, list[float]] = {}
        steps = args.model_steps or (10 if args.input_size >= 384 else 30)
        reference_video = os.path.join(corpora[lengths[0]], f"video{lengths[0]}.mp4")
        for repeat, precision in ((r, p) for r in range(args.repeats) for p in args.precision):
            model_before = model_only_rate(
                checkpoint, reference_video, args.input_size, precision, args.cpus, steps
            )
            runs = {}
            for n in lengths:
                out = os.path.join(work, f"out{n}-{precision}-{repeat}")  # a fresh output: a rerun would skip
                summary, memory, log_text = end_to_end(
                    corpora[n], out, checkpoint, args.input_size, 1, False, args.cpus, precision
                )
                with open(os.path.join(out, "done", f"video{n}.json")) as f:
                    video_seconds = json.load(f)[
                        "seconds"
                    ]  # from the video's first chunk request to its done marker
                runs[n] = {
                    "summary": summary,
                    "memory": memory,
                    "video_seconds": video_seconds,
                    "actor_cpu_s": memory.role_cpu_s("actor"),
                    "decode_cpu_s": memory.role_cpu_s("decode"),
                    "startup": startup_parts(log_text),
                }
            model_after = model_only_rate(
                checkpoint, reference_video, args.input_size, precision, args.cpus, steps
            )
            model_only = {
                "fps": (model_before["fps"] + model_after["fps"]) / 2,
                "threads": model_before["threads"],
                "cpu_s_per_frame": (model_before["cpu_s_per_frame"] + model_after["cpu_s_per_frame"]) / 2,
            }
            short, long = runs[lengths[0]], runs[lengths[-1]]
            extra = lengths[-1] - lengths[0]
            # Steady state: the longest video less the shortest, so start-up, the first chunk's latency and the
            # model's warm-up (paid once per video) cancel out.
            spent = long["video_seconds"] - short["video_seconds"]
            steady_fps = (
                extra / spent if spent > 0 else float("nan")
            )  # nan: the machine's load swamped the lengths
            ratios.setdefault(precision, []).append(steady_fps / model_only["fps"])
            for n in lengths:
                run = runs[n]
                figures, summary, memory = run["summary"]["figures"], run["summary"], run["memory"]
                print(
                    json.dumps(
                        {
                            "bench": "segment_throughput",
                            "device": "cpu",
                            "machine": info,
                            "frames": n,
                            "frame_size": f"{width}x{height}",
                            "input_size": args.input_size,
                            "videos_in_flight": 1,
                            "precision": precision,
                            "repeat": repeat,
                            "model": model_name,
                            "flow": "dis medium",
                            "actor_cpus": figures.get("actor_cpus"),
                            "startup_s": round(summary["elapsed_s"] - run["video_seconds"], 2),
                            "startup_parts": {**run["startup"], "driver_imports_s": round(imports_s, 2)},
                            "end_to_end_fps": figures.get("frames_per_second", 0.0),
                            "streaming_fps": round(n / run["video_seconds"], 3),
                            "actor_model_fps": figures.get("model_frames_per_second"),
                            "steady_state_fps": round(steady_fps, 3),
                            "model_only_fps_all_cores": round(model_only["fps"], 3),
                            "model_only_fps_before": round(model_before["fps"], 3),
                            "model_only_fps_after": round(model_after["fps"], 3),
                            "model_only_threads": model_only["threads"],
                            "ratio_steady_state_vs_model_only": round(steady_fps / model_only["fps"], 3),
                            "model_only_cpu_s_per_frame": round(model_only["cpu_s_per_frame"], 3),
                            "actor_cpu_s_per_frame_steady": round(
                                (long["actor_cpu_s"] - short["actor_cpu_s"]) / extra, 3
                            ),
                            "decode_cpu_s_per_frame_steady": round(
                                (long["decode_cpu_s"] - short["decode_cpu_s"]) / extra, 4
                            ),
                            "peak_rss_mb": round(memory.peak / 2**20, 1),
                            "memory_ratio_vs_shortest": round(memory.peak / short["memory"].peak, 3),
                            "actor_peak_rss_mb": round(memory.role_peaks.get("actor", 0) / 2**20, 1),
                            "decode_task_peak_rss_mb": round(memory.role_peaks.get("decode", 0) / 2**20, 1),
                            "wall_s": summary["elapsed_s"],
                            "load_avg_1m_after": round(os.getloadavg()[0], 2),
                        }
                    ),
                    flush=True,
                )
        for precision, values in ratios.items():
            print(
                json.dumps(
                    {
                        "bench": "segment_throughput",
                        "setting": "summary",
                        "device": "cpu",
                        "machine": info,
                        "precision": precision,
                        "model": model_name,
                        "input_size": args.input_size,
                        "repeats": len(values),
                        "ratio_steady_state_vs_model_only_median": round(statistics.median(values), 3),
                        "ratio_min": round(min(values), 3),
                        "ratio_max": round(max(values), 3),
                        "target": 0.9,
                    }
                ),
                flush=True,
            )
        if args.gpu:
            if not torch.cuda.is_available():
                raise SystemExit("--gpu: no CUDA device")
            gpu_net = net.to("cuda")
            corpus = os.path.join(work, "corpus_gpu")
            os.makedirs(corpus)
            for k in range(16):
                with open(os.path.join(corpus, f"video{k:02d}.mp4"), "wb") as f:
                    f.write(synthetic_video(args.gpu_frames, width, height, seed=k))
            for in_flight in (1, 4, 16):
                model_fps = model_only_fps(gpu_net, args.input_size, in_flight, 50, "cuda")
                summary, memory, _ = end_to_end(
                    corpus,
                    os.path.join(work, f"out_gpu{in_flight}"),
                    checkpoint,
                    args.input_size,
                    in_flight,
                    True,
                    args.cpus,
                )
                e2e = summary["figures"].get("frames_per_second", 0.0)
                print(
                    json.dumps(
                        {
                            "bench": "segment_throughput",
                            "device": "cuda",
                            "machine": info,
                            "videos": 16,
                            "frames_per_video": args.gpu_frames,
                            "frame_size": f"{width}x{height}",
                            "input_size": args.input_size,
                            "videos_in_flight": in_flight,
                            "end_to_end_fps": e2e,
                            "actor_model_fps": summary["figures"].get("model_frames_per_second"),
                            "model_only_fps": round(model_fps, 3),
                            "ratio_end_to_end_vs_model_only": round(e2e / model_fps, 3),
                            "peak_rss_mb": round(memory.peak / 2**20, 1),
                            "actor_peak_rss_mb": round(memory.role_peaks.get("actor", 0) / 2**20, 1),
                            "wall_s": summary["elapsed_s"],
                        }
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

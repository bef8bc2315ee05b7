"""Video decoding on CPU: torchcodec, PyAV and OpenCV in one run. One JSON line per setting.

    python bench/decode.py                           # 480p and 1080p, whole videos and resized to 512x512
    python bench/decode.py --sizes 854x480 --frames 60 --rounds 3 --threads 1,auto

What is timed: every frame of a synthetic H.264 video (made by the project's own encoder, ``pipeline.video``,
libx264 crf 18, so the bitstream is what a camera or an export pipeline gives) decoded to an (H, W, 3) uint8 RGB
array in memory, from the file's bytes already in memory (no disk):

- ``whole``: frames at the video's size (``pipeline.video.decode_video``'s output);
- ``resize``: frames at ``--resize`` x ``--resize`` (what segment feeds the model): torchcodec's ``Resize``
  transform inside its FFmpeg filter graph, PyAV's ``to_ndarray(width, height)`` (swscale, bilinear) during the
  RGB conversion, OpenCV decode then ``cv2.resize`` (INTER_AREA); the baseline is the project's path today,
  PyAV decode then ``pipeline.transforms.resize_rgb`` (PIL bilinear, antialiased).

Decoders: ``torchcodec`` (``VideoDecoder``, NHWC, frame by frame, exact seek mode), ``pyav`` (``pipeline.video``'s settings:
``thread_type = "AUTO"``), ``opencv`` (``cv2.VideoCapture`` on a temporary file, BGR -> RGB). Threads: ``1``
(a decode task or flow actor of one CPU, as the jobs run them) and ``auto`` (the decoder's own choice: every core).
Each line carries the machine, the median of ``--rounds`` interleaved rounds, and the ratio to the same-run PyAV
baseline of its size, mode and threads (``speedup_vs_pyav`` > 1: faster than PyAV).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from common import machine, panning_scene

from pipeline.transforms import resize_rgb
from pipeline.video import encode_video


def make_video(width: int, height: int, frames: int, seed: int = 0) -> bytes:
    """The benchmarks' panning scene (``common.panning_scene``) as H.264 MP4 bytes."""
    video = panning_scene(frames, height, width, seed)
    buffer = io.BytesIO()
    encode_video(video, buffer, fps=25, codec="libx264", crf=18, container_format="mp4")
    return buffer.getvalue()


def decode_pyav(data: bytes, threads: str, size: int | None) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads, as pipeline.video decodes
        stream.thread_count = 1 if threads == "1" else 0
        n = 0
        for frame in container.decode(stream):
            if size:
                frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR")
            else:
                frame.to_ndarray(format="rgb24")
            n += 1
    return n


def decode_pyav_then_pil(data: bytes, threads: str, size: int | None) -> int:
    """The project's resize path today: PyAV decode, then PIL bilinear (``resize_rgb``)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = 1 if threads == "1" else 0
        n = 0
        for frame in container.decode(stream):
            resize_rgb(frame.to_ndarray(format="rgb24"), size)
            n += 1
    return n


def decode_torchcodec(data: bytes, threads: str, size: int | None) -> int:
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    decoder = VideoDecoder(
        data,
        dimension_order="NHWC",
        num_ffmpeg_threads=1 if threads == "1" else 0,
        transforms=[Resize((size, size))] if size else None,
    )
    n = 0
    # One frame at a time, as a streaming job reads. (get_frames_in_range of 16 or of every frame at once was 4-8x
    # slower than this loop in torchcodec 0.17 on this CPU: a batched colour conversion.)
    for frame in decoder:
        frame.numpy()
        n += 1
    return n


def decode_opencv(path: str, threads: str, size: int | None) -> int:
    import cv2

    cv2.setNumThreads(1 if threads == "1" else 0)
    params = [cv2.CAP_PROP_N_THREADS, 1] if threads == "1" else []
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    n = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if size:
            cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        n += 1
    capture.release()
    return n


def available(name: str) -> str | None:
    """Why ``name`` cannot run here (None: it can)."""
    try:
        if name == "torchcodec":
            from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads FFmpeg's shared libraries)
    except Exception as e:  # ImportError, or RuntimeError when no FFmpeg libraries are found
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="854x480,1920x1080", help="WIDTHxHEIGHT list")
    parser.add_argument(
        "--frames", type=int, default=120, help="frames of the 480p video (1080p: a quarter as many)"
    )
    parser.add_argument(
        "--resize", type=int, default=512, help="square side of the resize mode (0: no resize mode)"
    )
    parser.add_argument("--threads", default="1,auto", help="decoder threads: 1 and/or auto")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; lines give the median")
    parser.add_argument("--decoders", default="pyav,torchcodec,opencv")
    args = parser.parse_args(argv)
    decoders = args.decoders.split(",")
    skipped = {d: why for d in decoders if (why := available(d))}
    for name, why in skipped.items():
        print(json.dumps({"bench": "decode", "decoder": name, "skipped": why}), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for size_text in args.sizes.split(","):
            width, height = (int(v) for v in size_text.split("x"))
            frames = args.frames if height <= 480 else max(8, args.frames // 4)
            data = make_video(width, height, frames)
            path = os.path.join(tmp, f"{width}x{height}.mp4")
            with open(path, "wb") as f:
                f.write(data)
            modes = [None, args.resize] if args.resize else [None]
            for threads in args.threads.split(","):
                for size in modes:
                    run_setting(
                        data, path, width, height, frames, threads, size, decoders, skipped, args.rounds
                    )


def run_setting(data, path, width, height, frames, threads, size, decoders, skipped, rounds) -> None:
    """Time every decoder on one video, mode and thread count, interleaved; print one line per decoder."""
    runs: dict[str, Callable[[], int]] = {
        "pyav": lambda: decode_pyav(data, threads, size),
        "torchcodec": lambda: decode_torchcodec(data, threads, size),
        "opencv": lambda: decode_opencv(path, threads, size),
    }
    if size:
        runs["pyav+pil (baseline)"] = lambda: decode_pyav_then_pil(data, threads, size)
    names = [n for n in runs if n.split(" ")[0].split("+")[0] in decoders and n.split("+")[0] not in skipped]
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds + 1):  # the first round warms caches and libraries up and is not counted
        for name in names:
            started = time.perf_counter()
            decoded = runs[name]()
            times[name].append(time.perf_counter() - started)
            if decoded != frames:
                raise RuntimeError(f"{name} decoded {decoded} of {frames} frames at {width}x{height}")
    medians = {n: statistics.median(t[1:]) for n, t in times.items()}
    baseline = medians["pyav+pil (baseline)"] if size else medians["pyav"]
    for name in names:
        line = {
            "bench": "decode",
            "decoder": name,
            "video": f"{width}x{height} h264 crf18 {frames} frames",
            "mode": f"resize to {size}x{size}" if size else "whole",
            "threads": threads,
            "frames_per_s": round(frames / medians[name], 1),
            "ms_per_frame": round(1000 * medians[name] / frames, 2),
            "rounds": [round(t, 3) for t in times[name][1:]],
            "baseline": "pyav then PIL resize (the project's path)"
            if size
            else "pyav (the project's decoder)",
            "speedup_vs_baseline": round(baseline / medians[name], 2),
            "machine": machine(),
        }
        print(json.dumps(line), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

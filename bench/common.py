"""Helpers every benchmark shares (imported as ``from common import ...``: the benchmarks run as
``python bench/<name>.py``, which puts this folder first on ``sys.path``).

Every benchmark prints the machine it ran on next to its figures, because the figures mean little without it: the
CI machine is 2 shared cores, and a 1-minute load average well above the core count means the timings are noisy
(compare ratios measured in the same run, not absolute numbers across runs).
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["machine", "moto_s3", "panning_scene"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        return None


def machine(device: str | None = None) -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory, 1-minute load average, Python and library versions
    (torch always; Ray and OpenCV when the benchmark has imported them), torch's intra-op threads, and the GPU when
    ``device`` is ``"cuda"`` (or, with no ``device``, whenever one is visible)."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "mem_gb": _memory_gb(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # well above "cores": a shared, busy machine
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for module in ("ray", "cv2"):
        if module in sys.modules:
            info[module] = getattr(sys.modules[module], "__version__", "?")
    if (device == "cuda" or device is None) and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """A moto S3 server on loopback with ``bucket``; sets ``AWS_ENDPOINT_URL`` and dummy keys, yields ``s3://bucket``.

    A separate process, as a real object store would be: an in-process server would compete with the benchmarked
    driver for the GIL.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    server = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def panning_scene(n: int, height: int, width: int, seed: int = 0):
    """(n, H, W, 3) uint8 RGB frames: a textured background panning 2 px per frame with a textured square moving
    over it (wrapping inside the frame): real motion for flow engines and real texture for video codecs."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    pad = 2 * n + 16
    background = cv2.GaussianBlur(rng.integers(0, 256, (height + pad, width + pad, 3), np.uint8), (0, 0), 2.5)
    square = cv2.GaussianBlur(rng.integers(0, 256, (height // 3, width // 4, 3), np.uint8), (0, 0), 1.5)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t] = background[t : t + height, 2 * t : 2 * t + width]
        y = (height // 4 + 3 * t) % (height - square.shape[0])
        x = (width // 5 + 5 * t) % (width - square.shape[1])
        frames[t, y : y + square.shape[0], x : x + square.shape[1]] = square
    return frames

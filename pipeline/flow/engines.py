"""Optical flow engines behind one interface, built by name from a registry.

    engine = create_flow_engine("dis", preset="medium")            # OpenCV DIS on CPU (the offline default)
    engine = create_flow_engine("rapidflow_it1", checkpoint="w.ckpt", device="cuda")   # any ptlflow model
    flows = engine.compute(frames)        # (N, H, W, 3) uint8 RGB -> (N, H, W, 2) float32 (dx, dy) pixels
    engine.provenance                     # {"engine", "model", "checkpoint", "checkpoint_sha256", "version", ...}

N frames give N flows: frame t gets the forward flow t -> t+1, and the last frame gets the backward flow
N-1 -> N-2 (HMHI-Net needs a flow picture for every frame). Frames are resized so that their longest side is at
most ``max_side`` before flow, and the flow is resized back and rescaled to the input size.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from pipeline import telemetry
from pipeline.storage import local_copy, url_sha256

__all__ = [
    "FlowEngine",
    "DISFlowEngine",
    "FlowPictures",
    "PtlflowEngine",
    "DIS_PRESETS",
    "register_flow_engine",
    "list_flow_engines",
    "compute_timed",
    "create_flow_engine",
    "flow_pairs",
]

DIS_PRESETS: tuple[str, ...] = ("ultrafast", "fast", "medium")


class FlowEngine(Protocol):
    """What every engine offers (the segmentation job reuses it)."""

    provenance: dict[str, Any]

    def compute(self, frames: np.ndarray) -> np.ndarray: ...


_REGISTRY: dict[str, Callable[..., FlowEngine]] = {}


def register_flow_engine(name: str):
    """Class decorator: make an engine constructible by ``create_flow_engine(name, ...)``."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_flow_engines() -> list[str]:
    """Engines registered here; any ptlflow model name is accepted as well."""
    return sorted(_REGISTRY)


def flow_pairs(n: int) -> list[tuple[int, int]]:
    """(source, target) frame index per output flow: forward t -> t+1, then backward for the last frame."""
    if n < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {n}")
    return [(t, t + 1) for t in range(n - 1)] + [(n - 1, n - 2)]


def compute_timed(engine: FlowEngine, frames: np.ndarray) -> tuple[np.ndarray, float]:
    """``engine.compute(frames)`` and the seconds it took; the time per frame also goes to the
    ``hmhi_flow_frame_seconds`` metric (by engine), which every job that computes flow records this way."""
    started = time.perf_counter()
    flows = engine.compute(frames)
    seconds = time.perf_counter() - started
    name = str(engine.provenance.get("model") or engine.provenance.get("engine"))
    for _ in range(len(frames)):
        telemetry.FLOW_FRAME_SECONDS.observe(seconds / max(1, len(frames)), engine=name)
    return flows, seconds


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    return frames


def _work_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(8, round(h * scale)), max(8, round(w * scale))


def _resize_flow_back(flow: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize (h', w', 2) flow to (h, w) and rescale its vectors to pixels of the new size."""
    import cv2

    fh, fw = flow.shape[:2]
    if (fh, fw) == (h, w):
        return flow
    out = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= w / fw
    out[..., 1] *= h / fh
    return out


@register_flow_engine("dis")
class DISFlowEngine:
    """OpenCV Dense Inverse Search flow on grayscale frames (CPU)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str = "cpu",
        max_side: int | None = 1024,
        preset: str = "medium",
        threads: int | None = None,
    ):
        import cv2

        if checkpoint:
            raise ValueError("flow engine 'dis' takes no checkpoint")
        if device != "cpu":
            raise ValueError(f"flow engine 'dis' runs on the CPU only, got device={device!r}")
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {DIS_PRESETS}, got {preset!r}")
        if threads:
            cv2.setNumThreads(int(threads))
        self.preset = preset
        self.max_side = max_side
        self._dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
        self.provenance = {
            "engine": "dis",
            "model": f"dis_{preset}",
            "checkpoint": None,
            "checkpoint_sha256": None,
            "version": f"opencv-{cv2.__version__}",
            "max_side": max_side,
        }

    def compute(self, frames: np.ndarray) -> np.ndarray:
        import cv2

        frames = _check_frames(frames)
        n, h, w, _ = frames.shape
        wh, ww = _work_size(h, w, self.max_side)
        grey = []
        for f in frames:
            g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            if (wh, ww) != (h, w):
                g = cv2.resize(g, (ww, wh), interpolation=cv2.INTER_AREA)
            grey.append(g)
        out = np.empty((n, h, w, 2), np.float32)
        for i, (s, t) in enumerate(flow_pairs(n)):
            out[i] = _resize_flow_back(self._dis.calc(grey[s], grey[t], None), h, w)
        return out


class PtlflowEngine:
    """Any ptlflow model, batched over frame pairs, on CPU or CUDA.

    ``checkpoint``: a local file (or storage URL) in ptlflow's Lightning format ``{"state_dict": ...}``, loaded
    with ``weights_only=True``. Without one the model keeps random weights, which only tests should ask for
    (``random_init=True``): random flow is noise.
    """

    def __init__(
        self,
        model: str,
        checkpoint: str | None = None,
        device: str = "cpu",
        max_side: int | None = 512,
        batch_size: int = 4,
        random_init: bool = False,
        threads: int | None = None,
    ):
        import ptlflow  # imported lazily: ~6 s and ~350 MB, only for this engine
        import torch

        if model not in ptlflow.get_model_names():
            raise ValueError(
                f"unknown flow model {model!r}: not 'dis' and not a ptlflow model "
                f"(e.g. neuflow2, rapidflow, raft_small)"
            )
        if checkpoint is None and not random_init:
            raise ValueError(
                f"flow model {model!r} needs a checkpoint file (--flow-ckpt); "
                "random weights give noise (random_init=True is for tests only)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads:
            torch.set_num_threads(int(threads))
        # local_copy checks that a local path is a file: ptlflow would take an unknown path for a checkpoint *name*
        # and try to download it.
        with (
            local_copy(checkpoint, prefix="flow-ckpt-")
            if checkpoint is not None
            else contextlib.nullcontext()
        ) as local:
            sha = url_sha256(local) if local else None
            try:
                net = ptlflow.get_model(model, ckpt_path=local)
            except KeyError as e:
                raise ValueError(
                    f"flow checkpoint {checkpoint!r} is not in ptlflow's format "
                    f"(a dict with a 'state_dict' key): missing {e}"
                ) from e
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.max_side = max_side
        self.batch_size = batch_size
        self.provenance = {
            "engine": "ptlflow",
            "model": model,
            "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
            "checkpoint_sha256": sha,
            "version": f"ptlflow-{ptlflow.__version__}",
            "max_side": max_side,
            "random_init": checkpoint is None,
        }

    def compute(self, frames: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        frames = _check_frames(frames)
        n, h, w, _ = frames.shape
        pairs = flow_pairs(n)
        wh, ww = _work_size(h, w, self.max_side)
        # ptlflow models expect BGR in [0, 1] (their normalisation constants are in BGR order).
        x = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if (wh, ww) != (h, w):
            x = F.interpolate(x, size=(wh, ww), mode="bilinear", align_corners=False, antialias=True)
        out = np.empty((n, h, w, 2), np.float32)
        with torch.inference_mode():
            for b in range(0, len(pairs), self.batch_size):
                chunk = pairs[b : b + self.batch_size]
                src = torch.tensor([s for s, _ in chunk], device=self.device)
                dst = torch.tensor([t for _, t in chunk], device=self.device)
                images = torch.stack([x[src], x[dst]], 1).contiguous()  # (B, 2, 3, h', w')
                flow = self.net({"images": images})["flows"][:, 0].float()  # (B, 2, h', w')
                if (wh, ww) != (h, w):
                    flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
                    flow[:, 0] *= w / ww
                    flow[:, 1] *= h / wh
                out[b : b + len(chunk)] = flow.permute(0, 2, 3, 1).cpu().numpy()
        return out


@register_flow_engine("pictures")
class FlowPictures:
    """The flow "engine" of corpora that ship a flow picture per frame (the official HMHI-Net archives'
    ``flow/`` or ``Flows/`` folders, ``VideoRecord.flows``): nothing is computed; the jobs read each frame's
    picture and use it as it is (the flow job stores its bytes unchanged in the shards)."""

    def __init__(
        self, checkpoint: str | None = None, device: str = "cpu", max_side: int | None = None, **_: Any
    ):
        if checkpoint:
            raise ValueError("flow engine 'pictures' takes no checkpoint (the pictures come with the corpus)")
        self.provenance = {"engine": "pictures", "source": "flow pictures shipped with the corpus"}

    def compute(self, frames: np.ndarray) -> np.ndarray:
        raise RuntimeError("flow engine 'pictures' computes nothing: read the corpus's flow pictures instead")


def create_flow_engine(
    name: str = "dis",
    checkpoint: str | None = None,
    device: str = "cpu",
    max_side: int | None = 1024,
    **opts: Any,
) -> FlowEngine:
    """Build a flow engine: ``"dis"`` (options: ``preset``, ``threads``) or any ptlflow model name
    (options: ``batch_size``, ``random_init``, ``threads``)."""
    if name in _REGISTRY:
        return _REGISTRY[name](checkpoint=checkpoint, device=device, max_side=max_side, **opts)
    return PtlflowEngine(name, checkpoint=checkpoint, device=device, max_side=max_side, **opts)

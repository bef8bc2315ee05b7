"""Training augmentation and preprocessing of one clip (docs/model.md §9).

Official behaviour, reproduced by default:
- each frame is flipped horizontally on its own with p=0.5 (image, flow and mask together); the flow image's
  colours are not corrected, so a flipped frame's motion colours point the wrong way;
- photometric distortion on RGB only (brightness, contrast, saturation, hue; each with p=0.5). Like the
  official code, it converts with OpenCV's BGR->HSV routine on RGB arrays, so hue and saturation act on
  mislabelled channels;
- flow is rendered to a colour image, then treated exactly like an RGB frame: PIL bilinear resize (aspect not
  kept), ImageNet normalisation; masks use nearest-neighbour resize.
Option: ``flip_mode='clip'`` flips the whole clip at once and negates the flow's x component before rendering,
so motion colours stay truthful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipeline.flow.render import flow_to_rgb
from pipeline.train.config import AugmentConfig
from pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_images, resize_mask, resize_rgb  # noqa: F401  (re-exported)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipTensors",
    "photometric_distort",
    "flip_clip",
    "prepare_clip",
    "normalize_images",
    "resize_rgb",
    "resize_mask",
]


@dataclass
class ClipTensors:
    """One preprocessed training clip."""

    frames: torch.Tensor
    """(L, 3, S, S) float32, ImageNet-normalised RGB."""
    flows: torch.Tensor
    """(L, 3, S, S) float32, ImageNet-normalised flow colour images."""
    masks: torch.Tensor
    """(L, 1, S, S) float32 in {0, 1}."""


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distort(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Official-style photometric distortion of one (H, W, 3) uint8 RGB frame; returns a new array."""
    img = np.ascontiguousarray(img)
    if rng.integers(2):
        img = _convert(img, beta=float(rng.uniform(-cfg.brightness_delta, cfg.brightness_delta)))
    contrast_first = bool(rng.integers(2))

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(x, alpha=float(rng.uniform(*cfg.contrast_range)))
        return x

    if contrast_first:
        img = contrast(img)
    if rng.integers(2):  # saturation; BGR2HSV on an RGB array, as the official code does
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=float(rng.uniform(*cfg.saturation_range)))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):  # hue, in OpenCV's 0..179 units
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        # [-delta, delta): numpy.random.randint(-18, 18) in the official code excludes +18
        shift = int(rng.integers(-cfg.hue_delta, cfg.hue_delta))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        img = contrast(img)
    return img


def flip_clip(
    frames: np.ndarray, flows: np.ndarray, masks: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal flips of (L,H,W,3) frames, (L,H,W,2) flows and (L,H,W) masks.

    Returns the flipped arrays and the (L,) bool flip decisions. In 'clip' mode one decision covers the clip
    and the flow's x component is negated where flipped.
    """
    num = frames.shape[0]
    if cfg.flip_mode == "clip":
        flipped = np.full(num, rng.random() < cfg.flip_prob)
    else:
        flipped = rng.random(num) < cfg.flip_prob
    frames, flows, masks = frames.copy(), flows.copy(), masks.copy()
    for i in np.flatnonzero(flipped):
        frames[i] = frames[i, :, ::-1]
        flows[i] = flows[i, :, ::-1]
        masks[i] = masks[i, :, ::-1]
        if cfg.flip_mode == "clip" and flows.shape[-1] == 2:  # a flow picture (..., 3) is flipped as an image
            flows[i, ..., 0] = -flows[i, ..., 0]
    return frames, flows, masks, flipped


def prepare_clip(
    frames: np.ndarray,
    flows: np.ndarray,
    masks: np.ndarray,
    size: int,
    rng: np.random.Generator | None,
    cfg: AugmentConfig | None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> ClipTensors:
    """Augment (when ``rng`` and ``cfg`` are given), render flow, resize and normalise one clip.

    ``normalization``: the model's ``(mean, std)`` (``ModelSettings``); None: ImageNet's.

    ``frames`` (L,H,W,3) uint8, ``flows`` (L,H,W,2) float or (L,h,w,3) uint8 flow pictures (``ClipSample.flow_images()``),
    ``masks`` (L,H,W) bool. Validation passes
    ``rng=None`` to get the deterministic preprocessing only.
    """
    augment = rng is not None and cfg is not None
    if augment:
        frames, flows, masks, _ = flip_clip(frames, flows, masks, rng, cfg)
    rgb, flow_rgb, gt = [], [], []
    for i in range(frames.shape[0]):
        img = frames[i]
        if augment and cfg.photometric:
            img = photometric_distort(img, rng, cfg)
        rgb.append(resize_rgb(np.ascontiguousarray(img), size))
        # (h, w, 3) uint8 flow pictures shipped with the corpus are fed as they are; (H, W, 2) flow is rendered.
        pic = flows[i] if flows.shape[-1] == 3 else flow_to_rgb(np.ascontiguousarray(flows[i], np.float32))
        flow_rgb.append(resize_rgb(np.ascontiguousarray(pic), size))
        gt.append(resize_mask(np.ascontiguousarray(masks[i]), size))
    mean, std = normalization or (None, None)
    return ClipTensors(
        frames=normalize_images(np.stack(rgb), mean, std),
        flows=normalize_images(np.stack(flow_rgb), mean, std),
        masks=torch.from_numpy(np.stack(gt)[:, None].astype(np.float32)),
    )

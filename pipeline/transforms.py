"""The model's input and output transforms, shared by training, validation and segmentation.

Input (docs/hmhi-architecture.md §14, the official ``utils/dataloader.py``): frames and flow pictures are decoded to
RGB, resized to a square with PIL's bilinear filter (antialiased when shrinking, aspect not kept; this is exactly
what torchvision's ``Resize((S, S))`` does to a PIL image), then normalised in float32 in the order ``ToTensor`` +
``Normalize`` use (``u8 / 255``, minus the mean, over the std), which is bit-exact with torchvision. The mean and std
are the model's (:class:`model.ModelSettings`, recorded in its checkpoints): ImageNet's unless a checkpoint says
otherwise.
Masks use nearest-neighbour resizing.

Output (the official ``utils/func.py``): the full-resolution logits are resized bilinearly (``align_corners=False``)
to the frame's size and passed through a sigmoid (:func:`logits_to_probs`). The official soft map then stretches
each frame to its own min and max (``+1e-8``), multiplies by 255 and truncates to uint8 (:func:`official_soft_map`);
its evaluation keeps values ``> 128`` (:data:`OFFICIAL_MASK_THRESHOLD`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from model.settings import IMAGENET_MEAN as _MEAN
from model.settings import IMAGENET_STD as _STD

if TYPE_CHECKING:  # torch is imported where used
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_MASK_THRESHOLD",
    "logits_to_probs",
    "normalize_images",
    "official_soft_map",
    "resize_mask",
    "resize_rgb",
]

IMAGENET_MEAN = np.array(_MEAN, dtype=np.float32)
"""The official normalisation's mean (``model.settings.IMAGENET_MEAN``) as the float32 array the transforms use."""
IMAGENET_STD = np.array(_STD, dtype=np.float32)
"""The official normalisation's standard deviation, as a float32 array."""

OFFICIAL_MASK_THRESHOLD = 128
"""The official evaluation keeps stretched uint8 soft-map values strictly above this."""


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking, aspect not kept) of an (H, W, 3) uint8 image to size x size."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) bool mask."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0


def normalize_images(
    images: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """(L, H, W, 3) uint8 -> (L, 3, H, W) float32 tensor normalised with ``mean`` and ``std`` (per RGB channel,
    0-1 scale; default ImageNet's, the official normalisation)."""
    import torch

    mean_ = IMAGENET_MEAN if mean is None else np.asarray(mean, dtype=np.float32)
    std_ = IMAGENET_STD if std is None else np.asarray(std, dtype=np.float32)
    x = images.astype(np.float32) / 255.0
    x = (x - mean_) / std_
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def logits_to_probs(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, H', W') or (1, 1, H', W') logits -> (H, W) float32 sigmoid probabilities at ``size`` = (H, W).

    Resized before the sigmoid, bilinearly with ``align_corners=False``, as the official ``save_images`` does.
    """
    import torch.nn.functional as F

    row = logits.reshape(1, 1, *logits.shape[-2:]).float()
    if tuple(row.shape[-2:]) != tuple(size):
        row = F.interpolate(row, size=tuple(size), mode="bilinear", align_corners=False)
    return row.sigmoid()[0, 0].cpu().numpy()


def official_soft_map(prob: np.ndarray) -> np.ndarray:
    """The official per-frame soft map: ``uint8(255 * (p - min) / (max - min + 1e-8))``, truncated.

    Computed in float32 like the official numpy code (the denominator as numpy 1.x forms it: float32
    ``max - min`` plus ``1e-8`` in float64, cast back for the division).
    """
    prob = np.asarray(prob, dtype=np.float32)
    low, high = prob.min(), prob.max()
    denominator = np.float32(np.float64(high - low) + 1e-8)
    stretched = (prob - low) / denominator
    return (stretched * np.float32(255)).astype(np.uint8)

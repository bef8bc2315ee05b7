"""The official HMHI-Net training loss (docs/model.md §7).

Per frame, on full-resolution logits: ``focal_w * focal + bce_w * bce + dice_w * dice`` with
focal = mean over pixels of bce_px * (1 - p_t)^gamma * (alpha*y + (1-alpha)*(1-y)),
dice = 1 - mean over the batch of (2*sum(p*y) + 1e-5) / (sum(p) + sum(y) + 1e-5).
The clip loss is the plain sum over frames, the reference frame included. Official weights 20 / 10 / 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.train.config import LossConfig

__all__ = ["focal_loss", "dice_loss", "clip_loss"]

_DICE_EPS = 1e-5


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss over every element of ``logits``/``target`` (same shape, target in [0, 1]):
    torchvision's RetinaNet loss, whose formula is the official one above (alpha weights the foreground)."""
    return sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over the batch (dim 0) of the soft Dice of sigmoid(logits) and target."""
    p = torch.sigmoid(logits).flatten(1)
    y = target.flatten(1)
    dice = (2 * (p * y).sum(1) + _DICE_EPS) / (p.sum(1) + y.sum(1) + _DICE_EPS)
    return 1 - dice.mean()


def clip_loss(
    logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of clips: (B, L, 1, H, W) logits and targets -> (total, parts).

    ``parts`` holds the weighted focal/bce/dice sums over frames as floats, for logging.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
    logits = logits.float()
    target = target.float()
    total = logits.new_zeros(())
    parts = {"focal": 0.0, "bce": 0.0, "dice": 0.0}
    for t in range(logits.shape[1]):
        lt, yt = logits[:, t], target[:, t]
        focal = cfg.focal_weight * focal_loss(lt, yt, cfg.focal_alpha, cfg.focal_gamma)
        bce = cfg.bce_weight * F.binary_cross_entropy_with_logits(lt, yt)
        dice = cfg.dice_weight * dice_loss(lt, yt)
        total = total + focal + bce + dice
        parts["focal"] += float(focal.detach())
        parts["bce"] += float(bce.detach())
        parts["dice"] += float(dice.detach())
    return total, parts

"""CBAM, the top-down CBAM decoder, SGIM and PLAM (hmhi-architecture.md §6-§8)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.memory import ReadoutLayer

__all__ = ["CBAM", "TopDownDecoder", "SGIM", "PLAM", "upsample_bicubic"]


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(size: int, factor: int, device: torch.device) -> torch.Tensor:
    """(size * factor, size) fp32 matrix M with M @ x = 1-D bicubic upsampling of x by ``factor``, exactly as
    ``F.interpolate(mode="bicubic", align_corners=False)`` samples it: cubic convolution with A = -0.75, source
    position (o + 0.5) / factor - 0.5, taps beyond the border clamped to the edge sample."""
    a = -0.75
    near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # noqa: E731  |distance| <= 1
    far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # noqa: E731  1 < |distance| < 2
    matrix = torch.zeros(size * factor, size, dtype=torch.float64)
    for out in range(size * factor):
        src = (out + 0.5) / factor - 0.5
        first = math.floor(src)
        t = src - first
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[out, min(max(first + offset, 0), size - 1)] += weight
    with torch.inference_mode(
        False
    ):  # a cached constant that training may use after inference (not an inference tensor)
        return matrix.to(device=device, dtype=torch.float32)


def upsample_bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)`` for an integer ``factor``,
    as two small matmuls with the fixed interpolation matrices (rows, then columns).

    Why: the same numbers (fp32 arithmetic, one rounding to ``x.dtype``) at a fraction of the cost, since the CPU
    kernel of ``upsample_bicubic2d`` is scalar: 256 x 64^2 -> 128^2 took 24-28 ms in fp32 or bf16, the matmuls
    2.5-11 ms. The arithmetic stays fp32 under bf16 autocast, as that kernel's does.
    """
    height, width = x.shape[-2:]
    rows = _bicubic_matrix(height, factor, x.device)
    cols = rows if width == height else _bicubic_matrix(width, factor, x.device)
    with torch.autocast(x.device.type, enabled=False):
        return torch.matmul(torch.matmul(rows, x.float()), cols.t()).to(x.dtype)


def _conv_relu(in_ch: int, out_ch: int, kernel: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, **kwargs), nn.ReLU(inplace=True)
    )


class CBAM(nn.Module):
    """3x3 conv, then channel attention (shared c->c->c MLP on avg and max pools, no reduction), then spatial
    attention (3x3 2->16 ReLU 3x3 16->1 on [channel mean, channel max])."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1)
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        batch, channels = x.shape[:2]
        pooled = torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)], dim=0)
        gates = self.channel_mlp(pooled)  # one MLP pass for both pools
        x = x * torch.sigmoid(gates[:batch] + gates[batch:])
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(descriptor))


class DecoderStage(nn.Module):
    """lateral 1x1 ConvReLU, [concat with the upsampled coarser map], 3x3 ConvReLU blend, CBAM."""

    def __init__(self, in_ch: int, width: int, has_coarser: bool):
        super().__init__()
        self.lateral = _conv_relu(in_ch, width, 1)
        self.blend = _conv_relu(2 * width if has_coarser else width, width, 3)
        self.cbam = CBAM(width)

    def forward(self, feature: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor:
        x = self.lateral(feature)
        if coarser is not None:
            up = upsample_bicubic(coarser, 2)
            x = torch.cat([x, up], dim=1)  # lateral first
        return self.cbam(self.blend(x))


class TopDownDecoder(nn.Module):
    """Levels [L0, L1, L2, L3] -> (full-resolution logits, 1/4-resolution logits); bicubic upsampling."""

    def __init__(self, in_dims: tuple[int, int, int, int], width: int = 256):
        super().__init__()
        # stages[0] handles the coarsest level (3), stages[3] the finest (0).
        self.stages = nn.ModuleList(DecoderStage(in_dims[3 - i], width, has_coarser=i > 0) for i in range(4))
        self.predictor = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stages[0](levels[3], None)  # the coarsest level has nothing coarser to add
        for i in range(1, 4):
            x = self.stages[i](levels[3 - i], x)
        # The logits stay fp32 under bf16 autocast: the masks are their sign and the memory writes their sigmoid,
        # and near 0 a bf16 logit (8 significant bits) flips pixels; this 256 -> 1 conv is ~0.1% of the FLOPs.
        with torch.autocast(x.device.type, enabled=False):
            quarter = self.predictor(x.float())
            full = upsample_bicubic(quarter, 4)
        return full, quarter


class SGIM(nn.Module):
    """Semantic -> pixel: a read-out layer on P whose memory is ReLU(Linear(S tokens)) (256 keys, no position)."""

    def __init__(self, pixel_dim: int, semantic_dim: int, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.reduce = nn.Linear(semantic_dim, pixel_dim)
        self.readout = ReadoutLayer(
            pixel_dim,
            ffn_dim,
            dropout,
            pos_on_self_attn=True,
            rope_on_cross_attn=False,
            pos_on_memory_keys=False,
            topk=None,
        )

    def forward(self, pixel: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        objects = F.relu(self.reduce(semantic.flatten(2).transpose(1, 2)))
        ca = self.readout.cross_attn
        return self.readout(pixel, ca.k_proj(objects), ca.v_proj(objects))


class PLAM(nn.Module):
    """Pixel -> semantic: ReLU(1x1(CBAM(cat[down(P), S]))) + S, with down = grouped 7x7/s4 ConvReLU, 1x1 ConvReLU."""

    def __init__(self, pixel_dim: int, semantic_dim: int):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(pixel_dim, semantic_dim, 7, stride=4, padding=3, groups=pixel_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(semantic_dim, semantic_dim, 1),
            nn.ReLU(inplace=True),
        )
        self.cbam = CBAM(2 * semantic_dim)
        self.fuse = _conv_relu(2 * semantic_dim, semantic_dim, 1)

    def forward(self, pixel: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.cbam(torch.cat([self.down(pixel), semantic], dim=1))) + semantic

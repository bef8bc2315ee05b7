"""CBAM, the top-down CBAM decoder, SGIM and PLAM (hmhi-architecture.md §6-§8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.memory import ReadoutLayer

__all__ = ["CBAM", "TopDownDecoder", "SGIM", "PLAM"]


def _conv_relu(in_ch: int, out_ch: int, kernel: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, **kwargs), nn.ReLU(inplace=True))


class CBAM(nn.Module):
    """3x3 conv, then channel attention (shared c->c->c MLP on avg and max pools, no reduction), then spatial
    attention (3x3 2->16 ReLU 3x3 16->1 on [channel mean, channel max])."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.channel_mlp = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(channels, channels, 1))
        self.spatial = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 1, 3, padding=1))

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
            up = F.interpolate(coarser, scale_factor=2, mode="bicubic", align_corners=False)
            x = torch.cat([x, up], dim=1)  # lateral first
        return self.cbam(self.blend(x))


class TopDownDecoder(nn.Module):
    """Levels [L0, L1, L2, L3] -> (full-resolution logits, 1/4-resolution logits); bicubic upsampling."""

    def __init__(self, in_dims: tuple[int, int, int, int], width: int = 256):
        super().__init__()
        # stages[0] handles the coarsest level (3), stages[3] the finest (0).
        self.stages = nn.ModuleList(
            DecoderStage(in_dims[3 - i], width, has_coarser=i > 0) for i in range(4))
        self.predictor = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = None
        for i, stage in enumerate(self.stages):
            x = stage(levels[3 - i], x)
        # The logits stay fp32 under bf16 autocast: the masks are their sign and the memory writes their sigmoid,
        # and near 0 a bf16 logit (8 significant bits) flips pixels; this 256 -> 1 conv is ~0.1% of the FLOPs.
        with torch.autocast(x.device.type, enabled=False):
            quarter = self.predictor(x.float())
            full = F.interpolate(quarter, scale_factor=4, mode="bicubic", align_corners=False)
        return full, quarter


class SGIM(nn.Module):
    """Semantic -> pixel: a read-out layer on P whose memory is ReLU(Linear(S tokens)) (256 keys, no position)."""

    def __init__(self, pixel_dim: int, semantic_dim: int, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.reduce = nn.Linear(semantic_dim, pixel_dim)
        self.readout = ReadoutLayer(pixel_dim, ffn_dim, dropout, pos_on_self_attn=True, rope_on_cross_attn=False,
                                    pos_on_memory_keys=False, topk=None)

    def forward(self, pixel: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        objects = F.relu(self.reduce(semantic.flatten(2).transpose(1, 2)))
        ca = self.readout.cross_attn
        return self.readout(pixel, ca.k_proj(objects), ca.v_proj(objects))


class PLAM(nn.Module):
    """Pixel -> semantic: ReLU(1x1(CBAM(cat[down(P), S]))) + S, with down = grouped 7x7/s4 ConvReLU, 1x1 ConvReLU."""

    def __init__(self, pixel_dim: int, semantic_dim: int):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(pixel_dim, semantic_dim, 7, stride=4, padding=3, groups=pixel_dim), nn.ReLU(inplace=True),
            nn.Conv2d(semantic_dim, semantic_dim, 1), nn.ReLU(inplace=True))
        self.cbam = CBAM(2 * semantic_dim)
        self.fuse = _conv_relu(2 * semantic_dim, semantic_dim, 1)

    def forward(self, pixel: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.cbam(torch.cat([self.down(pixel), semantic], dim=1))) + semantic

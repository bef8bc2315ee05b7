"""Shared MiT encoder with flow-only adapters (hmhi-architecture.md §2).

The MiT network is timm's ``pvt_v2`` with ``mlp_ratios=(4, 4, 4, 4)``. RGB and flow pictures run through it as
one batch of 2B, RGB first; every block adds three small adapters to the *flow half* only (on q, on kv and after
the block), and each level's fused feature is the sum of the two halves.
"""

from __future__ import annotations

from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates
from timm.models.pvt_v2 import Attention, Block, PyramidVisionTransformerStage, PyramidVisionTransformerV2
from torch import nn

from model.architecture import MIT_VARIANTS, MiTSpec

__all__ = ["MIT_VARIANTS", "MiTSpec", "FlowAdapter", "AdapterAttention", "AdapterBlock", "DualStreamMiT"]


class FlowAdapter(nn.Module):
    """LN(d) -> Linear(d -> d/2) -> ReLU -> Linear(d/2 -> d_out); the caller adds the output (scale 1)."""

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        # Sub-module names are the official ones, so official backbone keys map 1:1.
        self.adapter_layer_norm_before = nn.LayerNorm(dim)  # eps 1e-5, as in the official code
        self.down_proj = nn.Linear(dim, dim // 2)
        self.up_proj = nn.Linear(dim // 2, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(F.relu(self.down_proj(self.adapter_layer_norm_before(x))))


def _add_to_flow_half(rgb_and_flow: torch.Tensor, flow_delta: torch.Tensor, inplace: bool) -> torch.Tensor:
    """[rgb; flow] -> [rgb; flow + delta] along the batch axis.

    In place when allowed (saves a copy of the whole 2B batch); out of place when autograd may have saved
    ``rgb_and_flow`` for the backward pass.
    """
    half = rgb_and_flow.shape[0] // 2
    if inplace:
        rgb_and_flow[half:] += flow_delta
        return rgb_and_flow
    return torch.cat([rgb_and_flow[:half], rgb_and_flow[half:] + flow_delta], dim=0)


def _as_nchw(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) view in channels-last memory order (no copy)."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when x is channels-last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class AdapterAttention(Attention):
    """timm's MiT spatial-reduction attention with the q and kv flow adapters inserted before the head split."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=True)
        self.q_adapter = FlowAdapter(dim)
        self.kv_adapter = FlowAdapter(dim, 2 * dim)

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return self._attend(x, feat_size)
        # fp32 under bf16 autocast. Why: on a CPU that computes bf16 natively (AMX), the backbone's attention in bf16
        # flipped 0.6% of the official fixture's mask pixels on one frame (the guard allows 0.5%; the rest of the
        # model in bf16 flips at most 0.23%), and no single part of it (the projections, the spatial reduction,
        # SDPA) was enough to keep in fp32. It costs 10-35% of a bf16 frame at 512x512 on 2 threads (0.50 -> 0.55 s
        # on the fixture clip, 0.53 -> 0.72 s in bench/model_speed.py at T=5; bench/RESULTS.md).
        # The residual stream then stays fp32 through the backbone, as the block adds this fp32 output to it.
        with torch.autocast(x.device.type, enabled=False):
            return self._attend(x.float(), feat_size)

    def _attend(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        batch, tokens, dim = x.shape
        half = batch // 2
        # q and kv are fresh projection outputs that autograd does not save, so the adapters add in place.
        q = _add_to_flow_half(self.q(x), self.q_adapter(x[half:]), inplace=True)
        if self.sr is not None:
            reduced = self.sr(
                _as_nchw(x, feat_size[0], feat_size[1]).contiguous(memory_format=torch.channels_last)
            )
            reduced = self.norm(_as_tokens(reduced))
        else:
            reduced = x
        kv = _add_to_flow_half(self.kv(reduced), self.kv_adapter(reduced[half:]), inplace=True)  # k, then v
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        kv = kv.reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop.p if self.training else 0.0
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class AdapterBlock(Block):
    """timm's MiT block (pre-LN attention + Mix-FFN, eps 1e-6) plus a post-block adapter on the flow half."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float):
        super().__init__(
            dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            sr_ratio=sr_ratio,
            qkv_bias=True,
            drop_path=drop_path,
        )
        self.attn = AdapterAttention(dim, num_heads, sr_ratio)
        self.adapter = FlowAdapter(dim)

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        x = x + self.drop_path2(self._mix_ffn(self.norm2(x), feat_size))
        half = x.shape[0] // 2
        # no drop path on the adapter; in place unless autograd saved x (inside the adapter's LayerNorm)
        return _add_to_flow_half(x, self.adapter(x[half:]), inplace=not torch.is_grad_enabled())

    def _mix_ffn(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        """timm's MlpWithDepthwiseConv, with the depthwise conv run channels-last so no layout copies are made."""
        mlp = self.mlp
        hidden = mlp.fc1(x)
        hidden = _as_tokens(mlp.dwconv(_as_nchw(hidden, feat_size[0], feat_size[1])))
        return mlp.drop(mlp.fc2(mlp.drop(mlp.act(hidden))))


class DualStreamMiT(nn.Module):
    """One MiT shared by RGB and flow pictures; returns the four fused (summed) levels, NCHW.

    Parameter names are those of timm's ``pvt_v2`` (``patch_embed``, ``stages.N.{downsample,blocks.J,norm}``) plus
    the adapters ``stages.N.blocks.J.{attn.q_adapter, attn.kv_adapter, adapter}``.
    """

    def __init__(self, spec: MiTSpec, drop_path_rate: float = 0.1):
        super().__init__()
        self.embed_dims = spec.embed_dims
        # timm builds the patch embeds, stage norms and layout; the blocks are ours (timm's plus adapters), so
        # the stages are created empty and filled, with timm's own per-block drop-path schedule.
        mit = timm.create_model(
            spec.timm_name,
            pretrained=False,
            num_classes=0,
            depths=(0, 0, 0, 0),
            mlp_ratios=(spec.mlp_ratio,) * 4,
        )
        if not isinstance(mit, PyramidVisionTransformerV2):
            raise TypeError(f"{spec.timm_name}: timm built a {type(mit).__name__}, not a PVTv2 (MiT) model")
        # stagewise=True: one list of rates per stage (timm's annotation is the union of both of its modes)
        rates = cast(
            list[list[float]], calculate_drop_path_rates(drop_path_rate, list(spec.depths), stagewise=True)
        )
        for i, stage in enumerate(mit.stages):
            assert isinstance(stage, PyramidVisionTransformerStage)  # what PyramidVisionTransformerV2 builds
            stage.blocks.extend(
                AdapterBlock(spec.embed_dims[i], spec.num_heads[i], spec.mlp_ratio, spec.sr_ratios[i], rate)
                for rate in rates[i]
            )
        mit.apply(mit._init_weights)  # MiT init, which also overwrites the adapters (official behaviour, §9)
        self.patch_embed = mit.patch_embed
        self.stages = mit.stages

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> list[torch.Tensor]:
        """frames, flows: (B, 3, H, W) -> [z0, z1, z2, z3] with z_k = rgb_k + flow_k at stride 4 * 2**k."""
        batch = frames.shape[0]
        x = self.patch_embed(
            torch.cat([frames, flows], dim=0)
        )  # (2B, H/4, W/4, C), [RGB; flow] is the contract
        levels = []
        for stage in self.stages:
            x = stage(x)  # NCHW
            levels.append(x[:batch] + x[batch:])
        return levels

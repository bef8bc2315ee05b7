"""Helpers for the model tests: tiny CPU models and random clips."""

from __future__ import annotations

import torch

from model import create_model

# A tiny but complete configuration: every module of the official network, narrow widths.
TINY = dict(decoder_width=32, readout_ffn_dim=64)


def tiny_model(name: str = "hmhi_mit_b0", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    net = create_model(name, **{**TINY, **kwargs})
    # Fresh init gives near-constant outputs (zero biases, 1e-6 layer scales); perturb every tensor so the
    # tests see a model whose outputs depend on everything, like a trained one.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def random_clip(batch: int, length: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, length, 3, size, size, generator=g)
    flows = torch.randn(batch, length, 3, size, size, generator=g)
    return frames, flows

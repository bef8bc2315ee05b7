"""What an HMHI-Net is, without building one: the MiT variants, :class:`HMHIConfig` and the registered model
names. This module imports neither torch nor timm, so settings can be checked (a model name, an architecture
option) by processes that never run the network; :func:`model.create_model` builds the network from these.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any

from model.errors import require

__all__ = ["MIT_VARIANTS", "HMHIConfig", "MiTSpec", "list_models", "model_config", "register_model"]


@dataclass(frozen=True)
class MiTSpec:
    """Shape of one MiT (SegFormer encoder) variant."""

    timm_name: str
    """The timm ``pvt_v2`` model the variant is built from."""
    embed_dims: tuple[int, int, int, int]
    """Channel width of the four levels (strides 4, 8, 16, 32)."""
    depths: tuple[int, int, int, int]
    """Transformer blocks per stage."""
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    """Attention heads per stage."""
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    """Spatial-reduction ratio of the keys/values per stage."""
    mlp_ratio: float = 4.0
    """Mix-FFN expansion (4 in every MiT stage; timm's stock pvt_v2 uses 8 in stages 1-2)."""


MIT_VARIANTS: dict[str, MiTSpec] = {
    "mit_b0": MiTSpec("pvt_v2_b0", (32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSpec("pvt_v2_b1", (64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTSpec("pvt_v2_b2", (64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTSpec("pvt_v2_b3", (64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTSpec("pvt_v2_b4", (64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTSpec("pvt_v2_b5", (64, 128, 320, 512), (3, 6, 40, 3)),
}


@dataclass
class HMHIConfig:
    """Architecture settings of HMHI-Net. Defaults are the official model (MiT-B1, 512x512 training)."""

    encoder: str = "mit_b1"
    """MiT variant of the shared encoder: one of mit_b0 .. mit_b5."""
    memory_size: int = 5
    """Memory window T: frames kept in each FIFO memory (5 in official training, 3 in its inference script)."""
    decoder_width: int = 256
    """Channel width of the top-down CBAM decoder (256 = official; smaller for tiny CPU models)."""
    readout_ffn_dim: int = 2048
    """Hidden width of the FFN in the memory read-outs and SGIM (2048 = official)."""
    readout_dropout: float = 0.1
    """Dropout of the read-out layers (residual branches, FFN and attention probabilities); off in eval."""
    topk: int = 50
    """Memory keys kept per query in the level-1 (pixel) memory cross-attention (official: 50)."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the MiT encoder, linear over its blocks (official: 0.1)."""
    pixel_mask_hidden: int = 27
    """Hidden channels of the level-1 memory's mask downsampler (official: 27)."""
    semantic_mask_hidden: int = 256
    """Hidden channels of the level-3 memory's mask downsampler (official: 256)."""

    def __post_init__(self):
        require(
            self.encoder in MIT_VARIANTS, "encoder", self.encoder, f"must be one of {sorted(MIT_VARIANTS)}"
        )
        require(
            isinstance(self.memory_size, int) and self.memory_size >= 1,
            "memory_size",
            self.memory_size,
            "must be an integer >= 1",
        )
        require(self.decoder_width >= 1, "decoder_width", self.decoder_width, "must be >= 1")
        require(self.readout_ffn_dim >= 1, "readout_ffn_dim", self.readout_ffn_dim, "must be >= 1")
        require(
            0.0 <= self.readout_dropout < 1.0, "readout_dropout", self.readout_dropout, "must be in [0, 1)"
        )
        require(self.topk >= 1, "topk", self.topk, "must be >= 1")
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", self.drop_path_rate, "must be in [0, 1)")
        require(self.pixel_mask_hidden >= 1, "pixel_mask_hidden", self.pixel_mask_hidden, "must be >= 1")
        require(
            self.semantic_mask_hidden >= 1, "semantic_mask_hidden", self.semantic_mask_hidden, "must be >= 1"
        )


_REGISTRY: dict[str, dict[str, Any]] = {}


def register_model(name: str, **defaults: Any) -> None:
    """Register ``name`` as an :class:`HMHIConfig` preset (``defaults`` are config fields)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = defaults


for _variant in range(6):
    register_model(f"hmhi_mit_b{_variant}", encoder=f"mit_b{_variant}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def model_config(name: str, **kwargs: Any) -> HMHIConfig:
    """The :class:`HMHIConfig` of the registered model ``name`` with ``kwargs`` (config fields) on top of its
    preset; what :func:`model.create_model` builds. The encoder is fixed by the name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    fields = {f.name for f in dataclasses.fields(HMHIConfig)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(
            f"create_model({name!r}): unknown argument(s) {unknown}; valid: {sorted(fields - {'encoder'})}"
        )
    if "encoder" in kwargs and kwargs["encoder"] != _REGISTRY[name].get("encoder"):
        raise TypeError(f"create_model({name!r}): the encoder is fixed by the model name")
    return HMHIConfig(**{**_REGISTRY[name], **kwargs})

"""Model registry: ``create_model("hmhi_mit_b1", memory_size=5)`` and ``list_models()``.

The registered names and their presets live in :mod:`model.architecture` (no torch: settings check a name without
building a network); this module builds the network.
"""

from __future__ import annotations

from model.architecture import list_models, model_config, register_model
from model.hmhi import HMHINet

__all__ = ["create_model", "list_models", "register_model"]


def create_model(name: str, **kwargs) -> HMHINet:
    """Build a registered HMHI-Net with fresh (training-from-scratch) weights.

    ``kwargs`` are :class:`HMHIConfig` fields, e.g. ``memory_size`` (T, default 5), ``drop_path_rate``,
    ``decoder_width`` (256 = official; smaller for tiny CPU models), ``readout_ffn_dim``, ``topk``.
    Load weights afterwards with :func:`model.load_checkpoint`.
    """
    return HMHINet(model_config(name, **kwargs), model_name=name)

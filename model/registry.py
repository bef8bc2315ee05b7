"""Model registry: ``create_model("hmhi_mit_b1", memory_size=5)`` and ``list_models()``."""

from __future__ import annotations

import dataclasses
import fnmatch

from model.hmhi import HMHIConfig, HMHINet

__all__ = ["create_model", "list_models", "register_model"]

_REGISTRY: dict[str, dict] = {}


def register_model(name: str, **defaults) -> None:
    """Register ``name`` as an :class:`HMHIConfig` preset (``defaults`` are config fields)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = defaults


for _variant in range(6):
    register_model(f"hmhi_mit_b{_variant}", encoder=f"mit_b{_variant}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs) -> HMHINet:
    """Build a registered HMHI-Net with fresh (training-from-scratch) weights.

    ``kwargs`` are :class:`HMHIConfig` fields, e.g. ``memory_size`` (T, default 5), ``drop_path_rate``,
    ``decoder_width`` (256 = official; smaller for tiny CPU models), ``readout_ffn_dim``, ``topk``.
    Load weights afterwards with :func:`model.load_checkpoint`.
    """
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
    config = HMHIConfig(**{**_REGISTRY[name], **kwargs})
    return HMHINet(config, model_name=name)

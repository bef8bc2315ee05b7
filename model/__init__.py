"""HMHI-Net for unsupervised video object segmentation (official architecture, checkpoint-compatible).

from model import create_model, load_checkpoint
net = create_model("hmhi_mit_b1", memory_size=5)
report = load_checkpoint(net, "hmhi_davis.pth")          # official, MiT ImageNet or hmhi-uvos file
full, quarter = net.forward_clip(frames, flows)           # training: (B, L, 3, H, W) clips
state = net.init_state(batch_size)                        # streaming inference
logits, state = net.step(frame, flow, state, reset=None, active=None)

The names below are imported on first use (PEP 562): ``import model`` and the torch-free parts (settings, errors,
the registered names, the version) do not import torch or timm, so processes that never run the network (the
pipeline's command line, its scoring and export jobs) do not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.architecture import HMHIConfig, list_models, register_model
    from model.checkpoint import (
        LoadReport,
        load_checkpoint,
        model_from_checkpoint,
        official_to_native,
        save_checkpoint,
    )
    from model.checkpoint_file import CheckpointInfo, checkpoint_settings, describe_checkpoint
    from model.errors import CheckpointError, ModelNotRecordedError, SettingError
    from model.hmhi import HMHINet, StreamState
    from model.precision import autocast, native_bf16, resolve_precision
    from model.registry import create_model
    from model.settings import IMAGENET_MEAN, IMAGENET_STD, PRECISIONS, ModelSettings
    from model.version import project_version

_HOMES: dict[str, str] = {
    "autocast": "model.precision",
    "checkpoint_settings": "model.checkpoint_file",
    "CheckpointError": "model.errors",
    "CheckpointInfo": "model.checkpoint_file",
    "create_model": "model.registry",
    "describe_checkpoint": "model.checkpoint_file",
    "HMHIConfig": "model.architecture",
    "HMHINet": "model.hmhi",
    "IMAGENET_MEAN": "model.settings",
    "IMAGENET_STD": "model.settings",
    "list_models": "model.architecture",
    "load_checkpoint": "model.checkpoint",
    "LoadReport": "model.checkpoint",
    "model_from_checkpoint": "model.checkpoint",
    "ModelNotRecordedError": "model.errors",
    "ModelSettings": "model.settings",
    "native_bf16": "model.precision",
    "official_to_native": "model.checkpoint",
    "PRECISIONS": "model.settings",
    "project_version": "model.version",
    "register_model": "model.architecture",
    "resolve_precision": "model.precision",
    "save_checkpoint": "model.checkpoint",
    "SettingError": "model.errors",
    "StreamState": "model.hmhi",
}
"""Each public name -> the module that defines it (imported when the name is first asked for)."""

__all__ = [
    "autocast",
    "checkpoint_settings",
    "CheckpointError",
    "CheckpointInfo",
    "create_model",
    "describe_checkpoint",
    "HMHIConfig",
    "HMHINet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "list_models",
    "load_checkpoint",
    "LoadReport",
    "model_from_checkpoint",
    "ModelNotRecordedError",
    "ModelSettings",
    "native_bf16",
    "official_to_native",
    "PRECISIONS",
    "project_version",
    "register_model",
    "resolve_precision",
    "save_checkpoint",
    "SettingError",
    "StreamState",
]


if not TYPE_CHECKING:  # type checkers see the imports above; a module __getattr__ would make any name pass

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

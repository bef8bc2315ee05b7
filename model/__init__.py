"""HMHI-Net for unsupervised video object segmentation (official architecture, checkpoint-compatible).

from model import create_model, load_checkpoint
net = create_model("hmhi_mit_b1", memory_size=5)
report = load_checkpoint(net, "hmhi_davis.pth")          # official, MiT ImageNet or hmhi-uvos file
full, quarter = net.forward_clip(frames, flows)           # training: (B, L, 3, H, W) clips
state = net.init_state(batch_size)                        # streaming inference
logits, state = net.step(frame, flow, state, reset=None, active=None)
"""

from model.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    LoadReport,
    ModelNotRecordedError,
    checkpoint_settings,
    describe_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    official_to_native,
    project_version,
    save_checkpoint,
)
from model.hmhi import HMHIConfig, HMHINet, StreamState
from model.precision import autocast, native_bf16, resolve_precision
from model.registry import create_model, list_models, register_model
from model.settings import IMAGENET_MEAN, IMAGENET_STD, PRECISIONS, ModelSettings, SettingError

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

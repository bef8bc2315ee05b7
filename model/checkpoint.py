"""Checkpoint loading and saving for HMHI-Net.

:func:`load_checkpoint` reads files with ``torch.load(weights_only=True)`` and recognises three formats:

- **official HMHI-Net** (ZhengxyFlow/HMHI-Net): ``{"network": state_dict, ...}`` (or a bare state dict with the
  official names), keys possibly prefixed ``module.``. Keys go through :func:`official_to_native`, an explicit
  map; the 16 dead ``Mem{0,1}.cross_attention.*`` tensors are named in the report and dropped.
- **NVlabs SegFormer / MiT ImageNet weights** (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ...;
  ``head.*`` ignored): the backbone only. Every MiT tensor must be present; the flow adapters and the rest of the
  network keep their initialisation (train from scratch).
- **this project's format** (:func:`save_checkpoint`): ``{"format": "hmhi-uvos", "version": 1, "model_name",
  "model_kwargs", "settings", "provenance", "project_version", "model": state_dict, ...extra}``; ``settings`` is the
  :class:`~model.settings.ModelSettings` record (architecture, input size, memory size, normalisation, precision)
  that inference and fine-tuning take their defaults from (:attr:`LoadReport.settings`,
  :func:`describe_checkpoint`); ``provenance`` says what it was trained on (the writer's plain dict: the training
  data's fingerprint and flow settings); ``project_version`` is the hmhi-uvos version that wrote it.

Reading a file and what it records, without building a network (and without importing timm), is
:mod:`model.checkpoint_file`'s; its names are re-exported here.

Anything else (for example mmsegmentation's ``backbone.layers.*`` MiT conversion, which matches no key) is an
error naming the file and its first keys. With ``strict=True`` (default) a missing, unexpected or mis-shaped key
raises :class:`CheckpointError` naming the file and the first bad keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from timm.models.pvt_v2 import checkpoint_filter_fn as _timm_pvt_v2_filter

from model.checkpoint_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SHOWN_KEYS,
    CheckpointInfo,
    checkpoint_settings,
    describe_checkpoint,
    detect_format,
    file_name,
    read_checkpoint,
    recorded_provenance,
    recorded_settings,
)
from model.errors import CheckpointError, ModelNotRecordedError
from model.hmhi import HMHINet
from model.registry import create_model
from model.settings import ModelSettings
from model.version import project_version

__all__ = [
    "CheckpointError",
    "ModelNotRecordedError",
    "LoadReport",
    "OFFICIAL_DEAD_PREFIXES",
    "load_checkpoint",
    "save_checkpoint",
    "checkpoint_settings",
    "CheckpointInfo",
    "describe_checkpoint",
    "official_to_native",
    "model_from_checkpoint",
    "read_checkpoint",
]

OFFICIAL_DEAD_PREFIXES = ("Mem0.cross_attention.", "Mem1.cross_attention.")
"""Official parameters no output depends on (a never-called copy of each memory's cross-attention)."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    path: str
    """The file that was read."""
    format: str
    """'official', 'mit_imagenet' or 'hmhi-uvos'."""
    loaded: list[str] = field(default_factory=list)
    """Model keys that received a tensor."""
    missing: list[str] = field(default_factory=list)
    """Model keys the checkpoint should have provided but did not."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint keys (as written in the file) with no place in the model."""
    shape_mismatch: list[str] = field(default_factory=list)
    """'key: file shape vs model shape' for keys present in both with different shapes."""
    dropped: list[str] = field(default_factory=list)
    """Checkpoint keys deliberately discarded (the official dead cross-attention copies)."""
    ignored: list[str] = field(default_factory=list)
    """Checkpoint keys outside the format's scope (e.g. the ImageNet classifier head)."""
    not_in_format: list[str] = field(default_factory=list)
    """Model keys this format never holds (e.g. everything but the MiT for ImageNet weights): left as they were."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Other top-level entries of the file (e.g. 'epoch', or the extras of this project's format)."""
    settings: ModelSettings | None = None
    """The model settings the file records (this project's files; None for official and ImageNet files)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What the model was trained on, as the file records it (this project's files; empty otherwise)."""

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mis-shaped."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.format} checkpoint, {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "shape_mismatch", "dropped", "ignored", "not_in_format"):
            keys = getattr(self, name)
            if keys:
                more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
                parts.append(f"{len(keys)} {name}: {', '.join(keys[:SHOWN_KEYS])}{more}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- key maps
# Official name -> native name. Each rule is (compiled regex, replacement); the rules of a table are applied in
# order, each to the result of the previous one.
_CBAM_RULES = [
    (r"\.conv1\.conv\.", ".conv."),
    (r"\.conv2\.0\.conv\.", ".channel_mlp.0."),
    (r"\.conv2\.1\.conv\.", ".channel_mlp.2."),
    (r"\.conv3\.0\.conv\.", ".spatial.0."),
    (r"\.conv3\.1\.conv\.", ".spatial.2."),
]
_READOUT_RULES = [  # inside Mem{0,1}.pixel_transformer / obj_to_pixel (one layer + final norm)
    (r"\.layers\.0\.cross_attn_image\.", ".cross_attn."),
    (r"\.layers\.0\.", "."),
]
_Replacement = str | Callable[[re.Match[str]], str]
"""What ``re.sub`` puts in place of a match: a template or a function of the match."""
_OFFICIAL_RULE_TEXT: list[tuple[str, _Replacement]] = [
    # decoder: stage k-1 handles official conv{k}/blend{k}/cbam{k} (conv1 = level 3, the coarsest)
    (r"^decode_head\.conv(\d)\.conv\.", lambda m: f"decoder.stages.{int(m.group(1)) - 1}.lateral.0."),
    (r"^decode_head\.blend(\d)\.conv\.", lambda m: f"decoder.stages.{int(m.group(1)) - 1}.blend.0."),
    (r"^decode_head\.cbam(\d)\.", lambda m: f"decoder.stages.{int(m.group(1)) - 1}.cbam."),
    (r"^decode_head\.predictor\.conv\.", "decoder.predictor."),
    # memories
    (r"^Mem0\.", "pixel_memory."),
    (r"^Mem1\.", "semantic_memory."),
    (r"^(\w+_memory)\.memory_encoder\.mask_downsampler\.encoder\.", r"\1.encoder.mask_downsampler."),
    (r"^(\w+_memory)\.memory_encoder\.pix_feat_proj\.", r"\1.encoder.feat_proj."),
    (r"^(\w+_memory)\.memory_encoder\.fuser\.layers\.", r"\1.encoder.fuser."),
    (r"^(\w+_memory)\.pixel_transformer\.", r"\1.readout."),
    # SGIM
    (r"^obj_reduce\.0\.", "sgim.reduce."),
    (r"^obj_to_pixel\.", "sgim.readout."),
    # PLAM
    (r"^pixel_down_sample\.0\.conv\.", "plam.down.0."),
    (r"^pixel_down_sample\.1\.conv\.", "plam.down.2."),
    (r"^pixel_to_obj_cbam\.", "plam.cbam."),
    (r"^p2o_down_linear\.conv\.", "plam.fuse.0."),
    *[(r"^(decoder\.stages\.\d\.cbam|plam\.cbam)" + p[1:], r"\1" + r) for p, r in _CBAM_RULES],
    *[(r"^(\w+_memory\.readout|sgim\.readout)" + p[1:], r"\1" + r) for p, r in _READOUT_RULES],
]
_OFFICIAL_RULES = [(re.compile(pattern), replacement) for pattern, replacement in _OFFICIAL_RULE_TEXT]


def _mit_to_native(keys: list[str]) -> dict[str, str]:
    """NVlabs MiT names (no prefix) -> native backbone names, through timm's own pvt_v2 key filter."""
    renamed = _timm_pvt_v2_filter(dict.fromkeys(keys, None), None)  # preserves order, renames only
    return {old: "backbone." + new for old, new in zip(keys, renamed)}


def official_to_native(key: str) -> str | None:
    """Map one official HMHI-Net key (``module.`` already removed) to this package's name; None for a dead key."""
    if key.startswith(OFFICIAL_DEAD_PREFIXES):
        return None
    if key.startswith("backbone."):
        return _mit_to_native([key[len("backbone.") :]])[key[len("backbone.") :]]
    for pattern, replacement in _OFFICIAL_RULES:
        key = pattern.sub(replacement, key)
    return key


# ---------------------------------------------------------------------------------------------- loading
def _apply(
    net: HMHINet,
    report: LoadReport,
    mapped: dict[str, tuple[str, torch.Tensor]],
    expected: list[str],
    strict: bool,
) -> None:
    """Copy mapped tensors (native key -> (file key, tensor)) into ``net``; ``expected`` = keys the file must fill."""
    own = net.state_dict()
    report.missing = [k for k in expected if k not in mapped]
    ready: dict[str, torch.Tensor] = {}
    for native, (file_key, tensor) in mapped.items():
        if native not in own:
            report.unexpected.append(file_key)
        elif tuple(tensor.shape) != tuple(own[native].shape):
            report.shape_mismatch.append(
                f"{file_key}: {tuple(tensor.shape)} vs model {tuple(own[native].shape)}"
            )
        else:
            ready[native] = tensor
    if strict and not report.ok:
        raise CheckpointError(
            f"checkpoint does not fit model {net.model_name or type(net).__name__}: " + report.summary()
        )
    with torch.no_grad():
        for native, tensor in ready.items():
            own[native].copy_(tensor.to(dtype=own[native].dtype))
    report.loaded = list(ready)


def load_checkpoint(net: HMHINet, path: str | os.PathLike | IO[bytes], strict: bool = True) -> LoadReport:
    """Load weights into ``net`` from an official, MiT-ImageNet or hmhi-uvos checkpoint (auto-detected).

    Returns a :class:`LoadReport`. With ``strict`` (default) any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` naming the file and the first bad keys, and nothing is loaded. The official dead
    keys are always dropped (and listed in ``report.dropped``); ImageNet weights fill the MiT part only
    (``report.not_in_format`` lists the rest).
    """
    return _load_object(net, read_checkpoint(path), file_name(path), strict)


def _load_object(net: HMHINet, obj: Any, name: str, strict: bool) -> LoadReport:
    fmt, state, meta = detect_format(obj, name)
    report = LoadReport(
        path=name,
        format=fmt,
        meta=meta,
        settings=recorded_settings(meta) if fmt == FORMAT_NAME else None,
        provenance=recorded_provenance(meta) if fmt == FORMAT_NAME else {},
    )
    own_keys = list(net.state_dict())
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    if fmt == "official":
        for file_key, tensor in state.items():
            key = file_key.replace("module.", "")  # what the official loader does
            native = official_to_native(key)
            if native is None:
                report.dropped.append(file_key)
            else:
                mapped[native] = (file_key, tensor)
        expected = own_keys
    elif fmt == "mit_imagenet":
        keys = [k.replace("module.", "") for k in state]
        report.ignored = [k for k in keys if k.startswith("head.")]
        kept = [k for k in keys if not k.startswith("head.")]
        renamed = _mit_to_native(kept)
        by_clean = {k.replace("module.", ""): k for k in state}
        mapped = {renamed[k]: (by_clean[k], state[by_clean[k]]) for k in kept}
        expected = [k for k in own_keys if k.startswith("backbone.") and "adapter" not in k]
        report.not_in_format = [k for k in own_keys if k not in expected]
    else:
        mapped = {k: (k, v) for k, v in state.items()}
        expected = own_keys
        saved_name = meta.get("model_name")
        if strict and saved_name and net.model_name and saved_name != net.model_name:
            raise CheckpointError(f"{name}: checkpoint is for model {saved_name!r}, not {net.model_name!r}")
    try:
        _apply(net, report, mapped, expected, strict)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    return report


# ---------------------------------------------------------------------------------------------- writing
_RESERVED = (
    "format",
    "version",
    "model_name",
    "model_kwargs",
    "settings",
    "provenance",
    "project_version",
    "model",
)


def save_checkpoint(
    net: HMHINet,
    path: str | os.PathLike | IO[bytes],
    extra: dict[str, Any] | None = None,
    settings: ModelSettings | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write ``net`` in this project's format (atomically for a path: a temporary file, then a rename).

    ``settings``: what the model was trained with (input size, normalisation, precision...), recorded so that
    inference and fine-tuning default to it; its name, options and memory size are taken from ``net`` itself.
    ``provenance``: what it was trained on (plain values: the training data's fingerprint, its flow settings...).
    The writing hmhi-uvos version is always recorded. ``extra``: more top-level entries (e.g. an epoch number,
    metrics); plain Python values and tensors only (the file must load with ``weights_only=True``); the names in
    ``_RESERVED`` are the format's own.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {clash} are reserved")
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_name": net.model_name,
        "model_kwargs": {k: v for k, v in dataclasses.asdict(net.config).items() if k != "encoder"},
        "settings": _settings_of(net, settings).record() if net.model_name else None,
        "provenance": dict(provenance or {}),
        "project_version": project_version(),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }
    if not isinstance(path, (str, os.PathLike)):
        torch.save(payload, path)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _settings_of(net: HMHINet, settings: ModelSettings | None) -> ModelSettings:
    """``settings`` with the architecture (name, options, memory size) that ``net`` really has."""
    config = dataclasses.asdict(net.config)
    memory_size = config.pop("memory_size")
    config.pop("encoder")
    base = settings or ModelSettings(name=net.model_name)
    return dataclasses.replace(base, name=net.model_name, options=config, memory_size=memory_size)


def model_from_checkpoint(path: str | os.PathLike | IO[bytes], **overrides) -> tuple[HMHINet, LoadReport]:
    """Build the model recorded in a hmhi-uvos checkpoint and load it strictly -> (model, report).

    ``overrides`` replace recorded config fields that do not change the weights (e.g. ``memory_size=3``).
    """
    name = file_name(path)
    obj = read_checkpoint(path)
    fmt, _, meta = detect_format(obj, name)
    if fmt != FORMAT_NAME:
        raise ModelNotRecordedError(
            f"{name}: a {fmt} checkpoint does not record its model; use create_model() and load_checkpoint()"
        )
    net = create_model(meta["model_name"], **{**meta.get("model_kwargs", {}), **overrides})
    return net, _load_object(net, obj, name, strict=True)

"""Reading a checkpoint file and what it records, without building a model: torch only, no timm.

:func:`describe_checkpoint` says what a file is (official HMHI-Net, MiT ImageNet or this project's format) and,
for this project's files, the model settings and provenance it records. Job drivers check a checkpoint before any
work with it; keeping it apart from :mod:`model.checkpoint` (which builds and fills networks, and imports timm)
spares a driver the ~2.5 s of importing timm and torchvision. The formats are described in :mod:`model.checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import IO, Any

import torch

from model.errors import CheckpointError, SettingError
from model.settings import ModelSettings
from model.version import DISTRIBUTION

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SHOWN_KEYS",
    "CheckpointInfo",
    "checkpoint_settings",
    "describe_checkpoint",
    "detect_format",
    "file_name",
    "read_checkpoint",
    "recorded_provenance",
    "recorded_settings",
]

FORMAT_NAME = DISTRIBUTION
"""What a file in this project's format says it is (the project that writes it)."""
FORMAT_VERSION = 1
"""The version of this project's format that this code writes and reads."""
SHOWN_KEYS = 5
"""Bad keys quoted in an error message."""


def file_name(source: str | os.PathLike | IO[bytes]) -> str:
    """The name errors give a checkpoint source: its path, or a stream's name."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def read_checkpoint(source: str | os.PathLike | IO[bytes]) -> Any:
    """``torch.load(source, map_location='cpu', weights_only=True)`` with errors that name the file."""
    name = file_name(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"checkpoint file not found: {name}")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    # KeyError, IndexError, TypeError: torch's legacy (non-zip) reader on bytes that are no pickle at all (a text
    # file reads as a bad magic number, e.g. "KeyError: 101").
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        ValueError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{name}: not a readable torch checkpoint (truncated or corrupt?): {first_line}"
        ) from exc


def _tensor_dict(obj: Any, name: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{name}: {what} is not a non-empty dict of tensors (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: {what} has non-tensor entries: {bad[:SHOWN_KEYS]}")
    return obj


def detect_format(obj: Any, name: str) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """-> (format, state dict, other top-level entries)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{name}: {FORMAT_NAME} checkpoint version {version!r} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        meta = {k: v for k, v in obj.items() if k != "model"}
        return FORMAT_NAME, _tensor_dict(obj.get("model"), name, "'model'"), meta
    if isinstance(obj, dict) and "network" in obj:
        meta = {k: v for k, v in obj.items() if k not in ("network", "optimizer")}
        return "official", _tensor_dict(obj["network"], name, "'network'"), meta
    meta = {}
    state = obj
    for wrapper in ("state_dict", "model"):  # common wrappers of ImageNet weight files
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            meta = {k: v for k, v in state.items() if k != wrapper and not isinstance(v, torch.Tensor)}
            state = state[wrapper]
    if isinstance(state, dict) and state:
        keys = [k.replace("module.", "") for k in state if isinstance(k, str)]
        if any(k.startswith(("decode_head.", "Mem0.", "Mem1.", "backbone.block1.")) for k in keys):
            return "official", _tensor_dict(state, name, "state dict"), meta
        if "patch_embed1.proj.weight" in keys:
            return "mit_imagenet", _tensor_dict(state, name, "state dict"), meta
    first = list(state)[:SHOWN_KEYS] if isinstance(state, dict) else type(state).__name__
    raise CheckpointError(
        f"{name}: unrecognised checkpoint format; expected an official HMHI-Net file ({{'network': ...}}), "
        f"NVlabs SegFormer/MiT ImageNet weights (patch_embed1.*, block1.*) or a {FORMAT_NAME} file; "
        f"first keys: {first}"
    )


def recorded_settings(meta: dict[str, Any]) -> ModelSettings | None:
    """The settings a project file records; files written before settings were recorded give what their
    ``model_name`` and ``model_kwargs`` say (input size unknown); a file of an unregistered model records none."""
    if isinstance(meta.get("settings"), dict):
        return ModelSettings.from_record(meta["settings"])
    if not meta.get("model_name"):
        return None
    kwargs = dict(meta.get("model_kwargs") or {})
    memory_size = kwargs.pop("memory_size", None)
    return ModelSettings(name=meta["model_name"], options=kwargs, memory_size=memory_size)


def recorded_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    provenance = meta.get("provenance")
    return dict(provenance) if isinstance(provenance, dict) else {}


@dataclass
class CheckpointInfo:
    """What a checkpoint file is and records, read without building a model (:func:`describe_checkpoint`)."""

    path: str
    """The file that was read."""
    format: str
    """'official', 'mit_imagenet' or 'hmhi-uvos'."""
    settings: ModelSettings | None
    """The model settings the file records (None: official and ImageNet files record none)."""
    provenance: dict[str, Any]
    """What the model was trained on (empty where the file does not say)."""
    project_version: str | None
    """The hmhi-uvos version that wrote the file (None for other formats and older files)."""

    @property
    def whole_model(self) -> bool:
        """True for a file that holds a whole HMHI-Net (not only an ImageNet backbone)."""
        return self.format != "mit_imagenet"


def describe_checkpoint(path: str | os.PathLike | IO[bytes]) -> CheckpointInfo:
    """Read a checkpoint (``weights_only``) and say what it is: its format and, for this project's files, the
    model settings and provenance it records. Raises :class:`CheckpointError` naming the file for anything that
    is not a checkpoint (a text file, a truncated or corrupt file, an unknown layout or an unregistered model)."""
    name = file_name(path)
    fmt, _, meta = detect_format(read_checkpoint(path), name)
    if fmt != FORMAT_NAME:
        return CheckpointInfo(name, fmt, None, {}, None)
    try:
        settings = recorded_settings(meta)
    except SettingError as exc:  # e.g. a model name this version does not register
        raise CheckpointError(f"{name}: records a model this version cannot build ({exc})") from None
    version = meta.get("project_version")
    return CheckpointInfo(name, fmt, settings, recorded_provenance(meta), str(version) if version else None)


def checkpoint_settings(path: str | os.PathLike | IO[bytes]) -> ModelSettings | None:
    """The model settings a checkpoint records, or None for a format that records none (official HMHI-Net and
    MiT ImageNet files). Raises :class:`CheckpointError` for a file that is no checkpoint."""
    return describe_checkpoint(path).settings

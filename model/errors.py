"""The model's error types. This module imports nothing heavy (no torch, no timm), so code that only names these
errors (the pipeline's command line, its config checks) does not pay for importing the network."""

from __future__ import annotations

from typing import Any

__all__ = ["CheckpointError", "ModelNotRecordedError", "SettingError", "require"]


class SettingError(ValueError):
    """A model setting is invalid; names the field and the value.

    model/ stands alone (importable with only torch and timm), so it does not use the pipeline's ConfigError; the
    pipeline's config system turns this error (its ``field``, ``value`` and ``reason``) into one naming the dotted
    config path.
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"model setting '{field}' = {value!r}: {reason}")

    def __reduce__(self):
        return (type(self), (self.field, self.value, self.reason))  # picklable across processes (Ray workers)


def require(condition: bool, field: str, value: Any, message: str) -> None:
    """Raise :class:`SettingError` naming ``field`` and ``value`` unless ``condition`` holds."""
    if not condition:
        raise SettingError(field, value, message)


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not fit the model; the message names the file and the keys."""


class ModelNotRecordedError(CheckpointError):
    """The checkpoint's format does not record which model it holds (official HMHI-Net and MiT ImageNet files):
    build the model with ``create_model`` and load it with ``load_checkpoint`` instead."""

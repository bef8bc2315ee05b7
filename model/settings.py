"""The one home of a model's settings: which network it is and how it is fed (timm's ``pretrained_cfg`` is the
model to learn from).

:class:`ModelSettings` is the ``model:`` section of both the training and the segment config (each extends it with
its own fields), and every checkpoint the project writes records it (``save_checkpoint(..., settings=...)``), so
that segmentation and fine-tuning take their defaults from the checkpoint rather than from flags. Fields left
``None`` mean "the checkpoint's, else the official default" (:meth:`ModelSettings.resolved`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.hmhi import HMHIConfig, SettingError
from model.registry import list_models

__all__ = [
    "OFFICIAL_INPUT_SIZE",
    "OFFICIAL_MEMORY_SIZE",
    "PRECISIONS",
    "ModelSettings",
    "SettingError",
]

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
"""Model arithmetic: 'bf16' (autocast), 'fp32', or 'auto' (bf16 where the CPU or GPU computes it natively)."""
OFFICIAL_INPUT_SIZE = 512
"""The side the released checkpoints were trained at (square inputs)."""
OFFICIAL_MEMORY_SIZE = 5
"""The memory window T of official training (its inference script uses 3: ``--preset official``)."""
_ARCH_FIELDS = frozenset(f.name for f in dataclasses.fields(HMHIConfig)) - {"encoder", "memory_size"}


def _require(condition: bool, name: str, value: Any, message: str) -> None:
    if not condition:
        raise SettingError(name, value, message)


@dataclass
class ModelSettings:
    """Which HMHI-Net and how frames reach it: shared by training and segmentation, recorded in checkpoints."""

    name: str = "hmhi_mit_b1"
    """Registered model (``model.list_models()``: hmhi_mit_b0 .. hmhi_mit_b5). For a checkpoint that records its
    model (every checkpoint this project writes) the recorded one is used."""
    options: dict[str, Any] = field(default_factory=dict)
    """Architecture options beyond the registered preset: ``HMHIConfig`` fields such as decoder_width,
    readout_ffn_dim, semantic_mask_hidden (official values when absent)."""
    memory_size: int | None = None
    """Memory window T (frames kept in each memory bank). None: the checkpoint's, else 5 (official training)."""
    input_size: int | None = None
    """Square side, in pixels, that frames, flow pictures and masks are resized to; a multiple of 32. None: the
    checkpoint's (the size it was trained at), else 512 (the released checkpoints')."""
    precision: str = "auto"
    """Model arithmetic: 'bf16' (autocast), 'fp32', or 'auto' (bf16 where the CPU or GPU computes it natively)."""

    def __post_init__(self):
        _require(self.name in list_models(), "name", self.name, f"must be one of {list_models()}")
        unknown = sorted(set(self.options) - _ARCH_FIELDS)
        _require(
            not unknown,
            "options",
            self.options,
            f"unknown option(s) {unknown}; valid: {sorted(_ARCH_FIELDS)}",
        )
        _require(
            self.memory_size is None or self.memory_size >= 1,
            "memory_size",
            self.memory_size,
            "must be >= 1 or null",
        )
        _require(
            self.input_size is None or (self.input_size >= 32 and self.input_size % 32 == 0),
            "input_size",
            self.input_size,
            "must be a positive multiple of 32, or null",
        )
        _require(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            f"must be one of {', '.join(PRECISIONS)}",
        )

    def resolved(self, recorded: ModelSettings | None = None) -> ModelSettings:
        """These settings with every ``None`` filled: from ``recorded`` (a checkpoint's record), else the official
        defaults. Fields set here win over the record (the caller warns when they differ)."""
        base = recorded or ModelSettings(name=self.name)
        return dataclasses.replace(
            self,
            memory_size=self.memory_size or base.memory_size or OFFICIAL_MEMORY_SIZE,
            input_size=self.input_size or base.input_size or OFFICIAL_INPUT_SIZE,
        )

    def architecture(self) -> dict[str, Any]:
        """``create_model`` keyword arguments: the options and, when set, the memory size."""
        kwargs = dict(self.options)
        if self.memory_size is not None:
            kwargs["memory_size"] = self.memory_size
        return kwargs

    def record(self) -> dict[str, Any]:
        """The plain dict a checkpoint stores (see :func:`model.checkpoint.save_checkpoint`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelSettings:
        """Settings from a checkpoint's record (unknown keys of a newer version are ignored)."""
        names = {f.name for f in dataclasses.fields(ModelSettings)}
        return cls(**{k: v for k, v in record.items() if k in names})

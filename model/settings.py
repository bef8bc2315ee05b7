"""The one home of a model's settings: which network it is and how it is fed (timm's ``pretrained_cfg`` is the
model to learn from).

:class:`ModelSettings` is the ``model:`` section of both the training and the segment config (each extends it with
its own fields), and every checkpoint the project writes records it (``save_checkpoint(..., settings=...)``), so
that segmentation and fine-tuning take their defaults from the checkpoint rather than from flags. Fields left
``None`` mean "the checkpoint's, else the official default" (:meth:`ModelSettings.resolved`); a field set to a value
the checkpoint contradicts is reported by :meth:`ModelSettings.conflicts` (the architecture cannot be overridden:
the weights fit one network only).

Official HMHI-Net files record nothing: they get the official protocol's defaults, ``hmhi_mit_b1`` with the
official options, T=5, 512x512 inputs and ImageNet normalisation (``segment --preset official``: T=3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.architecture import HMHIConfig, list_models
from model.errors import SettingError, require

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_INPUT_SIZE",
    "OFFICIAL_MEMORY_SIZE",
    "OFFICIAL_MODEL",
    "PRECISIONS",
    "ModelSettings",
    "SettingError",
]

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
"""Model arithmetic: 'bf16' (autocast), 'fp32', or 'auto' (bf16 where the CPU or GPU computes it natively)."""
OFFICIAL_MODEL = "hmhi_mit_b1"
"""The architecture of the released checkpoints."""
OFFICIAL_INPUT_SIZE = 512
"""The side the released checkpoints were trained at (square inputs)."""
OFFICIAL_MEMORY_SIZE = 5
"""The memory window T of official training (its inference script uses 3: ``--preset official``)."""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean (RGB, 0-1 scale) of the official input normalisation (ImageNet's, as the MiT backbone's)."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the official input normalisation."""
_ARCH_FIELDS = frozenset(f.name for f in dataclasses.fields(HMHIConfig)) - {"encoder", "memory_size"}


def _channels(value: Any) -> tuple[float, float, float] | None:
    """Three per-channel values as a tuple of floats (YAML and checkpoints give lists), or None."""
    return None if value is None else tuple(float(v) for v in value)  # type: ignore[return-value]


@dataclass
class ModelSettings:
    """Which HMHI-Net and how frames reach it: shared by training and segmentation, recorded in checkpoints."""

    name: str | None = None
    """Registered model (``model.list_models()``: hmhi_mit_b0 .. hmhi_mit_b5). None: the checkpoint's (every
    checkpoint this project writes records it), else hmhi_mit_b1 (the released checkpoints')."""
    options: dict[str, Any] | None = None
    """Architecture options beyond the registered preset: ``HMHIConfig`` fields such as decoder_width,
    readout_ffn_dim, semantic_mask_hidden. None: the checkpoint's, else the official values."""
    memory_size: int | None = None
    """Memory window T (frames kept in each memory bank). None: the checkpoint's, else 5 (official training)."""
    input_size: int | None = None
    """Square side, in pixels, that frames, flow pictures and masks are resized to; a multiple of 32. None: the
    checkpoint's (the size it was trained at), else 512 (the released checkpoints')."""
    precision: str = "auto"
    """Model arithmetic: 'bf16' (autocast), 'fp32', or 'auto' (bf16 where the CPU or GPU computes it natively)."""
    mean: tuple[float, float, float] | None = None
    """Per-channel mean (RGB, 0-1 scale) subtracted from frames and flow pictures before the model. None: the
    checkpoint's, else ImageNet's (0.485, 0.456, 0.406), the official normalisation."""
    std: tuple[float, float, float] | None = None
    """Per-channel standard deviation the inputs are divided by after the mean. None: the checkpoint's, else
    ImageNet's (0.229, 0.224, 0.225)."""

    def __post_init__(self):
        self.mean, self.std = _channels(self.mean), _channels(self.std)
        require(
            self.name is None or self.name in list_models(),
            "name",
            self.name,
            f"must be one of {list_models()} or null",
        )
        unknown = sorted(set(self.options or {}) - _ARCH_FIELDS)
        require(
            not unknown,
            "options",
            self.options,
            f"unknown option(s) {unknown}; valid: {sorted(_ARCH_FIELDS)}",
        )
        require(
            self.memory_size is None or self.memory_size >= 1,
            "memory_size",
            self.memory_size,
            "must be >= 1 or null",
        )
        require(
            self.input_size is None or (self.input_size >= 32 and self.input_size % 32 == 0),
            "input_size",
            self.input_size,
            "must be a positive multiple of 32, or null",
        )
        require(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            f"must be one of {', '.join(PRECISIONS)}",
        )
        for name in ("mean", "std"):
            value = getattr(self, name)
            require(
                value is None or (len(value) == 3 and (name == "mean" or min(value) > 0)),
                name,
                value,
                "must be three per-channel values (RGB)"
                + (", each > 0" if name == "std" else "")
                + ", or null",
            )

    def resolved(self, recorded: ModelSettings | None = None) -> ModelSettings:
        """These settings with every ``None`` filled: from ``recorded`` (a checkpoint's record), else the official
        defaults. Fields set here win over the record (:meth:`conflicts` says where they differ)."""
        base = recorded or ModelSettings()

        def pick(name: str, default: Any) -> Any:
            for source in (self, base):
                if getattr(source, name) is not None:
                    return getattr(source, name)
            return default

        return dataclasses.replace(
            self,
            name=pick("name", OFFICIAL_MODEL),
            # Options given here refine the recorded ones (the others keep the architecture the weights fit).
            options={**(base.options or {}), **(self.options or {})},
            memory_size=pick("memory_size", OFFICIAL_MEMORY_SIZE),
            input_size=pick("input_size", OFFICIAL_INPUT_SIZE),
            mean=pick("mean", IMAGENET_MEAN),
            std=pick("std", IMAGENET_STD),
        )

    def conflicts(self, recorded: ModelSettings | None) -> tuple[list[str], list[str]]:
        """Where these settings contradict a checkpoint's record -> ``(errors, warnings)``, one sentence each naming
        the field and both values.

        Errors: the architecture (``name``, ``options``), which the checkpoint's weights fit and nothing else.
        Warnings: the input size, memory size and normalisation, which are honoured (a model trained at 96 px can
        run at 512, but it was not trained for it). Unset fields and a checkpoint without a record conflict with
        nothing.
        """
        errors: list[str] = []
        warnings: list[str] = []
        if recorded is None:
            return errors, warnings
        if self.name is not None and recorded.name is not None and self.name != recorded.name:
            errors.append(f"model.name is {self.name!r} but the checkpoint holds a {recorded.name!r} network")
        if self.options is not None and recorded.options is not None:
            differing = {
                k: (self.options.get(k), recorded.options.get(k))
                for k in self.options
                if self.options.get(k) != recorded.options.get(k)
            }
            if differing:
                detail = ", ".join(
                    f"{k} {a!r} vs the checkpoint's {b!r}" for k, (a, b) in sorted(differing.items())
                )
                errors.append(f"model.options contradict the checkpoint's architecture ({detail})")
        for name in ("input_size", "memory_size", "mean", "std"):
            asked, kept = getattr(self, name), getattr(recorded, name)
            if asked is not None and kept is not None and asked != kept:
                warnings.append(
                    f"model.{name} is {asked} but the checkpoint was trained with {kept}: using {asked}"
                )
        return errors, warnings

    def architecture(self) -> dict[str, Any]:
        """``create_model`` keyword arguments: the options and, when set, the memory size."""
        kwargs = dict(self.options or {})
        if self.memory_size is not None:
            kwargs["memory_size"] = self.memory_size
        return kwargs

    def record(self) -> dict[str, Any]:
        """The plain dict a checkpoint stores (see :func:`model.checkpoint.save_checkpoint`)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)}
        record["mean"] = None if self.mean is None else list(self.mean)
        record["std"] = None if self.std is None else list(self.std)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelSettings:
        """Settings from a checkpoint's record (unknown keys of a newer version are ignored)."""
        names = {f.name for f in dataclasses.fields(ModelSettings)}
        return cls(**{k: v for k, v in record.items() if k in names})

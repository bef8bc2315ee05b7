"""The optical-flow settings shared by every job that computes flow (precompute_flow, segment)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import require
from pipeline.flow.engines import create_flow_engine
from pipeline.storage import absolute_url

__all__ = ["DEFAULT_ENGINE", "FlowConfig"]

DEFAULT_ENGINE = "dis"
"""The engine when neither the settings nor a checkpoint's record name one: OpenCV DIS, on the CPU, offline."""
_DEFAULTS: dict[str, Any] = {"engine": DEFAULT_ENGINE, "preset": "medium", "max_side": 1024}
PICTURES = "pictures"


@dataclass
class FlowConfig:
    engine: str | None = None
    """Flow engine: 'dis' (OpenCV DIS, CPU), a ptlflow model name (on GPUs: neuflow2, see the README), or
    'pictures': the flow pictures shipped with the corpus next to each frame, used as they are. None: segment uses
    the engine the model was trained with (its checkpoint records it), else 'dis'; the flow job uses 'dis'."""
    preset: str | None = None
    """DIS preset: ultrafast, fast or medium. None: the checkpoint's (segment), else medium."""
    checkpoint: str | None = None
    """ptlflow checkpoint file (local path or storage URL) in ptlflow's format {'state_dict': ...}."""
    random_init: bool = False
    """Allow a ptlflow model without a checkpoint (random weights: noise; for tests only)."""
    max_side: int | None = None
    """Longest image side fed to the flow engine; flow is resized back to the frame size. None: the checkpoint's
    (segment), else 1024."""
    batch_size: int = 4
    """Frame pairs per forward pass (ptlflow engines)."""

    def __post_init__(self):
        # Local paths are made absolute where the config is built (the driver): Ray workers run elsewhere.
        if self.checkpoint:
            self.checkpoint = absolute_url(self.checkpoint)
        require(self.engine is None or bool(self.engine), "engine", self.engine, "must name a flow engine")
        require(
            self.preset in (None, "ultrafast", "fast", "medium"),
            "preset",
            self.preset,
            "must be ultrafast, fast or medium",
        )
        require(self.max_side is None or self.max_side >= 32, "max_side", self.max_side, "must be >= 32")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(
            self.engine in (None, "dis", PICTURES) or bool(self.checkpoint) or self.random_init,
            "checkpoint",
            self.checkpoint,
            f"is required for the ptlflow model {self.engine!r} (--flow-ckpt FILE): random weights give noise",
        )
        require(
            self.engine != PICTURES or not self.checkpoint,
            "checkpoint",
            self.checkpoint,
            "must be empty with engine 'pictures' (the pictures come with the corpus)",
        )

    def resolved(self, recorded: Mapping[str, Any] | None = None) -> FlowConfig:
        """These settings with every ``None`` filled: from ``recorded`` (the flow a model was trained with, as its
        checkpoint records it: engine, preset, max_side), else the defaults (DIS, medium, 1024). A recorded
        'pictures' engine is no default: pictures come with a corpus, and most corpora have none (DIS then;
        :meth:`conflicts` says so)."""
        recorded = dict(recorded or {})
        if recorded.get("engine") == PICTURES:
            recorded = {}
        filled = {
            name: getattr(self, name) if getattr(self, name) is not None else recorded.get(name) or default
            for name, default in _DEFAULTS.items()
        }
        return dataclasses.replace(self, **filled)

    def conflicts(self, recorded: Mapping[str, Any] | None) -> list[str]:
        """Warnings, one sentence each naming both values, where these settings (as set, before
        :meth:`resolved`) differ from the flow a model was trained with (``recorded``, from its checkpoint)."""
        recorded = dict(recorded or {})
        if not recorded.get("engine"):
            return []
        trained = recorded["engine"]
        if self.engine is None and trained == PICTURES:
            return [
                "the model was trained on a corpus's own flow pictures; computing "
                f"{DEFAULT_ENGINE} flow instead (--flow-model pictures uses a corpus's pictures)"
            ]
        warnings = []
        if self.engine is not None and self.engine != trained:
            warnings.append(f"flow.engine is {self.engine!r} but the model was trained on {trained!r} flow")
        same_engine = (self.engine or trained) == trained
        for name in ("preset", "max_side"):
            asked, kept = getattr(self, name), recorded.get(name)
            if same_engine and asked is not None and kept is not None and asked != kept:
                warnings.append(f"flow.{name} is {asked!r} but the model was trained with {kept!r}")
        return warnings

    def engine_options(self, threads: int = 1) -> dict:
        """Keyword options of ``create_flow_engine`` for this engine (DIS and ptlflow take different ones)."""
        flow = self.resolved()
        if flow.engine == "dis":
            return {"preset": flow.preset, "threads": threads}
        if flow.engine == PICTURES:
            return {}
        return {"batch_size": self.batch_size, "random_init": self.random_init, "threads": threads}

    def create_engine(self, device: str = "cpu", threads: int = 1):
        """The flow engine these settings describe (DIS always runs on the CPU)."""
        flow = self.resolved()
        device = "cpu" if flow.engine in ("dis", PICTURES) else device
        return create_flow_engine(
            flow.engine,
            checkpoint=self.checkpoint or None,
            device=device,
            max_side=flow.max_side,
            **flow.engine_options(threads),
        )

    def record(self) -> dict[str, Any]:
        """The flow as a checkpoint's provenance and a done marker record it (engine, preset, max_side)."""
        flow = self.resolved()
        return {
            "engine": flow.engine,
            "preset": flow.preset if flow.engine == "dis" else None,
            "max_side": flow.max_side,
        }

    @property
    def uses_pictures(self) -> bool:
        """True when the flow comes from the corpus's own flow pictures rather than an engine."""
        return self.engine == PICTURES

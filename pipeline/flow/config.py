"""The optical-flow settings shared by every job that computes flow (precompute_flow, segment)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import require
from pipeline.flow.engines import create_flow_engine

__all__ = ["FlowConfig"]


@dataclass
class FlowConfig:
    engine: str = "dis"
    """Flow engine: 'dis' (OpenCV DIS, CPU), a ptlflow model name (on GPUs: neuflow2, see the README), or
    'pictures': the flow pictures shipped with the corpus next to each frame, used as they are."""
    preset: str = "medium"
    """DIS preset: ultrafast, fast or medium."""
    checkpoint: str | None = None
    """ptlflow checkpoint file (local path or storage URL) in ptlflow's format {'state_dict': ...}."""
    random_init: bool = False
    """Allow a ptlflow model without a checkpoint (random weights: noise; for tests only)."""
    max_side: int = 1024
    """Longest image side fed to the flow engine; flow is resized back to the frame size."""
    batch_size: int = 4
    """Frame pairs per forward pass (ptlflow engines)."""

    def __post_init__(self):
        require(bool(self.engine), "engine", self.engine, "must name a flow engine")
        require(
            self.preset in ("ultrafast", "fast", "medium"),
            "preset",
            self.preset,
            "must be ultrafast, fast or medium",
        )
        require(self.max_side >= 32, "max_side", self.max_side, "must be >= 32")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(
            self.engine != "pictures" or not self.checkpoint,
            "checkpoint",
            self.checkpoint,
            "must be empty with engine 'pictures' (the pictures come with the corpus)",
        )

    def engine_options(self, threads: int = 1) -> dict:
        """Keyword options of ``create_flow_engine`` for this engine (DIS and ptlflow take different ones)."""
        if self.engine == "dis":
            return {"preset": self.preset, "threads": threads}
        if self.engine == "pictures":
            return {}
        return {"batch_size": self.batch_size, "random_init": self.random_init, "threads": threads}

    def create_engine(self, device: str = "cpu", threads: int = 1):
        """The flow engine these settings describe (DIS always runs on the CPU)."""
        device = "cpu" if self.engine in ("dis", "pictures") else device
        return create_flow_engine(
            self.engine,
            checkpoint=self.checkpoint or None,
            device=device,
            max_side=self.max_side,
            **self.engine_options(threads),
        )

    @property
    def uses_pictures(self) -> bool:
        """True when the flow comes from the corpus's own flow pictures rather than an engine."""
        return self.engine == "pictures"

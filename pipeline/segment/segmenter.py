"""VideoSegmenter: HMHI-Net on one video at a time, without Ray, frame by frame with bounded memory.

    from pipeline.segment import VideoSegmenter
    segmenter = VideoSegmenter("runs/demo/runs/demo/best/model.pt")    # `make demo`'s model; any checkpoint works
    for index, mask, prob in segmenter.segment("clip.mp4"):            # a video file, a frame folder or frame arrays
        print(index, mask.sum(), prob.max())                           # (H, W) bool mask, (H, W) float32 sigmoid

It owns the whole per-video path: preprocessing and flow (:mod:`pipeline.segment.source`), the model's streaming
``step`` in the chosen precision, and post-processing back to the frame size (:mod:`pipeline.transforms`). The
segment job's actor uses the same object for each of these stages and only adds batching across videos and
storage, so the job and this API give the same masks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from model.errors import CheckpointError
from pipeline.flow.config import FlowConfig
from pipeline.ingest.formats import IMAGE_EXTENSIONS, VideoRecord, natural_key
from pipeline.segment.config import SegmentConfig, SegmentModelConfig, SegmentOutputConfig
from pipeline.segment.source import (
    Chunk,
    FrameItem,
    Preprocessing,
    SourceError,
    chunk_items,
    iter_source_frames,
)
from pipeline.storage import local_copy, open_storage
from pipeline.transforms import OFFICIAL_MASK_THRESHOLD, logits_to_probs, normalize_images, official_soft_map

if TYPE_CHECKING:
    from model.checkpoint_file import CheckpointInfo

log = logging.getLogger(__name__)

__all__ = ["VideoSegmenter", "load_segmentation_model", "settings_from_checkpoint"]


def settings_from_checkpoint(cfg: SegmentConfig, info: CheckpointInfo) -> list[str]:
    """Complete ``cfg.model`` and ``cfg.flow`` from what the checkpoint records (in place): the fields left unset take
    its model settings (input size, memory size, normalisation) and the flow it was trained on; an official file
    records nothing and gets the official protocol's defaults (``hmhi_mit_b1``, T=5, 512x512, ImageNet
    normalisation, DIS flow). Returns the warnings, one per set field that contradicts the record (honoured).

    Raises :class:`model.CheckpointError` for a file that cannot segment: MiT ImageNet weights (a backbone only),
    or an architecture (``model.name``, ``model.options``) other than the one the weights were trained as.
    """
    if not info.whole_model:
        raise CheckpointError(
            f"{cfg.model.checkpoint}: MiT ImageNet weights hold a backbone only, not a segmentation model "
            "(train one: jobs/train.py --init-checkpoint)"
        )
    errors, warnings = cfg.model.conflicts(info.settings)
    if errors:
        raise CheckpointError(f"{cfg.model.checkpoint}: {errors[0]}; leave it unset to use the checkpoint's")
    trained_flow = (info.provenance.get("training_data") or {}).get("flow")
    warnings += cfg.flow.conflicts(trained_flow)
    cfg.model = cfg.model.resolved(info.settings)
    cfg.flow = cfg.flow.resolved(trained_flow)
    return warnings


def load_segmentation_model(cfg: SegmentConfig) -> tuple[Any, CheckpointInfo, list[str]]:
    """Read the checkpoint, complete ``cfg``'s model and flow settings from its record
    (:func:`settings_from_checkpoint`, in place), build the network and load the weights (``weights_only``).

    Returns ``(network in eval mode, what the checkpoint records, warnings)``; the warnings are the caller's to log
    (the segment job logs them once, on its driver).
    """
    # The model imports torch: only the processes that load one pay for it (not the job's command line).
    from model import create_model, describe_checkpoint, load_checkpoint, model_from_checkpoint

    with local_copy(cfg.model.checkpoint, prefix="hmhi-checkpoint-") as path:
        info = describe_checkpoint(path)
        warnings = settings_from_checkpoint(cfg, info)
        if info.settings is not None:  # a hmhi-uvos file: it builds the model it records
            net, report = model_from_checkpoint(path, memory_size=cfg.model.memory_size)
        else:  # an official file: the model comes from the (resolved) config
            net = create_model(cfg.model.name, **cfg.model.architecture())
            report = load_checkpoint(net, path)
    log.info(
        "model %s from %s at %dx%d, T=%d: %s",
        net.model_name,
        cfg.model.checkpoint,
        cfg.model.input_size,
        cfg.model.input_size,
        net.config.memory_size,
        report.summary(),
    )
    return net.eval(), info, warnings


class VideoSegmenter:
    """Segments videos one frame at a time with HMHI-Net (CPU or GPU, no Ray).

    ``checkpoint``: path or storage URL of any checkpoint ``model.load_checkpoint`` reads. A checkpoint this project
    wrote records its model: the architecture, input size, memory size, normalisation and training flow come from
    it; an option that contradicts the record is honoured with a warning naming both values. An official file
    records nothing: ``model`` names its architecture (default ``hmhi_mit_b1``) and the official protocol's
    defaults apply (T=5, 512x512, ImageNet normalisation, DIS flow). ``flow``: a flow engine name (``"dis"``, a
    ptlflow model), a :class:`~pipeline.flow.config.FlowConfig`, or ``"pictures"`` to use flow pictures given with
    the frames; None: the flow the model was trained on. ``preset="official"`` applies the official inference
    protocol (see ``SegmentConfig.preset``). Other keyword arguments are :class:`SegmentModelConfig` fields
    (``memory_size``, ``input_size``, ``device``, ``precision``, ``decoder``, ``options``) or
    :class:`SegmentOutputConfig` fields (``threshold``, ``binarize``).
    """

    def __init__(
        self,
        checkpoint: str,
        flow: str | FlowConfig | None = None,
        *,
        model: str | None = None,
        preset: str = "",
        chunk_frames: int = 8,
        **options: Any,
    ):
        model_fields = set(SegmentModelConfig.__dataclass_fields__)
        output_fields = {"threshold", "binarize"}
        unknown = set(options) - model_fields - output_fields
        if unknown:
            raise TypeError(
                f"VideoSegmenter: unknown option(s) {sorted(unknown)}; model options: "
                f"{sorted(model_fields)}, output options: {sorted(output_fields)}"
            )
        flow_cfg = (
            flow if isinstance(flow, FlowConfig) else FlowConfig(engine=flow)
        )  # engine None: the record's
        cfg = SegmentConfig(
            input="<api>",
            output="<api>",
            preset=preset,
            model=SegmentModelConfig(
                checkpoint=checkpoint, name=model, **{k: v for k, v in options.items() if k in model_fields}
            ),
            outputs=SegmentOutputConfig(**{k: v for k, v in options.items() if k in output_fields}),
            flow=flow_cfg,
        )
        cfg.runtime.chunk_frames = chunk_frames
        self._setup(cfg, None, warn=True)

    @classmethod
    def from_config(cls, cfg: SegmentConfig, device: str | None = None, warn: bool = True) -> VideoSegmenter:
        """The segmenter a segment job's config describes; ``device`` overrides ``cfg.model.device``. ``warn``:
        log where the config contradicts the checkpoint's record (the segment job's actors do not: its driver
        did, once)."""
        self = cls.__new__(cls)
        self._setup(cfg, device, warn)
        return self

    def _setup(self, cfg: SegmentConfig, device: str | None, warn: bool) -> None:
        import torch

        from model import resolve_precision

        self.cfg = cfg
        wanted = device or cfg.model.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("VideoSegmenter: device 'cuda' was asked for but no CUDA GPU is available")
        self.device = torch.device(wanted)
        self.dtype = resolve_precision(cfg.model.precision, self.device)
        self.net, self.checkpoint_info, warnings = load_segmentation_model(cfg)
        for warning in warnings if warn else ():
            log.warning("%s: %s", cfg.model.checkpoint, warning)
        self.net = self.net.to(self.device)
        self.preprocessing = Preprocessing(
            input_size=cfg.model.input_size,
            chunk_frames=cfg.runtime.chunk_frames,
            flow=cfg.flow,
            decoder=cfg.model.decoder,
            frames=cfg.frames,
            keep_original=cfg.outputs.overlay,
        )
        self._engine = None

    # ------------------------------------------------------------------------------------------- provenance
    @property
    def provenance(self) -> dict[str, Any]:
        """What produced the masks (recorded in every done marker): the settings used, and where their defaults
        came from (``defaults``: the checkpoint's record, or the official protocol for a file that records none;
        ``checkpoint_record``: the record itself, to compare with what was used)."""
        import torch

        info = self.checkpoint_info
        record = None
        if info.settings is not None:
            keep = ("name", "input_size", "memory_size", "mean", "std")
            record = {k: v for k, v in info.settings.record().items() if k in keep}
            record["flow"] = (info.provenance.get("training_data") or {}).get("flow")
        return {
            "checkpoint": self.cfg.model.checkpoint,
            "model": self.net.model_name,
            "input_size": self.cfg.model.input_size,
            "memory_size": self.net.config.memory_size,
            "normalization": {"mean": list(self.cfg.model.mean), "std": list(self.cfg.model.std)},
            "defaults": "checkpoint record" if record is not None else "official protocol (no record)",
            "checkpoint_record": record,
            "flow": self.cfg.flow.record(),
            "flow_engine": self.cfg.flow.engine,
            "threshold": self.cfg.outputs.threshold,
            "binarize": self.cfg.outputs.binarize,
            "precision": "bf16" if self.dtype == torch.bfloat16 else "fp32",
            "preset": self.cfg.preset,
            "stepped_frames": self.cfg.frames,  # all, or annotated only
        }

    # ------------------------------------------------------------------------------------- stage 1: input
    def _flow_engine(self):
        if self._engine is None and not self.preprocessing.uses_pictures:
            self._engine = self.cfg.flow.create_engine(device=str(self.device), threads=1)
        return self._engine

    def chunks(self, source, flows: str | os.PathLike | None = None) -> Iterator[Chunk]:
        """Model-ready chunks of ``source`` (see :meth:`segment`); :class:`SourceError` on bad input."""
        items, label = self._items(source, flows)
        return chunk_items(items, self.preprocessing, label, self._flow_engine())

    def _items(self, source, flows) -> tuple[Iterator[FrameItem], str]:
        if isinstance(source, VideoRecord):
            raise TypeError(
                "VideoSegmenter: give a VideoRecord together with its storage via segment_record()"
            )
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if os.path.isdir(path):
                frames = _image_files(path)
                flow_files = _image_files(os.fspath(flows)) if flows is not None else []
                root = os.path.commonpath([path] + ([os.fspath(flows)] if flows is not None else []))
                rel = lambda p: os.path.relpath(p, root).replace(os.sep, "/")  # noqa: E731
                rec = VideoRecord(
                    video_id="video",
                    name=path,
                    format="frames",
                    split="test",
                    source_split="",
                    kind="frames",
                    source=rel(path),
                    frames=[rel(f) for f in frames],
                    flows=[rel(f) for f in flow_files],
                )
                return iter_source_frames(open_storage(root), rec, self.preprocessing), repr(path)
            if not os.path.exists(path):
                raise SourceError(f"video {path!r} does not exist")
            directory, leaf = os.path.split(os.path.abspath(path))
            rec = VideoRecord(
                video_id="video",
                name=path,
                format="videos",
                split="test",
                source_split="",
                kind="video",
                source=leaf,
            )
            return iter_source_frames(open_storage(directory), rec, self.preprocessing), repr(path)
        return _array_items(source, self.preprocessing.uses_pictures), "<frames>"

    def record_chunks(self, storage, record: VideoRecord) -> Iterator[Chunk]:
        """Model-ready chunks of a corpus video (a :class:`VideoRecord` below ``storage``)."""
        items = iter_source_frames(storage, record, self.preprocessing)
        return chunk_items(
            items, self.preprocessing, f"{record.name!r} ({storage.join(record.source)})", self._flow_engine()
        )

    # ------------------------------------------------------------------------------------- stage 2: model
    def new_state(self, batch_size: int = 1):
        """Empty streaming memory for ``batch_size`` videos stepped side by side."""
        return self.net.init_state(batch_size, device=self.device)

    def step(self, frames: np.ndarray, flows: np.ndarray, state, reset: list[bool], active: list[bool]):
        """One frame of each of B videos: (B, S, S, 3) uint8 frames and flow pictures -> (B, 1, S, S) fp32 logits.

        ``reset[b]``: video b starts with this frame; ``active[b]`` False: slot b is idle (its rows are ignored).
        """
        import torch

        from model import autocast

        mean, std = self.cfg.model.mean, self.cfg.model.std
        frame_t = normalize_images(frames, mean, std).to(self.device, non_blocking=True)
        flow_t = normalize_images(flows, mean, std).to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            logits, state = self.net.step(
                frame_t, flow_t, state, reset=torch.tensor(reset), active=torch.tensor(active)
            )
        return logits.float()

    # ------------------------------------------------------------------------------------ stage 3: output
    def postprocess(self, logits, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """One frame's (1, S, S) logits -> ((H, W) bool mask, (H, W) float32 probability) at ``size`` = (H, W)."""
        prob = logits_to_probs(logits, size)
        if self.cfg.outputs.binarize == "official_minmax":
            return official_soft_map(prob) > OFFICIAL_MASK_THRESHOLD, prob
        return prob > self.cfg.outputs.threshold, prob

    def soft_map(self, prob: np.ndarray) -> np.ndarray:
        """The uint8 soft map written to ``probs/``: round(255 p), or the official per-frame stretch."""
        if self.cfg.outputs.prob_mode == "official_minmax":
            return official_soft_map(prob)
        return np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)

    # ------------------------------------------------------------------------------------------ the API
    def segment(
        self, source, flows: str | os.PathLike | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(frame_index, mask, probability)`` for each frame of ``source``, one frame at a time.

        ``source``: a video file path, a folder of frame images (natural order), or an iterable of (H, W, 3)
        uint8 RGB frames (with ``flow="pictures"``: of ``(frame, flow_picture)`` pairs). ``flows``: with
        ``flow="pictures"`` and a frame folder, the folder of flow pictures (one per frame, same order).
        Memory holds one chunk of frames and the model's T-frame memory, whatever the video's length.
        """
        return self._run(self.chunks(source, flows))

    def segment_record(self, storage, record: VideoRecord) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """:meth:`segment` for a corpus video found by pipeline.ingest (frames, masks and flow pictures)."""
        return self._run(self.record_chunks(storage, record))

    def _run(self, chunks: Iterable[Chunk]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        state = self.new_state(1)
        first = True
        for chunk in chunks:
            for i in range(len(chunk.names)):
                logits = self.step(chunk.frames[i : i + 1], chunk.flows[i : i + 1], state, [first], [True])
                first = False
                mask, prob = self.postprocess(logits[0], (chunk.height, chunk.width))
                yield chunk.indices[i], mask, prob


def _image_files(folder: str) -> list[str]:
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise SourceError(f"folder {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def _array_items(frames: Iterable, with_pictures: bool) -> Iterator[FrameItem]:
    for index, item in enumerate(frames):
        frame, picture = item if with_pictures else (item, None)
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SourceError(f"frame {index}: expected (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        yield FrameItem(index, f"{index:05d}", frame, None, None if picture is None else np.asarray(picture))

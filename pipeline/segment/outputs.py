"""Per-video outputs of batch inference, written to storage as frames come out of the model.

The layout below the output root is :mod:`pipeline.segment_layout` (masks/, probs/, rle/, overlays/, done/).
Every file is written atomically (pipeline.storage), so a killed run leaves whole files or none; a video
without its marker is redone from scratch and its files are overwritten, never duplicated.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.masks import encode_mask_png, mask_to_rle
from pipeline.segment.config import SegmentOutputConfig
from pipeline.segment_layout import (
    RLE_SCHEMA,
    done_marker,
    mask_png,
    overlay_mp4,
    prob_png,
    rle_parquet,
    video_outputs,
)
from pipeline.storage import Storage
from pipeline.video import VideoWriter

log = logging.getLogger(__name__)

__all__ = ["VideoOutputs", "overlay_frame", "OverlayWriter"]

_MAX_PENDING_WRITES = 64  # bounds memory when storage is slower than the model


def overlay_frame(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame with the mask tinted red (DAVIS palette colour 1) and its outline drawn."""
    import cv2

    out = frame.astype(np.float32)
    tint = np.array([128.0, 0.0, 0.0]) * 2  # palette red, brightened
    out[mask] = (1 - alpha) * out[mask] + alpha * np.minimum(tint, 255)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


class OverlayWriter:
    """Streams overlay frames into an H.264 MP4 in a local temporary file (bounded memory), then uploads it."""

    def __init__(self, fps: float | None, width: int, height: int):
        fd, self.path = tempfile.mkstemp(prefix="overlay-", suffix=".mp4")
        os.close(fd)
        self.writer = VideoWriter(self.path, width, height, fps=fps or 25.0, crf=23)

    def add(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def finish(self, storage: Storage, rel: str) -> None:
        self.writer.close()
        try:
            storage.upload_file(self.path, rel)
        finally:
            os.remove(self.path)

    def abort(self) -> None:
        self.writer.abort()


class VideoOutputs:
    """Collects one video's results and writes them; :meth:`finish` writes the done marker last."""

    def __init__(
        self,
        storage: Storage,
        video_id: str,
        record: dict,
        cfg: SegmentOutputConfig,
        pool: ThreadPoolExecutor,
    ):
        if cfg.overwrite:
            # The marker goes first: a run killed (or failing) while redoing the video must not leave it marked done.
            storage.delete(done_marker(video_id))
        self.storage = storage
        self.video_id = video_id
        self.record = record
        self.cfg = cfg
        self.pool = pool
        self.started = time.time()
        self.rows: list[dict] = []
        self.pending: list[Future] = []
        self.overlay: OverlayWriter | None = None
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None
        self.foreground_frames = 0

    def _submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        if len(self.pending) > _MAX_PENDING_WRITES:
            self.pending.pop(0).result()  # back-pressure, and surface write errors early

    def _write_frame(self, name: str, mask: np.ndarray, soft: np.ndarray | None) -> None:
        self.storage.write_bytes(mask_png(self.video_id, name), encode_mask_png(mask))
        if soft is not None:
            buffer = io.BytesIO()
            Image.fromarray(soft).save(buffer, format="PNG")  # 8-bit greyscale, as the official code saves it
            self.storage.write_bytes(prob_png(self.video_id, name), buffer.getvalue())

    def add(
        self,
        index: int,
        name: str,
        mask: np.ndarray,
        soft: np.ndarray | None,
        original: np.ndarray | None,
        fps: float | None,
    ) -> None:
        """One frame's (H, W) mask at the original resolution, its uint8 soft map (when probabilities are saved)
        and the original frame (for overlays); the segmenter post-processed them."""
        self.size = mask.shape
        self.fps = fps
        rle = mask_to_rle(mask)
        area = int(np.count_nonzero(mask))
        self.foreground_frames += area > 0
        self.rows.append(
            {
                "video_id": self.video_id,
                "frame_index": index,
                "frame": name,
                "height": rle["size"][0],
                "width": rle["size"][1],
                "rle_counts": rle["counts"],
                "area": area,
            }
        )
        self._submit(self._write_frame, name, mask, soft if self.cfg.save_probs else None)
        if self.cfg.overlay and original is not None:
            if self.overlay is None:
                self.overlay = OverlayWriter(fps, original.shape[1], original.shape[0])
            self.overlay.add(overlay_frame(original, mask))

    def finish(self, provenance: dict) -> dict:
        """Wait for the frame writes, write the Parquet rows, the overlay and finally the done marker."""
        for future in self.pending:
            future.result()
        self.pending.clear()
        self.storage.write_parquet(
            rle_parquet(self.video_id), pa.Table.from_pylist(self.rows, schema=RLE_SCHEMA)
        )
        if self.overlay is not None:
            self.overlay.finish(self.storage, overlay_mp4(self.video_id))
            self.overlay = None
        seconds = time.time() - self.started
        marker = {
            "video_id": self.video_id,
            "name": self.record.get("name"),
            "source": self.record.get("source"),
            "frames": len(self.rows),
            "foreground_frames": self.foreground_frames,
            "height": self.size[0] if self.size else None,
            "width": self.size[1] if self.size else None,
            "fps": self.fps,
            "seconds": round(seconds, 3),
            "finished_at": time.time(),
            **provenance,
        }
        self.storage.write_json(done_marker(self.video_id), marker)
        return marker

    def abort(self) -> None:
        """Drop every output a failed video had started (best effort): a rerun starts it afresh."""
        for future in self.pending:
            future.exception()
        self.pending.clear()
        if self.overlay is not None:
            self.overlay.abort()
            self.overlay = None
        for rel, recursive in video_outputs(self.video_id):
            try:
                self.storage.delete(rel, recursive=recursive)  # absent is fine
            except Exception as err:  # cleanup must not hide the original failure
                log.warning("could not remove partial outputs %s: %s", self.storage.join(rel), err)

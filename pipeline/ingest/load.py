"""Load one input video (frames + masks) from storage, validating and repairing as the issue specifies.

Rejected (the video is skipped; the message names the video and the file):
    truncated or undecodable frames, zero-byte or undecodable video files, frames of different sizes within a
    video, videos with fewer than 2 frames (no flow), unreadable sources.
Repaired (with a warning naming the file, kept in the video's ``warnings``):
    masks of a different size but the same aspect ratio (nearest-neighbour resize); masks that cannot be read or
    have another aspect ratio are dropped (the frame counts as unannotated); palette / non-binary masks become
    binary through :func:`pipeline.masks.read_mask` (any non-zero value is foreground); in DAVIS-2017 label
    maps, the void label 255 next to object labels 1..K is background; FBMS-59's colour ``GroundTruth/*.ppm``
    paint the background white (every non-white pixel is foreground).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.imaging import decode_image
from pipeline.ingest.formats import VideoRecord, mask_has_white_background
from pipeline.masks import MaskError, read_mask, read_mask_values
from pipeline.storage import local_copy
from pipeline.video import VideoError, decode_video, probe_video

log = logging.getLogger(__name__)

__all__ = ["LoadedVideo", "VideoRejected", "load_video"]

MIN_FRAMES = 2


class VideoRejected(ValueError):
    """The video cannot be used; the message names the video and the offending file."""


@dataclass
class LoadedVideo:
    frames: np.ndarray
    """(N, H, W, 3) uint8 RGB."""
    masks: np.ndarray
    """(N, H, W) bool; all False where not annotated."""
    mask_valid: np.ndarray
    """(N,) bool: which frames have a ground-truth mask."""
    frame_names: list[str]
    """Per frame: the file name (frame folders) or the frame number (video files)."""
    fps: float | None
    warnings: list[str] = field(default_factory=list)


def _read(storage, rel: str, what: str) -> bytes:
    try:
        return storage.read_bytes(rel)
    except ValueError as e:  # names with '..' are refused by the storage layer
        raise VideoRejected(f"{what} {rel!r}: unsafe path ({e})") from e


def _load_mask(
    storage, rel: str, shape: tuple[int, int], warnings: list[str], video: str, void_label: int | None = None
) -> np.ndarray | None:
    import cv2

    url = storage.join(rel) if ".." not in rel.split("/") else rel
    white = mask_has_white_background(rel)
    try:
        data = _read(storage, rel, "mask")
        values = (
            read_mask(data, name=url, white_background=True) if white else read_mask_values(data, name=url)
        )
    except (MaskError, VideoRejected, OSError) as e:
        warnings.append(f"video {video}: mask {rel} dropped: {e}")
        return None
    mask = values != 0  # the codec's rule (read_mask): any non-zero value is foreground
    if (
        void_label is not None
        and (values == void_label).any()
        and ((values > 0) & (values != void_label)).any()
    ):
        mask &= values != void_label  # DAVIS-2017 labels objects 1..K and marks void (unlabelled) pixels 255
    distinct = (
        np.count_nonzero(np.bincount(values.ravel())) if values.dtype == np.uint8 else len(np.unique(values))
    )
    if distinct > 2 and not white:
        warnings.append(f"video {video}: mask {rel} has {distinct} values; any non-zero taken as foreground")
    h, w = shape
    if mask.shape != (h, w):
        mh, mw = mask.shape
        if abs(mh / mw - h / w) > 0.01:
            warnings.append(
                f"video {video}: mask {rel} is {mw}x{mh}, frames are {w}x{h} (other aspect ratio); dropped"
            )
            return None
        warnings.append(f"video {video}: mask {rel} is {mw}x{mh}, frames are {w}x{h}; resized (nearest)")
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def _too_long(rec: VideoRecord, n: int, shape: tuple[int, ...], max_bytes: int) -> VideoRejected:
    return VideoRejected(
        f"video {rec.name!r} ({rec.source}): {n} frames of {shape[1]}x{shape[0]} exceed the "
        f"per-video memory budget of {max_bytes / 2**20:.0f} MB (raise max_video_mb or split it)"
    )


def _frames_from_folder(storage, rec: VideoRecord, max_bytes: int) -> tuple[np.ndarray, list[str]]:
    frames: list[np.ndarray] = []
    for rel in rec.frames:
        data = _read(storage, rel, "frame")
        try:
            img = decode_image(data, f"frame {rel}")
        except ValueError as e:
            raise VideoRejected(f"video {rec.name!r}: {e}") from e
        if frames and img.shape != frames[0].shape:
            raise VideoRejected(
                f"video {rec.name!r}: frame {rel} is {img.shape[1]}x{img.shape[0]}, the first frame "
                f"is {frames[0].shape[1]}x{frames[0].shape[0]} (frames of different sizes)"
            )
        frames.append(img)
        if len(frames) == 1 and len(rec.frames) * img.nbytes > max_bytes:
            raise _too_long(rec, len(rec.frames), img.shape, max_bytes)
    if not frames:
        raise VideoRejected(f"video {rec.name!r}: no frames")
    return np.stack(frames), [os.path.basename(f) for f in rec.frames]


def _frames_from_video(storage, rec: VideoRecord, max_bytes: int) -> tuple[np.ndarray, float]:
    try:
        url = storage.join(rec.source)
    except ValueError as e:
        raise VideoRejected(f"video {rec.source!r}: unsafe path ({e})") from e
    # A remote file is downloaded first: demuxers seek a lot, and ranged reads on S3 per seek are slow.
    with local_copy(url, prefix="hmhi-video-") as path:
        try:
            info = probe_video(path, name=rec.source)
            budget = max(1, max_bytes // (info.width * info.height * 3))
            frames, info = decode_video(path, name=rec.source, max_frames=budget + 1)
            if len(frames) > budget:
                raise _too_long(rec, len(frames), frames.shape[1:], max_bytes)
        except VideoError as e:
            raise VideoRejected(str(e)) from e
    return frames, info.fps


def load_video(storage, rec: VideoRecord, max_video_mb: float = 4096) -> LoadedVideo:
    """Read and validate one video; raise :class:`VideoRejected` if it cannot be used.

    Videos are decoded whole (flow needs neighbours, clips need the frame count): one whose RGB frames exceed
    ``max_video_mb`` is rejected rather than exhausting the worker's memory.
    """
    max_bytes = int(max_video_mb * 2**20)
    warnings: list[str] = []
    fps = None
    if rec.kind == "video":
        frames, fps = _frames_from_video(storage, rec, max_bytes)
        names = [f"{i:05d}" for i in range(len(frames))]
    else:
        frames, names = _frames_from_folder(storage, rec, max_bytes)
    n, h, w, _ = frames.shape
    if n < MIN_FRAMES:
        raise VideoRejected(
            f"video {rec.name!r}: only {n} frame ({rec.source}); at least {MIN_FRAMES} are needed "
            "for optical flow"
        )
    masks = np.zeros((n, h, w), bool)
    valid = np.zeros(n, bool)
    for i, rel in sorted(rec.masks.items()):
        if i >= n:
            warnings.append(
                f"video {rec.name}: mask {rel} is for frame {i}, the video has {n} frames; ignored"
            )
            continue
        m = _load_mask(storage, rel, (h, w), warnings, rec.name, 255 if rec.format == "davis2017" else None)
        if m is not None:
            masks[i], valid[i] = m, True
    for msg in warnings:
        log.warning(msg)
    return LoadedVideo(
        frames=frames, masks=masks, mask_valid=valid, frame_names=names, fps=fps, warnings=warnings
    )

"""Video files: probe, decode to RGB arrays, encode from RGB arrays.

Every job that reads or writes video files (flow precompute, segmentation overlays, test corpora) goes through
these helpers (:class:`VideoWriter` streams frames into a file), so that codec choices and error messages live in
one place. Sources may be local paths or binary file objects (e.g. ``Storage.open_read``); errors are
:class:`VideoError` naming the source.

Decoding uses torchcodec where it can be loaded (the ``video`` extra, ``pip install 'hmhi-uvos[video]'``, and
FFmpeg's shared libraries, which the container image installs), else PyAV, which is always installed; both give
the same RGB frames (FFmpeg's swscale conversion; tested bit for bit). torchcodec decodes 1.15-1.6x faster than
PyAV with the decoder's own threads, as the jobs run it, and the same on one thread (``bench/decode.py``,
bench/RESULTS.md). ``HMHI_VIDEO_DECODER=pyav`` (or ``torchcodec``) forces one. Probing and encoding use PyAV.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from pipeline.imaging import ImageTooLargeError, check_pixels

__all__ = [
    "DECODER_ENV",
    "VIDEO_EXTENSIONS",
    "VideoError",
    "VideoInfo",
    "probe_video",
    "iter_video_frames",
    "video_decoder",
    "decode_video",
    "encode_video",
    "VideoWriter",
]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
"""File name endings treated as video files (case-insensitive)."""

DECODER_ENV = "HMHI_VIDEO_DECODER"
"""Environment variable: ``auto`` (default: torchcodec where it loads, else PyAV), ``torchcodec`` or ``pyav``."""

VideoSource = str | os.PathLike | BinaryIO


class VideoError(ValueError):
    """A video could not be opened or decoded; the message names the source."""


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts of a video file."""

    width: int
    height: int
    fps: float
    frame_count: int | None
    """Frames reported by the container; ``None`` when the container does not say (decode to count)."""
    codec: str


def _label(source: VideoSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<video stream>"


def _open(source: VideoSource, label: str):
    import av

    if isinstance(source, (str, os.PathLike)) and os.path.exists(source) and os.path.getsize(source) == 0:
        raise VideoError(f"video {label} is empty (zero bytes)")
    try:
        container = av.open(source if not isinstance(source, os.PathLike) else os.fspath(source), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"video {label} cannot be opened: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"video {label} has no video stream")
    return container


def probe_video(source: VideoSource, *, name: str | None = None) -> VideoInfo:
    """Read the stream header of a video (no frame decoding)."""
    label = _label(source, name)
    container = _open(source, label)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoInfo(
            width=int(ctx.width),
            height=int(ctx.height),
            fps=float(rate),
            frame_count=int(stream.frames) or None,
            codec=str(ctx.name),
        )
    finally:
        container.close()


def _check_size(width: int, height: int, label: str) -> None:
    """The pixel limit of pipeline.imaging, as a :class:`VideoError` naming the video."""
    try:
        check_pixels(width, height, f"video {label}")
    except ImageTooLargeError as err:
        raise VideoError(str(err)) from err


@functools.cache
def _torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode in this process (None: it can); asked once per process."""
    try:
        import torchcodec
    except Exception as e:  # not installed, or built for another torch
        return (
            f"torchcodec cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
    if torchcodec.ffmpeg_major_version is None:  # torchcodec imports without FFmpeg, then cannot decode video
        return "torchcodec finds no FFmpeg shared libraries (libavcodec, libavformat, ... 4 to 9)"
    return None


def video_decoder() -> str:
    """The decoder of this process: ``torchcodec`` where it can be loaded, else ``pyav`` (``HMHI_VIDEO_DECODER``
    forces one; forcing torchcodec where it cannot be loaded is a :class:`VideoError` saying why)."""
    choice = os.environ.get(DECODER_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "torchcodec", "pyav"):
        raise VideoError(f"{DECODER_ENV}={choice!r}: must be auto, torchcodec or pyav")
    if choice == "pyav":
        return "pyav"
    problem = _torchcodec_problem()
    if problem is None:
        return "torchcodec"
    if choice == "torchcodec":
        raise VideoError(
            f"{DECODER_ENV}=torchcodec, but {problem}; install the 'video' extra and FFmpeg's libraries"
        )
    return "pyav"


def _pyav_frames(source: VideoSource, label: str) -> Iterator[np.ndarray]:
    import av

    container = _open(source, label)
    try:
        stream = container.streams.video[0]
        _check_size(stream.codec_context.width, stream.codec_context.height, label)  # from the header
        stream.thread_type = "AUTO"  # frame + slice threads: ~2x faster decode on 2 cores
        count = 0
        try:
            for frame in container.decode(stream):
                _check_size(frame.width, frame.height, label)  # a stream may change size: before converting
                yield frame.to_ndarray(format="rgb24")
                count += 1
        except av.FFmpegError as e:
            raise VideoError(f"video {label} is corrupt after frame {count}: {e}") from e
    finally:
        container.close()


def _torchcodec_frames(source: VideoSource, label: str) -> Iterator[np.ndarray]:
    from torchcodec.decoders import VideoDecoder

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and os.path.exists(source) and os.path.getsize(source) == 0:
        raise VideoError(f"video {label} is empty (zero bytes)")
    try:
        # FFmpeg's own threads, as PyAV's thread_type AUTO; frames one at a time (torchcodec 0.17's batched reads
        # were 4-8x slower on CPU: bench/decode.py).
        decoder = VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=0)
    except (RuntimeError, ValueError) as e:
        raise VideoError(f"video {label} cannot be opened: {e}") from e
    metadata = decoder.metadata
    if metadata.width is not None and metadata.height is not None:
        _check_size(metadata.width, metadata.height, label)  # from the stream's header, before any frame
    count = 0
    try:
        for frame in decoder:
            yield frame.numpy()
            count += 1
    except RuntimeError as e:
        raise VideoError(f"video {label} is corrupt after frame {count}: {e}") from e


def iter_video_frames(
    source: VideoSource, *, name: str | None = None, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of a video as (H, W, 3) uint8 RGB arrays, in presentation order (decoded by
    :func:`video_decoder`'s choice)."""
    label = _label(source, name)
    frames = (
        _torchcodec_frames(source, label) if video_decoder() == "torchcodec" else _pyav_frames(source, label)
    )
    count = 0
    try:
        for frame in frames:
            yield frame
            count += 1
            if max_frames is not None and count >= max_frames:
                return
    finally:
        frames.close()  # closes the container / decoder now, also when the caller stops early
    if count == 0:
        raise VideoError(f"video {label} has no decodable frames")


def decode_video(
    source: VideoSource, *, name: str | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole video into (N, H, W, 3) uint8 RGB plus its :class:`VideoInfo` (frame_count = N).

    Raises :class:`VideoError` when the frame size changes mid-stream (we do not rescale silently).
    """
    label = _label(source, name)
    info = probe_video(source, name=label)
    if hasattr(source, "seek"):
        source.seek(0)
    frames = []
    for i, frame in enumerate(iter_video_frames(source, name=label, max_frames=max_frames)):
        if frames and frame.shape != frames[0].shape:
            raise VideoError(
                f"video {label}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                f"expected {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
        frames.append(frame)
    array = np.stack(frames, 0)
    info = VideoInfo(
        width=array.shape[2], height=array.shape[1], fps=info.fps, frame_count=len(frames), codec=info.codec
    )
    return array, info


class VideoWriter:
    """Streaming encoder: frames go in one at a time (bounded memory), ``close`` finishes the file.

    H.264 (``libx264``, ``crf``) or any PyAV encoder, yuv420p; odd sizes are padded by one pixel (edge replication)
    rather than failing. ``container_format`` is needed when ``dest`` is a file object (e.g. ``"mp4"``). Use as a
    context manager, or call :meth:`close` (success) or :meth:`abort` (drop what was written to a path).
    """

    def __init__(
        self,
        dest: str | os.PathLike | BinaryIO,
        width: int,
        height: int,
        *,
        fps: float = 25.0,
        codec: str = "libx264",
        crf: int | None = 18,
        container_format: str | None = None,
    ):
        import av

        self.width, self.height = width, height
        # yuv420p needs even sizes
        self.padded_width, self.padded_height = width + width % 2, height + height % 2
        self.dest = os.fspath(dest) if isinstance(dest, (str, os.PathLike)) else dest
        self.container = av.open(self.dest, mode="w", format=container_format)
        self.stream = self.container.add_stream(codec, rate=Fraction(fps or 25.0).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = (
            self.padded_width,
            self.padded_height,
            "yuv420p",
        )
        if codec == "libx264" and crf is not None:
            self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame of the size given at construction."""
        import av

        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be ({self.height}, {self.width}, 3) uint8, got {frame.shape} {frame.dtype}"
            )
        pad_h, pad_w = self.padded_height - self.height, self.padded_width - self.width
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for packet in self.stream.encode(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        ):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the container."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        """Close without flushing and remove the partial file (when writing to a path)."""
        try:
            self.container.close()
        finally:
            if isinstance(self.dest, str) and os.path.exists(self.dest):
                os.remove(self.dest)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.container.close()


def encode_video(
    frames: np.ndarray,
    dest: str | os.PathLike | BinaryIO,
    *,
    fps: float = 25.0,
    codec: str = "libx264",
    crf: int | None = 18,
    container_format: str | None = None,
) -> None:
    """Encode (N, H, W, 3) uint8 RGB frames into a video file (a :class:`VideoWriter` over the frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    with VideoWriter(
        dest,
        frames.shape[2],
        frames.shape[1],
        fps=fps,
        codec=codec,
        crf=crf,
        container_format=container_format,
    ) as writer:
        for frame in frames:
            writer.write(frame)

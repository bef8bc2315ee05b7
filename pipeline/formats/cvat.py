"""CVAT's "Segmentation mask 1.1" archive (the Pascal VOC segmentation layout CVAT documents for import).

    labelmap.txt                          label:R,G,B:parts:actions, one label per line (background first)
    ImageSets/Segmentation/default.txt    one image name per line, without extension
    SegmentationClass/<name>.png          RGB, each pixel the colour of its label in labelmap.txt
    SegmentationObject/<name>.png         RGB, each instance in the Pascal VOC colour of its index (1: 128,0,0)

CVAT matches an archive's image names to a task's frames, so two namings are offered:

- ``cvat``: one archive for the whole corpus, for a CVAT task made of images: the frames of every video share one
  flat namespace as ``<video>_<frame>`` (the sanitised video id and the frame name), unique across videos;
- ``cvat_video``: one archive per video (``cvat/<video>.zip``), for a CVAT task made from that video (or from its
  frames in order): images are named ``frame_<index:06d>``, the names CVAT gives a video task's frames, which its
  importer matches by frame number.

Every frame is listed, empty ones too (all background), so that CVAT knows they were looked at.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.formats.finished import FinishedVideo, FrameRle
from pipeline.masks import davis_palette, rle_to_mask
from pipeline.storage import Storage

__all__ = [
    "BACKGROUND_RGB",
    "CvatMaskWriter",
    "MaskPngEncoder",
    "cvat_item_name",
    "cvat_video_item_name",
    "labelmap_text",
    "object_rgb",
]

BACKGROUND_RGB = (0, 0, 0)
"""CVAT's default background colour."""

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp: the same outputs give the same archive bytes


def object_rgb(index: int = 1) -> tuple[int, int, int]:
    """The Pascal VOC colour of label/instance ``index`` (CVAT's colour algorithm); 1 is (128, 0, 0)."""
    palette = davis_palette()  # the DAVIS palette is the Pascal VOC colour map
    return tuple(palette[3 * index : 3 * index + 3])  # type: ignore[return-value]


def labelmap_text(category: str) -> str:
    return (
        "# label:color_rgb:parts:actions\n"
        f"background:{','.join(map(str, BACKGROUND_RGB))}::\n"
        f"{category}:{','.join(map(str, object_rgb(1)))}::\n"
    )


def cvat_item_name(video_id: str, frame: FrameRle) -> str:
    """The corpus-wide image name of a frame: ``<video>_<frame>``."""
    return f"{video_id}_{frame.name}"


def cvat_video_item_name(video_id: str, frame: FrameRle) -> str:
    """The image name of a frame in its video's archive: ``frame_<index:06d>``, as CVAT names a video task's frames."""
    return f"frame_{frame.index:06d}"


def _rgb_png(mask: np.ndarray, colour: tuple[int, int, int]) -> bytes:
    """An 8-bit RGB PNG: ``colour`` where ``mask``, black elsewhere."""
    import cv2

    bgr = mask[..., None] * np.array(
        colour[::-1], np.uint8
    )  # a broadcast product: ~10x faster than bgr[mask] = c
    # zlib's run-length strategy suits masks: the smallest files and the least CPU of the settings measured.
    ok, data = cv2.imencode(
        ".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    )
    if not ok:
        raise ValueError(f"PNG encoding of a {mask.shape} mask failed")
    return data.tobytes()


class MaskPngEncoder:
    """Encodes a video's masks as CVAT PNGs, once for every archive they go into.

    Encoding takes ~all the export time and cv2.imencode releases the GIL (Pillow's encoding to memory does not), so
    frames encode in parallel on a small thread pool.
    """

    def __init__(self, threads: int = min(8, os.cpu_count() or 1)):
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="cvat-png")
        self.colour = object_rgb(1)

    def _encode(self, frame: FrameRle) -> bytes:
        mask = rle_to_mask(frame.rle) if frame.area else np.zeros(frame.rle["size"], bool)
        return _rgb_png(mask, self.colour)

    def encode(self, video: FinishedVideo) -> list[bytes]:
        """One PNG per frame, in frame order."""
        return list(self.pool.map(self._encode, video.frames))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class CvatMaskWriter:
    """Streams PNGs into a local temporary zip (bounded memory) and uploads it at the end."""

    def __init__(self, category: str, item_name: Callable[[str, FrameRle], str] = cvat_item_name):
        if ":" in category or "\n" in category:
            raise ValueError(
                f"CVAT label {category!r} must not contain ':' or a newline (labelmap.txt syntax)"
            )
        self.category = category
        self.item_name = item_name
        fd, self.path = tempfile.mkstemp(prefix="cvat-", suffix=".zip")
        os.close(fd)
        self.zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED)
        self.names: list[str] = []
        self.owner: dict[str, str] = {}

    def _write(self, arcname: str, data: bytes) -> None:
        # PNGs are compressed already: stored. Text is deflated.
        compress = zipfile.ZIP_STORED if arcname.endswith(".png") else zipfile.ZIP_DEFLATED
        info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
        info.compress_type = compress
        self.zip.writestr(info, data)

    def check(self, video: FinishedVideo) -> str | None:
        """Why the video cannot go into the archive (a name clash or an unusable name), or None."""
        for frame in video.frames:
            name = self.item_name(video.video_id, frame)
            if any(c.isspace() for c in name) or "/" in name or "\\" in name:
                return f"frame name {name!r} has a space or a slash (CVAT's list file is one name per line)"
            if name in self.owner:
                return f"frame name {name!r} is also a frame of video {self.owner[name]!r}"
        return None

    def add(self, video: FinishedVideo, pngs: list[bytes]) -> None:
        """The video's frames, with their PNGs from :class:`MaskPngEncoder`."""
        for frame, png in zip(video.frames, pngs, strict=True):
            name = self.item_name(video.video_id, frame)
            # One object per video: its instance mask is its class mask (instance 1 and the label share a colour).
            self._write(f"SegmentationClass/{name}.png", png)
            self._write(f"SegmentationObject/{name}.png", png)
            self.names.append(name)
            self.owner[name] = video.video_id

    def finish(self, storage: Storage, rel: str) -> dict[str, Any]:
        try:
            self._write("labelmap.txt", labelmap_text(self.category).encode("utf-8"))
            self._write("ImageSets/Segmentation/default.txt", "".join(f"{n}\n" for n in self.names).encode())
            self.zip.close()
            storage.upload_file(self.path, rel)
        finally:
            self.abort()
        return {"url": storage.join(rel), "images": len(self.names)}

    def abort(self) -> None:
        try:
            self.zip.close()
        finally:
            if os.path.exists(self.path):
                os.remove(self.path)

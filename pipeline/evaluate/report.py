"""``report.html``: the evaluation as a page a person opens, beside evaluate's CSVs.

It holds the overall J&F, the per-sequence table (J&F cells coloured from red, 0, to green, 1), the per-sequence
plot, and for each sequence its worst frames (lowest (J + F) / 2 among the frames the protocol scores): the
prediction (red) and the ground truth (green) over the frame, side by side. Frame images come from a DAVIS root's
``JPEGImages/<resolution>/<sequence>/`` (or ``--frames``); where none is found the masks are drawn over black and
the page says so. Every image is embedded as a data URI: the one file is the whole report, with no server.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import posixpath
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.evaluate.dataset import SequenceResult
from pipeline.imaging import decode_rgb
from pipeline.masks import MaskError, read_mask
from pipeline.metrics import protocol_slices
from pipeline.storage import Storage, StorageError, open_storage
from pipeline.templates import render

log = logging.getLogger(__name__)

__all__ = [
    "PRED_RGB",
    "GT_RGB",
    "REPORT_FILE",
    "jf_colour",
    "resolve_frames_root",
    "side_by_side",
    "write_report",
]

REPORT_FILE = "report.html"
PRED_RGB = (230, 40, 40)
"""Tint of the predicted mask."""
GT_RGB = (40, 200, 40)
"""Tint of the ground-truth mask."""
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Frame image files looked for, by stem (the ground truth's frame names)."""
_PANEL_HEIGHT = (120, 240)  # small frames are enlarged, large ones reduced, to a height in this range


def resolve_frames_root(gt_url: str, frames: str = "") -> Storage | None:
    """The folder of ``<sequence>/<frame>.jpg`` images: ``frames`` when given, else derived from a DAVIS ground
    truth (``<root>/JPEGImages/480p`` for ``<root>``, ``<root>/Annotations/480p`` or ``<root>/Annotations``), else
    None."""
    if frames:
        return open_storage(frames)
    url = gt_url.rstrip("/")
    for tail in ("/Annotations/480p", "/Annotations/Full-Resolution", "/Annotations"):
        if url.endswith(tail):
            images = url[: -len(tail)] + tail.replace("Annotations", "JPEGImages")
            storage = open_storage(images)
            return storage if storage.isdir() else None
    root = open_storage(url)
    for layout in ("JPEGImages/480p", "JPEGImages"):
        if root.isdir(layout):
            return root.child(layout)
    return None


def jf_colour(value: float) -> str:
    """CSS colour of a J&F cell: red at 0, yellow at 0.5, green at 1; grey when not scored."""
    if value is None or math.isnan(value):
        return "#dddddd"
    return f"hsl({120 * min(max(value, 0.0), 1.0):.0f}, 75%, 72%)"


def _tint(frame: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    import cv2

    out = frame.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array(rgb, np.float32)
    outline = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[outline] = rgb
    return out.astype(np.uint8)


def side_by_side(frame: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The frame with the prediction tinted red | a white gap | the frame with the ground truth tinted green,
    scaled to a height in 120-240 px."""
    import cv2

    height, width = gt.shape
    gap = np.full((height, max(2, width // 50), 3), 255, np.uint8)
    picture = np.concatenate([_tint(frame, pred, PRED_RGB), gap, _tint(frame, gt, GT_RGB)], axis=1)
    low, high = _PANEL_HEIGHT
    if height < low:
        scale = math.ceil(low / height)
        return np.repeat(np.repeat(picture, scale, 0), scale, 1)
    if height > high:
        size = (round(picture.shape[1] * high / height), high)
        return cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    return picture


def _data_uri(image: np.ndarray | bytes, fmt: str = "JPEG") -> str:
    if isinstance(image, bytes):
        return "data:image/png;base64," + base64.b64encode(image).decode("ascii")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=88)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _frame_files(frames: Storage | None, sequence: str) -> dict[str, str]:
    if frames is None:
        return {}
    try:
        names = frames.list(sequence)
    except StorageError:
        return {}
    found: dict[str, str] = {}
    for name in names:
        stem, ext = posixpath.splitext(name)
        if ext.lower() in FRAME_SUFFIXES and stem not in found:
            found[stem] = f"{sequence}/{name}"
    return found


def _worst_frames(result: SequenceResult, protocol: str, count: int) -> list[tuple[str, float, float]]:
    frames = result.frames
    if protocol in ("davis2016", "all", "hmhi_official"):
        frames = frames[protocol_slices(protocol)[0]] or frames
    scored = [f for f in frames if not (math.isnan(f[1]) or math.isnan(f[2]))]
    return sorted(scored, key=lambda f: ((f[1] + f[2]) / 2, f[0]))[:count]


@dataclass
class _Frame:
    """One worst frame of a sequence on the page: a note, a picture, or both."""

    stem: str
    note: str = ""
    """Said above the picture (or instead of it): why the frame is drawn over black or not drawn."""
    picture: str = ""
    """Data URI of the prediction | ground truth picture ("" when there is none to show)."""
    j: float = math.nan
    f: float = math.nan
    predicted: bool = True
    """False when the frame had no prediction (scored as empty)."""


@dataclass
class _Section:
    """A sequence's worst frames."""

    sequence: str
    jf: float
    no_images_in: str = ""
    """Where frame images were looked for and none found ("" when they were found)."""
    frames: list[_Frame] = field(default_factory=list)


def _worst_frame(
    stem: str,
    j: float,
    f: float,
    gt: Storage,
    gt_files: Mapping[str, str],
    pred: Storage,
    pred_files: Mapping[str, str],
    frames: Storage | None,
    images: Mapping[str, str],
    threshold: float | None,
) -> _Frame:
    """Read one frame's ground truth, prediction and image and draw them side by side."""
    try:
        gt_mask = read_mask(gt.read_bytes(gt_files[stem]), name=gt.join(gt_files[stem]))
    except (MaskError, StorageError, OSError, KeyError) as err:
        return _Frame(stem, note=f"ground truth unreadable: {err}")
    pred_mask = np.zeros_like(gt_mask)
    if stem in pred_files:
        try:
            pred_mask = read_mask(pred.read_bytes(pred_files[stem]), threshold=threshold)
        except (MaskError, StorageError, OSError):
            pass  # scored as empty too; evaluate's warnings name the file
    if pred_mask.shape != gt_mask.shape:
        import cv2

        pred_mask = (
            cv2.resize(pred_mask.astype(np.uint8), gt_mask.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        )
    frame = np.zeros((*gt_mask.shape, 3), np.uint8)
    note = ""
    if frames is not None and stem in images:
        try:
            url = frames.join(images[stem])  # decoded only within the pixel limit (pipeline.imaging)
            picture = Image.fromarray(decode_rgb(frames.read_bytes(images[stem]), f"frame {url}", "pil"))
            if picture.size != gt_mask.shape[::-1]:
                picture = picture.resize(gt_mask.shape[::-1])
            frame = np.asarray(picture)
        except (OSError, StorageError, ValueError) as err:
            log.warning("report: frame %s unreadable (%s); drawn over black", frames.join(images[stem]), err)
    elif images:
        note = "no image; drawn over black."
    return _Frame(
        stem,
        note=note,
        picture=_data_uri(side_by_side(frame, pred_mask, gt_mask)),
        j=j,
        f=f,
        predicted=stem in pred_files,
    )


def _sequence_section(
    result: SequenceResult,
    protocol: str,
    count: int,
    gt: Storage,
    gt_files: Mapping[str, str],
    pred: Storage,
    pred_files: Mapping[str, str],
    frames: Storage | None,
    threshold: float | None,
) -> _Section:
    images = _frame_files(frames, result.sequence)
    section = _Section(result.sequence, result.metrics["JF_mean"])
    if not images:
        section.no_images_in = frames.join(result.sequence) if frames is not None else "(no frames folder)"
    for stem, j, f in _worst_frames(result, protocol, count):
        section.frames.append(
            _worst_frame(stem, j, f, gt, gt_files, pred, pred_files, frames, images, threshold)
        )
    return section


def write_report(
    output: Storage,
    results: Sequence[SequenceResult],
    summary: Mapping[str, Any],
    *,
    gt: Storage,
    gt_frames: Mapping[str, Mapping[str, str]],
    pred: Storage,
    pred_frames: Mapping[str, Mapping[str, str]],
    frames: Storage | None = None,
    plot_png: bytes | None = None,
    worst_frames: int = 3,
    max_sequences: int = 100,
    rejected: Mapping[str, str] | None = None,
    threads: int = 8,
) -> str:
    """Write ``report.html`` to ``output``; returns its URL.

    ``results`` are the scored sequences and ``summary`` evaluate's summary (J/F/J&F means, protocol, threshold,
    n_sequences, n_frames); ``gt``/``pred`` the roots and ``gt_frames``/``pred_frames`` their
    ``{sequence: {stem: rel}}`` listings; ``frames`` the root of the frame images (None: masks over black);
    ``plot_png`` the per-sequence plot; ``worst_frames`` frames shown per sequence, for at most ``max_sequences``
    sequences (the lowest J&F ones when there are more: every picture is embedded, so this bounds the page's size);
    ``rejected`` sequences that could not be scored, with reasons. ``threads`` read the frames and masks.
    The page is ``pipeline/templates/report.html.j2``.
    """
    protocol = str(summary.get("protocol", "davis2016"))
    threshold = summary.get("threshold")
    ordered = sorted(results, key=lambda r: r.sequence)
    shown = ordered
    if len(shown) > max_sequences:

        def jf(r: SequenceResult) -> float:
            value = r.metrics["JF_mean"]
            return math.inf if math.isnan(value) else value

        shown = sorted(
            sorted(shown, key=lambda r: (jf(r), r.sequence))[:max_sequences], key=lambda r: r.sequence
        )

    def section(r: SequenceResult) -> _Section:
        return _sequence_section(
            r,
            protocol,
            worst_frames,
            gt,
            gt_frames.get(r.sequence, {}),
            pred,
            pred_frames.get(r.sequence, {}),
            frames,
            threshold,
        )

    with ThreadPoolExecutor(max(1, threads)) as pool:  # storage reads dominate: overlap them
        sections = list(pool.map(section, shown))
    page = render(
        "report.html.j2",
        summary=summary,
        n_sequences=summary.get("n_sequences", len(results)),
        n_frames=summary.get("n_frames", "?"),
        protocol=protocol,
        threshold=threshold,
        pred_url=str(summary.get("pred", pred.url)),
        gt_url=str(summary.get("gt", gt.url)),
        results=ordered,
        jf_colour=jf_colour,
        plot=_data_uri(plot_png) if plot_png else "",
        rejected=sorted((rejected or {}).items()),
        worst_frames=worst_frames,
        frames_url=frames.url if frames is not None else "",
        shown_of=(len(shown), len(results)) if len(shown) < len(results) else None,
        sections=sections,
    )
    output.write_text(REPORT_FILE, page)
    return output.join(REPORT_FILE)

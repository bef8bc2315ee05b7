"""Corpus layouts: find the videos, their frames, their masks and their splits from one recursive listing.

Each format is a function ``(files, cfg) -> list[VideoRecord]`` registered under its name; ``detect_format`` picks
one from the listing. Working on a listing (not on the filesystem) makes local paths and S3 prefixes behave the same
and costs one paginated LIST on S3.

Layouts (paths relative to ``--input``):

- ``davis2016``: ``JPEGImages/480p/<seq>/00000.jpg``, ``Annotations/480p/<seq>/00000.png`` (0/255), splits from
  ``ImageSets/480p/{train,val}.txt`` (DAVIS-2016 "frame mask" lines) or ``ImageSets/2016/{train,val}.txt`` (names).
- ``davis2017``: the same folders with palette masks (all objects are merged into one foreground), splits from
  ``ImageSets/2017/{train,val,test-dev,test-challenge}.txt``.
- ``ytvos``: ``{train,valid,test}/JPEGImages/<vid>/*.jpg`` with palette ``Annotations`` on a 5-frame stride.
- ``fbms``: ``{Trainingset,Testset}/<seq>/*.jpg`` with sparse ``<seq>/GroundTruth/*`` masks matched by frame number.
- ``hmhi``: the official HMHI-Net layout ``{train,val}/frame/<vid>/*.jpg`` and ``{train,val}/mask/<vid>/*.png``
  (its ``flow/`` pictures are ignored: flow is recomputed with a recorded engine).
- ``frames``: every folder that directly holds images is a video (no masks).
- ``videos``: every video file (mp4, mov, avi, mkv, webm); optional masks in ``Annotations/<stem>/<index>.png``.

Splits are ``train``, ``val`` and ``test``; the dataset's own split name is kept as ``source_split``. Every split a
benchmark reports results on is ``test``: DAVIS ``val`` (the split UVOS papers report), the HMHI layout's ``val``,
YouTube-VOS ``valid``/``test``, FBMS ``Testset``. A validation split for model selection must be disjoint from every
test set, so it never comes from these: ``--val-fraction`` carves it, deterministically, out of ``train``.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.jobs import UserError
from pipeline.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "IngestError",
    "VideoRecord",
    "detect_format",
    "discover_videos",
    "natural_key",
    "safe_name",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".gif")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class IngestError(UserError, ValueError):
    """The input corpus cannot be read as the requested format (names the URL and what is missing)."""


@dataclass
class VideoRecord:
    """One input video: where its frames and masks are, and its split. JSON-friendly (travels in Ray rows)."""

    video_id: str
    """Unique, sanitised id ([A-Za-z0-9_-]); used in sample keys and shard member names."""
    name: str
    """The video's name in the corpus, as found (may contain spaces, non-ASCII, ...)."""
    format: str
    """Corpus format it was found by."""
    split: str
    """train / val / test."""
    source_split: str
    """The dataset's own split name (e.g. DAVIS 'val', YouTube-VOS 'valid')."""
    kind: str
    """'frames' (a folder of images) or 'video' (one video file)."""
    source: str
    """Path of the frame folder or the video file, relative to the input root."""
    frames: list[str] = field(default_factory=list)
    """Frame files relative to the input root, in temporal order (kind 'frames' only)."""
    masks: dict[int, str] = field(default_factory=dict)
    """Frame index -> mask file relative to the input root, for annotated frames."""
    flows: list[str] = field(default_factory=list)
    """Flow pictures shipped with the corpus (the official archives' ``flow/`` or ``Flows/`` folder): one file per
    frame, relative to the input root, aligned with ``frames``; empty when the corpus ships none."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["masks"] = {str(k): v for k, v in self.masks.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoRecord:
        d = dict(d)
        d["masks"] = {int(k): v for k, v in (d.get("masks") or {}).items()}
        d["frames"] = list(d.get("frames") or [])
        d["flows"] = list(d.get("flows") or [])
        return cls(**d)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(name: str, max_len: int = 80) -> str:
    """A name safe as a path component and a WebDataset key: only [A-Za-z0-9_-], no dots.

    Names that change (spaces, non-ASCII, ``../``, dots) get a short hash of the original appended, so that two
    different names never collide after sanitising.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    clean = _UNSAFE.sub("_", ascii_name).strip("_-")[:max_len]
    if clean == name and clean:
        return clean
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{clean}-{digest}" if clean else f"video-{digest}"


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders 'f2' before 'f10'."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(name))


def _frame_number(stem: str) -> int | None:
    """The last integer in a file stem ('cars1_020_gt' -> 20)."""
    stem = re.sub(r"_?gt$", "", stem, flags=re.IGNORECASE)
    nums = _DIGITS.findall(stem)
    return int(nums[-1]) if nums else None


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(path).startswith(".")


def _is_mask(path: str) -> bool:
    return path.lower().endswith(MASK_EXTENSIONS) and not posixpath.basename(path).startswith(".")


def _group_by_parent(files: Iterable[str], under: str, pred: Callable[[str], bool]) -> dict[str, list[str]]:
    """{video name: [files]} for files exactly one folder below ``under`` (``under/<name>/<file>``)."""
    prefix = under.rstrip("/") + "/" if under else ""
    out: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if not f.startswith(prefix):
            continue
        parts = f[len(prefix):].split("/")
        if len(parts) == 2 and pred(parts[1]):
            out[parts[0]].append(f)
    for v in out.values():
        v.sort(key=lambda p: natural_key(posixpath.basename(p)))
    return out


def _masks_by_stem(frames: list[str], masks: list[str]) -> dict[int, str]:
    index = {_stem(f): i for i, f in enumerate(frames)}
    out = {}
    for m in masks:
        i = index.get(_stem(m))
        if i is None:
            log.warning("mask %s has no frame with the same name; ignored", m)
            continue
        out[i] = m
    return out


def _masks_by_number(frames: list[str], masks: list[str]) -> dict[int, str]:
    index = {}
    for i, f in enumerate(frames):
        n = _frame_number(_stem(f))
        if n is not None:
            index.setdefault(n, i)
    out = {}
    for m in masks:
        n = _frame_number(_stem(m))
        if n is None or n not in index:
            log.warning("mask %s matches no frame number; ignored", m)
            continue
        out[index[n]] = m
    return out


class _Records:
    """Builds records with unique sanitised ids."""

    def __init__(self):
        self.records: list[VideoRecord] = []
        self._ids: set[str] = set()

    def add(self, id_base: str | None = None, **kw: Any) -> None:
        vid = safe_name(id_base if id_base is not None else kw["name"])
        if vid in self._ids:  # the same name in two splits/folders
            vid = f"{vid}-{hashlib.sha1(kw['source'].encode()).hexdigest()[:8]}"
        self._ids.add(vid)
        self.records.append(VideoRecord(video_id=vid, **kw))


def _read_lines(read_text: Callable[[str], str], rel: str) -> list[str]:
    return [ln.strip() for ln in read_text(rel).splitlines() if ln.strip()]


# -- formats ------------------------------------------------------------------------------------------------------

def _davis(files: list[str], read_text, cfg, fmt: str) -> list[VideoRecord]:
    res = cfg.davis_resolution
    frames_by_video = _group_by_parent(files, f"JPEGImages/{res}", _is_image)
    if not frames_by_video:
        raise IngestError(f"no frames under JPEGImages/{res}/<sequence>/ (format {fmt})")
    masks_by_video = _group_by_parent(files, f"Annotations/{res}", _is_mask)
    split_of: dict[str, str] = {}
    fileset = set(files)
    if fmt == "davis2017":
        candidates = [("ImageSets/2017/train.txt", "train"), ("ImageSets/2017/val.txt", "val"),
                      ("ImageSets/2017/test-dev.txt", "test-dev"), ("ImageSets/2017/test-challenge.txt",
                                                                      "test-challenge")]
    else:
        candidates = [(f"ImageSets/{res}/train.txt", "train"), (f"ImageSets/{res}/val.txt", "val"),
                      ("ImageSets/2016/train.txt", "train"), ("ImageSets/2016/val.txt", "val")]
    for rel, split in candidates:
        if rel not in fileset:
            continue
        for line in _read_lines(read_text, rel):
            # DAVIS-2016 lines are "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png";
            # other split files hold one sequence name per line (names may contain spaces).
            first = re.split(r"\s+(?=/)", line)[0]
            parts = first.strip("/").split("/")
            name = parts[2] if len(parts) >= 4 and parts[0] == "JPEGImages" else line
            split_of.setdefault(name, split)
    recs = _Records()
    for name in sorted(frames_by_video, key=natural_key):
        frames = frames_by_video[name]
        source_split = split_of.get(name, "train" if not split_of else "unlisted")
        if source_split == "unlisted":
            log.warning("sequence %r is in no ImageSets split file; treated as train", name)
            source_split = "train"
        split = "train" if source_split == "train" else "test"  # DAVIS val is the reported test set
        recs.add(name=name, format=fmt, split=split, source_split=source_split, kind="frames",
                 source=f"JPEGImages/{res}/{name}", frames=frames,
                 masks=_masks_by_stem(frames, masks_by_video.get(name, [])))
    return recs.records


def _ytvos(files: list[str], read_text, cfg) -> list[VideoRecord]:
    recs = _Records()
    found = False
    for source_split, split in (("train", "train"), ("train_all_frames", "train"), ("valid", "test"),
                                ("valid_all_frames", "test"), ("test", "test"), ("test_all_frames", "test")):
        frames_by_video = _group_by_parent(files, f"{source_split}/JPEGImages", _is_image)
        masks_by_video = _group_by_parent(files, f"{source_split}/Annotations", _is_mask)
        for name in sorted(frames_by_video, key=natural_key):
            found = True
            frames = frames_by_video[name]
            recs.add(name=name, format="ytvos", split=split, source_split=source_split, kind="frames",
                     source=f"{source_split}/JPEGImages/{name}", frames=frames,
                     masks=_masks_by_stem(frames, masks_by_video.get(name, [])))
    if not found:
        raise IngestError("no frames under {train,valid,test}/JPEGImages/<video>/ (format ytvos)")
    return recs.records


def _fbms(files: list[str], read_text, cfg) -> list[VideoRecord]:
    recs = _Records()
    for source_split, split in (("Trainingset", "train"), ("Testset", "test")):
        frames_by_video = _group_by_parent(files, source_split, _is_image)
        for name in sorted(frames_by_video, key=natural_key):
            frames = frames_by_video[name]
            gt = _group_by_parent(files, f"{source_split}/{name}", _is_mask).get("GroundTruth", [])
            recs.add(name=name, format="fbms", split=split, source_split=source_split, kind="frames",
                     source=f"{source_split}/{name}", frames=frames, masks=_masks_by_number(frames, gt))
    if not recs.records:
        raise IngestError("no frames under {Trainingset,Testset}/<sequence>/ (format fbms)")
    return recs.records


def _hmhi(files: list[str], read_text, cfg) -> list[VideoRecord]:
    recs = _Records()
    for split in ("train", "val", "test"):
        frames_by_video = _group_by_parent(files, f"{split}/frame", _is_image)
        masks_by_video = _group_by_parent(files, f"{split}/mask", _is_mask)
        for name in sorted(frames_by_video, key=natural_key):
            frames = frames_by_video[name]
            recs.add(name=name, format="hmhi", split="train" if split == "train" else "test", source_split=split,
                     kind="frames",
                     source=f"{split}/frame/{name}", frames=frames,
                     masks=_masks_by_stem(frames, masks_by_video.get(name, [])))
    if not recs.records:
        raise IngestError("no frames under {train,val}/frame/<video>/ (format hmhi)")
    return recs.records


def _frames(files: list[str], read_text, cfg) -> list[VideoRecord]:
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if _is_image(f) and "/" in f:
            by_dir[posixpath.dirname(f)].append(f)
    recs = _Records()
    for folder in sorted(by_dir, key=natural_key):
        frames = sorted(by_dir[folder], key=lambda p: natural_key(posixpath.basename(p)))
        recs.add(name=folder, format="frames", split="train", source_split="", kind="frames", source=folder,
                 frames=frames)
    if not recs.records:
        raise IngestError("no folders of images found (format frames)")
    return recs.records


def _videos(files: list[str], read_text, cfg) -> list[VideoRecord]:
    masks_by_video = _group_by_parent(files, "Annotations", _is_mask)
    recs = _Records()
    for f in sorted((f for f in files if f.lower().endswith(VIDEO_EXTENSIONS)), key=natural_key):
        stem = posixpath.splitext(f)[0]
        masks = {}
        for m in masks_by_video.get(posixpath.basename(stem), []):
            n = _frame_number(_stem(m))
            if n is not None:
                masks[n] = m
        recs.add(id_base=stem.replace("/", "__"), name=stem, format="videos", split="train", source_split="", kind="video", source=f,
                 masks=masks)
    if not recs.records:
        raise IngestError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found (format videos)")
    return recs.records


FORMATS: dict[str, Callable[..., list[VideoRecord]]] = {
    "davis2016": lambda files, read_text, cfg: _davis(files, read_text, cfg, "davis2016"),
    "davis2017": lambda files, read_text, cfg: _davis(files, read_text, cfg, "davis2017"),
    "ytvos": _ytvos,
    "fbms": _fbms,
    "hmhi": _hmhi,
    "frames": _frames,
    "videos": _videos,
}
"""Format name -> reader; ``auto`` picks one with :func:`detect_format`."""


def detect_format(files: list[str], davis_resolution: str = "480p") -> str:
    """Guess the corpus format from a recursive listing (relative paths)."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    second = {"/".join(f.split("/", 2)[:2]) for f in files if f.count("/") >= 2}
    if any(f"{s}/frame" in second for s in ("train", "val", "test")):
        return "hmhi"
    if f"JPEGImages/{davis_resolution}" in second:
        return "davis2017" if any(f.startswith("ImageSets/2017/") for f in files) else "davis2016"
    if any(f"{s}/JPEGImages" in second for s in ("train", "valid", "test", "train_all_frames")):
        return "ytvos"
    if "Trainingset" in tops or "Testset" in tops:
        return "fbms"
    if any(f.lower().endswith(VIDEO_EXTENSIONS) for f in files):
        return "videos"
    if any(_is_image(f) and "/" in f for f in files):
        return "frames"
    raise IngestError("cannot detect the corpus format: no known layout, video files or frame folders found")


def discover_videos(files: list[str], read_text: Callable[[str], str], fmt: str, cfg) -> tuple[str, list[VideoRecord]]:
    """(format, records) for a listing; ``fmt`` may be ``auto``. ``cfg`` needs ``davis_resolution``."""
    if fmt == "auto":
        fmt = detect_format(files, cfg.davis_resolution)
        log.info("detected corpus format: %s", fmt)
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose auto or one of {sorted(FORMATS)}")
    return fmt, FORMATS[fmt](files, read_text, cfg)

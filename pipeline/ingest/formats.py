"""Corpus layouts: find the videos, their frames, their masks, their flow pictures and their splits from one
recursive listing.

Each format is a function ``(files, read_text, cfg) -> list[VideoRecord]`` registered under its name;
``detect_format`` picks one from the listing. Working on a listing (not on the filesystem) makes local paths and S3
prefixes behave the same and costs one paginated LIST on S3. Each layout below is the one its public readers use
(cited); ``tests/pipeline/test_ingest.py`` writes a miniature of each exactly so.

Layouts (paths relative to ``--input``):

- ``hmhi``: the official HMHI-Net archives. The code's naming (ZhengxyFlow/HMHI-Net ``utils/dataloader.py``:
  ``os.path.join(root, 'frame', mode)``, flow and mask paths by replacing ``frame`` in the frame path)
  ``{frame,flow,mask}/<split>/<video>/``, and its README's ``{Images,Flows,Annotations}/<split>/<video>/``.
  Frames ``*.jpg``; flow pictures with the *same file name* as the frame (one per frame, the last one too) fill
  :attr:`VideoRecord.flows`; masks ``<frame stem>.png`` (0/255). On the sparse sets (FBMS, YouTube-Objects) the
  archives hold the annotated frames only, so the memory steps over those (as the official inference does).
- ``davis2016``: DAVIS-2016 as distributed (fperazzi/davis, the official DAVIS-2016 package, ``data/get_davis.sh``):
  ``JPEGImages/480p/<seq>/00000.jpg``, ``Annotations/480p/<seq>/00000.png`` (0/255), splits from
  ``ImageSets/480p/{train,val}.txt`` whose lines are ``/JPEGImages/480p/bear/00000.jpg
  /Annotations/480p/bear/00000.png`` path pairs (``trainval.txt`` is their union and adds nothing; or
  ``ImageSets/2016/{train,val}.txt``, one name a line).
- ``davis2017``: the same folders with palette masks (all objects are merged into one foreground), splits from
  ``ImageSets/2017/{train,val,test-dev,test-challenge}.txt`` (davisvideochallenge/davis2017-evaluation).
- ``ytvos``: YouTube-VOS 2018/2019 (youtubevos starter code; ``{train,valid,test}/{JPEGImages,Annotations}/<vid>/``,
  ``meta.json`` beside them): palette masks, train annotated on every 5th frame of 30 fps (the frames it ships),
  valid on the first frame of each object. ``train_all_frames`` / ``valid_all_frames`` (the same videos at 30 fps)
  are ignored: taking them too would train on every training video twice.
- ``fbms``: FBMS-59 as distributed (lmb.informatik.uni-freiburg.de; read as ISCAS007/torchseg
  ``dataset/fbms_dataset.py`` does): ``{Trainingset,Testset}/<seq>/<seq>_NN.jpg`` (2-4 digits; ``tennis``:
  ``tennis000.jpg``) with masks on a few frames in ``<seq>/GroundTruth/``: ``*_gt.pgm`` (grey, black background) or
  ``*_gt.ppm`` (colour, *white* background; ``*PROB*`` files are not masks; UVOS cleaners, e.g.
  charigyang/motiongrouping ``tools/FBMS_clean.py``, use the same two rules), every object merged into one
  foreground (the UVOS protocol: tfzhou/MATNet issue 30). Each mask goes on the frame that ``<seq>/GroundTruth/
  <seq>Def.dat`` names for it (``Frame number``, 0-based in the shot, then ``File name``; alex-xun-xu/
  LearnSubspaceMoSeg ``Dataset/FBMS/collect_dataset.py`` ``LoadGT``), which holds where a ground-truth file's number
  is not its frame's; without a ``Def.dat`` a mask goes to the frame with the same number (zero padding aside).
- ``ytobj``: YouTube-Objects as the UVOS papers evaluate it (10 classes, sparse masks; suhwan-cho/TMO
  ``dataset/ytobj.py`` and ``dataset_loaders/ytobj.py``): either ``{JPEGImages,JPEGFlows,Annotations}/<class>/
  <video>/`` (masks and flow pictures named as the frames) or ``<class>/<video>/{JPEGImages,JPEGFlows,
  Annotations}/`` with every frame and ``NNNNN.png`` masks on the annotated ones, mask ``N`` annotating the N-th
  frame (TMO: ``valid_frames.append(int(name) - 1)``). The class is kept in :attr:`VideoRecord.category`.
- ``frames``: every folder that directly holds images is a video (no masks).
- ``videos``: every video file (mp4, mov, avi, mkv, webm); optional masks in ``Annotations/<stem>/<index>.png``.

Splits are ``train``, ``val`` and ``test``; the dataset's own split name is kept as ``source_split``. Every split a
benchmark reports results on is ``test``: DAVIS ``val`` (the split UVOS papers report), the HMHI layout's ``val``,
YouTube-VOS ``valid``/``test``, FBMS ``Testset``, all of YouTube-Objects. A validation split for model selection
must be disjoint from every test set, so it never comes from these: ``--val-fraction`` carves it,
deterministically, out of ``train``.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipeline.errors import UserError
from pipeline.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "IngestError",
    "VideoRecord",
    "YTOBJ_CLASSES",
    "detect_format",
    "detect_layout",
    "discover_videos",
    "mask_has_white_background",
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
    category: str = ""
    """The object class where the corpus names one (YouTube-Objects' class folder); empty otherwise."""

    def annotated_only(self) -> VideoRecord:
        """This video reduced to its annotated frames (with their flow pictures and masks), in order.

        The official archives of the sparse sets (FBMS, YouTube-Objects) hold only these frames, and the official
        inference steps the memory over them alone; this gives a full download (FBMS-59, YouTube-Objects with
        every frame) the same form. Video files (kind 'video') have no frame list and are returned unchanged.
        """
        if self.kind != "frames" or not self.masks:
            return self
        keep = sorted(i for i in self.masks if 0 <= i < len(self.frames))
        return replace(
            self,
            frames=[self.frames[i] for i in keep],
            flows=[self.flows[i] for i in keep] if self.flows else [],
            masks={k: self.masks[i] for k, i in enumerate(keep)},
        )

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
        parts = f[len(prefix) :].split("/")
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


def _flows_for(frames: list[str], flow_files: list[str], video: str) -> list[str]:
    """The flow picture of each frame (same stem, any image extension), or [] unless every frame has one."""
    if not flow_files:
        return []
    by_stem = {_stem(f): f for f in flow_files}
    flows = [by_stem.get(_stem(f)) for f in frames]
    missing = [f for f, flow in zip(frames, flows, strict=True) if flow is None]
    if missing:
        log.warning(
            "video %s: %d of %d frames have no flow picture (first: %s); its flow pictures are not used",
            video,
            len(missing),
            len(frames),
            missing[0],
        )
        return []
    return flows  # type: ignore[return-value]


def _davis(files: list[str], read_text, cfg, fmt: str) -> list[VideoRecord]:
    res = cfg.davis_resolution
    frames_by_video = _group_by_parent(files, f"JPEGImages/{res}", _is_image)
    if not frames_by_video:
        raise IngestError(f"no frames under JPEGImages/{res}/<sequence>/ (format {fmt})")
    masks_by_video = _group_by_parent(files, f"Annotations/{res}", _is_mask)
    split_of: dict[str, str] = {}
    fileset = set(files)
    if fmt == "davis2017":
        candidates = [
            ("ImageSets/2017/train.txt", "train"),
            ("ImageSets/2017/val.txt", "val"),
            ("ImageSets/2017/test-dev.txt", "test-dev"),
            ("ImageSets/2017/test-challenge.txt", "test-challenge"),
        ]
    else:
        candidates = [
            (f"ImageSets/{res}/train.txt", "train"),
            (f"ImageSets/{res}/val.txt", "val"),
            ("ImageSets/2016/train.txt", "train"),
            ("ImageSets/2016/val.txt", "val"),
        ]
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
        recs.add(
            name=name,
            format=fmt,
            split=split,
            source_split=source_split,
            kind="frames",
            source=f"JPEGImages/{res}/{name}",
            frames=frames,
            masks=_masks_by_stem(frames, masks_by_video.get(name, [])),
        )
    return recs.records


YTVOS_SPLITS: tuple[tuple[str, str], ...] = (("train", "train"), ("valid", "test"), ("test", "test"))
"""YouTube-VOS split folders read, and the split each becomes. Not ``*_all_frames``: the same videos at 30 fps."""


def _ytvos(files: list[str], read_text, cfg) -> list[VideoRecord]:
    recs = _Records()
    for source_split, split in YTVOS_SPLITS:
        frames_by_video = _group_by_parent(files, f"{source_split}/JPEGImages", _is_image)
        masks_by_video = _group_by_parent(files, f"{source_split}/Annotations", _is_mask)
        for name in sorted(frames_by_video, key=natural_key):
            frames = frames_by_video[name]
            recs.add(
                name=name,
                format="ytvos",
                split=split,
                source_split=source_split,
                kind="frames",
                source=f"{source_split}/JPEGImages/{name}",
                frames=frames,
                masks=_masks_by_stem(frames, masks_by_video.get(name, [])),
            )
    ignored = sorted({f.split("/", 1)[0] for f in files if f.split("/", 1)[0].endswith("_all_frames")})
    if ignored:
        log.info(
            "YouTube-VOS: %s ignored (the same videos at 30 fps as %s)",
            ", ".join(ignored),
            ", ".join(i.removesuffix("_all_frames") for i in ignored),
        )
    if not recs.records:
        raise IngestError(
            "no frames under {train,valid,test}/JPEGImages/<video>/ (format ytvos; "
            "*_all_frames folders are not read)"
        )
    return recs.records


def mask_has_white_background(rel: str) -> bool:
    """FBMS-59's colour ground truth (``GroundTruth/*.ppm``) paints the background white, its grey ``.pgm`` black."""
    return rel.lower().endswith(".ppm") and posixpath.basename(posixpath.dirname(rel)) == "GroundTruth"


FBMS_DEFINITION_SUFFIX = "Def.dat"
"""FBMS-59's ground-truth definition file, ``<seq>/GroundTruth/<seq>Def.dat``: which frame each mask annotates."""


def _fbms_definition(text: str, rel: str) -> list[tuple[int, str]]:
    """(frame index, ground-truth file name) pairs of an FBMS-59 ``<seq>Def.dat``.

    The file is a list of labelled blocks, each label on its own line and its value on the next: ``Total number of
    frames in this shot:``, ``Total number of labeled frames for this shot:``, then per annotated frame ``Frame
    number:`` (0-based index of the frame in the shot) and ``File name:`` (its file in ``GroundTruth/``), as
    alex-xun-xu/LearnSubspaceMoSeg ``Dataset/FBMS/collect_dataset.py`` (``LoadGT``) reads it. Raises
    ``ValueError`` naming ``rel`` and the line when a frame number is not an integer or a file name is missing.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    pairs: list[tuple[int, str]] = []
    frame: int | None = None
    for i, line in enumerate(lines):
        value = lines[i + 1] if i + 1 < len(lines) else ""
        if line.lower().startswith("frame number"):
            try:
                frame = int(value)
            except ValueError:
                raise ValueError(f"{rel} line {i + 2}: frame number {value!r} is not an integer") from None
        elif line.lower().startswith("file name"):
            if frame is None or not value:
                raise ValueError(f"{rel} line {i + 1}: 'File name' without a frame number or a file name")
            pairs.append((frame, value))
            frame = None
    return pairs


def _fbms_masks(
    frames: list[str],
    gt_files: list[str],
    video: str,
    read_text: Callable[[str], str],
    definition: str | None,
) -> dict[int, str]:
    """Frame index -> mask of an FBMS-59 sequence.

    With the sequence's ``Def.dat`` (as distributed), its frame numbers say which frame each ground-truth file
    annotates: that holds on every sequence, including those whose ground-truth file numbers are not the frame
    files' numbers (charigyang/motiongrouping ``tools/FBMS_clean.py`` assumes they are, renaming frame i to i+1 and
    each mask to its file's number; its pull request 19 reports the two then disagree). Without it (or when it
    cannot be read), a mask goes to the frame with the same number.
    """
    gt_files = [f for f in gt_files if "prob" not in _stem(f).lower()]  # *PROB_gt.ppm: not a mask
    if definition is not None:
        by_name = {posixpath.basename(f): f for f in gt_files}
        try:
            pairs = _fbms_definition(read_text(definition), definition)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            log.warning(
                "FBMS %s: %s cannot be read (%s); masks matched by frame number", video, definition, e
            )
        else:
            out: dict[int, str] = {}
            for index, name in pairs:
                if name not in by_name:
                    log.warning(
                        "FBMS %s: %s names %s, which is not in GroundTruth/; ignored", video, definition, name
                    )
                elif not 0 <= index < len(frames):
                    log.warning(
                        "FBMS %s: %s puts %s on frame %d, the sequence has %d frames; ignored",
                        video,
                        definition,
                        name,
                        index,
                        len(frames),
                    )
                else:
                    out[index] = by_name[name]
            if out:
                return out
            log.warning("FBMS %s: no usable entry in %s; masks matched by frame number", video, definition)
    by_number: dict[int, str] = {}
    for f in sorted(gt_files, key=lambda p: (natural_key(_stem(p)), not p.lower().endswith(".pgm"))):
        n = _frame_number(_stem(f))
        if n is not None:
            by_number.setdefault(n, f)  # one mask per frame number: a .pgm before a .ppm of the same frame
    return _masks_by_number(frames, list(by_number.values()))


def _fbms(files: list[str], read_text, cfg) -> list[VideoRecord]:
    recs = _Records()
    fileset = set(files)
    for source_split, split in (("Trainingset", "train"), ("Testset", "test")):
        frames_by_video = _group_by_parent(files, source_split, _is_image)
        for name in sorted(frames_by_video, key=natural_key):
            frames = frames_by_video[name]
            gt = _group_by_parent(files, f"{source_split}/{name}", _is_mask).get("GroundTruth", [])
            definition = f"{source_split}/{name}/GroundTruth/{name}{FBMS_DEFINITION_SUFFIX}"
            masks = _fbms_masks(frames, gt, name, read_text, definition if definition in fileset else None)
            recs.add(
                name=name,
                format="fbms",
                split=split,
                source_split=source_split,
                kind="frames",
                source=f"{source_split}/{name}",
                frames=frames,
                masks=masks,
            )
    if not recs.records:
        raise IngestError("no frames under {Trainingset,Testset}/<sequence>/ (format fbms)")
    return recs.records


YTOBJ_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bird",
    "boat",
    "car",
    "cat",
    "cow",
    "dog",
    "horse",
    "motorbike",
    "train",
)
"""The ten YouTube-Objects classes (the class folders of the UVOS archives)."""


def _ytobj_layout(files: list[str]) -> str | None:
    """'top' for {JPEGImages,Annotations}/<class>/<video>/, 'class' for <class>/<video>/JPEGImages/, else None."""
    for f in files:
        parts = f.split("/")
        if len(parts) == 4 and parts[0] == "JPEGImages" and parts[1] in YTOBJ_CLASSES:
            return "top"
        if len(parts) == 4 and parts[0] in YTOBJ_CLASSES and parts[2] == "JPEGImages":
            return "class"
    return None


def _ytobj(files: list[str], read_text, cfg) -> list[VideoRecord]:
    layout = _ytobj_layout(files)
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_dir[posixpath.dirname(f)].append(f)

    def listed(folder: str, pred: Callable[[str], bool]) -> list[str]:
        return sorted(
            (f for f in by_dir.get(folder, []) if pred(f)), key=lambda p: natural_key(posixpath.basename(p))
        )

    recs = _Records()
    for cls in YTOBJ_CLASSES:
        if layout == "top":
            videos = {
                f.split("/")[2] for f in files if f.startswith(f"JPEGImages/{cls}/") and f.count("/") == 3
            }
        else:
            videos = {
                f.split("/")[1]
                for f in files
                if f.startswith(f"{cls}/") and f.count("/") == 3 and f.split("/")[2] == "JPEGImages"
            }
        for video in sorted(videos, key=natural_key):
            folder = {
                kind: f"{kind}/{cls}/{video}" if layout == "top" else f"{cls}/{video}/{kind}"
                for kind in ("JPEGImages", "JPEGFlows", "Annotations")
            }
            frames = listed(folder["JPEGImages"], _is_image)
            masks = listed(folder["Annotations"], _is_mask)
            name = f"{cls}/{video}"
            if not frames:
                continue
            if layout == "top":
                annotated = _masks_by_stem(frames, masks)
            else:
                # Every frame is there and mask N annotates the N-th frame (1-based), whatever the frames' names.
                annotated = {}
                for m in masks:
                    n = _frame_number(_stem(m))
                    if n is None or not 1 <= n <= len(frames):
                        log.warning(
                            "YouTube-Objects %s: mask %s matches no frame (%d frames); ignored",
                            name,
                            m,
                            len(frames),
                        )
                        continue
                    annotated[n - 1] = m
            recs.add(
                id_base=f"{cls}_{video}",
                name=name,
                format="ytobj",
                split="test",
                source_split=cls,
                kind="frames",
                source=folder["JPEGImages"],
                frames=frames,
                masks=annotated,
                flows=_flows_for(frames, listed(folder["JPEGFlows"], _is_image), name),
                category=cls,
            )
    if not recs.records:
        raise IngestError(
            "no frames under JPEGImages/<class>/<video>/ or <class>/<video>/JPEGImages/ for the "
            f"YouTube-Objects classes {', '.join(YTOBJ_CLASSES)} (format ytobj)"
        )
    return recs.records


HMHI_NAMINGS: tuple[tuple[str, str, str], ...] = (
    ("frame", "flow", "mask"),
    ("Images", "Flows", "Annotations"),
)
"""(frames, flow pictures, masks) folder names of the official archives: the code's, then the README's."""


def _hmhi_naming(files: list[str]) -> tuple[str, str, str] | None:
    second = {"/".join(f.split("/", 2)[:2]) for f in files if f.count("/") >= 3}
    for naming in HMHI_NAMINGS:
        if any(f"{naming[0]}/{split}" in second for split in SPLITS):
            return naming
    return None


def _hmhi(files: list[str], read_text, cfg) -> list[VideoRecord]:
    naming = _hmhi_naming(files)
    if naming is None:
        raise IngestError("no frames under frame/<split>/<video>/ or Images/<split>/<video>/ (format hmhi)")
    frame_dir, flow_dir, mask_dir = naming
    recs = _Records()
    for split in SPLITS:
        frames_by_video = _group_by_parent(files, f"{frame_dir}/{split}", _is_image)
        masks_by_video = _group_by_parent(files, f"{mask_dir}/{split}", _is_mask)
        flows_by_video = _group_by_parent(files, f"{flow_dir}/{split}", _is_image)
        for name in sorted(frames_by_video, key=natural_key):
            frames = frames_by_video[name]
            recs.add(
                name=name,
                format="hmhi",
                split="train" if split == "train" else "test",
                source_split=split,
                kind="frames",
                source=f"{frame_dir}/{split}/{name}",
                frames=frames,
                masks=_masks_by_stem(frames, masks_by_video.get(name, [])),
                flows=_flows_for(frames, flows_by_video.get(name, []), name),
            )
    return recs.records


def _frames(files: list[str], read_text, cfg) -> list[VideoRecord]:
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if _is_image(f) and "/" in f:
            by_dir[posixpath.dirname(f)].append(f)
    recs = _Records()
    for folder in sorted(by_dir, key=natural_key):
        frames = sorted(by_dir[folder], key=lambda p: natural_key(posixpath.basename(p)))
        recs.add(
            name=folder,
            format="frames",
            split="train",
            source_split="",
            kind="frames",
            source=folder,
            frames=frames,
        )
    if not recs.records:
        raise IngestError("no folders of images found (format frames)")
    return recs.records


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def _videos(files: list[str], read_text, cfg) -> list[VideoRecord]:
    masks_by_video = _group_by_parent(files, "Annotations", _is_mask)
    recs = _Records()
    for f in sorted((f for f in files if _is_video(f)), key=natural_key):
        stem = posixpath.splitext(f)[0]
        masks = {}
        for m in masks_by_video.get(posixpath.basename(stem), []):
            n = _frame_number(_stem(m))
            if n is not None:
                masks[n] = m
        recs.add(
            id_base=stem.replace("/", "__"),
            name=stem,
            format="videos",
            split="train",
            source_split="",
            kind="video",
            source=f,
            masks=masks,
        )
    if not recs.records:
        raise IngestError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found (format videos)")
    return recs.records


FORMATS: dict[str, Callable[..., list[VideoRecord]]] = {
    "davis2016": lambda files, read_text, cfg: _davis(files, read_text, cfg, "davis2016"),
    "davis2017": lambda files, read_text, cfg: _davis(files, read_text, cfg, "davis2017"),
    "ytvos": _ytvos,
    "fbms": _fbms,
    "ytobj": _ytobj,
    "hmhi": _hmhi,
    "frames": _frames,
    "videos": _videos,
}
"""Format name -> reader; ``auto`` picks one with :func:`detect_format`."""


def detect_format(files: list[str], davis_resolution: str = "480p") -> str:
    """Guess the corpus format from a recursive listing (relative paths)."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    second = {"/".join(f.split("/", 2)[:2]) for f in files if f.count("/") >= 2}
    if _hmhi_naming(files):
        return "hmhi"
    if f"JPEGImages/{davis_resolution}" in second:
        return "davis2017" if any(f.startswith("ImageSets/2017/") for f in files) else "davis2016"
    if _ytobj_layout(files):
        return "ytobj"
    if any(
        f"{s}/JPEGImages" in second
        for s in ("train", "valid", "test", "train_all_frames", "valid_all_frames")
    ):
        return "ytvos"
    if "Trainingset" in tops or "Testset" in tops:
        return "fbms"
    if any(_is_video(f) for f in files):
        return "videos"
    nested = sorted(
        {f.split("/", 1)[0] for f in files if _hmhi_naming([f.split("/", 1)[1]] if "/" in f else [])}
    )
    if nested:
        # The official README keeps several archives side by side (data/DAVIS-16/Images/...): one root per run.
        raise IngestError(
            f"{', '.join(nested)} hold official HMHI-Net archives ({{frame,flow,mask}}/<split>/ or "
            "{Images,Flows,Annotations}/<split>/): give one of them as the input root"
        )
    if any(_is_image(f) and "/" in f for f in files):
        return "frames"
    raise IngestError("cannot detect the corpus format: no known layout, video files or frame folders found")


_FALLBACK_FORMATS = ("frames", "videos")


def _wrapper(files: list[str]) -> str | None:
    """The one folder every file is in (an archive unpacked into ``DAVIS/``), ignoring hidden and ``__MACOSX``."""
    kept = [f for f in files if not f.startswith((".", "__MACOSX/"))]
    tops = {f.split("/", 1)[0] for f in kept}
    return tops.pop() if len(tops) == 1 and kept and all("/" in f for f in kept) else None


def detect_layout(files: list[str], davis_resolution: str = "480p") -> tuple[str, str]:
    """(format, prefix): like :func:`detect_format`, and when the root holds a single folder with a known archive
    inside (a zip unpacked into ``DAVIS/``), that archive with ``prefix`` ``"DAVIS/"``."""
    try:
        fmt = detect_format(files, davis_resolution)
    except IngestError:
        fmt = None
    if fmt in _FALLBACK_FORMATS or fmt is None:
        top = _wrapper(files)
        if top is not None:
            inner = [f[len(top) + 1 :] for f in files if f.startswith(top + "/")]
            try:
                inner_fmt, inner_prefix = detect_layout(inner, davis_resolution)
            except IngestError:
                inner_fmt = None
            if inner_fmt is not None and inner_fmt not in _FALLBACK_FORMATS:
                return inner_fmt, f"{top}/{inner_prefix}"
    if fmt is None:
        detect_format(files, davis_resolution)  # raises the error that names what is missing
    return fmt, ""


def _prefixed(rec: VideoRecord, prefix: str) -> VideoRecord:
    return replace(
        rec,
        source=prefix + rec.source,
        frames=[prefix + f for f in rec.frames],
        masks={i: prefix + m for i, m in rec.masks.items()},
        flows=[prefix + f for f in rec.flows],
    )


def discover_videos(
    files: list[str], read_text: Callable[[str], str], fmt: str, cfg
) -> tuple[str, list[VideoRecord]]:
    """(format, records) for a listing; ``fmt`` may be ``auto``. ``cfg`` needs ``davis_resolution``.

    ``auto`` also looks inside a single top-level folder (:func:`detect_layout`); the records' paths stay relative
    to the listed root.
    """
    prefix = ""
    if fmt == "auto":
        fmt, prefix = detect_layout(files, cfg.davis_resolution)
        log.info("detected corpus format: %s%s", fmt, f" in {prefix}" if prefix else "")
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose auto or one of {sorted(FORMATS)}")
    if not prefix:
        return fmt, FORMATS[fmt](files, read_text, cfg)
    inner = [f[len(prefix) :] for f in files if f.startswith(prefix)]
    records = FORMATS[fmt](inner, lambda rel: read_text(prefix + rel), cfg)
    return fmt, [_prefixed(r, prefix) for r in records]

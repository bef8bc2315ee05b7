"""WebDataset shards of training clips: sample encoding/decoding, the shard writer and the index.

One sample = a run of consecutive frames of one video. Its tar members, contiguous and in sorted order (Ray
2.60 rejects non-contiguous samples and ``webdataset`` groups consecutive members only):

    <key>.flow.000.f16.zst float16 (H, W, 2) flow of frame 0 in pixels (dx, dy), little-endian, C order:
    ...                    forward t -> t+1, backward for the video's last frame; zstd-compressed (``zstd -d``,
                           then ``np.frombuffer(data, "<f2").reshape(H, W, 2)``), or ``.f16`` stored raw
    <key>.frame.000.jpg    RGB frames, JPEG
    ...
    <key>.mask.003.png     binary masks (DAVIS palette PNG), only for annotated frames
    <key>.meta.json        video_id, split, frame_indices, sizes, mask_valid, flow provenance, render version,
                           flow_crc32 (CRC-32 of each stored flow member: zstd frames carry no checksum)

    <key>.flowpic.000.jpg  instead of the flow members, when the flow source is the corpus's own flow pictures
    ...                    (``--flow-model pictures``): the picture file's bytes unchanged (``.jpg`` or ``.png``);
                           meta.json then has ``flow_source: "pictures"`` and no ``flow_crc32``

``key`` = ``<video_id>__<first frame index, 6 digits>`` (no dots: WebDataset splits member names at the first
dot). The flow job writes shards ``shards/<split>-<group>-<number, 4 digits>.tar`` below the output root, where
``<group>`` names the deterministic group of videos the shard was made from (the shard writer alone numbers them
``shards/<split>-<number, 6 digits>.tar``).

The index is a set of parts: ``index/<group>.parquet``, one small Parquet file per committed group of shards
(written once its shards are complete: the part is the commit marker), and ``index.parquet`` at the root, the
consolidation of parts (its metadata lists the parts it holds). :func:`read_index` returns their union: one row per
sample of every *committed* shard, with its byte offset, size and SHA-256, and the shard's size and SHA-256.
:func:`write_wids_index` also writes ``<split>.wids.json`` per split, the shard list of webdataset's indexed reader
(``wids.ShardListDataset("train.wids.json")``), with shard URLs relative to the output root.

Readers: :func:`decode_clip` takes one sample's raw member bytes keyed by member extension, which is what
``webdataset.WebDataset(urls)`` yields and what ``ray.data.read_webdataset(urls, decoder=None)`` rows hold
(both add ``__key__`` and ``__url__``; Ray fills members a row lacks with ``None``); :func:`read_samples` reads a
run of samples of one shard (:class:`ShardEntry`) by byte range, verifying the whole shard's SHA-256 on its first
read in a process.

What webdataset does here, and what it cannot:

- Parsing tar bytes into samples is webdataset's (:func:`iter_tar_samples` runs its ``tar_file_expander`` and
  ``group_by_keys``). The range to parse is this module's: :func:`read_samples` fetches only the byte range of a
  rank's block of samples, from the index's offsets, with one ranged GET, and resumes at a given sample after a
  failed read; ``webdataset.WebDataset`` opens a shard at its first byte and reads it to the end.
- Writing stays on :mod:`tarfile`, member for member what ``webdataset.TarWriter(f, encoder=False, user="",
  group="", mode=0o644, mtime=0)`` writes (a test compares the bytes), for three reasons. The ``webdataset``
  package imports torch (measured: +0.56 GB resident and ~10 s on the 2-core machine), and the processes that write
  shards, the flow job's Ray Data workers, never load torch otherwise (DIS flow runs without it). The index needs
  each sample's byte offset and size as the tar grows (``TarFile.offset`` before and after the sample;
  ``TarWriter.write`` returns only the payload size). And a shard is streamed to storage while it grows and
  committed under a deterministic group name only once complete, which ``webdataset.ShardWriter`` (pattern
  names, a new shard by count or size, no commit step) does not do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import UserError
from pipeline.imaging import check_image_header, check_pixels
from pipeline.masks import decode_mask_png, encode_mask_png
from pipeline.storage import (
    Storage,
    StorageNotFoundError,
    local_disk_full_errors,
    open_storage,
    open_url,
    url_sha256,
)

log = logging.getLogger(__name__)

__all__ = [
    "FLOW_PICTURES",
    "INDEX_NAME",
    "INDEX_PARTS_DIR",
    "INDEX_SCHEMA",
    "SAMPLE_VERSION",
    "SHARD_DIR",
    "ClipSample",
    "ShardChecksumError",
    "ShardEntry",
    "ShardWriter",
    "consolidate_index",
    "decode_clip",
    "decode_flow",
    "encode_clip",
    "empty_index",
    "index_part_name",
    "iter_tar_samples",
    "list_index_parts",
    "read_index",
    "read_index_parts",
    "read_samples",
    "sample_key",
    "shard_set_provenance",
    "shard_urls",
    "verify_shard",
    "write_index_part",
    "write_wids_index",
]

SAMPLE_VERSION = 2
"""Version of the sample layout above, stored in ``meta.json``. Version 1 kept all flows of a sample in one
zip-deflated ``flows.npz`` member; :func:`decode_clip` still reads it."""
INDEX_NAME = "index.parquet"
SETTINGS_NAME = "precompute_settings.json"
"""The flow job's record, at the shard set's root, of the settings its samples were made with (written by
``pipeline.dataset.job`` at its first run; read by :func:`shard_set_provenance`)."""
INDEX_PARTS_DIR = "index"
SHARD_DIR = "shards"
FLOW_PICTURES = "pictures"
"""``meta.json``'s ``flow_source`` (and the flow engine's name) of samples that carry the corpus's flow pictures."""
WIDS_SUFFIX = ".wids.json"
MAX_CLIP_FRAMES = 1000  # member names carry a 3-digit frame number


class ShardChecksumError(UserError, ValueError):
    """A shard's content does not match its recorded SHA-256 (names the shard)."""


@dataclass
class ClipSample:
    """One decoded sample: a run of consecutive frames of one video."""

    key: str
    video_id: str
    split: str
    frame_indices: list[int]
    """Index of each frame in its video."""
    frames: np.ndarray
    """(N, H, W, 3) uint8 RGB."""
    flows: np.ndarray | None
    """(N, H, W, 2) float16 as stored, pixels (dx, dy); render with ``pipeline.flow.render.flow_to_rgb``. None
    when the sample carries flow pictures instead (``flow_pictures``)."""
    masks: np.ndarray
    """(N, H, W) bool, all False where ``mask_valid`` is False."""
    mask_valid: np.ndarray
    """(N,) bool: frames with a ground-truth mask."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The sample's meta.json (flow provenance, render version, source names, sizes, ...)."""
    flow_pictures: np.ndarray | None = None
    """(N, h, w, 3) uint8 RGB: the corpus's own flow pictures (``meta["flow_source"] == "pictures"``), to be fed to
    the model as they are (no ``flow_to_rgb``); their size may differ from the frames'. None for computed flow."""

    def flow_images(self) -> np.ndarray:
        """What the model's flow input is made from: the flow pictures when the sample has them, else the
        float16 flows (which the caller renders with ``flow_to_rgb``)."""
        return self.flow_pictures if self.flow_pictures is not None else self.flows


def sample_key(video_id: str, first_frame: int) -> str:
    return f"{video_id}__{first_frame:06d}"


def _frame_ext(i: int) -> str:
    return f"frame.{i:03d}.jpg"


def _mask_ext(i: int) -> str:
    return f"mask.{i:03d}.png"


def _flow_ext(i: int, level: int) -> str:
    return f"flow.{i:03d}.f16.zst" if level > 0 else f"flow.{i:03d}.f16"


def _flowpic_ext(i: int, suffix: str) -> str:
    return f"flowpic.{i:03d}{suffix}"


PICTURE_SUFFIXES = (".jpg", ".png")
"""Flow picture files kept as they are; anything else (e.g. ``.jpeg``) is stored under the nearest of these."""


def picture_suffix(name: str) -> str:
    """The member suffix for a flow picture file name (``.jpg`` for JPEG names, ``.png`` for PNG)."""
    ext = os.path.splitext(name)[1].lower()
    if ext in (".jpg", ".jpeg"):
        return ".jpg"
    if ext == ".png":
        return ".png"
    raise ValueError(f"flow picture {name!r}: only JPEG or PNG pictures can be stored")


@functools.cache
def _zstd(level: int) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


def _encode_flow(flow: np.ndarray, level: int) -> bytes:
    raw = np.ascontiguousarray(flow, dtype="<f2").tobytes()
    # zstd level 1 (pyarrow's codec): ~3.5 ms and ~57% of raw per 480p frame, and ~1 ms to inflate; zip deflate
    # level 1 took ~16 ms and ~4.6 ms for 53%. Level 0 stores the raw float16 bytes.
    return _zstd(level).compress(raw, asbytes=True) if level > 0 else raw


def decode_flow(data: bytes, h: int, w: int, name: str, crc32: int | None = None) -> np.ndarray:
    """One flow member (``flow.NNN.f16.zst`` or ``.f16``) as a read-only (h, w, 2) float16 array; ``name`` is
    used in errors. With ``crc32`` (from meta.json), damaged bytes are an error rather than wrong flow."""
    if crc32 is not None and zlib.crc32(data) != crc32:
        raise ValueError(f"{name}: damaged flow data (CRC-32 mismatch)")
    size = h * w * 2 * 2
    try:
        raw = (
            _zstd(1).decompress(data, decompressed_size=size, asbytes=True) if name.endswith(".zst") else data
        )
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{name}: corrupt zstd flow data ({exc})") from exc
    if len(raw) != size:
        raise ValueError(f"{name}: {len(raw)} bytes of flow, expected {size} for {h}x{w}x2 float16")
    return np.frombuffer(raw, "<f2").reshape(h, w, 2)


def encode_clip(
    key: str,
    frames: np.ndarray,
    flows: np.ndarray | None,
    masks: np.ndarray,
    mask_valid: np.ndarray,
    meta: dict[str, Any],
    jpeg_quality: int = 90,
    flow_level: int = 1,
    flow_pictures: Sequence[tuple[str, bytes]] | None = None,
) -> dict[str, bytes]:
    """Encode one sample into member bytes keyed by extension (sorted), ready for a tar.

    ``flow_pictures`` (one ``(file name, bytes)`` per frame) replaces ``flows``: the pictures' bytes are stored
    unchanged as ``flowpic.NNN.jpg|png`` members and ``meta.json`` records ``flow_source: "pictures"``.
    """
    import cv2

    n = len(frames)
    if not 1 <= n <= MAX_CLIP_FRAMES:
        raise ValueError(f"sample {key}: {n} frames (1..{MAX_CLIP_FRAMES} allowed)")
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    flow_shape = (
        (len(flow_pictures),) if flow_pictures is not None else (None if flows is None else flows.shape)
    )
    expected_flow = (n,) if flow_pictures is not None else frames.shape[:3] + (2,)
    if flow_shape != expected_flow or masks.shape != frames.shape[:3] or mask_valid.shape != (n,):
        raise ValueError(
            f"sample {key}: shapes disagree: frames {frames.shape}, flows {flow_shape}, "
            f"masks {masks.shape}, mask_valid {mask_valid.shape}"
        )
    members: dict[str, bytes] = {}
    for i in range(n):
        if flow_pictures is not None:
            name, data = flow_pictures[i]
            members[_flowpic_ext(i, picture_suffix(name))] = bytes(data)
        else:
            members[_flow_ext(i, flow_level)] = _encode_flow(flows[i], flow_level)
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(frames[i][..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        )
        if not ok:
            raise ValueError(f"sample {key}: JPEG encoding of frame {i} failed")
        members[_frame_ext(i)] = buf.tobytes()
        if mask_valid[i]:
            members[_mask_ext(i)] = encode_mask_png(masks[i])
    meta = dict(
        meta,
        key=key,
        n_frames=n,
        height=int(frames.shape[1]),
        width=int(frames.shape[2]),
        mask_valid=[bool(v) for v in mask_valid],
        sample_version=SAMPLE_VERSION,
    )
    if flow_pictures is not None:
        meta["flow_source"] = FLOW_PICTURES
    else:
        meta["flow_crc32"] = [zlib.crc32(members[_flow_ext(i, flow_level)]) for i in range(n)]
    members["meta.json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return dict(sorted(members.items()))


def _present(sample: Mapping[str, Any], ext: str) -> bool:
    value = sample.get(ext)
    return not (
        value is None or (isinstance(value, float) and np.isnan(value))
    )  # Ray fills absent ones: NaN/None


def _member(sample: Mapping[str, Any], ext: str, key: str) -> bytes:
    value = sample.get(ext)
    if not _present(sample, ext):
        raise KeyError(f"sample {key}: member {ext!r} is missing")
    return value if isinstance(value, (bytes, bytearray, memoryview)) else bytes(value)


def decode_clip(sample: Mapping[str, Any], positions: Sequence[int] | None = None) -> ClipSample:
    """Decode one sample's raw members (keyed by member extension, e.g. ``"frame.000.jpg"``).

    ``positions`` (indices into the sample's frames, e.g. a training clip of 5) decodes only those frames, masks
    and flows; the result then holds just them, in the given order, with their ``frame_indices``.
    """
    import cv2

    meta_raw = sample.get("meta.json")
    if meta_raw is None:
        raise KeyError(f"sample {sample.get('__key__', '?')}: no meta.json member (not a hmhi-uvos sample?)")
    meta = dict(meta_raw) if isinstance(meta_raw, Mapping) else json.loads(bytes(meta_raw).decode("utf-8"))
    key = str(meta.get("key") or sample.get("__key__"))
    n = int(meta["n_frames"])
    h, w = int(meta["height"]), int(meta["width"])
    check_pixels(
        w, h, f"sample {key}"
    )  # before allocating the clip: the size comes from the sample's meta.json
    pos = list(range(n)) if positions is None else [int(p) for p in positions]
    if any(not 0 <= p < n for p in pos):
        raise IndexError(f"sample {key}: positions {pos} outside 0..{n - 1}")
    frames = np.empty((len(pos), h, w, 3), np.uint8)
    for j, i in enumerate(pos):
        data = _member(sample, _frame_ext(i), key)
        check_image_header(data, f"sample {key} frame {i}")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != (h, w):
            raise ValueError(f"sample {key}: frame {i} is corrupt or has the wrong size")
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=frames[j])
    if meta.get("flow_source") == FLOW_PICTURES:
        flows, pictures = None, _decode_pictures(sample, key, pos)
    else:
        flows, pictures = _decode_flows(sample, meta, key, n, h, w, pos, positions is None), None
    all_valid = np.asarray(meta["mask_valid"], bool)
    valid = all_valid[pos]
    masks = np.zeros((len(pos), h, w), bool)
    for j, i in enumerate(pos):
        if all_valid[i]:
            masks[j] = decode_mask_png(_member(sample, _mask_ext(i), key), name=f"{key}.{_mask_ext(i)}")
    indices = [int(i) for i in meta["frame_indices"]]
    return ClipSample(
        key=key,
        video_id=meta["video_id"],
        split=meta["split"],
        frame_indices=[indices[i] for i in pos],
        frames=frames,
        flows=flows,
        masks=masks,
        mask_valid=valid,
        meta=meta,
        flow_pictures=pictures,
    )


def _decode_pictures(sample: Mapping[str, Any], key: str, pos: list[int]) -> np.ndarray:
    """The flow pictures of frames ``pos`` as (len(pos), h, w, 3) uint8 RGB (all one size)."""
    import cv2

    out = None
    for j, i in enumerate(pos):
        ext = next(
            (_flowpic_ext(i, sfx) for sfx in PICTURE_SUFFIXES if _present(sample, _flowpic_ext(i, sfx))),
            _flowpic_ext(i, ".jpg"),
        )
        data = _member(sample, ext, key)
        check_image_header(data, f"sample {key} flow picture {ext}")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"sample {key}: flow picture {ext} is corrupt")
        if out is None:
            out = np.empty((len(pos),) + img.shape, np.uint8)
        elif img.shape != out.shape[1:]:
            raise ValueError(
                f"sample {key}: flow picture {ext} is {img.shape[1]}x{img.shape[0]}, the first one "
                f"{out.shape[2]}x{out.shape[1]}"
            )
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[j])
    return out if out is not None else np.zeros((0, 1, 1, 3), np.uint8)


def _decode_flows(
    sample: Mapping[str, Any],
    meta: dict[str, Any],
    key: str,
    n: int,
    h: int,
    w: int,
    pos: list[int],
    whole: bool,
) -> np.ndarray:
    # float16 as stored: numpy's float16 -> float32 conversion costs ~1 ms per 480p frame, and every consumer
    # (flow_to_rgb, augmentation) converts the few frames it uses anyway.
    flows = np.empty((len(pos), h, w, 2), np.float16)
    if int(meta.get("sample_version", 1)) < 2:  # one zip-deflated flows.npz member per sample
        with np.load(io.BytesIO(_member(sample, "flows.npz", key)), allow_pickle=False) as z:
            stored = z["flows"]
            if stored.shape != (n, h, w, 2):
                raise ValueError(f"sample {key}: flows are {stored.shape}, expected {(n, h, w, 2)}")
            flows[...] = stored if whole else stored[pos]
    else:
        crcs = meta.get("flow_crc32")
        for j, i in enumerate(pos):
            ext = _flow_ext(i, 1) if _present(sample, _flow_ext(i, 1)) else _flow_ext(i, 0)
            flows[j] = decode_flow(_member(sample, ext, key), h, w, f"{key}.{ext}", crcs[i] if crcs else None)
    return flows


# -- index --------------------------------------------------------------------------------------------------------

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("video_id", pa.string()),
        ("clip_index", pa.int32()),
        ("n_clips", pa.int32()),
        ("frame_indices", pa.list_(pa.int32())),
        ("n_frames", pa.int32()),
        ("n_masks", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("offset", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("shard_bytes", pa.int64()),
        ("shard_sha256", pa.string()),
    ]
)
"""One row per sample. ``offset``/``bytes``: where the sample's members lie in the shard; ``sha256``: of the
sample's members (name and data, in order); ``shard_*``: of the whole shard file."""


def empty_index() -> pa.Table:
    return INDEX_SCHEMA.empty_table()


_PARTS_KEY = b"hmhi.parts"
"""``index.parquet`` metadata: JSON list of the part names it consolidates."""
_VIDEOS_KEY = b"hmhi.videos"
"""An index part's metadata: JSON {video_id: facts} of the videos its group committed (for the manifest)."""
_WRITER_KEY = b"hmhi.writer"
"""An index part's metadata: the process (``host:ray-node-id:pid``) that wrote the part's shards."""


def _storage(url) -> Storage:
    return open_storage(url)


def index_part_name(group: str) -> str:
    """The index part of a group of shards (the group's commit marker)."""
    return f"{INDEX_PARTS_DIR}/{group}.parquet"


def write_index_part(
    storage,
    group: str,
    rows: Sequence[Mapping[str, Any]],
    videos: Mapping[str, Any] | None = None,
    writer: str | None = None,
) -> str:
    """Commit a group of complete shards: write its index rows as one small Parquet part (atomically; the part's
    existence is the commit). The cost does not depend on how many parts exist. Returns the part's name."""
    meta = {
        _VIDEOS_KEY: json.dumps(videos or {}, sort_keys=True).encode(),
        _WRITER_KEY: (writer or "").encode(),
    }
    table = pa.Table.from_pylist(list(rows), schema=INDEX_SCHEMA).replace_schema_metadata(meta)
    name = index_part_name(group)
    _storage(storage).write_parquet(name, table)
    return name


def list_index_parts(storage) -> list[str]:
    """Names of the committed index parts below the output root (one listing), sorted."""
    st = _storage(storage)
    if not st.isdir(INDEX_PARTS_DIR):
        return []
    return sorted(f"{INDEX_PARTS_DIR}/{n}" for n in st.list(INDEX_PARTS_DIR, suffix=".parquet"))


def _consolidated(st: Storage) -> tuple[pa.Table | None, set[str]]:
    """``index.parquet`` (or None) and the parts it holds (an index written before parts existed holds none)."""
    if not st.exists(INDEX_NAME):
        return None, set()
    table = st.read_parquet(INDEX_NAME)
    parts = json.loads((table.schema.metadata or {}).get(_PARTS_KEY, b"[]"))
    return table.replace_schema_metadata(None), set(parts)


def read_index_parts(url) -> tuple[pa.Table, dict[str, Any], dict[str, str]]:
    """The union of ``index.parquet`` and the parts it does not hold yet, with the video facts and the writer
    recorded by those parts: ``(index, {video_id: facts}, {part: writer})``. An output without any index gives
    an empty index."""
    st = _storage(url)
    consolidated, held = _consolidated(st)
    tables = [consolidated] if consolidated is not None else []
    videos: dict[str, Any] = {}
    writers: dict[str, str] = {}
    pending = [part for part in list_index_parts(st) if part not in held]
    # Small objects: on S3 the time is the round trips, so they are read concurrently (in name order).
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(pending)))) as pool:
        loaded = list(pool.map(st.read_parquet, pending))
    for part, table in zip(pending, loaded, strict=True):
        meta = table.schema.metadata or {}
        videos.update(json.loads(meta.get(_VIDEOS_KEY, b"{}")))
        writers[part] = meta.get(_WRITER_KEY, b"").decode()
        tables.append(table.replace_schema_metadata(None))
    index = pa.concat_tables([t.cast(INDEX_SCHEMA) for t in tables]) if tables else empty_index()
    return index, videos, writers


def read_index(url) -> pa.Table:
    """The index of the shards below ``url`` (the output root of the flow job; or an index file's URL): the
    union of ``index.parquet`` and the index parts not consolidated into it yet. Raises
    :class:`pipeline.storage.StorageNotFoundError` when there is no index at all."""
    st = _storage(url)
    if str(url).rstrip("/").endswith(".parquet"):
        parent, leaf = open_url(st.url)
        return parent.read_parquet(leaf).replace_schema_metadata(None)
    if not st.exists(INDEX_NAME) and not list_index_parts(st):
        raise StorageNotFoundError(
            f"{st.join(INDEX_NAME)}: no shard index (neither {INDEX_NAME} nor {INDEX_PARTS_DIR}/*.parquet)"
        )
    return read_index_parts(st)[0]


def consolidate_index(url) -> pa.Table:
    """Merge every index part into ``index.parquet`` (sorted by shard and offset) and rewrite the ``wids`` shard
    lists; nothing is written when ``index.parquet`` already holds every part (a rerun that did nothing). Parts
    stay: they are the commit markers resume reads. Returns the whole index."""
    st = _storage(url)
    parts = list_index_parts(st)
    _, held = _consolidated(st)
    index = read_index_parts(st)[0]
    if set(parts) <= held and st.exists(INDEX_NAME):
        return index
    index = index.sort_by([("shard", "ascending"), ("offset", "ascending")])
    meta = {_PARTS_KEY: json.dumps(sorted(held | set(parts))).encode()}
    st.write_parquet(INDEX_NAME, index.replace_schema_metadata(meta))
    write_wids_index(st, index)
    return index


def write_wids_index(url, index: pa.Table) -> list[str]:
    """Write ``<split>.wids.json`` per split: webdataset's indexed-reader shard list (``wids-shard-index-v1``)
    with shard URLs relative to the output root, sample counts and file sizes, so
    ``wids.ShardListDataset(root + "/train.wids.json")`` reads the shards without this package. Returns the names.
    """
    st = _storage(url)
    per_split: dict[str, dict[str, list[int]]] = {}
    for shard, split, size in zip(
        index.column("shard").to_pylist(),
        index.column("split").to_pylist(),
        index.column("shard_bytes").to_pylist(),
        strict=True,
    ):
        entry = per_split.setdefault(split, {}).setdefault(shard, [0, int(size)])
        entry[0] += 1
    names = []
    for split, shards in sorted(per_split.items()):
        doc = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": split,
            "shardlist": [
                {"url": shard, "nsamples": n, "filesize": size} for shard, (n, size) in sorted(shards.items())
            ],
        }
        names.append(f"{split}{WIDS_SUFFIX}")
        st.write_json(names[-1], doc)
    return names


def shard_urls(url, split: str | None = None) -> list[str]:
    """Full URLs of the committed shards below ``url`` (optionally of one split), from the index, sorted."""
    st = _storage(url)
    table = read_index(st)
    shards = table.column("shard").to_pylist()
    splits = table.column("split").to_pylist()
    return [
        st.join(s)
        for s in sorted({sh for sh, sp in zip(shards, splits, strict=True) if split is None or sp == split})
    ]


def verify_shard(url: str, checksum: str) -> None:
    """Raise :class:`ShardChecksumError` unless the file at ``url`` has SHA-256 ``checksum``."""
    actual = url_sha256(str(url))
    if actual != checksum:
        raise ShardChecksumError(f"shard {url}: SHA-256 {actual} does not match the index ({checksum})")


# -- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """One shard of the index, with the byte ranges of the samples used from it."""

    url: str
    """Full URL of the tar."""
    offsets: tuple[int, ...]
    """Byte offset of each used sample in the tar (index order)."""
    sizes: tuple[int, ...]
    """Byte size of each used sample's members."""
    checksum: str | None = None
    """SHA-256 of the whole shard recorded by the data pipeline: :func:`read_samples` verifies it on the shard's
    first read in a process (None: not verified)."""

    def __post_init__(self):
        object.__setattr__(self, "offsets", tuple(int(o) for o in self.offsets))
        object.__setattr__(self, "sizes", tuple(int(b) for b in self.sizes))
        if len(self.offsets) != len(self.sizes):
            raise ValueError(f"shard {self.url}: {len(self.offsets)} offsets but {len(self.sizes)} sizes")

    @property
    def num_samples(self) -> int:
        return len(self.offsets)


def iter_tar_samples(fileobj, label: str) -> Iterator[dict[str, Any]]:
    """Stream a WebDataset tar: yields ``{"__key__": key, "__url__": label, ext: bytes, ...}`` per sample.

    webdataset's own tar iterators do the work (members grouped into samples at the first dot of the base name,
    consecutive members only); a stream that is not a readable tar raises ``ValueError`` naming ``label``.
    """
    # Imported here: the webdataset package imports torch (measured: +0.56 GB and ~10 s in a process without it),
    # and the processes that only write shards (the flow job's workers) never import torch. Every reader (training,
    # validation, segment's shard source) has torch loaded already: there it costs 0.1 s.
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        yield from group_by_keys(tar_file_expander([{"url": label, "stream": fileobj}]))
    except tarfile.TarError as e:
        # For the message only: webdataset appends " @ <stream>" to tarfile's and the stream and URL to the args.
        reason = str(e.args[0]).partition(" @ ")[0] if e.args else type(e).__name__
        raise ValueError(f"shard {label}: not a readable tar ({reason})") from e


_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


def _verify_once(entry: ShardEntry) -> None:
    """Check the shard's SHA-256 the first time this process reads it (the training worker that reads it, not
    the driver before the run); a mismatch raises :class:`ShardChecksumError` naming the shard's URL."""
    if not entry.checksum or (entry.url, entry.checksum) in _verified:
        return
    verify_shard(entry.url, entry.checksum)
    with _verified_lock:
        _verified.add((entry.url, entry.checksum))


def read_samples(entry: ShardEntry, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Raw samples ``start:stop`` of a shard, read by byte range (a rank reads only its part of a shared shard).

    With ``entry.checksum``, the whole shard's SHA-256 is verified on its first read in this process.
    """
    parent, name = open_url(entry.url)
    stop = entry.num_samples if stop is None else stop
    if start >= stop:
        return
    _verify_once(entry)
    offsets, sizes = entry.offsets[start:stop], entry.sizes[start:stop]
    # The block's samples are consecutive in the shard: one ranged GET streams them all.
    with parent.open_stream(name, start=offsets[0], stop=offsets[-1] + sizes[-1]) as f:
        position = offsets[0]
        for offset, size in zip(offsets, sizes, strict=True):
            if offset < position:
                raise ValueError(f"shard {entry.url}: sample offsets are not increasing at byte {offset}")
            f.read(offset - position)  # padding between samples, if any
            data = f.read(size)
            position = offset + len(data)
            if len(data) != size:
                raise ValueError(
                    f"shard {entry.url}: sample at byte {offset} is truncated ({len(data)} of {size})"
                )
            for sample in iter_tar_samples(io.BytesIO(data), entry.url):
                sample["__url__"] = entry.url
                yield sample


# -- writer -------------------------------------------------------------------------------------------------------


class _OpenShard:
    """A shard being built: a local tar that the upload thread streams to storage as it grows."""

    def __init__(self, name: str, tmpdir: str):
        self.name = name
        fd, self.path = tempfile.mkstemp(prefix="shard-", suffix=".tar", dir=tmpdir)
        os.close(fd)
        self.tar = tarfile.open(self.path, "w", format=tarfile.PAX_FORMAT)
        self.rows: list[dict[str, Any]] = []
        self.queued = 0
        """Bytes of the local tar handed to the upload thread (producer side)."""
        self.sent = 0
        """Bytes of the local tar written to storage (upload thread side)."""
        self.digest = hashlib.sha256()
        self.remote = contextlib.ExitStack()
        self.remote_file = None
        self.pushes: list[Future] = []

    @property
    def size(self) -> int:
        return self.tar.offset


class ShardWriter:
    """Packs samples into per-split shards of about ``target_bytes``, uploads them, then indexes them.

    A shard is built in a local temporary file and streamed to ``shard_name(split, number)`` (default
    ``shards/<split>-NNNNNN.tar``) by a background thread while it grows (every ``stream_bytes``; an atomic write
    that becomes visible only when the shard is complete), so that uploading overlaps the producer, and only then are
    its samples added to ``self.index`` and, when ``index_name`` is set, to that file (rewritten atomically, in
    commit order, by the caller's thread, which also runs ``on_commit``). A run killed in between leaves an
    unindexed shard that the next run overwrites under the same name: numbering continues from the index.

    The flow job's workers use it with their group's ``shard_name`` and ``index_name=None``: the driver commits the
    rows as one index part (:func:`write_index_part`).
    """

    def __init__(
        self,
        storage,
        target_bytes: int,
        index: pa.Table | None = None,
        on_commit: Callable[[str, list[dict[str, Any]]], None] | None = None,
        tmpdir: str | None = None,
        max_pending: int = 2,
        stream_bytes: int = 16 << 20,
        shard_name: Callable[[str, int], str] | None = None,
        index_name: str | None = INDEX_NAME,
    ):
        self.storage = storage
        self.shard_name = shard_name or (lambda split, num: f"{SHARD_DIR}/{split}-{num:06d}.tar")
        self.index_name = index_name
        self.stream_bytes = max(1, int(stream_bytes))
        self.target_bytes = max(1, int(target_bytes))
        self.index = index if index is not None and index.num_rows else empty_index()
        self.on_commit = on_commit
        self._tmp = tempfile.TemporaryDirectory(prefix="hmhi-shards-", dir=tmpdir)
        self._open: dict[str, _OpenShard] = {}
        self._next: dict[str, int] = {}
        for shard in set(self.index.column("shard").to_pylist()):
            split, _, num = os.path.splitext(os.path.basename(shard))[0].rpartition("-")
            self._next[split] = max(self._next.get(split, 0), int(num) + 1)
        self.shards_written = 0
        self.bytes_written = 0
        self.write_s = 0.0
        """Seconds spent adding samples to local tars."""
        self.commit_s = 0.0
        """Seconds spent checksumming and uploading shards (in the upload thread, overlapping the producer)."""
        self.max_pending = max_pending
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")
        self._pending: deque[tuple[_OpenShard, Future]] = deque()

    def add(self, split: str, key: str, members: Mapping[str, bytes], row: Mapping[str, Any]) -> None:
        """Append one sample (members sorted by name) to the open shard of ``split``."""
        t0 = time.perf_counter()
        shard = self._open.get(split)
        if shard is None:
            num = self._next.get(split, 0)
            self._next[split] = num + 1
            name = self.shard_name(split, num)
            with local_disk_full_errors(
                "build shard", self.storage.join(name), os.path.join(self._tmp.name, "shard.tar")
            ):
                shard = self._open[split] = _OpenShard(name, self._tmp.name)
        offset = shard.tar.offset
        digest = hashlib.sha256()
        # The shard is built in a local temporary file: a full disk there is a LocalDiskFullError naming it.
        with local_disk_full_errors("build shard", self.storage.join(shard.name), shard.path):
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                shard.tar.addfile(info, io.BytesIO(data))
                digest.update(ext.encode() + b"\0" + data)
        shard.rows.append(
            dict(
                row,
                key=key,
                split=split,
                shard=shard.name,
                offset=offset,
                bytes=shard.tar.offset - offset,
                sha256=digest.hexdigest(),
            )
        )
        self.write_s += time.perf_counter() - t0
        if shard.size >= self.target_bytes:
            self._commit(split)
        elif shard.size - shard.queued >= self.stream_bytes:
            shard.tar.fileobj.flush()  # the upload thread reads the bytes from the file
            shard.queued = shard.size
            shard.pushes.append(self._uploader.submit(self._push, shard, shard.queued))

    def _commit(self, split: str) -> None:
        """Hand the shard to the upload thread; index the shards whose upload has finished, in order."""
        shard = self._open.pop(split)
        self._pending.append((shard, self._uploader.submit(self._upload, shard)))
        # At most `max_pending` shards wait on local disk: beyond that, the producer waits for the upload.
        self._finish_uploads(block_until=max(0, len(self._pending) - self.max_pending))

    def _push(self, shard: _OpenShard, upto: int) -> None:
        """Upload thread: send the local tar's bytes up to ``upto`` to storage (opening the atomic write)."""
        t0 = time.perf_counter()
        if shard.remote_file is None:
            shard.remote_file = shard.remote.enter_context(self.storage.open_write(shard.name))
        with open(shard.path, "rb") as f:
            f.seek(shard.sent)
            while shard.sent < upto:
                chunk = f.read(min(8 << 20, upto - shard.sent))
                if not chunk:
                    raise OSError(
                        f"{shard.path}: local shard file ended at {shard.sent} bytes, expected {upto}"
                    )
                shard.digest.update(chunk)
                shard.remote_file.write(chunk)
                shard.sent += len(chunk)
        self.commit_s += time.perf_counter() - t0

    def _upload(self, shard: _OpenShard) -> tuple[int, str]:
        """Upload thread: close the tar, send the rest, complete the atomic write; returns size and checksum."""
        for push in shard.pushes:
            push.result()  # a failed earlier part fails the shard
        with local_disk_full_errors("build shard", self.storage.join(shard.name), shard.path):
            shard.tar.close()
        size = os.path.getsize(shard.path)
        self._push(shard, size)
        t0 = time.perf_counter()
        shard.remote.close()  # completes the upload (sending its last part): the shard appears whole
        self.commit_s += time.perf_counter() - t0
        os.remove(shard.path)
        return size, shard.digest.hexdigest()

    def _finish_uploads(self, block_until: int = 0) -> None:
        """Index uploaded shards (calling ``on_commit``) in commit order; wait for the first ``block_until``."""
        while self._pending and (block_until > 0 or self._pending[0][1].done()):
            shard, future = self._pending.popleft()
            block_until -= 1
            size, sha = future.result()  # an upload error propagates here
            rows = [dict(r, shard_bytes=size, shard_sha256=sha) for r in shard.rows]
            self.index = pa.concat_tables([self.index, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)])
            if self.index_name:
                self.storage.write_parquet(self.index_name, self.index)
            self.shards_written += 1
            self.bytes_written += size
            log.info("committed %s (%d samples, %.1f MB)", shard.name, len(rows), size / 1e6)
            if self.on_commit:
                self.on_commit(shard.name, rows)

    def close(self) -> None:
        """Commit every open shard (in split order), wait for all uploads, index them, clean up."""
        try:
            for split in sorted(self._open):
                self._commit(split)
            self._finish_uploads(block_until=len(self._pending))
        finally:
            self._uploader.shutdown(wait=True)
            self._tmp.cleanup()

    def abort(self) -> None:
        """Drop open shards and pending uploads without indexing them (a rerun overwrites any upload)."""
        self._uploader.shutdown(wait=True, cancel_futures=True)
        aborted = RuntimeError("shard writer aborted")
        for shard in [*self._open.values(), *(shard for shard, _ in self._pending)]:
            with contextlib.suppress(OSError):  # the tar's last block on a full disk: the file goes anyway
                shard.tar.close()
            with contextlib.suppress(Exception):  # abort the streamed write: it never becomes visible
                shard.remote.__exit__(RuntimeError, aborted, None)
        self._open.clear()
        self._pending.clear()
        self._tmp.cleanup()


def shard_set_provenance(url) -> dict[str, Any]:
    """What a model trained on the shard set at ``url`` is trained on, as checkpoints record it (plain values):
    ``url``; ``fingerprint``, the SHA-256 over the index's sorted ``(shard, shard SHA-256)`` pairs (the same
    committed shards give the same fingerprint); and ``flow``, the flow settings its samples were made with (engine,
    DIS preset, longest side, the flow checkpoint's SHA-256, the flow rendering version; from :data:`SETTINGS_NAME`,
    empty for a shard set without it)."""
    st = _storage(url)
    index = read_index(st)
    pairs = sorted(set(zip(index.column("shard").to_pylist(), index.column("shard_sha256").to_pylist())))
    fingerprint = hashlib.sha256("\n".join(f"{shard} {sha}" for shard, sha in pairs).encode()).hexdigest()
    settings = st.read_json(SETTINGS_NAME) if st.exists(SETTINGS_NAME) else {}
    flow = {
        key: settings.get(name)
        for key, name in (
            ("engine", "flow_engine"),
            ("preset", "flow_preset"),
            ("max_side", "flow_max_side"),
            ("checkpoint_sha256", "flow_checkpoint_sha256"),
            ("render_version", "render_version"),
        )
        if name in settings
    }
    return {"url": st.url, "fingerprint": f"sha256:{fingerprint}", "shards": len(pairs), "flow": flow}

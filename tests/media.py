"""Test corpora written for real: DAVIS-layout frame folders and masks, mp4 files (PyAV), and bad inputs.

Scenes are small and deterministic: a smooth textured background that pans and a textured square that moves
across it; the mask is the square. ``write_*`` functions write to a local directory; :func:`upload_tree` copies a
directory into any storage URL (e.g. the moto S3 server).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.masks import davis_palette, encode_mask_png
from pipeline.video import encode_video

__all__ = [
    "make_scene",
    "write_jpeg",
    "write_davis",
    "write_mp4",
    "write_frames_folder",
    "upload_tree",
    "truncate_file",
    "write_train_shards",
    "bomb_png",
]


def make_scene(
    n_frames: int,
    size: tuple[int, int] = (96, 160),
    seed: int = 0,
    velocity: tuple[float, float] = (3.0, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N,H,W,3) uint8 RGB, masks (N,H,W) bool): a textured square moving over a panning background."""
    h, w = size
    rng = np.random.default_rng(seed)
    pad = 4 * n_frames + 8
    bg = cv2.GaussianBlur(rng.integers(0, 256, (h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8), (0, 0), 2.0)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (h // 3, w // 4, 3), dtype=np.uint8), (0, 0), 1.0)
    tex = np.clip(tex.astype(int) + np.array([60, -40, 20]), 0, 255).astype(np.uint8)
    oh, ow = tex.shape[:2]
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    masks = np.zeros((n_frames, h, w), bool)
    for t in range(n_frames):
        frames[t] = bg[pad + t : pad + t + h, pad + 2 * t : pad + 2 * t + w]
        y = int(h // 4 + velocity[1] * t) % max(1, h - oh)
        x = int(w // 5 + velocity[0] * t) % max(1, w - ow)
        frames[t, y : y + oh, x : x + ow] = tex
        masks[t, y : y + oh, x : x + ow] = True
    return frames, masks


def write_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    Path(path).write_bytes(buf.tobytes())


def _palette_png(labels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(davis_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_davis(
    root: str | Path,
    videos: dict[str, int],
    size: tuple[int, int] = (96, 160),
    splits: dict[str, list[str]] | None = None,
    year: int = 2016,
    mask_every: int = 1,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a DAVIS-2016 (0/255 masks, path-pair ImageSets) or DAVIS-2017 (two-object palette masks, name
    ImageSets; the square's first column is void, 255) corpus; returns {name: (frames as decoded from the written
    JPEGs, foreground masks)}."""
    root = Path(root)
    out = {}
    for k, (name, n) in enumerate(videos.items()):
        frames, masks = make_scene(n, size, seed=seed + k)
        decoded = np.empty_like(frames)
        for t in range(n):
            p = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            write_jpeg(p, frames[t])
            decoded[t] = cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1]
            if t % mask_every:
                continue
            mp = root / "Annotations" / "480p" / name / f"{t:05d}.png"
            mp.parent.mkdir(parents=True, exist_ok=True)
            if year == 2016:
                cv2.imwrite(str(mp), masks[t].astype(np.uint8) * 255)
            else:  # two objects: left and right halves of the square, indices 1 and 2
                labels = masks[t].astype(np.uint8)
                cols = np.flatnonzero(masks[t].any(0))
                if len(cols):
                    labels[:, cols[len(cols) // 2] :] *= 2
                    labels[:, cols[0]] = np.where(masks[t][:, cols[0]], 255, 0)  # void band: not foreground
                mp.write_bytes(_palette_png(labels))
        if year != 2016:
            masks = masks.copy()
            for t in range(n):
                cols = np.flatnonzero(masks[t].any(0))
                if len(cols):
                    masks[t][:, cols[0]] = False
        out[name] = (decoded, masks)
    if splits:
        for split, names in splits.items():
            if year == 2016:
                p = root / "ImageSets" / "480p" / f"{split}.txt"
                lines = [
                    f"/JPEGImages/480p/{v}/{t:05d}.jpg /Annotations/480p/{v}/{t:05d}.png"
                    for v in names
                    for t in range(videos[v])
                ]
            else:
                p = root / "ImageSets" / "2017" / f"{split}.txt"
                lines = list(names)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("\n".join(lines) + "\n")
    return out


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 10.0, codec: str = "libx264") -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    encode_video(frames, str(path), fps=fps, codec=codec, crf=12)


def write_frames_folder(root: str | Path, name: str, frames: np.ndarray, ext: str = "jpg") -> list[Path]:
    paths = []
    for t, f in enumerate(frames):
        p = Path(root) / name / f"frame_{t}.{ext}"
        if ext == "jpg":
            write_jpeg(p, f)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), f[..., ::-1])
        paths.append(p)
    return paths


@functools.cache
def bomb_png(side: int = 20000) -> bytes:
    """A valid, all-black 1-bit greyscale PNG of ``side`` x ``side`` pixels, made without holding the image: 20000
    gives a ~49 kB file that decodes to 400 MB of grey or 1.2 GB of RGB (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale, no interlace
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + the row's bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.compress(
        row * (side % 1000)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", body + packer.flush())
        + chunk(b"IEND", b"")
    )


def truncate_file(path: str | Path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def upload_tree(local_root: str | Path, url: str) -> None:
    """Copy every file below ``local_root`` to the storage at ``url`` (same relative names)."""
    from pipeline.storage import open_storage

    st = open_storage(url)
    local_root = Path(local_root)
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            st.upload_file(str(p), p.relative_to(local_root).as_posix())


def mask_png(mask: np.ndarray) -> bytes:
    return encode_mask_png(mask)


def write_train_shards(
    root: str, videos: int = 5, frames: int = 6, size: int = 32, target_bytes: int = 40_000
) -> None:
    """A tiny 'train' shard set at ``root`` (any storage URL), written through the data pipeline's own writer
    (``pipeline.shards``): ``videos`` videos of two clips of ``frames`` random frames each, a moving box as the
    mask; video ``v2`` has no ground truth (its samples are left out of training)."""
    from pipeline.shards import ShardWriter, encode_clip, sample_key
    from pipeline.storage import open_storage

    rng = np.random.default_rng(0)
    writer = ShardWriter(open_storage(root), target_bytes=target_bytes)
    for v in range(videos):
        for start in (0, frames):
            key = sample_key(f"v{v}", start)
            imgs = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
            flows = rng.normal(size=(frames, size, size, 2)).astype(np.float32)
            masks = np.zeros((frames, size, size), bool)
            masks[:, 8:20, 4 + v : 14 + v] = True
            valid = np.ones(frames, bool) if v != 2 else np.zeros(frames, bool)  # v2: no ground truth
            meta = {
                "video_id": f"v{v}",
                "split": "train",
                "frame_indices": list(range(start, start + frames)),
            }
            members = encode_clip(key, imgs, flows, masks, valid, meta)
            writer.add(
                "train",
                key,
                members,
                {
                    "video_id": f"v{v}",
                    "clip_index": start // frames,
                    "n_clips": 2,
                    "frame_indices": meta["frame_indices"],
                    "n_frames": frames,
                    "n_masks": int(valid.sum()),
                    "height": size,
                    "width": size,
                },
            )
    writer.close()

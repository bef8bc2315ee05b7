"""Miniatures of the real dataset archives, written exactly as they are distributed (folder and file names,
extensions, sparse annotation, palette / 0/255 / white-background masks), for the ingest and evaluation tests.

Each writer returns ``{video: (frames (N, H, W, 3) uint8 as decoded from the written JPEGs, masks (N, H, W) bool,
annotated frame indices)}``. Sources of each layout are cited in ``pipeline/ingest/formats.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.media import _palette_png, make_scene, write_jpeg

SIZE = (24, 32)


def _grey_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _frames(path: Path, frame: np.ndarray) -> np.ndarray:
    write_jpeg(path, frame)
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def write_hmhi(
    root: str | Path, naming: str = "code", videos: dict[str, dict[str, int]] | None = None, seed: int = 0
) -> dict:
    """The official HMHI-Net archive: ``frame|flow|mask/<split>/<video>/`` (code) or ``Images|Flows|Annotations``
    (README); frames ``<video>_<NNNNN>.jpg``, flow pictures of the same name, masks ``<video>_<NNNNN>.png`` 0/255
    (its ``save_images`` recovers the video name from the file name, so the archives name files this way)."""
    frame_dir, flow_dir, mask_dir = (
        ("frame", "flow", "mask") if naming == "code" else ("Images", "Flows", "Annotations")
    )
    videos = videos or {"train": {"bear": 3}, "val": {"blackswan": 4}}
    root, out = Path(root), {}
    for split, names in videos.items():
        for k, (name, n) in enumerate(names.items()):
            frames, masks = make_scene(n, SIZE, seed=seed + k + 10 * len(out))
            decoded = np.empty_like(frames)
            for t in range(n):
                stem = f"{name}_{t:05d}"
                decoded[t] = _frames(root / frame_dir / split / name / f"{stem}.jpg", frames[t])
                write_jpeg(root / flow_dir / split / name / f"{stem}.jpg", 255 - frames[t])  # any RGB picture
                _write(root / mask_dir / split / name / f"{stem}.png", _grey_png(masks[t]))
            out[name] = (decoded, masks, list(range(n)))
    return out


def _fbms_definition(name: str, n_frames: int, annotated: dict[int, str]) -> bytes:
    """``<seq>Def.dat`` as FBMS-59 ships it: labelled values, each on the line after its label, one ``Frame number``
    (0-based frame of the shot) and ``File name`` pair per annotated frame (the form alex-xun-xu/LearnSubspaceMoSeg
    ``Dataset/FBMS/collect_dataset.py`` reads)."""
    lines = [
        "Ground truth definition file; do not change!",
        "",
        "Total number of frames in this shot:",
        str(n_frames),
        "Total number of labeled frames for this shot:",
        str(len(annotated)),
    ]
    for t, file_name in sorted(annotated.items()):
        lines += ["Frame number:", str(t), "File name:", file_name]
    return ("\n".join(lines) + "\n").encode()


def write_fbms(root: str | Path, seed: int = 0) -> dict:
    """FBMS-59: ``Testset/<seq>/<seq>_NN.jpg`` (frames numbered from 1, 2-digit here) with ground truth on every
    3rd frame in ``GroundTruth/`` and the ``<seq>Def.dat`` that says which frame each file annotates: ``cars1`` as
    grey ``cars1_NNNN_gt.pgm`` (4-digit, black background), ``dogs01`` as colour ``dogs01_NNNN_gt.ppm`` on a white
    background next to a ``*PROB_gt.ppm``; ``tennis`` with frames ``tennisNNN.jpg`` numbered from 0 and ground
    truth numbered from 1 (``tennisNNN_gt.pgm``: a file's number is not its frame's, as on the sequences the UVOS
    cleaners special-case; only ``Def.dat`` places them) holding two objects in two grey levels; one
    ``Trainingset`` video."""
    root, out = Path(root), {}
    sequences = (
        ("Testset", "cars1", "pgm"),
        ("Testset", "dogs01", "ppm"),
        ("Trainingset", "bear01", "pgm"),
        ("Testset", "tennis", "pgm"),
    )
    for k, (split, name, ext) in enumerate(sequences):
        n = 7
        frames, masks = make_scene(n, SIZE, seed=seed + k)
        decoded = np.empty_like(frames)
        annotated = [0, 3, 6] if name != "tennis" else [1, 4]
        for t in range(n):
            frame_name = f"{name}{t:03d}.jpg" if name == "tennis" else f"{name}_{t + 1:02d}.jpg"
            decoded[t] = _frames(root / split / name / frame_name, frames[t])
        gt_dir = root / split / name / "GroundTruth"
        definition = {}
        for t in annotated:
            stem = f"{name}{t + 1:03d}_gt" if name == "tennis" else f"{name}_{t + 1:04d}_gt"
            buffer = io.BytesIO()
            if ext == "pgm":
                grey = masks[t].astype(np.uint8) * 255
                if name == "tennis":  # a second object: the right half of the square, another grey level
                    grey[:, SIZE[1] // 2 :] //= 2
                Image.fromarray(grey).save(buffer, format="PPM")  # P5: grey
            else:
                rgb = np.full((*SIZE, 3), 255, np.uint8)
                rgb[masks[t]] = (255, 0, 0)
                Image.fromarray(rgb).save(buffer, format="PPM")  # P6: colour
                _write(gt_dir / f"{name}_{t + 1:04d}_PROB_gt.ppm", buffer.getvalue())
            _write(gt_dir / f"{stem}.{ext}", buffer.getvalue())
            definition[t] = f"{stem}.{ext}"
        _write(gt_dir / f"{name}Def.dat", _fbms_definition(name, n, definition))
        out[name] = (decoded, masks, annotated)
    return out


def write_ytobj(root: str | Path, layout: str = "class", seed: int = 0) -> dict:
    """YouTube-Objects as the UVOS code reads it (suhwan-cho/TMO): ``layout='class'``:
    ``<class>/<video>/{JPEGImages,JPEGFlows,Annotations}/`` with every frame (``00001.jpg``...) and sparse
    ``NNNNN.png`` masks, mask N annotating the N-th frame; ``layout='top'``:
    ``{JPEGImages,JPEGFlows,Annotations}/<class>/<video>/`` with masks named as their frames. Masks 0/255."""
    root, out = Path(root), {}
    for k, (cls, video) in enumerate((("aeroplane", "0001"), ("aeroplane", "0002"), ("cat", "0001"))):
        n = 6
        frames, masks = make_scene(n, SIZE, seed=seed + k)
        decoded = np.empty_like(frames)
        annotated = [0, 2, 5] if k != 2 else [1, 4]

        def where(kind: str, cls=cls, video=video) -> Path:
            return root / kind / cls / video if layout == "top" else root / cls / video / kind

        for t in range(n):
            decoded[t] = _frames(where("JPEGImages") / f"{t + 1:05d}.jpg", frames[t])
            write_jpeg(where("JPEGFlows") / f"{t + 1:05d}.jpg", 255 - frames[t])
        for t in annotated:
            _write(where("Annotations") / f"{t + 1:05d}.png", _grey_png(masks[t]))
        out[f"{cls}_{video}"] = (decoded, masks, annotated)
    return out


def write_ytvos(root: str | Path, seed: int = 0) -> dict:
    """YouTube-VOS 2018/2019: ``train|valid/{JPEGImages,Annotations}/<id>/NNNNN.jpg|png`` every 5th frame of 30 fps
    (train: every shipped frame annotated, palette masks of two objects; valid: the first frame only), the
    ``meta.json`` beside them, and ``train_all_frames/JPEGImages`` holding the same train video at 30 fps."""
    root, out = Path(root), {}
    for k, (split, vid) in enumerate((("train", "003234408d"), ("valid", "0062f687f1"))):
        n = 3
        frames, masks = make_scene(n, SIZE, seed=seed + k)
        decoded = np.empty_like(frames)
        annotated = list(range(n)) if split == "train" else [0]
        for t in range(n):
            decoded[t] = _frames(root / split / "JPEGImages" / vid / f"{5 * t:05d}.jpg", frames[t])
        for t in annotated:
            labels = masks[t].astype(np.uint8)
            labels[:, SIZE[1] // 2 :] *= 2  # a second object on the right half
            _write(root / split / "Annotations" / vid / f"{5 * t:05d}.png", _palette_png(labels))
        meta = {
            "videos": {
                vid: {"objects": {"1": {"category": "ape", "frames": [f"{5 * t:05d}" for t in annotated]}}}
            }
        }
        (root / split / "meta.json").write_text(json.dumps(meta))
        if split == "train":
            for t in range(5 * (n - 1) + 1):
                write_jpeg(root / "train_all_frames" / "JPEGImages" / vid / f"{t:05d}.jpg", frames[t // 5])
        out[vid] = (decoded, masks, annotated)
    return out

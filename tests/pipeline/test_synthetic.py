"""The synthetic corpus generator: determinism, masks that match the composited object, disjoint splits, and a
layout that the ingest reader and the mask codec read back (local disk and moto S3)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError
from pipeline.masks import read_mask
from pipeline.storage import open_storage
from pipeline.synthetic import (
    RES_DIR,
    SyntheticConfig,
    SyntheticCorpusError,
    _camera,
    _object_centre,
    _object_time,
    generate_corpus,
    main,
    render_video,
    sample_scene,
    scene_meta,
    sequence_names,
    split_sequences,
)

SMALL = dict(videos=3, frames=8, size="48x64", seed=7)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_depends_on_seed_and_index():
    a = render_video(sample_scene(5, 1, 40, 56, 6))
    b = render_video(sample_scene(5, 1, 40, 56, 6))
    for key in ("frames", "masks", "object_alpha", "visible_alpha"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["frames"].shape == (6, 40, 56, 3) and a["frames"].dtype == np.uint8
    other_seed = render_video(sample_scene(6, 1, 40, 56, 6))["frames"]
    other_index = render_video(sample_scene(5, 2, 40, 56, 6))["frames"]
    assert np.abs(a["frames"].astype(int) - other_seed).mean() > 10
    assert np.abs(a["frames"].astype(int) - other_index).mean() > 10


def test_corpus_is_byte_identical_for_a_seed(tmp_path):
    generate_corpus(SyntheticConfig(out=str(tmp_path / "a"), **SMALL))
    generate_corpus(SyntheticConfig(out=str(tmp_path / "b"), **SMALL))
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert len([k for k in a if k.startswith(f"JPEGImages/{RES_DIR}/")]) == 3 * 8
    # Video i depends only on (seed, i): a bigger corpus starts with the same videos.
    generate_corpus(SyntheticConfig(out=str(tmp_path / "c"), **{**SMALL, "videos": 4}))
    c = _tree_bytes(tmp_path / "c")
    for k in a:
        if k.startswith(("JPEGImages/", "Annotations/")):
            assert c[k] == a[k], k


def test_mask_is_exactly_where_the_visible_object_changed_the_picture():
    for index in range(4):
        scene = sample_scene(3, index, 48, 64, 8)
        with_obj = render_video(scene)
        without = render_video(scene, draw_object=False)  # same scene, same sensor noise, no object
        diff = np.abs(with_obj["frames"].astype(int) - without["frames"].astype(int)).max(-1)
        masks, visible = with_obj["masks"], with_obj["visible_alpha"]
        # Nothing changes where no part of the object is visible (outside it, or behind the pole).
        assert diff[visible == 0].max() == 0
        # Where the mask is on, the object is what the camera sees.
        assert (diff[masks] > 8).mean() > 0.95
        np.testing.assert_array_equal(masks, visible >= 0.5)
        assert masks.any(axis=(1, 2)).all(), "the object is visible in every frame"
        # The pole hides part of the object on some frames, and meta.json says which.
        meta = scene_meta(scene, with_obj)
        hidden = 1 - visible.sum((1, 2)) / with_obj["object_alpha"].sum((1, 2))
        assert meta["occluded_frames"] == [t for t in range(8) if hidden[t] >= meta["occluded_threshold"]]
        assert 0 < len(meta["occluded_frames"]) < 8
        assert hidden.max() < 0.9, "the occlusion is partial"


def test_pause_freezes_the_object_in_the_world():
    scene = sample_scene(11, 0, 64, 64, 24)
    first, last = scene.pause
    assert 2 <= last - first + 1 <= 8 and first >= 1 and last <= 22
    tau = _object_time(np.arange(24), scene.pause)
    cx, cy = _object_centre(scene, tau)
    paused = np.arange(first, last + 1)
    assert np.ptp(cx[paused]) == 0 and np.ptp(cy[paused]) == 0 and np.ptp(tau[paused]) == 0
    moving = np.hypot(np.diff(cx), np.diff(cy))
    assert (np.delete(moving, paused[:-1]) > 0.05).all(), "the object moves outside the pause"
    # On screen, the paused object moves exactly as the background does (the camera keeps panning and zooming), so
    # its motion relative to the background vanishes: warping frame t's object by the camera motion gives t+1's.
    rendered = render_video(scene)
    assert scene_meta(scene, rendered)["paused_frames"] == list(range(first, last + 1))
    alpha = rendered["object_alpha"]
    cam_x, cam_y, zoom = _camera(scene, np.arange(24))
    rows, cols = np.mgrid[0:64, 0:64].astype(np.float32)
    centre = 31.5

    def residual(t: int) -> float:
        """Mean |alpha[t+1] - alpha[t] warped by the camera alone| over the object's pixels."""
        wx = cam_x[t + 1] + (cols - centre) / zoom[t + 1]  # world point seen at t+1 ...
        wy = cam_y[t + 1] + (rows - centre) / zoom[t + 1]
        map_x = (centre + (wx - cam_x[t]) * zoom[t]).astype(np.float32)  # ... and where it was seen at t
        map_y = (centre + (wy - cam_y[t]) * zoom[t]).astype(np.float32)
        warped = cv2.remap(alpha[t], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        region = (alpha[t + 1] > 0) | (warped > 0)
        return float(np.abs(alpha[t + 1] - warped)[region].mean())

    paused_residuals = [residual(t) for t in range(first, last)]
    moving_residuals = [residual(t) for t in range(23) if not first <= t <= last]
    assert max(paused_residuals) < 0.03
    assert np.median(moving_residuals) > 3 * max(paused_residuals)


def test_splits_are_disjoint_and_in_davis_formats(tmp_path):
    names = sequence_names(SyntheticConfig(videos=12))
    train, val = split_sequences(names, 0.25, seed=0)
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(names) and len(val) == 3
    assert split_sequences(names, 0.25, seed=0) == (train, val)

    generate_corpus(SyntheticConfig(out=str(tmp_path), **SMALL, val_fraction=0.34))
    root = tmp_path
    names_2016 = {s: (root / f"ImageSets/2016/{s}.txt").read_text().split() for s in ("train", "val")}
    assert set(names_2016["train"]).isdisjoint(names_2016["val"])
    assert sorted(names_2016["train"] + names_2016["val"]) == sequence_names(SyntheticConfig(**SMALL))
    assert len(names_2016["val"]) == 1
    for split, seqs in names_2016.items():
        lines = (root / f"ImageSets/{RES_DIR}/{split}.txt").read_text().splitlines()
        assert lines == [
            f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png"
            for s in seqs
            for t in range(8)
        ]
        for line in lines:
            jpg, png = line.split()
            assert (root / jpg.lstrip("/")).is_file() and (root / png.lstrip("/")).is_file()


def test_layout_is_read_back_by_ingest_and_the_mask_codec(storage_url):
    from pipeline.ingest.load import load_video
    from pipeline.ingest.manifest import list_corpus

    generate_corpus(SyntheticConfig(out=storage_url, **SMALL))
    st = open_storage(storage_url)
    listing = list_corpus(st)
    assert listing.format == "davis2016"
    manifest = st.read_json("synthetic.json")
    # the held-out videos are a test split; validation is carved from train at precompute time
    assert sorted(r.name for r in listing.records if r.split == "test") == manifest["val"]
    assert sorted(r.name for r in listing.records if r.split == "train") == manifest["train"]
    rec = next(r for r in listing.records if r.name == "synth000")
    assert len(rec.frames) == 8 and sorted(rec.masks) == list(range(8))

    scene = sample_scene(7, 0, 48, 64, 8)
    rendered = render_video(scene)
    loaded = load_video(st, rec)
    assert loaded.frames.shape == (8, 48, 64, 3)
    np.testing.assert_array_equal(loaded.masks, rendered["masks"])
    assert np.abs(loaded.frames.astype(int) - rendered["frames"]).mean() < 8  # JPEG round trip (~5 at 48x64)
    png = Image.open(io.BytesIO(st.read_bytes(f"Annotations/{RES_DIR}/synth000/00003.png")))
    assert png.mode == "L" and set(np.unique(np.asarray(png))) <= {0, 255}
    np.testing.assert_array_equal(
        read_mask(st.read_bytes(f"Annotations/{RES_DIR}/synth000/00003.png")), rendered["masks"][3]
    )
    meta = st.read_json("Meta/synth000/meta.json")
    assert meta["paused_frames"] == list(range(scene.pause[0], scene.pause[1] + 1))
    assert meta["occluded_frames"] == scene_meta(scene, rendered)["occluded_frames"]


def test_rerun_skips_finished_sequences_and_redoes_interrupted_ones(tmp_path):
    cfg = SyntheticConfig(out=str(tmp_path), **SMALL)
    first = generate_corpus(cfg)
    assert first["counts"]["video"] == {"done": 3, "skipped": 0, "rejected": 0}
    before = _tree_bytes(tmp_path)
    (tmp_path / "Meta/synth001/meta.json").unlink()  # as if the run died while writing synth001
    (tmp_path / f"Annotations/{RES_DIR}/synth001/00005.png").unlink()
    second = generate_corpus(cfg)
    assert second["counts"]["video"] == {"done": 1, "skipped": 2, "rejected": 0}
    assert _tree_bytes(tmp_path) == before
    with pytest.raises(SyntheticCorpusError, match="synthetic.json.*different settings"):
        generate_corpus(SyntheticConfig(out=str(tmp_path), **{**SMALL, "seed": 8}))
    assert _tree_bytes(tmp_path) == before  # nothing was touched


def test_cli_writes_mp4_that_decodes(tmp_path, capsys):
    from pipeline.video import decode_video

    out = tmp_path / "corpus"
    assert (
        main(
            [
                str(out),
                "--videos",
                "2",
                "--frames",
                "6",
                "--size",
                "32x48",
                "--seed",
                "2",
                "--val-fraction",
                "0.5",
                "--mp4",
            ]
        )
        == 0
    )
    assert "synthetic summary" in capsys.readouterr().out
    frames, info = decode_video(str(out / "videos/synth000.mp4"))
    assert frames.shape == (6, 32, 48, 3)
    jpg = np.asarray(Image.open(out / f"JPEGImages/{RES_DIR}/synth000/00002.jpg"))
    assert np.abs(frames[2].astype(int) - jpg).mean() < 8
    assert (out / "ImageSets/2016/val.txt").read_text().count("\n") == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", "128"),
        ("size", "10x10"),
        ("frames", 3),
        ("videos", 0),
        ("val_fraction", 1.0),
        ("prefix", "../x"),
        ("mp4_codec", "h265"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        SyntheticConfig(**{field: value})

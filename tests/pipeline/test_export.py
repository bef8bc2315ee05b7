"""The exports of segment's outputs: outputs written by segment's own writer (VideoOutputs), exported by
jobs/export.py, read back with pycocotools and checked against CVAT's documented "Segmentation mask 1.1" rules."""

from __future__ import annotations

import io
import json
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from jobs.export import main
from pipeline.errors import UserError
from pipeline.formats import EXPORT_FILES, export_outputs
from pipeline.lease import LeaseHeldError, OutputLease
from pipeline.masks import davis_palette, read_mask
from pipeline.segment.config import SegmentOutputConfig
from pipeline.segment.outputs import VideoOutputs
from pipeline.segment_layout import OVERLAY_INDEX
from pipeline.storage import open_storage

H, W = 24, 32


def _probs(video: int, frames: int) -> list[np.ndarray]:
    """A square moving right; frame 1 of video 0 is empty (nothing above the threshold)."""
    out = []
    for t in range(frames):
        prob = np.full((H, W), 0.1, np.float32)
        if not (video == 0 and t == 1):
            prob[4 + video : 12 + video, 3 * t + 2 : 3 * t + 10 + video] = 0.9
        out.append(prob)
    return out


def write_segment_outputs(url: str, overlay_video: str | None = None) -> dict[str, list[str]]:
    """Four videos as segment writes them: cat and dog finished, eel finished with a damaged RLE file,
    fox unfinished (no done marker). Returns {video: frame names} of the finished, readable ones."""
    storage = open_storage(url)
    finished = {}
    with OutputLease(storage, job="segment"), ThreadPoolExecutor(2) as pool:  # as the segment job holds it
        for v, video in enumerate(["cat", "dog", "eel", "fox"]):
            cfg = SegmentOutputConfig(overlay=video == overlay_video)
            outputs = VideoOutputs(
                storage, video, {"name": video, "source": f"videos/{video}.mp4"}, cfg, pool
            )
            names = [f"{t:05d}" for t in range(3 + v % 2)]
            for t, (name, prob) in enumerate(zip(names, _probs(v, len(names)), strict=True)):
                frame = np.full((H, W, 3), 90, np.uint8)
                outputs.add(t, name, prob > 0.5, (prob * 255).astype(np.uint8), frame, 10.0)
            if video == "fox":
                outputs.abort()  # killed before its marker: not finished
                continue
            outputs.finish({"checkpoint": "test"})
            if video == "eel":
                storage.write_bytes("rle/eel.parquet", b"PAR1 not really")
            else:
                finished[video] = names
    return finished


def check_cvat_archive(data: bytes, expected: dict[str, np.ndarray]) -> None:
    """The rules CVAT documents for "Segmentation mask 1.1" import, and the masks: ``expected`` maps every image
    name to its mask."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = set(archive.namelist())
    labels = {}
    for line in archive.read("labelmap.txt").decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, colour, parts, actions = line.split(":")  # label:R,G,B:parts:actions, exactly 4 fields
        assert name not in labels
        labels[name] = tuple(int(c) for c in colour.split(","))
    assert labels == {"background": (0, 0, 0), "object": (128, 0, 0)}
    listed = archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()
    assert len(listed) == len(set(listed)) and set(listed) == set(expected)  # unique, every frame
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in listed)  # no extension, no path, no spaces
    for folder in ("SegmentationClass", "SegmentationObject"):
        pngs = {m[len(folder) + 1 : -4] for m in members if m.startswith(folder + "/") and m.endswith(".png")}
        assert pngs == set(listed)
    voc_colours = np.array(davis_palette()).reshape(256, 3)
    for item, mask in expected.items():
        class_img = Image.open(io.BytesIO(archive.read(f"SegmentationClass/{item}.png")))
        assert class_img.mode == "RGB" and class_img.size == (mask.shape[1], mask.shape[0])
        rgb = np.asarray(class_img)
        assert {tuple(c) for c in rgb.reshape(-1, 3)} <= set(labels.values())  # colour-coded by the label map
        np.testing.assert_array_equal((rgb == labels["object"]).all(axis=2), mask)
        np.testing.assert_array_equal((rgb == labels["background"]).all(axis=2), ~mask)
        obj = np.asarray(
            Image.open(io.BytesIO(archive.read(f"SegmentationObject/{item}.png"))).convert("RGB")
        )
        # Instances in the Pascal VOC colours of their index: background 0, the one object 1.
        assert {tuple(c) for c in obj.reshape(-1, 3)} <= {tuple(voc_colours[0]), tuple(voc_colours[1])}
        np.testing.assert_array_equal((obj == voc_colours[1]).all(axis=2), mask)


def test_export_job_coco_matches_masks_and_cvat_follows_the_documented_layout(storage_url):
    finished = write_segment_outputs(storage_url)
    root = open_storage(storage_url)
    summary = main(["--input", storage_url])
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 1}
    assert "eel" in summary["rejected"][0]["name"] and "rle/eel.parquet" in summary["rejected"][0]["reason"]
    exports = root.child("exports")
    assert exports.exists("summary.json")

    # COCO / YouTube-VIS: pycocotools decodes each frame to the mask PNG segment wrote.
    doc = json.loads(exports.read_bytes(EXPORT_FILES["coco"]))
    assert doc["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert [v["name"] for v in doc["videos"]] == ["cat", "dog"]
    annotations = {a["video_id"]: a for a in doc["annotations"]}
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    empty_frames = 0
    for video in doc["videos"]:
        names = finished[video["name"]]
        assert (video["width"], video["height"], video["length"]) == (W, H, len(names))
        assert video["file_names"] == [f"{video['name']}/{n}.jpg" for n in names]
        ann = annotations[video["id"]]
        assert ann["category_id"] == 1
        assert len(ann["segmentations"]) == len(ann["areas"]) == len(ann["bboxes"]) == len(names)
        for name, seg, area, bbox in zip(
            names, ann["segmentations"], ann["areas"], ann["bboxes"], strict=True
        ):
            png = read_mask(root.read_bytes(f"masks/{video['name']}/{name}.png"))
            if not png.any():
                assert seg is None and area is None and bbox is None
                empty_frames += 1
                continue
            rle = (
                coco_mask.frPyObjects(seg, H, W)
                if isinstance(seg["counts"], list)
                else {"size": seg["size"], "counts": seg["counts"].encode()}
            )
            np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), png)
            assert area == float(coco_mask.area(rle)) == png.sum()
            assert bbox == pytest.approx(coco_mask.toBbox(rle).tolist())
            rows, cols = np.nonzero(png)
            assert bbox == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    assert empty_frames == 1  # cat's frame 1

    # CVAT "Segmentation mask 1.1": one archive for the corpus, images named <video>_<frame> ...
    masks = {
        v: [read_mask(root.read_bytes(f"masks/{v}/{n}.png")) for n in names] for v, names in finished.items()
    }
    corpus = {f"{v}_{n}": m for v, names in finished.items() for n, m in zip(names, masks[v], strict=True)}
    check_cvat_archive(exports.read_bytes(EXPORT_FILES["cvat"]), corpus)
    # ... and one per video, images named as CVAT names a video task's frames.
    assert sorted(exports.list("cvat")) == ["cat.zip", "dog.zip"]
    for video in finished:
        frames = {f"frame_{t:06d}": m for t, m in enumerate(masks[video])}
        check_cvat_archive(exports.read_bytes(EXPORT_FILES["cvat_video"].format(video=video)), frames)

    # A rerun rewrites the same files.
    files = [EXPORT_FILES["coco"], EXPORT_FILES["cvat"], "cvat/cat.zip", "cvat/dog.zip"]
    before = {name: exports.read_bytes(name) for name in files}
    main(["--input", storage_url, "--formats", "coco,cvat,cvat_video"])
    assert {name: exports.read_bytes(name) for name in files} == before


def test_export_outputs_for_segment_one_format_a_subset_and_the_overlay_index(tmp_path):
    url = str(tmp_path / "seg")
    write_segment_outputs(url, overlay_video="dog")
    root = open_storage(url)
    result = export_outputs(root, ["coco"], videos=["dog", "fox"], category="person")
    assert result["videos"] == 1 and not result["rejected"]
    assert set(result["files"]) == {"coco"} and not root.exists(f"exports/{EXPORT_FILES['cvat']}")
    doc = root.child("exports").read_json(EXPORT_FILES["coco"])
    assert [v["name"] for v in doc["videos"]] == ["dog"] and doc["categories"][0]["name"] == "person"
    with pytest.raises(ValueError, match="unknown export formats"):
        export_outputs(root, ["voc"])

    # fox never finished: naming it is a user error (exit status 2), found before anything is written
    with pytest.raises(UserError, match=r"videos: 1 not finished in .*seg \(no done marker\): fox"):
        main(["--input", url, "--output", str(tmp_path / "out"), "--videos", "dog,fox", "--formats", "cvat"])
    assert not (tmp_path / "out").exists()
    summary = main(
        ["--input", url, "--output", str(tmp_path / "out"), "--videos", "dog", "--formats", "cvat"]
    )
    assert summary["counts"]["video"] == {"done": 1, "skipped": 0, "rejected": 0}
    page = root.read_text(OVERLAY_INDEX)
    assert summary["figures"]["overlay_index"] == root.join(OVERLAY_INDEX)
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs == ["dog.mp4"] and root.exists("overlays/dog.mp4")
    assert "4 frames" in page and "10 fps" in page
    assert summary["figures"]["exported_frames"] == 4 and "cvat_file" in summary["figures"]


def test_export_job_errors_are_one_line_naming_the_input(tmp_path, capsys):
    from jobs.export import main as export_main
    from pipeline.cli import run_job_main

    assert run_job_main(export_main, ["--input", str(tmp_path / "nothing")]) == 2
    assert f"input {tmp_path / 'nothing'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # an input is never created
    assert run_job_main(export_main, ["--input", str(tmp_path), "--formats", "voc"]) == 2
    assert "'formats[0]'" in capsys.readouterr().err


def test_export_config_errors_name_the_field():
    from pipeline.config import ConfigError
    from pipeline.export.config import ExportConfig

    with pytest.raises(ConfigError, match=r"'formats\[1\]'"):
        ExportConfig(input="x", formats=["coco", "voc"])
    with pytest.raises(ConfigError, match="'input'"):
        ExportConfig()
    with pytest.raises(ConfigError, match="'category'"):
        ExportConfig(input="x", category="a:b")


def test_cvat_names_that_would_clash_across_videos_are_refused():
    from pipeline.formats.cvat import CvatMaskWriter, MaskPngEncoder
    from pipeline.formats.finished import FinishedVideo, FrameRle
    from pipeline.masks import mask_to_rle

    empty = mask_to_rle(np.zeros((4, 4), bool))
    first = FinishedVideo("a_b", {}, [FrameRle(0, "c", empty, 0)])
    clash = FinishedVideo("a", {}, [FrameRle(0, "b_c", empty, 0)])
    spaced = FinishedVideo("d", {}, [FrameRle(0, "x y", empty, 0)])
    writer, encoder = CvatMaskWriter("object"), MaskPngEncoder(threads=1)
    try:
        assert writer.check(first) is None
        writer.add(first, encoder.encode(first))
        assert "'a_b_c' is also a frame of video 'a_b'" in writer.check(clash)
        assert "space" in writer.check(spaced)
    finally:
        writer.abort()
        encoder.close()


def test_a_damaged_done_marker_does_not_stop_the_overlay_index_or_the_summary(tmp_path):
    url = str(tmp_path / "seg")
    write_segment_outputs(url, overlay_video="dog")
    root = open_storage(url)
    root.write_json("done/dog.json", {"frames": "many", "fps": "fast", "width": None, "height": [1]})
    summary = main(["--input", url, "--formats", "coco"])
    assert 'href="dog.mp4"' in root.read_text(OVERLAY_INDEX)  # listed, without the details it cannot read
    assert root.child("exports").read_json("summary.json")["job"] == "export"
    assert summary["figures"]["overlay_index"] == root.join(OVERLAY_INDEX)


def test_export_takes_a_lease_on_its_output_and_leaves_the_index_to_a_running_segment(
    tmp_path, s3_bucket, capsys
):
    from pipeline.cli import run_job_main

    url = str(tmp_path / "seg")
    write_segment_outputs(url, overlay_video="dog")
    out = str(tmp_path / "out")
    with OutputLease(out, job="export"):  # another export run writes there
        with pytest.raises(LeaseHeldError, match="job export"):
            main(["--input", url, "--output", out])
    root = open_storage(url)
    with OutputLease(root, job="segment"):  # a segment run still writes the input: its index is its own
        summary = main(["--input", url, "--output", out, "--formats", "coco"])
    assert not root.exists(OVERLAY_INDEX) and "overlay_index" not in summary["figures"]
    assert summary["skipped"][0]["name"] == root.join(OVERLAY_INDEX)
    assert "being written by another run" in summary["skipped"][0]["reason"]
    # An output on a bucket root is refused before anything is written: one line, exit status 2.
    capsys.readouterr()  # what the runs above logged
    assert run_job_main(main, ["--input", url, "--output", s3_bucket]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output {s3_bucket} is a bucket root" in err


def test_an_rle_table_naming_a_frame_outside_its_video_is_rejected_by_name(tmp_path):
    import pyarrow as pa

    url = str(tmp_path / "seg")
    write_segment_outputs(url)
    root = open_storage(url)
    table = root.read_parquet("rle/dog.parquet")
    frames = table.column("frame").to_pylist()
    frames[0] = "../../escape"
    root.write_parquet(
        "rle/dog.parquet", table.set_column(table.schema.get_field_index("frame"), "frame", pa.array(frames))
    )
    summary = main(["--input", url, "--formats", "cvat,cvat_video"])
    rejected = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert "'../../escape'" in rejected["dog"] and "path separator" in rejected["dog"]
    assert summary["counts"]["video"]["done"] == 1  # cat
    names = zipfile.ZipFile(io.BytesIO(root.read_bytes(f"exports/{EXPORT_FILES['cvat']}"))).namelist()
    assert not any("escape" in n for n in names) and not root.exists("exports/cvat/dog.zip")

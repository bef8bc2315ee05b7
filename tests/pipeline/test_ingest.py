"""Corpus formats, the manifest and the video loader (validation and repair), on real files."""

import json
import logging

import numpy as np
import pytest

from pipeline.dataset.job import plan_groups
from pipeline.dataset.stages import clip_spans
from pipeline.ingest.formats import IngestError, detect_format, detect_layout, natural_key, safe_name
from pipeline.ingest.load import VideoRejected, load_video
from pipeline.ingest.manifest import assign_val_split, list_corpus, manifest_table
from pipeline.storage import open_storage
from tests.archives import write_fbms, write_hmhi, write_ytobj, write_ytvos
from tests.media import (
    make_scene,
    truncate_file,
    upload_tree,
    write_davis,
    write_frames_folder,
    write_jpeg,
    write_mp4,
)


def _touch(root, *rels, data=b"x"):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_safe_names_are_unique_and_path_safe():
    assert safe_name("bear") == "bear"
    assert safe_name("bike-packing_2") == "bike-packing_2"
    for bad in ("car shadow", "café", "../../etc", "a.b", "日本", ""):
        s = safe_name(bad)
        assert s and all(c.isalnum() or c in "_-" for c in s) and s.isascii(), s
    assert safe_name("a b") != safe_name("a_b")  # sanitised names keep a hash of the original
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]


def test_davis2016_layout_splits_and_masks(tmp_path):
    write_davis(
        tmp_path,
        {"bear": 3, "car shadow": 3, "cows": 2},
        splits={"train": ["bear", "car shadow"], "val": ["cows"]},
    )
    listing = list_corpus(open_storage(str(tmp_path)))
    assert listing.format == "davis2016"
    by = {r.name: r for r in listing.records}
    assert by["bear"].split == "train" and by["cows"].split == "test"  # DAVIS val is the reported test set
    assert by["cows"].source_split == "val"
    # Validation is carved out of train, deterministically, and never out of the test set.
    assert assign_val_split(listing.records, 0.5) == 1
    assert sorted(r.split for r in listing.records) == ["test", "train", "val"] and by["cows"].split == "test"
    assert by["car shadow"].split == "train" and by["car shadow"].video_id.startswith("car_shadow-")
    assert by["bear"].frames == [f"JPEGImages/480p/bear/{i:05d}.jpg" for i in range(3)]
    assert by["bear"].masks == {i: f"Annotations/480p/bear/{i:05d}.png" for i in range(3)}


def test_davis2017_palette_masks_become_one_foreground(tmp_path):
    gt = write_davis(tmp_path, {"dogs": 3, "goat": 2}, splits={"train": ["dogs"], "val": ["goat"]}, year=2017)
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "davis2017"
    rec = {r.name: r for r in listing.records}["dogs"]
    assert rec.split == "train"
    video = load_video(st, rec)
    assert np.array_equal(video.masks, gt["dogs"][1])  # objects 1 and 2 merged
    assert video.mask_valid.all()


def test_other_layouts_are_detected_and_read(tmp_path):
    frames = tmp_path / "frames"
    _touch(frames, "a/f1.png", "a/f10.png", "a/f2.png", "b/c/x.jpg")
    listing = list_corpus(open_storage(str(frames)))
    assert listing.format == "frames"
    assert [r.frames for r in listing.records][0] == ["a/f1.png", "a/f2.png", "a/f10.png"]

    vids = tmp_path / "vids"
    _touch(vids, "x/one.mp4", "two.MKV", "Annotations/one/00003.png")
    listing = list_corpus(open_storage(str(vids)))
    assert listing.format == "videos"
    assert {r.video_id: r.masks for r in listing.records} == {
        "two": {},
        "x__one": {3: "Annotations/one/00003.png"},
    }

    with pytest.raises(IngestError, match="cannot detect"):
        detect_format(["readme.txt"])
    with pytest.raises(IngestError, match="JPEGImages/480p"):
        list_corpus(open_storage(str(vids)), "davis2016")


def test_synthetic_corpus_ingests_as_davis2016(tmp_path):
    from pipeline.synthetic import SyntheticConfig, generate_corpus

    generate_corpus(SyntheticConfig(out=str(tmp_path), videos=3, frames=6, size="48x64", val_fraction=0.34))
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "davis2016"
    assert len(listing.records) == 3 and {r.split for r in listing.records} == {"train", "test"}
    video = load_video(st, listing.records[0])
    assert video.frames.shape == (6, 48, 64, 3) and video.mask_valid.all() and video.masks.any()


def test_val_split_is_deterministic_and_never_takes_test_videos(tmp_path):
    for i in range(10):
        _touch(tmp_path, f"v{i}/0.jpg")
    a = list_corpus(open_storage(str(tmp_path))).records
    b = list_corpus(open_storage(str(tmp_path))).records
    a[0].split = "test"
    b[0].split = "test"
    assert assign_val_split(a, 0.3) == 3 == assign_val_split(b, 0.3)
    assert [r.split for r in a] == [r.split for r in b]
    assert a[0].split == "test"
    assert assign_val_split(a, 0.5) == 0  # the corpus now has a val split: left alone
    table = manifest_table(a, {})
    assert table.num_rows == 10 and set(table.column_names) >= {
        "video_id",
        "split",
        "frame_count",
        "height",
        "width",
        "fps",
        "annotated_frames",
    }


def test_clip_spans_cover_every_frame_once():
    assert clip_spans(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert clip_spans(32, 32) == [(0, 32)]
    assert clip_spans(40, 32) == [(0, 20), (20, 40)]
    for n in range(1, 70):
        spans = clip_spans(n, 8)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(e - s <= 8 for s, e in spans)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_plan_groups_spreads_a_small_corpus_over_every_worker():
    def pending(n):
        ids = [f"v{i:02d}" for i in reversed(range(n))]  # any order in, video-id order out
        return [{"video_id": v, "record": json.dumps({"video_id": v}), "skip_keys": "[]"} for v in ids]

    def members(groups):
        return [[json.loads(v["record"])["video_id"] for v in json.loads(g["videos"])] for g in groups]

    def sizes(groups):
        return [len(m) for m in members(groups)]

    assert sizes(plan_groups(pending(6), group_videos=16, workers=2)) == [3, 3]  # not one group of 6
    assert sizes(plan_groups(pending(24), group_videos=16, workers=2)) == [12, 12]  # not 16 + 8
    assert sizes(plan_groups(pending(40), group_videos=16, workers=2)) == [13, 14, 13]  # at most 16 each
    assert sizes(plan_groups(pending(1), group_videos=16, workers=4)) == [1]
    assert plan_groups([], group_videos=16, workers=2) == []
    groups = plan_groups(pending(7), group_videos=2, workers=2)
    assert sum(members(groups), []) == [f"v{i:02d}" for i in range(7)]  # every video once, in order
    assert max(sizes(groups)) <= 2
    assert [g["group"] for g in groups] == [
        g["group"] for g in plan_groups(pending(7), 2, 2)
    ]  # deterministic


def _frames_record(tmp_path, name, frames):
    write_frames_folder(tmp_path, name, frames)
    listing = list_corpus(open_storage(str(tmp_path)), "frames")
    return {r.name: r for r in listing.records}[name]


def test_loader_rejects_bad_videos_naming_the_file(tmp_path):
    st = open_storage(str(tmp_path))
    frames, _ = make_scene(4, (32, 48))
    rec = _frames_record(tmp_path, "trunc", frames)
    truncate_file(tmp_path / "trunc" / "frame_2.jpg", 0.6)
    with pytest.raises(VideoRejected, match=r"'trunc'.*frame_2\.jpg.*truncated"):
        load_video(st, rec)

    rec = _frames_record(tmp_path, "sizes", frames)
    write_jpeg(tmp_path / "sizes" / "frame_3.jpg", make_scene(1, (40, 48))[0][0])
    with pytest.raises(VideoRejected, match=r"'sizes'.*frame_3\.jpg is 48x40.*different sizes"):
        load_video(st, rec)

    rec = _frames_record(tmp_path, "single", frames[:1])
    with pytest.raises(VideoRejected, match=r"'single'.*only 1 frame"):
        load_video(st, rec)

    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "0.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg\xff\xd9")
    (tmp_path / "garbage" / "1.jpg").write_bytes(b"")
    rec = {r.name: r for r in list_corpus(st, "frames").records}["garbage"]
    with pytest.raises(VideoRejected, match=r"'garbage'.*0\.jpg cannot be decoded"):
        load_video(st, rec)

    vids = tmp_path / "v"
    vids.mkdir()
    (vids / "empty.mp4").write_bytes(b"")
    (vids / "junk.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"junk" * 200)
    write_mp4(vids / "one.mp4", frames[:1])
    vst = open_storage(str(vids))
    recs = {r.name: r for r in list_corpus(vst).records}
    with pytest.raises(VideoRejected, match=r"empty\.mp4 is empty"):
        load_video(vst, recs["empty"])
    with pytest.raises(VideoRejected, match=r"junk\.webm"):
        load_video(vst, recs["junk"])
    with pytest.raises(VideoRejected, match=r"only 1 frame"):
        load_video(vst, recs["one"])


def test_loader_repairs_masks_with_warnings(tmp_path):
    import cv2

    write_davis(tmp_path, {"m": 4}, size=(32, 48))
    ann = tmp_path / "Annotations" / "480p" / "m"
    cv2.imwrite(str(ann / "00001.png"), np.full((64, 96), 255, np.uint8))  # twice the size: resized
    cv2.imwrite(str(ann / "00002.png"), np.full((10, 10), 255, np.uint8))  # other aspect ratio: dropped
    grey = np.zeros((32, 48), np.uint8)
    grey[:, :10], grey[:, 10:20] = 100, 200
    cv2.imwrite(str(ann / "00003.png"), grey)  # non-binary: any non-zero is foreground
    st = open_storage(str(tmp_path))
    video = load_video(st, list_corpus(st).records[0])
    assert video.mask_valid.tolist() == [True, True, False, True]
    assert video.masks[1].all() and video.masks[3].sum() == 32 * 20
    text = "\n".join(video.warnings)
    assert "00001.png is 96x64" in text and "resized" in text
    assert "00002.png" in text and "dropped" in text
    assert "00003.png has 3 values" in text


def test_loader_reads_from_s3(s3_bucket, tmp_path):
    gt = write_davis(tmp_path / "c", {"bear": 3}, size=(32, 48))
    write_mp4(tmp_path / "v" / "clip.mp4", gt["bear"][0])
    upload_tree(tmp_path / "c", f"{s3_bucket}/c")
    upload_tree(tmp_path / "v", f"{s3_bucket}/v")
    st = open_storage(f"{s3_bucket}/c")
    video = load_video(st, list_corpus(st).records[0])
    assert np.array_equal(video.frames, gt["bear"][0]) and np.array_equal(video.masks, gt["bear"][1])
    vst = open_storage(f"{s3_bucket}/v")
    video = load_video(vst, list_corpus(vst).records[0])
    assert video.frames.shape == (3, 32, 48, 3) and video.fps == pytest.approx(10.0)


def test_loader_rejects_videos_over_the_memory_budget(tmp_path):
    frames, _ = make_scene(6, (32, 48))
    rec = _frames_record(tmp_path, "long", frames)
    write_mp4(tmp_path / "v" / "long.mp4", frames)
    st = open_storage(str(tmp_path))
    budget_mb = 4 * 32 * 48 * 3 / 2**20  # room for 4 frames
    with pytest.raises(VideoRejected, match=r"'long'.*6 frames of 48x32 exceed"):
        load_video(st, rec, max_video_mb=budget_mb)
    assert load_video(st, rec, max_video_mb=1).frames.shape == (6, 32, 48, 3)
    vst = open_storage(str(tmp_path / "v"))
    with pytest.raises(VideoRejected, match=r"5 frames of 48x32 exceed"):  # stops decoding at budget + 1
        load_video(vst, list_corpus(vst).records[0], max_video_mb=budget_mb)


# -- the real archives, written as distributed (tests/archives.py) ------------------------------------------------


@pytest.mark.parametrize("naming", ["code", "readme"])
def test_official_hmhi_archive_both_namings(tmp_path, naming):
    """ZhengxyFlow/HMHI-Net utils/dataloader.py reads <root>/frame|flow|mask/<split>/<video>/; its README documents
    Images|Flows|Annotations/<split>/<video>/. Frames, same-named flow pictures and masks all come through."""
    truth = write_hmhi(tmp_path, naming)
    frame_dir, flow_dir, mask_dir = (
        ("frame", "flow", "mask") if naming == "code" else ("Images", "Flows", "Annotations")
    )
    st = open_storage(str(tmp_path))
    files = st.list("", recursive=True)
    assert detect_format(files) == "hmhi"  # not plain "frames": the flow and mask folders are not videos
    listing = list_corpus(st)
    by = {r.name: r for r in listing.records}
    assert sorted(by) == ["bear", "blackswan"]
    bear, swan = by["bear"], by["blackswan"]
    assert (bear.split, bear.source_split, swan.split, swan.source_split) == ("train", "train", "test", "val")
    assert swan.frames == [f"{frame_dir}/val/blackswan/blackswan_{t:05d}.jpg" for t in range(4)]
    assert swan.flows == [f"{flow_dir}/val/blackswan/blackswan_{t:05d}.jpg" for t in range(4)]
    assert swan.masks == {t: f"{mask_dir}/val/blackswan/blackswan_{t:05d}.png" for t in range(4)}
    video = load_video(st, swan)
    assert np.array_equal(video.frames, truth["blackswan"][0]) and np.array_equal(
        video.masks, truth["blackswan"][1]
    )
    # the README's data/ folder holds several archives side by side: not taken as folders of frames
    with pytest.raises(IngestError, match=r"DAVIS-16 hold official HMHI-Net archives.*input root"):
        detect_format([f"DAVIS-16/{f}" for f in files])
    # a frame without its flow picture: the video keeps no flow pictures (and says so) rather than misalign them
    (tmp_path / flow_dir / "val" / "blackswan" / "blackswan_00003.jpg").unlink()
    assert {r.name: r for r in list_corpus(st).records}["blackswan"].flows == []


def test_davis2016_as_distributed(tmp_path):
    """DAVIS-2016 (davis-2016 toolkit): JPEGImages/480p, Annotations/480p (0/255), ImageSets/480p/*.txt lines
    '/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png'."""
    truth = write_davis(
        tmp_path, {"bear": 3, "blackswan": 3}, size=(24, 32), splits={"train": ["bear"], "val": ["blackswan"]}
    )
    assert (tmp_path / "ImageSets/480p/val.txt").read_text().splitlines()[
        0
    ] == "/JPEGImages/480p/blackswan/00000.jpg /Annotations/480p/blackswan/00000.png"
    both = (tmp_path / "ImageSets/480p/train.txt").read_text() + (
        tmp_path / "ImageSets/480p/val.txt"
    ).read_text()
    (tmp_path / "ImageSets/480p/trainval.txt").write_text(
        both
    )  # shipped too: the union, which changes nothing
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "davis2016"
    by = {r.name: r for r in listing.records}
    assert (by["bear"].split, by["blackswan"].split, by["blackswan"].source_split) == ("train", "test", "val")
    assert by["blackswan"].flows == []
    video = load_video(st, by["blackswan"])
    assert np.array_equal(video.masks, truth["blackswan"][1]) and video.mask_valid.all()


def test_archive_unpacked_into_one_folder(tmp_path):
    """A zip that unpacks into a folder (DAVIS-2016's into DAVIS/): the archive inside is found, paths stay relative
    to the given root; plain folders of frames stay plain folders."""
    write_davis(
        tmp_path / "DAVIS",
        {"bear": 2, "blackswan": 2},
        size=(24, 32),
        splits={"train": ["bear"], "val": ["blackswan"]},
    )
    st = open_storage(str(tmp_path))
    assert detect_layout(st.list("", recursive=True)) == ("davis2016", "DAVIS/")
    listing = list_corpus(st)
    by = {r.name: r for r in listing.records}
    assert listing.format == "davis2016" and by["blackswan"].split == "test"  # ImageSets read inside DAVIS/
    assert by["bear"].frames[0] == "DAVIS/JPEGImages/480p/bear/00000.jpg"
    assert load_video(st, by["bear"]).mask_valid.all()
    write_hmhi(tmp_path / "data" / "DAVIS-16", "readme")  # the official README's data/<dataset>/ tree
    assert list_corpus(open_storage(str(tmp_path / "data"))).format == "hmhi"
    _touch(tmp_path / "plain", "clips/a/0.jpg", "clips/a/1.jpg")
    assert detect_layout(open_storage(str(tmp_path / "plain")).list("", recursive=True)) == ("frames", "")


def test_fbms59_as_distributed(tmp_path):
    """FBMS-59 (ISCAS007/torchseg dataset/fbms_dataset.py): Trainingset/Testset, frames <seq>_NN.jpg, sparse
    GroundTruth/<seq>_NNNN_gt.pgm (black background) or .ppm (white background; *PROB_gt.ppm skipped), placed on
    their frames by <seq>Def.dat (alex-xun-xu/LearnSubspaceMoSeg Dataset/FBMS/collect_dataset.py: 'Frame number'
    is the 0-based frame of the shot, 'File name' its ground truth), multi-object masks merged."""
    truth = write_fbms(tmp_path)
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "fbms"
    by = {r.name: r for r in listing.records}
    assert [(r.name, r.split) for r in listing.records] == [
        ("bear01", "train"),
        ("cars1", "test"),
        ("dogs01", "test"),
        ("tennis", "test"),
    ]
    assert by["cars1"].frames[0] == "Testset/cars1/cars1_01.jpg"
    assert by["cars1"].masks == {
        0: "Testset/cars1/GroundTruth/cars1_0001_gt.pgm",
        3: "Testset/cars1/GroundTruth/cars1_0004_gt.pgm",
        6: "Testset/cars1/GroundTruth/cars1_0007_gt.pgm",
    }
    assert sorted(by["dogs01"].masks) == [0, 3, 6] and all(
        "PROB" not in m for m in by["dogs01"].masks.values()
    )
    # tennis: frames tennis000.jpg..., ground truth numbered from 1; Def.dat puts tennis002_gt.pgm on frame 1
    assert by["tennis"].frames[1] == "Testset/tennis/tennis001.jpg"
    assert by["tennis"].masks == {
        1: "Testset/tennis/GroundTruth/tennis002_gt.pgm",
        4: "Testset/tennis/GroundTruth/tennis005_gt.pgm",
    }
    for name in ("cars1", "dogs01", "tennis"):
        video = load_video(st, by[name])
        _, masks, annotated = truth[name]
        assert video.mask_valid.tolist() == [t in annotated for t in range(7)]
        for (
            t
        ) in annotated:  # white .ppm background, black .pgm one; tennis's two grey objects are one foreground
            assert np.array_equal(video.masks[t], masks[t]), (name, t)


def test_fbms59_without_or_with_a_broken_definition_file(tmp_path, caplog):
    """Without <seq>Def.dat a mask goes to the frame of the same number; an unreadable one is named in a warning
    and the same rule applies (the sequence is still read)."""
    write_fbms(tmp_path)
    (tmp_path / "Testset" / "cars1" / "GroundTruth" / "cars1Def.dat").unlink()
    (tmp_path / "Testset" / "tennis" / "GroundTruth" / "tennisDef.dat").write_text("Frame number:\none\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.formats"):
        by = {r.name: r for r in list_corpus(open_storage(str(tmp_path))).records}
    assert sorted(by["cars1"].masks) == [0, 3, 6]
    assert sorted(by["tennis"].masks) == [2, 5]  # by number: what Def.dat corrects
    assert "tennisDef.dat line 2: frame number 'one' is not an integer" in caplog.text


@pytest.mark.parametrize("layout", ["class", "top"])
def test_youtube_objects_uvos_archive(tmp_path, layout):
    """YouTube-Objects as UVOS code reads it (suhwan-cho/TMO dataset_loaders/ytobj.py and dataset/ytobj.py): per-class
    folders, sparse masks, JPEGFlows flow pictures; the class is kept."""
    truth = write_ytobj(tmp_path, layout)
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "ytobj"
    by = {r.video_id: r for r in listing.records}
    assert sorted(by) == ["aeroplane_0001", "aeroplane_0002", "cat_0001"]
    cat = by["cat_0001"]
    assert (cat.category, cat.split, cat.name) == ("cat", "test", "cat/0001")
    assert sorted(cat.masks) == [1, 4] and len(cat.flows) == 6
    # the official archives' form: the annotated frames only, with their flow pictures and masks
    sparse = cat.annotated_only()
    assert sparse.frames == [cat.frames[1], cat.frames[4]] and sparse.flows == [cat.flows[1], cat.flows[4]]
    assert sparse.masks == {0: cat.masks[1], 1: cat.masks[4]} and cat.frames != sparse.frames
    row = {r["video_id"]: r for r in manifest_table(listing.records, {}).to_pylist()}["cat_0001"]
    assert (row["category"], row["flow_pictures"], row["annotated_frames"]) == ("cat", True, [1, 4])
    video = load_video(st, cat)
    assert video.mask_valid.tolist() == [t in (1, 4) for t in range(6)]
    assert np.array_equal(video.masks[4], truth["cat_0001"][1][4])


def test_youtube_vos_skips_all_frames_duplicates(tmp_path):
    """YouTube-VOS 2018/2019: train/valid JPEGImages + palette Annotations + meta.json; train_all_frames (the same
    videos at 30 fps) is not read."""
    truth = write_ytvos(tmp_path)
    st = open_storage(str(tmp_path))
    listing = list_corpus(st)
    assert listing.format == "ytvos"
    assert [(r.name, r.split, r.source_split) for r in listing.records] == [
        ("003234408d", "train", "train"),
        ("0062f687f1", "test", "valid"),
    ]
    train, valid = listing.records
    assert train.frames == [f"train/JPEGImages/003234408d/{5 * t:05d}.jpg" for t in range(3)]
    assert sorted(train.masks) == [0, 1, 2] and sorted(valid.masks) == [0]
    video = load_video(st, train)
    assert np.array_equal(video.masks, truth["003234408d"][1])  # both palette objects are foreground

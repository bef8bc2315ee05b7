"""A full local temporary disk at job level (issue 14): ``segment`` and the flow job on a corpus of mp4 videos in S3
download each video to a temporary folder; with TMPDIR on a full disk, for the driver and its Ray workers, every video is
reported with an error naming the disk and TMPDIR, nothing is published for it, and a rerun with space completes.
"""

from __future__ import annotations

import os

import pytest

from pipeline.storage import open_storage
from tests.faults.driver import finish_driver, start_driver
from tests.faults.test_storage_faults import _fill
from tests.media import make_scene, upload_tree, write_mp4

pytestmark = pytest.mark.usefixtures("ray_cluster")

FREE = 4096
"""Bytes left free on the small disk (one tmpfs page): room for tempfile's probe and temporary folders, not for a
video."""


def _mp4_corpus(tmp_path, url: str) -> None:
    for k, name in enumerate(("a", "b")):
        write_mp4(tmp_path / "c" / f"{name}.mp4", make_scene(5, (96, 160), seed=k)[0])
        assert (tmp_path / "c" / f"{name}.mp4").stat().st_size > 2 * FREE  # cannot fit in what is left free
    upload_tree(tmp_path / "c", url)


def _almost_fill(disk) -> None:
    """Fill ``disk`` but for ``FREE`` bytes.

    Almost full rather than full: Python's tempfile probes TMPDIR by writing to it and silently falls back to /tmp
    when that fails, so a completely full TMPDIR would never be used. A disk that fills up during a download is the
    real case anyway."""
    _fill(disk)
    filler = disk / "filler"
    os.truncate(filler, filler.stat().st_size - FREE)


def _assert_disk_full_reasons(rejected: list[dict], disk) -> None:
    assert sorted(r["name"] for r in rejected) == ["a", "b"]
    for r in rejected:
        # The video, the disk and the way out, as LocalDiskFullError words them.
        assert f"video '{r['name']}'" in r["reason"], r
        assert f"no space left on the local disk holding {disk}" in r["reason"], r
        assert "TMPDIR" in r["reason"], r
    # No download folder left behind on the full disk (torch makes its own cache folder there: not ours).
    assert not [n for n in os.listdir(disk) if n.startswith("hmhi-")]


def test_flow_job_on_a_full_temporary_disk_names_it_and_a_rerun_completes(
    s3_bucket, tmp_path, ray_cluster, tiny_disk
):
    from pipeline.shards import read_index

    corpus, out = f"{s3_bucket}/videos", f"{s3_bucket}/out"
    _mp4_corpus(tmp_path, corpus)
    args = ["--input", corpus, "--output", out, "--clip-length", "4", "--concurrency", "1"]
    tmp = {"TMPDIR": str(tiny_disk)}

    _almost_fill(tiny_disk)
    # The job goes on: bad videos are reported, not fatal; with every video rejected it exits with status 1.
    log_text = finish_driver(start_driver(ray_cluster, tmp, args, **tmp), status=1)
    st = open_storage(out)
    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 0, "skipped": 0, "rejected": 2}, log_text[-3000:]
    # Which of the group's local files met the full disk first (a video's download or the group's shard) varies.
    _assert_disk_full_reasons(summary["rejected"], tiny_disk)
    assert read_index(out).num_rows == 0  # nothing committed
    assert not st.isdir("shards") or not st.list("shards")  # and no shard published

    # The way out the error gives: TMPDIR on a larger disk (this job builds its shards there; 256 KiB is too small
    # for them even when empty). The rerun completes.
    log_text = finish_driver(start_driver(ray_cluster, {}, args))
    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 0}, log_text[-3000:]
    assert set(read_index(out).column("video_id").to_pylist()) == {"a", "b"}


def test_segment_on_a_full_temporary_disk_names_it_and_a_rerun_completes(
    s3_bucket, tmp_path, ray_cluster, tiny_disk, tiny_checkpoint
):
    corpus = f"{s3_bucket}/videos"
    _mp4_corpus(tmp_path, corpus)
    out = f"{s3_bucket}/seg"
    args = [
        "--input",
        corpus,
        "--output",
        out,
        "--checkpoint",
        tiny_checkpoint,
        "--input-size",
        "64",
        "--num-actors",
        "1",
        "--set",
        "flow.preset=ultrafast",
        "--precision",
        "fp32",
    ]
    tmp = {"TMPDIR": str(tiny_disk)}

    _almost_fill(tiny_disk)
    # The job goes on: bad videos are reported, not fatal; with every video rejected it exits with status 1.
    log_text = finish_driver(start_driver(ray_cluster, tmp, args, job="jobs.segment", **tmp), status=1)
    st = open_storage(out)
    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 0, "skipped": 0, "rejected": 2}, log_text[-3000:]
    _assert_disk_full_reasons(summary["rejected"], tiny_disk)
    assert all(f"{corpus}/{r['name']}.mp4" in r["reason"] for r in summary["rejected"])  # its download failed
    assert not st.isdir("done") or not st.list("done")  # nothing marked done
    assert not st.isdir("masks") or not st.list("masks", recursive=True)  # nothing half-written published

    os.remove(tiny_disk / "filler")  # space again: a rerun, still with TMPDIR on the small disk, completes
    log_text = finish_driver(start_driver(ray_cluster, tmp, args, job="jobs.segment", **tmp))
    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 0}, log_text[-3000:]
    assert st.list("done") == ["a.json", "b.json"]
    assert len(st.list("masks/a")) == len(st.list("masks/b")) == 5

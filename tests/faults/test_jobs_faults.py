"""Jobs against a faulty S3 (the fault proxy in front of moto) and against a second run on the same output.

The faulty run is a separate driver attached to the session's Ray cluster, with ``AWS_ENDPOINT_URL`` pointing at
the proxy for the driver *and* its Ray workers (a job runtime env), so that every read and write of the job, in
the driver and in the Ray Data stages, goes through the faults.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from jobs.precompute_flow import main as flow_main
from pipeline.lease import LEASE_NAME, LeaseHeldError
from pipeline.shards import read_index, verify_shard
from pipeline.storage import open_storage
from tests.faults.conftest import ISSUE_PLAN
from tests.faults.driver import finish_driver, start_driver
from tests.media import upload_tree, write_davis

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _shards_and_index(url: str) -> tuple[dict[str, bytes], list[dict]]:
    st = open_storage(url)
    index = read_index(url)
    for shard, checksum in set(
        zip(index.column("shard").to_pylist(), index.column("shard_sha256").to_pylist(), strict=True)
    ):
        verify_shard(st.join(shard), checksum)
    return {n: st.read_bytes(f"shards/{n}") for n in st.list("shards")}, index.to_pylist()


def test_flow_job_under_faults_equals_a_clean_run_and_refuses_a_second_run(
    s3_bucket, tmp_path, ray_cluster, fault_proxy
):
    write_davis(tmp_path / "c", {f"v{i}": 6 for i in range(3)}, size=(48, 64))
    corpus = f"{s3_bucket}/corpus"
    upload_tree(tmp_path / "c", corpus)
    args = ["--clip-length", "3", "--shard-size-mb", "0.01", "--concurrency", "1"]

    # The first run, under the issue's faults (10% 503/500, 1% cut bodies) plus some latency.
    fault_proxy.set_plan(ISSUE_PLAN, latency_s=0.02)
    faulty_out = f"{s3_bucket}/faulty"
    first = start_driver(
        ray_cluster,
        {"AWS_ENDPOINT_URL": fault_proxy.endpoint_url},
        ["--input", corpus, "--output", faulty_out, *args],
        AWS_ENDPOINT_URL=fault_proxy.endpoint_url,
    )
    try:
        # A second run on the same output, started while the first holds its lease, is refused by name.
        st = open_storage(faulty_out)
        deadline = time.time() + 240
        while not st.exists(LEASE_NAME) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[0][-3000:]
        # Paused meanwhile (its lease stays held: a live holder, well within the 120 s TTL): this tiny run may
        # otherwise finish and release its lease in the seconds the second run's pre-flight takes on a loaded
        # machine.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LeaseHeldError, match=f"job precompute_flow run .* pid {first.pid}, started"):
                flow_main(["--input", corpus, "--output", faulty_out, *args])
        finally:
            os.kill(first.pid, signal.SIGCONT)
        log_text = finish_driver(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert fault_proxy.faults > 0 and fault_proxy.counts["requests"] > 50, fault_proxy.counts
    assert (
        fault_proxy.seen("GET", ".jpg") >= 18
    )  # the Ray Data stages' frame reads went through the faults too
    assert "RETRIES {" in log_text and "'s3_request'" in log_text  # the driver retried some of its requests
    assert not st.exists(LEASE_NAME)  # released at the end
    summary = st.read_json("summary.json")
    assert summary["counts"]["video"] == {"done": 3, "skipped": 0, "rejected": 0}
    assert summary["figures"]["storage_retries_s3_request"] > 0  # the summary counts the driver's retries

    # A fault-free run of the same corpus writes exactly the same shards and index rows.
    clean_out = f"{s3_bucket}/clean"
    clean = flow_main(["--input", corpus, "--output", clean_out, *args])
    assert clean["counts"]["video"]["done"] == 3
    faulty_shards, faulty_index = _shards_and_index(faulty_out)
    clean_shards, clean_index = _shards_and_index(clean_out)
    assert faulty_shards == clean_shards and faulty_index == clean_index
    assert len(faulty_index) == 6  # 3 videos x 2 clips, each exactly once


def test_segment_under_faults_writes_the_same_masks_as_a_clean_run(
    s3_bucket, tmp_path, ray_cluster, fault_proxy, tiny_checkpoint
):
    from jobs.segment import main as segment_main

    write_davis(tmp_path / "c", {"bear": 6, "cows": 5}, size=(48, 80))
    corpus = f"{s3_bucket}/corpus"
    upload_tree(tmp_path / "c", corpus)

    def args(out: str) -> list[str]:
        # fp32: this random-init model's probabilities sit within 1e-5 of 0.5, where bf16 rounding decides a mask
        # pixel; the test is about storage faults, so the arithmetic must be exactly repeatable.
        return [
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
            "runtime.videos_in_flight=2",
            "--set",
            "flow.preset=ultrafast",
            "--precision",
            "fp32",
        ]

    fault_proxy.set_plan(ISSUE_PLAN)
    faulty = start_driver(
        ray_cluster,
        {"AWS_ENDPOINT_URL": fault_proxy.endpoint_url},
        args(f"{s3_bucket}/faulty"),
        job="jobs.segment",
        AWS_ENDPOINT_URL=fault_proxy.endpoint_url,
    )
    finish_driver(faulty)
    assert fault_proxy.faults > 0 and fault_proxy.seen("GET", ".jpg") >= 11, fault_proxy.counts
    clean = segment_main(args(f"{s3_bucket}/clean"))
    assert clean["counts"]["video"]["done"] == 2
    a, b = open_storage(f"{s3_bucket}/faulty"), open_storage(f"{s3_bucket}/clean")
    assert a.read_json("summary.json")["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 0}
    names = b.list("masks", recursive=True)
    assert len(names) == 11 and a.list("masks", recursive=True) == names
    assert all(a.read_bytes(f"masks/{n}") == b.read_bytes(f"masks/{n}") for n in names)
    assert a.list("rle") == b.list("rle") and a.list("done") == b.list("done") == ["bear.json", "cows.json"]
    assert not a.exists("_lease.json")

"""One writer per output (pipeline/lease.py) and leftover collection, on local disk and on the moto S3 server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from pipeline.lease import LEASE_NAME, LeaseHeldError, LeaseLostError, OutputLease
from pipeline.storage import S3Options, clean_leftovers, open_storage
from tests.faults.proxy import FaultPlan


def _foreign_lease(st, *, host: str, pid: int, ttl_s: float, run_id: str = "deadbeef0000") -> None:
    now = time.time()
    st.write_json(
        LEASE_NAME,
        {
            "job": "precompute_flow",
            "run_id": run_id,
            "host": host,
            "pid": pid,
            "pid_start": "",
            "started": now,
            "renewed": now,
            "ttl_s": ttl_s,
            "output": st.url,
        },
    )


def test_second_run_is_refused_with_the_holder_named(storage_url):
    st = open_storage(storage_url)
    with OutputLease(st, job="precompute_flow") as first:
        holder = st.read_json(LEASE_NAME)
        assert holder["run_id"] == first.info.run_id and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname() and holder["job"] == "precompute_flow"
        with pytest.raises(
            LeaseHeldError, match=f"run {first.info.run_id} on host {socket.gethostname()} pid {os.getpid()}"
        ) as info:
            OutputLease(st, job="segment").acquire()
        assert st.url in str(info.value)
        assert st.read_json(LEASE_NAME) == holder  # the refused run changed nothing
    assert not st.exists(LEASE_NAME)  # released
    with OutputLease(st, job="segment"):  # and free for the next run
        pass


def test_stale_lease_is_taken_over(storage_url):
    st = open_storage(storage_url)
    st.check()
    # A holder on another host that stopped renewing: taken over once its TTL has passed (store clock, 1 s steps).
    _foreign_lease(st, host="elsewhere.example", pid=12345, ttl_s=3.0)
    with pytest.raises(LeaseHeldError, match="elsewhere.example pid 12345"):
        OutputLease(st, job="segment").acquire()
    time.sleep(4.2)
    with OutputLease(st, job="segment") as lease:
        assert st.read_json(LEASE_NAME)["run_id"] == lease.info.run_id
    # A holder on this host whose process is gone: taken over at once, whatever its TTL (a killed run's rerun).
    dead = subprocess.Popen(["true"])
    dead.wait()
    _foreign_lease(st, host=socket.gethostname(), pid=dead.pid, ttl_s=3600)
    with OutputLease(st, job="segment") as lease:
        assert st.read_json(LEASE_NAME)["run_id"] == lease.info.run_id


def test_renewal_keeps_the_lease_and_a_taken_over_holder_notices(s3_bucket):
    st = open_storage(f"{s3_bucket}/out")
    lease = OutputLease(st, job="segment", ttl_s=3.0, renew_every_s=0.3).acquire()
    try:
        time.sleep(4.5)  # past the TTL: only renewal keeps it
        with pytest.raises(LeaseHeldError):
            OutputLease(st, job="segment").acquire()
        _foreign_lease(st, host="elsewhere.example", pid=1, ttl_s=60)  # another run took it over
        deadline = time.time() + 10
        while not lease.lost and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLostError, match=f"{st.url}/{LEASE_NAME}"):
            lease.check()
    finally:
        lease.release()
    assert st.read_json(LEASE_NAME)["host"] == "elsewhere.example"  # a lost lease is not deleted by its loser


def test_store_without_conditional_writes_falls_back_to_write_then_verify(s3_server, fault_proxy):
    fault_proxy.set_plan(FaultPlan(ignore_conditional_writes=True))
    st = open_storage(
        f"s3://{s3_server.create_bucket('nocond')}/out", S3Options(endpoint_url=fault_proxy.endpoint_url)
    )
    with OutputLease(st, job="segment") as first:
        assert first._conditional is False
        with pytest.raises(LeaseHeldError, match=first.info.run_id):
            OutputLease(st, job="segment").acquire()
    direct = OutputLease(open_storage(f"s3://{s3_server.create_bucket('cond')}"), job="segment").acquire()
    assert direct._conditional is True  # moto honours If-None-Match, as S3 does
    direct.release()


def test_leftovers_are_collected_when_the_lease_is_taken(s3_server, s3_bucket, tmp_path):
    bucket = s3_bucket.removeprefix("s3://")
    client = s3_server.client()
    dangling = []
    for key in ("out/shards/train-000001.tar", "elsewhere/x.bin"):
        up = client.create_multipart_upload(Bucket=bucket, Key=key)
        client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1000)
        dangling.append(key)
    # moto reports every upload as initiated on 2010-11-10 (S3 reports the real time): an older_than before
    # that keeps them all, which is how an upload started after the run's start is kept on S3.
    assert clean_leftovers(open_storage(f"{s3_bucket}/out"), older_than=0)["multipart_uploads_aborted"] == 0
    with OutputLease(open_storage(f"{s3_bucket}/out"), job="precompute_flow") as lease:
        assert lease.leftovers["multipart_uploads_aborted"] == 1
    left = sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert left == ["elsewhere/x.bin"]  # outside the output: not this run's to collect

    root = tmp_path / "out"
    (root / "shards").mkdir(parents=True)
    old = root / "shards" / f".train-000001.tar.tmp-{uuid.uuid4().hex}"
    fresh = root / f".index.parquet.tmp-{uuid.uuid4().hex}"
    keep = root / "shards" / "train-000000.tar"
    for p in (old, fresh, keep):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(keep, (time.time() - 3600, time.time() - 3600))
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))  # written after the run started
    with OutputLease(open_storage(str(root)), job="precompute_flow") as lease:
        assert lease.leftovers["temp_files_removed"] == 1
    assert not old.exists() and fresh.exists() and keep.exists()


def test_lease_file_is_plain_json_naming_the_run(tmp_path):
    st = open_storage(str(tmp_path / "o"))
    with OutputLease(st, job="segment", ttl_s=30) as lease:
        data = json.loads((tmp_path / "o" / LEASE_NAME).read_text())
        assert {"job", "run_id", "host", "pid", "pid_start", "started", "renewed", "ttl_s", "output"} <= set(
            data
        )
        assert data["ttl_s"] == 30 and data["output"] == st.url and lease.acquired_at > 0


def test_decorated_run_holds_the_lease_and_check_lease_sees_a_takeover(tmp_path):
    import pipeline.lease as lease_mod
    from pipeline.lease import check_lease, holds_output_lease

    class Cfg:
        output = str(tmp_path / "o")

    @holds_output_lease("demo")
    def run(cfg):
        st = open_storage(cfg.output)
        assert st.read_json(LEASE_NAME)["job"] == "demo"
        check_lease()  # held: nothing to say
        with pytest.raises(LeaseHeldError, match="job demo"):
            holds_output_lease("demo")(lambda c: None)(cfg)  # a second run, even in this process
        _foreign_lease(st, host="elsewhere.example", pid=1, ttl_s=60)  # taken over while this run stalled
        lease_mod._CURRENT.renew()
        with pytest.raises(LeaseLostError, match="taken over"):
            check_lease()
        return "ran"

    assert run(Cfg()) == "ran"
    check_lease()  # outside a leased run: a no-op
    assert open_storage(Cfg.output).read_json(LEASE_NAME)["host"] == "elsewhere.example"  # the winner's, kept


def test_lease_reads_survive_cut_bodies_and_errors(s3_server, fault_proxy):
    st = open_storage(
        f"s3://{s3_server.create_bucket('cut')}/out", S3Options(endpoint_url=fault_proxy.endpoint_url)
    )
    fault_proxy.set_plan(FaultPlan(seed=5, error_rate=0.3, cut_rate=1.0, max_faults_per_request=2))
    with OutputLease(st, job="segment") as first:
        with pytest.raises(LeaseHeldError, match=first.info.run_id):
            OutputLease(st, job="segment").acquire()
    assert fault_proxy.counts["cut_rst"] + fault_proxy.counts["cut_fin"] >= 2  # the lease GETs were cut
    assert not open_storage(f"s3://{st.root}").exists(LEASE_NAME)  # and the release still happened

"""The local multi-node rehearsal (infra/local/rehearse.py): its process and socket helpers on real processes,
and the whole rehearsal end to end — a Ray head from `ray start --head`, a second node, a moto S3 server, and every
pipeline job submitted with the real `ray job submit` CLI — then nothing left running."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.local.ray_worker_node import WorkerNodeConfig
from infra.local.rehearse import (
    MARKER_ENV,
    STAGES,
    RehearsalConfig,
    Supervisor,
    _decode_proc_addr,
    is_loopback,
    listening_sockets,
    processes_with_marker,
    tcp_sockets,
)
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "hex_addr, expected",
    [
        ("0100007F", "127.0.0.1"),
        ("00000000", "0.0.0.0"),
        ("0000000000000000FFFF00000100007F", "::ffff:127.0.0.1"),
        ("00000000000000000000000001000000", "::1"),
    ],
)
def test_decode_proc_net_addresses(hex_addr, expected):
    if sys.byteorder != "little":
        pytest.skip("the fixtures are in little-endian /proc/net/tcp order")
    assert ipaddress.ip_address(_decode_proc_addr(hex_addr)) == ipaddress.ip_address(expected)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"]))


def test_listening_sockets_sees_a_real_listener():
    with socket.socket() as loop, socket.socket() as wildcard:
        loop.bind(("127.0.0.1", 0))
        loop.listen()
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        found = {s["port"]: s["address"] for s in listening_sockets([os.getpid()])}
        assert found[loop.getsockname()[1]] == "127.0.0.1"
        assert found[wildcard.getsockname()[1]] == "0.0.0.0"


def test_tcp_sockets_sees_established_connections_and_their_peers():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                mine = [s for s in tcp_sockets([os.getpid()]) if s["state"] == "ESTABLISHED"]
                pairs = {(s["port"], s["remote_port"]) for s in mine}
                assert (client.getsockname()[1], server.getsockname()[1]) in pairs
                assert (server.getsockname()[1], client.getsockname()[1]) in pairs
                assert all(is_loopback(s["remote"]) for s in mine if s["port"] == client.getsockname()[1])


def test_supervisor_stops_a_process_group_and_the_marker_finds_stragglers(tmp_path):
    marker = uuid.uuid4().hex
    sup = Supervisor({**os.environ, MARKER_ENV: marker}, tmp_path)
    # A parent that ignores SIGTERM and a child in its group: the stop must escalate to the whole group.
    started = sup.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"])
    deadline = time.monotonic() + 10
    while len(processes_with_marker(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_with_marker(marker)) >= 2
    t0 = time.monotonic()
    Supervisor.stop(started, grace_s=1.0)
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_marker(marker) == {}
    assert started.process.returncode is not None


def test_configs_refuse_bad_values():
    with pytest.raises(ConfigError, match="address"):
        WorkerNodeConfig(address="10.0.0.5:6379", temp_dir="/tmp/x")
    with pytest.raises(ConfigError, match="stages"):
        RehearsalConfig(stages=["train", "deploy"])
    with pytest.raises(ConfigError, match="videos"):
        RehearsalConfig(videos=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rehearsal_end_to_end(tmp_path):
    run_id = f"t{uuid.uuid4().hex[:10]}"
    workdir = tmp_path / "rehearsal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local.rehearse", "--workdir", str(workdir), "--run-id", run_id],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the rehearsal stops its cluster on SIGTERM
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers = processes_with_marker(run_id)
        for pid in leftovers:  # never leave a cluster behind for the rest of the suite, even on failure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    report_path = workdir / "rehearsal.json"
    assert report_path.exists(), output[-6000:]
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0 and report["ok"], (report.get("error"), output[-6000:])

    assert [(s["name"], s["status"]) for s in report["stages"]] == [(name, "SUCCEEDED") for name in STAGES]
    assert len(report["nodes"]) == 2 and sorted(n["is_head"] for n in report["nodes"]) == [False, True]
    assert all(n["node_ip"] == "127.0.0.1" for n in report["nodes"])
    # Traffic stayed on loopback: every sampled connection had a loopback peer, every listener a loopback address
    # (but for the DDP rendezvous store of Ray Train's rank 0, which PyTorch binds to the wildcard address).
    assert report["listening_sockets"] > 0 and report["non_loopback_sockets"] == []
    assert report["connection_samples"] > 0 and report["non_loopback_peers"] == []
    for sock in report["ddp_store_wildcard_sockets"]:
        assert any(
            t.startswith(("ray::RayTrainWorker", "ray::execute._setup_torch_process_group"))
            for t in sock["titles"]
        ), sock
    assert report["dashboard_without_token_status"] in (401, 403)
    outputs = report["outputs"]
    assert (
        outputs["shards"] >= 1
        and outputs["best_model"] == 1
        and outputs["masks"] == outputs["corpus_frames"] > 0
    )
    assert 0.0 <= report["evaluation"]["JF_mean"] <= 1.0
    # The flow job's workers wrote the shards, one group per video (group_videos=1), each on a node of the cluster.
    by_node = report["flow_groups_by_node"]
    assert set(by_node) <= {"head", "worker"} and sum(by_node.values()) == 4, by_node
    flow, segment = report["job_figures"]["flow"], report["job_figures"]["segment"]
    assert flow["index_parts_committed"] == 4 and flow["driver_cpu_ms_per_video"] > 0
    assert segment["driver_cpu_ms_per_video"] > 0 and segment["overhead_ms_per_video"] >= 0
    # Everything it started is gone, and nothing had to be swept up after the orderly stop.
    assert leftovers == {}, f"processes left running: {leftovers}"
    assert report["leftover_processes_killed"] == []
    assert not Path(report["ray_temp_dir"]).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rehearsal_stops_everything_when_terminated(tmp_path):
    """SIGTERM while a job runs: the rehearsal stops the cluster, moto and the job by pid, and says so."""
    run_id = f"t{uuid.uuid4().hex[:10]}"
    workdir = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.local.rehearse",
            "--workdir",
            str(workdir),
            "--run-id",
            run_id,
            "--set",
            "stages=[check]",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for (
            line
        ) in proc.stdout:  # wait until the preflight job is submitted, so that a job driver is running too
            lines.append(line)
            if "stage check: job submit" in line:
                break
        time.sleep(3)
        running = processes_with_marker(run_id)
        assert any("ray start --head" in cmd for cmd in running.values()), "".join(lines[-20:])
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers = processes_with_marker(run_id)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 130, "".join(lines[-20:]) + output[-3000:]
    assert "everything the rehearsal started has been stopped" in output
    assert leftovers == {}, f"processes left running after SIGTERM: {leftovers}"
    report = json.loads((workdir / "rehearsal.json").read_text())
    shutil.rmtree(
        report["ray_temp_dir"], ignore_errors=True
    )  # a failed rehearsal keeps Ray's logs for debugging
    assert report["ok"] is False
    assert report["leftover_processes_killed"] == [], (
        "the orderly stop should leave nothing for the marker sweep"
    )

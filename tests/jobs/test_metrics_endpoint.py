"""The jobs' metrics on Ray's Prometheus endpoint: a real Ray head started with ``ray start --head
--metrics-export-port``, the flow job and segment on a tiny corpus attached to it from their own driver process,
the endpoint scraped while they run: the frame and video counters reach the counts of their summaries, the
actors' histograms and gauges are there, and every metric name scraped is one the declaration has."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from infra.local.ports import free_port
from pipeline import telemetry
from tests.conftest import REPO_ROOT
from tests.media import write_davis

# The driver: both jobs, one after the other, in one process attached to the head; it prints each summary and
# stays attached (its metrics stay exported) until the test closes its stdin.
_DRIVER = """
import json, sys
import ray
ray.init(address=sys.argv[1])
from jobs import precompute_flow, segment
flow = precompute_flow.main(json.loads(sys.argv[2]))
print("SUMMARY " + json.dumps(flow), flush=True)
seg = segment.main(json.loads(sys.argv[3]))
print("SUMMARY " + json.dumps(seg), flush=True)
sys.stdin.read()
"""
_SAMPLE = re.compile(r"^(ray_hmhi_[a-z_]+)\{(.*)\} (\S+)$")


def endpoint_up(port: int) -> bool:
    """Whether the endpoint answers (with Ray's own metrics: the jobs' appear once a job runs)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return False
    return True


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """{(metric, job, the other labels of interest): value summed over workers} from the endpoint; {} if down."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    totals: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if not found:
            continue
        name, labels, value = found.groups()
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        extra = ",".join(f"{k}={tags[k]}" for k in ("kind", "status", "stage", "le") if k in tags)
        key = (name, tags.get("hmhi_job", ""), extra)
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def start_head(tmp: Path, metrics_port: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """``ray start --head --block`` on loopback with its own ports and temp dir; -> (process, GCS address, env)."""
    gcs = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",  # a loopback test cluster of its own
        RAY_metrics_report_interval_ms="500",  # workers push their metrics twice a second (default: every 10 s)
        AUTOSCALER_METRIC_PORT=str(
            free_port()
        ),  # fixed default ports: other Ray clusters on the host use them
        DASHBOARD_METRIC_PORT=str(free_port()),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="1",
        HMHI_PROGRESS_EVERY_S="1",
    )
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    argv = [ray_cli, "start", "--head", "--block", "--disable-usage-stats", "--include-dashboard", "false"]
    argv += ["--node-ip-address", "127.0.0.1", "--port", gcs.rsplit(":", 1)[1], "--num-cpus", "2"]
    argv += ["--metrics-export-port", str(metrics_port), "--temp-dir", str(tmp)]
    for flag in (
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    ):
        argv += [flag, str(free_port())]
    head = subprocess.Popen(
        argv,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return head, gcs, env


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (``ray start --block`` then stops the node's processes), SIGKILL of the group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def wanted_counts(summaries: list[dict]) -> dict[tuple[str, str, str], float]:
    """What the endpoint must reach: each job's done videos and frames, as its summary counts them."""
    wanted = {}
    for summary in summaries:
        job = summary["job"]
        wanted[("ray_hmhi_items_total", job, "kind=video,status=done")] = summary["counts"]["video"]["done"]
        wanted[("ray_hmhi_frames_total", job, "")] = summary["figures"]["frames"]
    return wanted


@pytest.mark.timeout(600)
def test_flow_and_segment_metrics_reach_their_summaries_on_the_prometheus_endpoint(tmp_path, tiny_checkpoint):
    corpus, shards, masks = tmp_path / "corpus", tmp_path / "shards", tmp_path / "masks"
    write_davis(corpus, {"bear": 6, "cows": 5, "dog": 4}, size=(48, 64))
    flow_args = ["--input", str(corpus), "--output", str(shards), "--flow-preset", "ultrafast"]
    flow_args += ["--clip-length", "4", "--concurrency", "1"]
    segment_args = ["--input", str(shards), "--output", str(masks), "--checkpoint", tiny_checkpoint]
    segment_args += ["--input-size", "64", "--num-actors", "1", "--set", "runtime.videos_in_flight=2"]
    metrics_port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="hm-", dir="/tmp"))  # short: Ray's Unix socket paths are limited
    head, gcs, env = start_head(ray_tmp, metrics_port)
    driver = None
    try:
        deadline = time.monotonic() + 120
        while not endpoint_up(metrics_port):  # the head's metrics agent serves it a few seconds after start
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, f"the metrics endpoint on port {metrics_port} never answered"
            time.sleep(0.5)
        driver = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, gcs, json.dumps(flow_args), json.dumps(segment_args)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True).start()
        summaries, seen, scrapes_while_running = [], {}, 0
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            log = "".join(lines)
            summaries = [json.loads(line[8:]) for line in log.splitlines() if line.startswith("SUMMARY ")]
            assert driver.poll() is None, f"the driver exited early:\n{log[-4000:]}"
            for key, value in scrape(metrics_port).items():
                seen[key] = max(seen.get(key, 0.0), value)
            scrapes_while_running += len(summaries) < 2
            wanted = wanted_counts(summaries)
            if len(summaries) == 2 and all(seen.get(k, 0) >= v for k, v in wanted.items()):
                break
            time.sleep(0.5)
        assert len(summaries) == 2, f"the jobs did not finish:\n{log[-4000:]}"
        flow, seg = summaries
        assert flow["counts"]["video"]["done"] == 3 and seg["counts"]["video"]["done"] == 3
        assert flow["figures"]["frames"] == 15 and seg["figures"]["frames"] == 15
        for key, value in wanted_counts(summaries).items():
            assert seen.get(key, 0) == value, f"{key}: scraped {seen.get(key)}, the summary says {value}"
        assert scrapes_while_running > 2  # the endpoint was read while the jobs ran, not only at the end
        # The actors' metrics: per-frame model and flow time (count = frames), videos in flight, busy seconds.
        assert seen[("ray_hmhi_model_frame_seconds_count", "segment", "")] >= 15
        assert seen[("ray_hmhi_flow_frame_seconds_count", "precompute_flow", "")] >= 15
        assert seen[("ray_hmhi_video_seconds_count", "segment", "")] == 3
        for job, stage in (("segment", "model"), ("precompute_flow", "flow")):
            busy = seen[("ray_hmhi_busy_seconds_total", job, f"stage={stage}")]
            wall = seen[("ray_hmhi_worker_seconds_total", job, f"stage={stage}")]
            assert 0 < busy <= wall
        assert seen[("ray_hmhi_storage_bytes_total", "precompute_flow", "")] > 0
        assert seen[("ray_hmhi_storage_bytes_total", "segment", "")] > 0
        # The summaries report the busy fractions, and the driver logged progress lines with an ETA.
        assert 0 < seg["figures"]["model_busy_fraction"] <= 1
        assert 0 < flow["figures"]["flow_busy_fraction"] <= 1
        assert re.search(r"segment: 3/3 videos \(100%\), .*all done", "".join(lines))
        # Every metric name scraped is declared (histograms add _bucket, _sum and _count).
        declared = {m.exported_name for m in telemetry.METRICS}
        scraped = {re.sub(r"_(bucket|sum|count)$", "", k[0]) for k in seen}
        assert scraped <= declared, scraped - declared
    finally:
        if driver is not None:
            driver.stdin.close()
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
        stop(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)

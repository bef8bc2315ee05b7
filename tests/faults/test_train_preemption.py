"""Training under a node preemption (``ray.train.get_preemption_info``), on CPU: a checkpoint on notice, the run
resumed elsewhere from it, and the restart counted as a preemption, apart from failures.

A cluster of its own, in a driver process of its own: a head that runs no tasks and two 1-CPU nodes on loopback
(``ray.cluster_utils.Cluster``, real raylets). The training job (1 worker) starts on one of them; the test then
drains that node with the reason a cloud preemption gives (``ray drain-node --reason
DRAIN_NODE_REASON_PREEMPTION``, what the autoscaler does on a spot reclaim notice) and a deadline. Ray Train's
watcher tells the worker, which writes a checkpoint at once and trains on; at the deadline Ray Train restarts the
worker group on the other node, from that checkpoint, and the job's summary counts one restart after preemption
and none after failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pipeline.run_layout import RESTARTS_DIR, checkpoint_file
from pipeline.storage import open_storage
from tests.conftest import REPO_ROOT
from tests.media import write_train_shards

CONFIG = str(REPO_ROOT / "configs" / "test.yaml")

_DRIVER = r"""
import json, os, subprocess, sys, threading, time
import ray
from ray.cluster_utils import Cluster

args, attempts = json.loads(sys.argv[1]), sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for _ in range(2):
    cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
import pipeline.train.job
from tests.plugins.train_probes import AttemptsOnNodes
pipeline.train.job.train_loop_per_worker = AttemptsOnNodes(attempts, step_sleep_s=0.4)
from jobs.train import main
out = {}
job = threading.Thread(target=lambda: out.update(summary=main(args)))
job.start()
try:
    while not os.path.exists(attempts) and job.is_alive():
        time.sleep(0.2)
    node = json.loads(open(attempts).readline())["node"]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    drain = [ray_cli, "drain-node", "--address", cluster.address, "--node-id", node,
             "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
             "--deadline-remaining-seconds", "8"]
    subprocess.run(drain, check=True, capture_output=True, text=True)
    print("DRAINED " + node, flush=True)
    job.join()
    print("SUMMARY " + json.dumps(out.get("summary")), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow  # a 3-node cluster of its own, 40 steps (slowed down until the restart): two minutes on 2 cores
@pytest.mark.timeout(900)
def test_a_preempted_node_checkpoints_on_notice_and_the_run_resumes_elsewhere_counted_apart(tmp_path):
    shards, storage, attempts = tmp_path / "shards", tmp_path / "runs", tmp_path / "attempts.jsonl"
    write_train_shards(str(shards), videos=5, frames=6, size=32)
    args = ["--config", CONFIG, "--data", str(shards), "--storage", str(storage), "--run-name", "spot"]
    args += ["--set", "model.input_size=64", "--max-steps", "40", "--set", "num_workers=1"]
    # No cadence checkpoint before the last step: the notice's is the only one a restart can resume from.
    args += ["--set", "checkpoint.every_steps=40", "--set", "checkpoint.keep_last=10"]
    args += ["--set", "validation.every_steps=0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5",  # Ray Train's drain watcher (default every 5 s)
        HMHI_PROGRESS_EVERY_S="5",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(args), str(attempts)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    summary = json.loads(next(line[8:] for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")))
    drained = next(line[8:] for line in proc.stdout.splitlines() if line.startswith("DRAINED "))

    # Finished, with one restart, caused by the preemption, and none counted as a failure.
    assert summary["counts"]["run"]["done"] == 1 and summary["figures"]["steps"] == 40, log[-4000:]
    assert summary["figures"]["restarts_after_preemption"] == 1
    assert summary["figures"]["restarts_after_failure"] == 0
    run = open_storage(str(storage)).child("spot")
    (record,) = [run.read_json(f"{RESTARTS_DIR}/{name}") for name in run.list(RESTARTS_DIR)]
    assert record["cause"] == "preemption" and "PreemptionError" in record["error"]

    # The first attempt ran on the drained node, the second elsewhere.
    nodes = [json.loads(line)["node"] for line in attempts.read_text().splitlines()]
    assert len(nodes) == 2 and nodes[0] == drained and nodes[1] != drained

    # A checkpoint written on the notice, and the second attempt resumed from it.
    def state(step: int) -> dict:
        data = run.read_bytes(checkpoint_file(step))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    # checkpoint_NNNNNNNN folders (not Ray Train's checkpoint_manager_snapshot.json next to them)
    steps = sorted(int(n.rpartition("_")[2]) for n in run.list() if re.fullmatch(r"checkpoint_\d+", n))
    assert len(steps) == 2 and steps[-1] == 40, steps  # the notice's and the last one
    notice = steps[0]
    assert state(notice)["reason"] == "preemption" and state(40)["reason"] == "cadence"
    assert state(40)["resume_info"]["from_step"] == notice
    assert summary["figures"]["resumed_from_step"] == notice
    assert "preemption notice for ranks [0]" in log

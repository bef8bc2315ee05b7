"""A preflight job for a fresh cluster: every node is alive, runs tasks, and reaches the storage.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m infra.local.cluster_check --storage s3://bucket/preflight --expect-nodes 2

One task is pinned to each alive node (hard node affinity); it writes ``<storage>/<node_id>.json`` with the node's
view (host, pid, resources, whether S3 credentials came from the environment — never their values) and reads it
back. The driver then lists the storage and checks that every node's record is there. Exits non-zero with a
message naming the node on any failure.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import parse_job_args, require
from pipeline.runtime import init_ray, setup_logging
from pipeline.storage import open_storage
from pipeline.summary import JobSummary

log = logging.getLogger("infra.local.cluster_check")


@dataclass
class ClusterCheckConfig:
    storage: str = ""
    """URL where each node writes its record (s3://bucket/prefix, file:// or a path shared by all nodes)."""
    expect_nodes: int = 1
    """Fail unless at least this many nodes are alive."""

    def __post_init__(self):
        require(bool(self.storage), "storage", self.storage, "must be set")
        require(self.expect_nodes >= 1, "expect_nodes", self.expect_nodes, "must be >= 1")


def node_probe(storage_url: str) -> dict:
    """Runs on one node: write this node's record to storage, read it back, return it."""
    import ray

    ctx = ray.get_runtime_context()
    record = {
        "node_id": ctx.get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "node_ip": ray.util.get_node_ip_address(),
        "aws_endpoint_url": os.environ.get("AWS_ENDPOINT_URL", ""),
        "aws_credentials_in_env": bool(os.environ.get("AWS_ACCESS_KEY_ID")),
    }
    st = open_storage(storage_url)
    rel = f"{record['node_id']}.json"
    st.write_json(rel, record)
    if st.read_json(rel) != record:
        raise RuntimeError(
            f"node {record['node_id']}: {st.join(rel)} read back differs from what was written"
        )
    return record


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    cfg = parse_job_args(
        ClusterCheckConfig,
        argv,
        description=__doc__,
        flags={"--storage": "storage", "--expect-nodes": "expect_nodes"},
    )
    init_ray()
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    summary = JobSummary("cluster_check")
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) < cfg.expect_nodes:
        log.error("only %d of the expected %d nodes are alive", len(alive), cfg.expect_nodes)
        return 1
    probe = ray.remote(num_cpus=0)(node_probe)
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(cfg.storage)
        for n in alive
    }
    for node_id, ref in refs.items():
        try:
            record = ray.get(ref, timeout=120)
        except Exception as e:  # one bad node must not hide the others' results
            summary.rejected("node", node_id, reason=f"probe failed: {type(e).__name__}: {e}")
            continue
        if record["node_id"] != node_id:
            summary.rejected("node", node_id, reason=f"probe ran on node {record['node_id']} instead")
            continue
        summary.done("node", node_id)
        log.info(
            "node %s (ip %s, pid %d) wrote and read its record", node_id, record["node_ip"], record["pid"]
        )
    listed = set(open_storage(cfg.storage).list(suffix=".json"))
    missing = sorted(f"{n}.json" for n in refs if f"{n}.json" not in listed)
    for name in missing:
        summary.rejected("record", name, reason=f"not listed under {cfg.storage}")
    summary.finish(storage=open_storage(cfg.storage), rel="summary.json")
    return 0 if not missing and summary.counts["node"]["done"] == len(alive) else 1


if __name__ == "__main__":
    raise SystemExit(main())

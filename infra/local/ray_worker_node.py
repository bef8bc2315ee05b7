"""Run one Ray worker node on 127.0.0.1 and block until SIGTERM: the single-host stand-in for
``ray start --address=HEAD --block``, used only by the local rehearsal.

    python -m infra.local.ray_worker_node --address 127.0.0.1:6379 --num-cpus 2 --temp-dir /tmp/rh/worker

Why not ``ray start --address`` itself: Ray 2.60 keeps a node on loopback only when it runs with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, but its CLI refuses to start a *worker* node in that mode ("Multi-node
Ray clusters are not supported on Windows and OSX"). With the variable at 1 it rewrites 127.0.0.1 to the host's
network address (so it cannot reach a loopback-only head), and any other node IP (127.0.0.2...) makes the GCS,
raylet and object manager listen on 0.0.0.0. This launcher builds the same ``ray._private.node.Node`` that
``ray start --block`` builds (as ``ray.cluster_utils.Cluster.add_node`` does), with the node IP fixed at 127.0.0.1,
so every server of the node listens on loopback only. SIGTERM stops all of the node's processes (Ray's own
shutdown hook); its reaper stops them too if this process dies. On real hosts use ``ray start --address``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import parse_job_args, require
from pipeline.runtime import setup_logging

log = logging.getLogger("infra.local.ray_worker_node")

LOOPBACK = "127.0.0.1"


@dataclass
class WorkerNodeConfig:
    address: str = ""
    """GCS address of the head node, '127.0.0.1:PORT' (loopback only: this launcher is for one-host rehearsals)."""
    num_cpus: int = 1
    """Logical CPUs this node offers to the scheduler."""
    num_gpus: int = 0
    """Logical GPUs this node offers to the scheduler."""
    object_store_memory: int = 150 * 1024 * 1024
    """Object store size in bytes (Ray's minimum is 75 MiB)."""
    temp_dir: str = ""
    """This node's own Ray temp dir (sessions, sockets, logs); keep it short, Unix socket paths are limited."""
    dashboard_agent_listen_port: int = 0
    """HTTP port of the node's dashboard agent (0: any free port; Ray's fixed default 52365 would collide)."""
    dashboard_agent_grpc_port: int = 0
    """gRPC port of the node's dashboard agent (0: any free port)."""
    runtime_env_agent_port: int = 0
    """Port of the node's runtime-env agent (0: any free port)."""
    metrics_export_port: int = 0
    """Prometheus metrics port of the node (0: any free port)."""

    def __post_init__(self):
        host, _, port = self.address.rpartition(":")
        require(
            host == LOOPBACK and port.isdigit(),
            "address",
            self.address,
            f"must be '{LOOPBACK}:PORT' (use `ray start --address` on real hosts)",
        )
        require(self.num_cpus >= 0, "num_cpus", self.num_cpus, "must be >= 0")
        require(self.num_gpus >= 0, "num_gpus", self.num_gpus, "must be >= 0")
        require(
            self.object_store_memory >= 75 * 1024 * 1024,
            "object_store_memory",
            self.object_store_memory,
            "must be >= 75 MiB (Ray's minimum)",
        )
        require(bool(self.temp_dir), "temp_dir", self.temp_dir, "must be set (one temp dir per node)")
        for name in (
            "dashboard_agent_listen_port",
            "dashboard_agent_grpc_port",
            "runtime_env_agent_port",
            "metrics_export_port",
        ):
            value = getattr(self, name)
            require(value == 0 or 1024 <= value <= 65535, name, value, "must be 0 or a port in [1024, 65535]")


def _port_or_none(port: int) -> int | None:
    return port or None


def start_worker_node(cfg: WorkerNodeConfig):
    """Start the node's processes (raylet, agents, workers) and return Ray's ``Node`` handle."""
    import ray._private.node
    import ray._private.parameter
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        # With the variable unset or 1, Ray resolves 127.0.0.1 to the host's network address.
        raise RuntimeError("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER must be 0 so that the node stays on loopback")
    # Same check as `ray start`: with RAY_AUTH_MODE=token the node needs the cluster's token, never a new one.
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    params = ray._private.parameter.RayParams(
        gcs_address=cfg.address,
        node_ip_address=LOOPBACK,
        node_name=LOOPBACK,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        object_store_memory=cfg.object_store_memory,
        temp_dir=cfg.temp_dir,
        node_manager_port=0,
        min_worker_port=0,
        max_worker_port=0,
        # One log monitor per host is enough; the head runs it (ray.cluster_utils does the same).
        include_log_monitor=False,
        dashboard_agent_listen_port=_port_or_none(cfg.dashboard_agent_listen_port),
        metrics_agent_port=_port_or_none(cfg.dashboard_agent_grpc_port),
        runtime_env_agent_port=_port_or_none(cfg.runtime_env_agent_port),
        metrics_export_port=_port_or_none(cfg.metrics_export_port),
    )
    return ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    cfg = parse_job_args(
        WorkerNodeConfig,
        argv,
        description=__doc__,
        flags={
            "--address": "address",
            "--num-cpus": "num_cpus",
            "--num-gpus": "num_gpus",
            "--object-store-memory": "object_store_memory",
            "--temp-dir": "temp_dir",
            "--dashboard-agent-listen-port": "dashboard_agent_listen_port",
            "--dashboard-agent-grpc-port": "dashboard_agent_grpc_port",
            "--runtime-env-agent-port": "runtime_env_agent_port",
            "--metrics-export-port": "metrics_export_port",
        },
    )
    node = start_worker_node(cfg)
    # Ray's Node registered a SIGTERM handler that drains the node, kills its processes and exits; SIGINT does the same.
    signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    log.info(
        "Ray worker node %s up on %s, joined %s (pid %d); SIGTERM stops it",
        node.node_id,
        LOOPBACK,
        cfg.address,
        os.getpid(),
    )
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

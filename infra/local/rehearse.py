"""Rehearse a multi-node hmhi-uvos deployment on one machine, on loopback only.

    .venv/bin/python -m infra.local.rehearse [--workdir DIR] [--keep] [--set videos=4 ...]

What it does, in order (every Ray and S3 server binds 127.0.0.1; nothing leaves the machine):

1. starts a moto S3 server (``python -m moto.server -H 127.0.0.1``) and creates a bucket;
2. starts a Ray head with the real CLI, ``ray start --head --block``: dashboard on 127.0.0.1, every port picked
   free (so it never collides with another Ray on the host), token authentication with a token file of its own
   (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``; environment.md §6), the S3 endpoint and dummy credentials in
   its environment the way a pod gets them from a Secret;
3. starts a second node, ``infra/local/ray_worker_node.py`` (why not ``ray start --address``: see that file), with
   its own temp dir and CPUs, and waits until the dashboard reports both nodes alive;
4. submits each stage with the real CLI, ``ray job submit --address http://127.0.0.1:PORT --working-dir . -- python
   ...``, and checks through the job REST API that it SUCCEEDED: a cluster preflight (a task on each node reads
   and writes S3), the synthetic corpus, optical flow, training (2 workers), segmentation and evaluation;
5. checks that the outputs landed; that every connection of its processes went to a loopback peer and every socket
   they listened on is a loopback address (sampled every second during the jobs), except the wildcard listener of
   PyTorch's DDP rendezvous store in Ray Train's rank 0, which torch cannot restrict (reported separately); and that
   the dashboard refuses requests without the token; and records the flow and segment jobs' figures (driver CPU
   per video, per-video overhead) and how many groups of shards each node's flow actors wrote;
6. stops everything it started, by pid (SIGTERM, then SIGKILL of the process group), on success, failure, Ctrl-C or
   SIGTERM, and finally kills by pid any process still carrying this run's ``HMHI_REHEARSAL_ID`` marker.

It writes ``<workdir>/rehearsal.json`` (stages, timings, node count, listening sockets, leftovers) and
``<workdir>/logs/`` (one log per started process and per job). Exit status 0 if every check passed, 1 if one
failed, 130 if interrupted (after stopping everything).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.local.ports import free_port
from pipeline.config import parse_job_args, require
from pipeline.runtime import setup_logging

log = logging.getLogger("infra.local.rehearse")

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER_ENV = "HMHI_REHEARSAL_ID"
"""Set in the environment of every process the rehearsal starts; Ray passes it on to its workers and job drivers."""
LOOPBACK = "127.0.0.1"
STAGES = ("check", "synthetic", "flow", "train", "segment", "evaluate")
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class RehearsalConfig:
    workdir: str = ""
    """Folder for logs and the report; a new temporary folder when empty."""
    keep: bool = False
    """Keep the Ray temp dirs (session logs) after a successful run; they are always kept after a failure."""
    run_id: str = ""
    """Tag of this run, put in every started process's environment as HMHI_REHEARSAL_ID (random when empty)."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages to submit, in order, from: check, synthetic, flow, train, segment, evaluate."""
    videos: int = 4
    """Videos in the synthetic corpus (at least 4: two to train the two workers, one carved out for validation,
    one held-out test video)."""
    frames: int = 6
    """Frames per synthetic video (also the shard clip length; the tiny training config samples 5)."""
    size: str = "64x64"
    """Synthetic frame size, HEIGHTxWIDTH."""
    group_videos: int = 1
    """``shards.group_videos`` of the flow stage: videos per group of shards (one index part each). 1 makes as many
    groups as videos, so the flow actors of both nodes write shards even in a small corpus."""
    train_steps: int = 2
    """Optimiser steps of the rehearsal training run."""
    train_workers: int = 2
    """Ray Train workers (DDP ranks) of the training run."""
    head_cpus: int = 1
    """Logical CPUs of the head node."""
    worker_cpus: int = 2
    """Logical CPUs of the worker node (the training workers need train_workers of them on one node or across both)."""
    object_store_mb: int = 128
    """Object store per node, MiB (Ray's minimum is 75)."""
    start_timeout_s: float = 90.0
    """Seconds to wait for moto, the head and the worker node to come up."""
    job_timeout_s: float = 420.0
    """Seconds one job may take before it is stopped and the rehearsal fails."""

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        require(
            not unknown and bool(self.stages),
            "stages",
            self.stages,
            f"must be a non-empty subset of {list(STAGES)}",
        )
        require(
            self.videos >= 4,
            "videos",
            self.videos,
            "must be >= 4 (two training videos, one validation and one held-out test video)",
        )
        require(self.frames >= 6, "frames", self.frames, "must be >= 6")
        require(self.group_videos >= 1, "group_videos", self.group_videos, "must be >= 1")
        require(self.train_steps >= 1, "train_steps", self.train_steps, "must be >= 1")
        require(self.train_workers >= 1, "train_workers", self.train_workers, "must be >= 1")
        require(self.head_cpus >= 1, "head_cpus", self.head_cpus, "must be >= 1")
        require(self.worker_cpus >= 1, "worker_cpus", self.worker_cpus, "must be >= 1")
        require(self.object_store_mb >= 75, "object_store_mb", self.object_store_mb, "must be >= 75")
        require(self.start_timeout_s > 0, "start_timeout_s", self.start_timeout_s, "must be > 0")
        require(self.job_timeout_s > 0, "job_timeout_s", self.job_timeout_s, "must be > 0")


class RehearsalError(RuntimeError):
    """A check of the rehearsal failed; the message says which and where its log is."""


# -- processes -------------------------------------------------------------------------------------------------------


def processes_with_marker(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment carries ``HMHI_REHEARSAL_ID=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            found[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:  # gone, or not ours to read
            continue
    return found


def _decode_proc_addr(hex_addr: str) -> str:
    """An address from /proc/net/tcp{,6} (each 32-bit word in host byte order) as text."""
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


TCP_STATES = {"01": "ESTABLISHED", "0A": "LISTEN"}


def tcp_sockets(pids: Sequence[int]) -> list[dict]:
    """The listening and established TCP sockets owned by ``pids`` (Linux /proc):
    [{pid, state, address, port, remote, remote_port}]."""
    by_inode: dict[str, tuple[str, str, int, str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] in TCP_STATES:
                local, lport = cols[1].rsplit(":", 1)
                remote, rport = cols[2].rsplit(":", 1)
                by_inode[cols[9]] = (
                    TCP_STATES[cols[3]],
                    _decode_proc_addr(local),
                    int(lport, 16),
                    _decode_proc_addr(remote),
                    int(rport, 16),
                )
    found = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in by_inode:
                state, address, port, remote, remote_port = by_inode[target[8:-1]]
                found.append(
                    {
                        "pid": pid,
                        "state": state,
                        "address": address,
                        "port": port,
                        "remote": remote,
                        "remote_port": remote_port,
                    }
                )
    return sorted(found, key=lambda s: (s["state"], s["port"], s["pid"]))


def listening_sockets(pids: Sequence[int]) -> list[dict]:
    """The TCP sockets in LISTEN state owned by ``pids``: [{pid, address, port}]."""
    return [
        {k: s[k] for k in ("pid", "address", "port")} for s in tcp_sockets(pids) if s["state"] == "LISTEN"
    ]


def exit_status(process: subprocess.Popen) -> int | None:
    """The child's exit status if it has exited, else None, without reaping it (a zombie keeps its pid, and so its
    process group id, from being reused)."""
    if process.returncode is not None:
        return process.returncode
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return process.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log_path: Path


class Supervisor:
    """Starts long-running processes in their own process groups and stops them, by pid, in reverse order."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str]) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                list(argv),
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(name, process, log_path)
        self.started.append(started)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return started

    def check_alive(self) -> None:
        for s in self.started:
            status = exit_status(s.process)
            if status is not None:
                raise RehearsalError(
                    f"{s.name} (pid {s.process.pid}) exited with status {status}; see {s.log_path}"
                )

    @staticmethod
    def stop(s: Started, grace_s: float = 30.0) -> None:
        """SIGTERM the process (Ray's handler then stops the node's own processes); then SIGKILL whatever is left of
        its process group, at once if it ignored SIGTERM for ``grace_s``. The group is killed while its leader is
        still unreaped, so its id (the leader's pid) cannot have been reused by an unrelated group."""
        pid = s.process.pid
        if exit_status(s.process) is None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while exit_status(s.process) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if exit_status(s.process) is None:
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s; killing its process group", s.name, pid, grace_s
                )
        if s.process.returncode is None:
            try:  # start_new_session made it a group leader: the group id is its pid
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        s.process.wait()
        log.info("stopped %s (pid %d, status %s)", s.name, pid, s.process.returncode)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started.pop())


# -- HTTP helpers ----------------------------------------------------------------------------------------------------


def http_get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET; connection errors give status 0."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(
    what: str,
    condition: Callable[[], bool],
    timeout_s: float,
    on_poll: Callable[[], None] | None = None,
    interval_s: float = 0.5,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if on_poll:
            on_poll()
        if condition():
            return
        if time.monotonic() > deadline:
            raise RehearsalError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# -- the rehearsal ---------------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    submission_id: str
    status: str
    seconds: float
    entrypoint: str
    log: str
    message: str = ""


@dataclass
class Cluster:
    """Addresses of the rehearsal's cluster."""

    s3_endpoint: str
    bucket: str
    gcs_address: str
    dashboard_url: str
    token: str


def pipeline_stages(cfg: RehearsalConfig, bucket: str) -> dict[str, list[str]]:
    """Stage name -> job entrypoint argv, exactly as a user would pass it after ``ray job submit ... --``."""
    root = f"s3://{bucket}"
    run = "rehearsal"
    return {
        "check": [
            "python",
            "-m",
            "infra.local.cluster_check",
            "--storage",
            f"{root}/preflight",
            "--expect-nodes",
            "2",
        ],
        "synthetic": [
            "python",
            "-m",
            "pipeline.synthetic",
            f"{root}/corpus",
            "--videos",
            str(cfg.videos),
            "--frames",
            str(cfg.frames),
            "--size",
            cfg.size,
            "--seed",
            "0",
        ],
        "flow": [
            "python",
            "jobs/precompute_flow.py",
            "--input",
            f"{root}/corpus",
            "--output",
            f"{root}/shards",
            "--flow-model",
            "dis",
            "--clip-length",
            str(cfg.frames),
            "--val-fraction",
            "0.25",
            "--set",
            f"shards.group_videos={cfg.group_videos}",
        ],
        # Validation at the last step writes <run>/best/model.pt, the checkpoint the segment stage loads.
        "train": [
            "python",
            "jobs/train.py",
            "--config",
            "configs/tiny_cpu.yaml",
            "--data",
            f"{root}/shards",
            "--storage",
            f"{root}/runs",
            "--run-name",
            run,
            "--num-workers",
            str(cfg.train_workers),
            "--max-steps",
            str(cfg.train_steps),
            "--set",
            f"validation.every_steps={cfg.train_steps}",
            "--set",
            f"checkpoint.every_steps={cfg.train_steps}",
        ],
        "segment": [
            "python",
            "jobs/segment.py",
            "--input",
            f"{root}/corpus",
            "--output",
            f"{root}/segment",
            "--checkpoint",
            f"{root}/runs/{run}/best/model.pt",
            "--flow-model",
            "dis",
            "--input-size",
            "96",
        ],
        "evaluate": [
            "python",
            "jobs/evaluate.py",
            "--pred",
            f"{root}/segment/masks",
            "--gt",
            f"{root}/corpus",
            "--output",
            f"{root}/eval",
            "--protocol",
            "davis2016",
        ],
    }


class Rehearsal:
    def __init__(self, cfg: RehearsalConfig):
        self.cfg = cfg
        self.run_id = cfg.run_id or uuid.uuid4().hex[:12]
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="hmhi-rehearsal-")).resolve()
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Ray's Unix socket paths must stay under ~107 bytes, so its temp dirs live in a short folder of their own.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="hmhi-rh-", dir="/tmp"))
        self.bin_dir = Path(sys.executable).parent
        self.report: dict = {
            "run_id": self.run_id,
            "workdir": str(self.workdir),
            "ray_temp_dir": str(self.ray_tmp),
            "config": asdict(cfg),
            "stages": [],
            "ok": False,
        }
        self.supervisor: Supervisor | None = None
        self.cluster: Cluster | None = None
        self._listeners: dict[tuple[str, int], dict] = {}
        self._titles: dict[int, set[str]] = {}
        self._connections = 0
        self._remote_peers: set[str] = set()

    # The environment of every process the rehearsal starts: nothing inherited that could point it at another
    # cluster or at real cloud credentials.
    def _environment(self, s3_endpoint: str, token_path: Path, gcs_address: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.update(
            {
                MARKER_ENV: self.run_id,
                "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray server on 127.0.0.1 (environment.md §6)
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token_path),
                # Ray processes that look the cluster up without an address (Ray Train's placement-group cleaner
                # calls the state API) would otherwise find every Ray on the host and give up; KubeRay sets it too.
                "RAY_ADDRESS": gcs_address,
                # On SIGTERM a node first drains (30 s by default, for Serve); nothing runs any more at teardown.
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
                # Fixed-port metrics servers of the head, moved off their defaults so they cannot collide.
                "AUTOSCALER_METRIC_PORT": str(free_port()),
                "DASHBOARD_METRIC_PORT": str(free_port()),
                "AWS_ENDPOINT_URL": s3_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        return env

    def _tool(self, name: str) -> str:
        path = shutil.which(name, path=str(self.bin_dir))
        if path is None:
            raise RehearsalError(
                f"'{name}' not found next to {sys.executable}; install the project into that env"
            )
        return path

    def start_cluster(self) -> Cluster:
        cfg = self.cfg
        token = secrets.token_hex(32)
        token_path = self.ray_tmp / "auth_token"
        token_path.touch(mode=0o600)
        token_path.write_text(token)
        moto_port, gcs_port, dashboard_port = free_port(), free_port(), free_port()
        s3_endpoint = f"http://{LOOPBACK}:{moto_port}"
        gcs_address = f"{LOOPBACK}:{gcs_port}"
        env = self._environment(s3_endpoint, token_path, gcs_address)
        sup = self.supervisor = Supervisor(env, self.log_dir)
        t0 = time.monotonic()

        sup.start("moto", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(moto_port)])
        wait_until(
            "the moto S3 server",
            lambda: http_get(s3_endpoint)[0] == 200,
            cfg.start_timeout_s,
            sup.check_alive,
        )
        bucket = f"rehearsal-{self.run_id}".lower()
        self._s3_client(s3_endpoint).create_bucket(Bucket=bucket)

        object_store = str(cfg.object_store_mb * 1024 * 1024)
        sup.start(
            "ray-head",
            [
                self._tool("ray"),
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address",
                LOOPBACK,
                "--port",
                str(gcs_port),
                "--dashboard-host",
                LOOPBACK,
                "--dashboard-port",
                str(dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--dashboard-agent-grpc-port",
                str(free_port()),
                "--runtime-env-agent-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
                "--num-cpus",
                str(cfg.head_cpus),
                "--num-gpus",
                "0",
                "--object-store-memory",
                object_store,
                "--temp-dir",
                str(self.ray_tmp / "head"),
            ],
        )
        dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
        wait_until(
            "the Ray head's dashboard",
            lambda: http_get(f"{dashboard_url}/api/version", token)[0] == 200,
            cfg.start_timeout_s,
            sup.check_alive,
        )

        sup.start(
            "ray-worker",
            [
                sys.executable,
                "-m",
                "infra.local.ray_worker_node",
                "--address",
                gcs_address,
                "--num-cpus",
                str(cfg.worker_cpus),
                "--num-gpus",
                "0",
                "--object-store-memory",
                object_store,
                "--temp-dir",
                str(self.ray_tmp / "worker"),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--dashboard-agent-grpc-port",
                str(free_port()),
                "--runtime-env-agent-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
            ],
        )
        self.cluster = Cluster(s3_endpoint, bucket, gcs_address, dashboard_url, token)
        wait_until(
            "2 alive Ray nodes", lambda: len(self.alive_nodes()) == 2, cfg.start_timeout_s, sup.check_alive
        )
        self.sample_sockets()
        self.report["cluster_start_s"] = round(time.monotonic() - t0, 1)
        self.report["nodes"] = self.alive_nodes()
        log.info(
            "cluster up in %.1f s: 2 nodes, dashboard %s, S3 %s, bucket %s",
            time.monotonic() - t0,
            dashboard_url,
            s3_endpoint,
            bucket,
        )
        return self.cluster

    @staticmethod
    def _s3_client(endpoint: str):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def alive_nodes(self) -> list[dict]:
        c = self.cluster
        status, body = http_get(f"{c.dashboard_url}/api/v0/nodes?limit=100", c.token)
        if status != 200:
            return []
        rows = json.loads(body).get("data", {}).get("result", {}).get("result", [])
        return [
            {
                "node_id": r["node_id"],
                "node_ip": r["node_ip"],
                "is_head": r["is_head_node"],
                "cpus": r.get("resources_total", {}).get("CPU", 0),
            }
            for r in rows
            if r.get("state") == "ALIVE"
        ]

    def job_info(self, submission_id: str) -> dict:
        c = self.cluster
        status, body = http_get(f"{c.dashboard_url}/api/jobs/{submission_id}", c.token)
        return json.loads(body) if status == 200 else {}

    def submit(self, name: str, entrypoint: list[str]) -> StageResult:
        """``ray job submit`` one stage from the repository root, wait for it, and check it SUCCEEDED."""
        c = self.cluster
        submission_id = f"rehearsal-{self.run_id}-{name}"
        log_path = self.log_dir / f"job-{name}.log"
        argv = [
            self._tool("ray"),
            "job",
            "submit",
            "--address",
            c.dashboard_url,
            "--working-dir",
            ".",
            "--submission-id",
            submission_id,
            "--",
            *entrypoint,
        ]
        log.info("stage %s: %s", name, " ".join(argv[1:]))
        t0 = time.monotonic()
        with open(log_path, "wb") as out:
            cli = subprocess.Popen(
                argv,
                env=self.supervisor.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            timed_out = False
            try:
                deadline = time.monotonic() + self.cfg.job_timeout_s
                while exit_status(cli) is None and time.monotonic() < deadline:
                    self.sample_sockets()  # while the job's workers (DDP ranks, actors) are up
                    time.sleep(1.0)
                timed_out = exit_status(cli) is None
            finally:  # on a timeout, and on Ctrl-C/SIGTERM: the CLI goes by its pid (its own process group)
                if exit_status(cli) is None:
                    os.killpg(cli.pid, signal.SIGKILL)
                cli.wait()
            if timed_out:
                subprocess.run(
                    [self._tool("ray"), "job", "stop", "--address", c.dashboard_url, submission_id],
                    env=self.supervisor.env,
                    cwd=REPO_ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=60,
                    check=False,
                )
        info = self.job_info(submission_id)
        # The CLI returns once the job is terminal, but the state can lag the log stream by a moment.
        deadline = time.monotonic() + 30
        while info.get("status") not in TERMINAL_JOB_STATES and time.monotonic() < deadline:
            time.sleep(0.5)
            info = self.job_info(submission_id)
        result = StageResult(
            name,
            submission_id,
            info.get("status", "UNKNOWN"),
            round(time.monotonic() - t0, 1),
            " ".join(entrypoint),
            str(log_path),
            info.get("message") or "",
        )
        self.report["stages"].append(asdict(result))
        log.info(
            "stage %s: %s in %.1f s (submit exit %s)", name, result.status, result.seconds, cli.returncode
        )
        if result.status != "SUCCEEDED" or cli.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            raise RehearsalError(
                f"stage {name} ended {result.status} (ray job submit exit {cli.returncode}): "
                f"{result.message}\n--- last lines of {log_path} ---\n" + "\n".join(tail)
            )
        return result

    def check_outputs(self) -> None:
        """Each stage left its outputs in the bucket: shards, a checkpoint, one mask per frame, a J&F summary."""
        c = self.cluster
        s3 = self._s3_client(c.s3_endpoint)
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=c.bucket)
            for o in page.get("Contents", [])
        ]
        count = {
            "corpus_frames": sum(k.startswith("corpus/JPEGImages/") and k.endswith(".jpg") for k in keys),
            "shards": sum(k.startswith("shards/") and k.endswith(".tar") for k in keys),
            "checkpoints": len({k.split("/")[2] for k in keys if k.startswith("runs/rehearsal/checkpoint_")}),
            "best_model": int("runs/rehearsal/best/model.pt" in keys),
            "masks": sum(k.startswith("segment/masks/") and k.endswith(".png") for k in keys),
        }
        self.report["outputs"] = count
        expected_frames = self.cfg.videos * self.cfg.frames
        problems = []
        ran = set(self.cfg.stages)
        if "synthetic" in ran and count["corpus_frames"] != expected_frames:
            problems.append(f"corpus has {count['corpus_frames']} frames, expected {expected_frames}")
        if "flow" in ran and count["shards"] < 1:
            problems.append("the flow stage wrote no shard")
        if "train" in ran and not (count["checkpoints"] and count["best_model"]):
            problems.append("the train stage left no checkpoint_*/ or best/model.pt under runs/rehearsal/")
        if "segment" in ran and count["masks"] != expected_frames:
            problems.append(f"segment wrote {count['masks']} masks, expected {expected_frames}")
        if "evaluate" in ran:
            summary = json.loads(s3.get_object(Bucket=c.bucket, Key="eval/summary.json")["Body"].read())[
                "figures"
            ]
            self.report["evaluation"] = {
                k: summary.get(k)
                for k in ("JF_mean", "J_mean", "F_mean", "n_sequences", "n_frames", "protocol")
            }
            jf = summary.get("JF_mean")
            if (
                not (isinstance(jf, (int, float)) and 0.0 <= jf <= 1.0)
                or summary.get("n_sequences") != self.cfg.videos
            ):
                problems.append(
                    f"eval/summary.json: JF_mean={jf!r}, n_sequences={summary.get('n_sequences')!r}"
                )
        self.report["job_figures"] = figures = {}
        for stage, key in (("flow", "shards/summary.json"), ("segment", "segment/summary.json")):
            if stage in ran and key in keys:
                figures[stage] = json.loads(s3.get_object(Bucket=c.bucket, Key=key)["Body"].read())["figures"]
        if "flow" in figures:
            # Which node's actors wrote the shards (the flow job records the Ray node of each group's writer).
            role = {n["node_id"]: "head" if n["is_head"] else "worker" for n in self.report.get("nodes", [])}
            by_node = figures["flow"].get("groups_by_writer_node", {})
            self.report["flow_groups_by_node"] = {role.get(node, node): n for node, n in by_node.items()}
        if problems:
            raise RehearsalError("outputs missing: " + "; ".join(problems))
        log.info("outputs in s3://%s: %s", c.bucket, count)

    def sample_sockets(self) -> None:
        """Record the rehearsal's processes' listening sockets and connections (sampled during and between jobs)."""
        processes = processes_with_marker(self.run_id)
        for pid, cmd in processes.items():
            # Ray retitles a worker with the task it runs ("ray::RayTrainWorker.run_train_fn",
            # "ray::execute._setup_torch_process_group"), so keep every title a pid had.
            self._titles.setdefault(pid, set()).add(cmd[:120].strip())
        for sock in tcp_sockets(sorted(processes)):
            if sock["state"] == "LISTEN":
                key = (sock["address"], sock["port"])
                if key not in self._listeners:
                    self._listeners[key] = {k: sock[k] for k in ("pid", "address", "port")}
            else:
                self._connections += 1
                if not is_loopback(sock["remote"]):
                    self._remote_peers.add(f"{sock['remote']}:{sock['remote_port']}")

    def is_ddp_store(self, sock: dict) -> bool:
        """PyTorch's c10d TCPStore (the DDP rendezvous that rank 0 serves on MASTER_PORT) always binds the wildcard
        address; torch has no option to restrict it. It is allowed only in a Ray Train worker process."""
        titles = self._titles.get(sock["pid"], set())
        return sock["address"] in ("::", "0.0.0.0") and any(
            t.startswith("ray::RayTrainWorker") or t.startswith("ray::execute._setup_torch_process_group")
            for t in titles
        )

    def check_loopback_and_auth(self) -> None:
        self.sample_sockets()
        listeners = [
            {**s, "titles": sorted(self._titles.get(s["pid"], ()))} for s in self._listeners.values()
        ]
        known = [s for s in listeners if not is_loopback(s["address"]) and self.is_ddp_store(s)]
        exposed = [s for s in listeners if not is_loopback(s["address"]) and not self.is_ddp_store(s)]
        self.report["listening_sockets"] = len(listeners)
        self.report["non_loopback_sockets"] = exposed
        self.report["ddp_store_wildcard_sockets"] = known
        self.report["connection_samples"] = self._connections
        self.report["non_loopback_peers"] = sorted(self._remote_peers)
        status, _ = http_get(f"{self.cluster.dashboard_url}/api/version")
        self.report["dashboard_without_token_status"] = status
        if not listeners or not self._connections:
            raise RehearsalError(
                "saw no sockets of the rehearsal's processes; cannot check that they stay on loopback"
            )
        if exposed:
            raise RehearsalError(f"processes listened on non-loopback addresses: {exposed}")
        if self._remote_peers:
            raise RehearsalError(f"processes talked to non-loopback peers: {sorted(self._remote_peers)}")
        if status not in (401, 403):
            raise RehearsalError(
                f"the dashboard answered {status} to a request without the token; expected 401/403"
            )
        log.info(
            "%d listening sockets and %d connection samples, all on loopback (%d wildcard DDP store listener(s) in "
            "Ray Train workers, see report); the dashboard refuses requests without the token (%d)",
            len(listeners),
            self._connections,
            len(known),
            status,
        )

    def teardown(self) -> None:
        t0 = time.monotonic()
        if self.supervisor is not None:
            self.supervisor.stop_all()
        # Anything still carrying this run's marker (a job driver or Ray worker a node failed to reap) goes by pid.
        leftovers = processes_with_marker(self.run_id)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.report["leftover_processes_killed"] = [{"pid": p, "cmd": c[:200]} for p, c in leftovers.items()]
        self.report["teardown_s"] = round(time.monotonic() - t0, 1)
        if leftovers:
            log.warning("killed %d leftover processes by pid: %s", len(leftovers), sorted(leftovers))
        log.info("everything stopped in %.1f s", time.monotonic() - t0)

    def run(self) -> bool:
        t0 = time.monotonic()
        try:
            cluster = self.start_cluster()
            stages = pipeline_stages(self.cfg, cluster.bucket)
            for name in self.cfg.stages:
                self.submit(name, stages[name])
                self.supervisor.check_alive()
            self.check_outputs()
            self.check_loopback_and_auth()
            self.report["ok"] = True
        except RehearsalError as e:
            self.report["error"] = str(e)
            log.error("rehearsal failed: %s", e)
        finally:
            self.teardown()
            self.report["total_s"] = round(time.monotonic() - t0, 1)
            (self.workdir / "rehearsal.json").write_text(json.dumps(self.report, indent=2))
            if self.report["ok"] and not self.cfg.keep:
                shutil.rmtree(self.ray_tmp, ignore_errors=True)
        verdict = "PASSED" if self.report["ok"] else "FAILED"
        print(
            f"rehearsal {verdict} in {self.report['total_s']:.1f} s; report {self.workdir / 'rehearsal.json'}",
            flush=True,
        )
        return self.report["ok"]


def _raise_on_signal(signum, _frame):
    # SIGTERM/SIGHUP become an exception, so that the `finally` of Rehearsal.run stops everything by pid.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    cfg = parse_job_args(
        RehearsalConfig,
        argv,
        description=__doc__,
        flags={"--workdir": "workdir", "--keep": ("keep", True), "--run-id": "run_id"},
    )
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    try:
        return 0 if Rehearsal(cfg).run() else 1
    except KeyboardInterrupt as e:
        log.error("interrupted (%s); everything the rehearsal started has been stopped", e or "Ctrl-C")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

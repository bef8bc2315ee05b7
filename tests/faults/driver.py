"""A job run as its own Ray driver attached to the session's cluster, its Ray workers given their own environment.

A cluster's workers inherit the environment the cluster started with; a job runtime env is how a job gives them
its own (the fault proxy as their S3 endpoint, a TMPDIR on a tiny disk). The fault tests run the job under test
this way so that every read and write, in the driver and in the Ray stages, sees the same conditions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

_DRIVER = """
import json, sys
import ray
ray.init(address=sys.argv[1], runtime_env={"env_vars": json.loads(sys.argv[2])})
from importlib import import_module
from pipeline.cli import run_job_main
from pipeline.retry import retry_counts
status = run_job_main(import_module(sys.argv[3]).main, sys.argv[4:])
print("RETRIES", retry_counts(), flush=True)
sys.exit(status)
"""


def start_driver(
    ray_address: str,
    worker_env: dict[str, str],
    args: list[str],
    job: str = "jobs.precompute_flow",
    **env: str,
) -> subprocess.Popen:
    """Start ``<job>.main(args)`` (``job`` a module such as ``jobs.train``) in its own driver process; its Ray
    workers get ``worker_env``, the driver itself ``env`` on top of this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, ray_address, json.dumps(worker_env), job, *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_driver(proc: subprocess.Popen, timeout: float = 600, status: int = 0) -> str:
    """Wait for a driver from :func:`start_driver` (killed if it overruns ``timeout``), assert that it exited with
    ``status`` (the job's exit status: 1 when it rejected every item) and return its log."""
    try:
        log_text, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, log_text[-4000:]
    return log_text

"""Fixtures of the fault tests: the fault-injecting proxy (tests/faults/proxy.py) in front of the moto server.

- ``fault_proxy`` (function): a :class:`FaultProxy` on 127.0.0.1 forwarding to the session's moto server, with no
  faults until the test sets a plan (``fault_proxy.set_plan(error_rate=0.1, cut_rate=0.01)``).
- ``tiny_disk`` (function): a 256 KiB tmpfs mounted for the test (skipped where mounting is not allowed).
- ``faulty_s3`` (function): the same proxy, with ``AWS_ENDPOINT_URL`` pointing at it for the test, so that every
  ``Storage`` made in this process (boto3, s3fs, pyarrow) goes through it.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.faults.proxy import FaultPlan, FaultProxy

# The plan of the job-level tests (issue 14): 10% of requests answered 503/500, 1% of GET bodies cut.
ISSUE_PLAN = FaultPlan(seed=14, error_rate=0.10, cut_rate=0.01)


@pytest.fixture
def fault_proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def faulty_s3(fault_proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return fault_proxy


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)

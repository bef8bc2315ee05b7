"""Real fixtures shared by the whole suite: a local Ray cluster and an S3 server, both on loopback.

- ``s3_server`` (session): moto's threaded server on 127.0.0.1 at a free port, with dummy credentials.
- ``s3_bucket`` (function): a fresh bucket, as ``"s3://<name>"``.
- ``ray_cluster`` (session): a local Ray cluster with 2 CPUs, started after the S3 environment is in place so its
  workers inherit it. Jobs' ``pipeline.runtime.init_ray()`` reuses it.
- ``storage_url`` (function, parametrised ``local`` / ``s3``): a fresh, empty storage root.
- ``tiny_checkpoint`` (session): a tiny random-init HMHI-Net checkpoint file, for jobs that need a model.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from infra.local.ports import free_port

# Everything stays on loopback, and nothing may reach a cloud metadata service or a real AWS endpoint.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# The SDKs (botocore and the C++ SDK under pyarrow) send every upload aws-chunked with a trailing checksum by default,
# and moto 5.2's server decodes such a body by repeated bytes concatenation, quadratic in the part's size: a 133 MB
# checkpoint through pyarrow cost 2.9 CPU-s instead of 1.4 (bench/RESULTS.md). Checksums only where an API requires
# them keep the server linear; the same bytes arrive, and the product's code is the same either way.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")

REPO_ROOT = Path(__file__).resolve().parents[1]
SOAK = os.environ.get("HMHI_SOAK") == "1"
"""``make soak``: stress tests run their full trial counts (a few minutes more each) instead of everyday ones."""


def _native_bf16_cpu() -> bool:
    from model import native_bf16

    return native_bf16("cpu")


requires_native_bf16 = pytest.mark.skipif(
    not _native_bf16_cpu(),
    reason="bf16 is not native on this CPU (no AVX-512 BF16 / AMX): torch emulates it at ~1/80 of the fp32 rate "
    "(a 512x512 frame takes minutes), and precision 'auto' never picks it here; this guard runs where bf16 is "
    "native (such CPUs, GPUs on the device machine)",
)
"""For tests that force bf16 through a full-size model: they prove bf16 accuracy where bf16 is used."""
SHARED_DIR = REPO_ROOT.parent / "shared"


class S3Server:
    """A running moto S3 server on loopback."""

    def __init__(self, server, endpoint_url: str):
        self.server = server
        self.endpoint_url = endpoint_url

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    import logging

    from moto.server import ThreadedMotoServer

    # The server's per-request access log (werkzeug, INFO) would bury the jobs' own logs under one line per GET.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield S3Server(server, endpoint)
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return f"s3://{s3_server.create_bucket()}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=1_000_000_000,
            log_to_driver=True,
            configure_logging=False,
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random-init ``hmhi_mit_b0`` checkpoint (seeded), for the jobs' tests that need a model, not a good one."""
    import torch

    from model import create_model, save_checkpoint

    torch.manual_seed(0)
    net = create_model(
        "hmhi_mit_b0", decoder_width=16, readout_ffn_dim=32, semantic_mask_hidden=16, memory_size=3
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(net, str(path))
    return str(path)


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.create_bucket()}/root"


# -- test tiers -------------------------------------------------------------------------------------------------

_INTEGRATION_FIXTURES = {"ray_cluster", "s3_server", "s3_bucket"}
_INTEGRATION_DIRS = ("jobs", "infra")


def pytest_collection_modifyitems(config, items):
    """Mark as ``integration`` every test that starts the Ray cluster or the S3 server (directly or through another
    fixture, or as the ``s3`` case of ``storage_url``) or lives under tests/jobs or tests/infra.

    ``make test-fast`` runs the rest (``-m "not integration and not slow"``); ``make test`` runs everything.

    Then the modules whose tests use the session's Ray cluster (``ray_cluster``) move after all the others, each
    kept whole and in its order, so that the cluster starts when the first of them does and nothing runs beside an
    idle one. An idle local cluster is not free: its daemons, Ray Data's three helper actors and its idle workers
    each wake up many times a second (a worker's task loop checks for signals every 10 ms), about 8-10 CPU-s a
    minute in all on this 2-core machine, while the tests that need no cluster (the rehearsal and the preemption
    run with clusters of their own, the first-hour jobs each with its own, the model and unit tests) take over 40%
    of make test's time (bench/RESULTS.md).
    """
    _integration_markers(items)
    uses_cluster = {i.nodeid.split("::")[0] for i in items if "ray_cluster" in getattr(i, "fixturenames", ())}
    items[:] = [i for i in items if i.nodeid.split("::")[0] not in uses_cluster] + [
        i for i in items if i.nodeid.split("::")[0] in uses_cluster
    ]


def _integration_markers(items) -> None:
    """The ``integration`` marker, as :func:`pytest_collection_modifyitems` says."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        try:
            top = Path(str(item.path)).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            top = ""
        if fixtures & _INTEGRATION_FIXTURES or params.get("storage_url") == "s3" or top in _INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)

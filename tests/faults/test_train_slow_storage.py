"""Training that does not wait on storage: Ray Train's asynchronous checkpoint upload (``checkpoint.upload``).

The checkpoint uploads go through the fault proxy, which holds the start, the first part and the end of each
checkpoint's multipart upload (``SLOW_WRITE_S``: a slow store); 2 gloo DDP workers train on the session's Ray
cluster. With ``async`` (the default) each report returns while its checkpoint is still on its way (the training
goes on), and every checkpoint lands in the end, in order, with no local copy left behind. The probe
(tests/plugins/train_probes.py) asks the store itself, not through the slow path. That ``sync`` (and a preemption's
checkpoint) asks Ray Train for a synchronous upload is a unit test (tests/pipeline/test_train_units.py); what a
synchronous upload does is Ray Train's."""

from __future__ import annotations

import glob
import json
import os
import tempfile

import pytest

from pipeline.run_layout import checkpoint_file
from pipeline.storage import open_storage
from tests.conftest import REPO_ROOT
from tests.media import write_train_shards
from tests.plugins.train_probes import ReportsObserved

CONFIG = str(REPO_ROOT / "configs" / "test.yaml")
# A checkpoint (~65 MB) goes up as a multipart upload: a POST that creates it, 5 MB parts (PUT, one after the other),
# and a POST that completes it; only then is the object in the store. The proxy holds three of those requests: the
# create, the first part (the others wait behind it) and the complete, so 2 s each keeps a checkpoint off the store
# for 6 s or more after its report returns, a margin for a loaded CI machine, where a report returns later than the
# 0.02-0.14 s it takes on a quiet one (0.5 s each left ~1.5 s: too little to trust). 2 s stays under pyarrow's
# low-speed limit (a request that moves no byte for 3 s fails), as a slow but working store does. Holding every part
# (13 per checkpoint) kept this test waiting a minute for no more proof.
SLOW_WRITE_S = 2.0
SLOW_REQUESTS = r"/checkpoint\.pt\?(uploads|uploadId=|partNumber=1&)"
"""The create (``?uploads``), complete (``?uploadId=``) and first part of each checkpoint's multipart upload."""


def _train(shards: str, storage: str, run_name: str, upload: str) -> dict:
    from jobs.train import main

    return main(
        [
            "--config",
            CONFIG,
            "--data",
            shards,
            "--storage",
            storage,
            "--run-name",
            run_name,
            "--set",
            "model.input_size=64",
            "--max-steps",
            "4",
            "--set",
            "checkpoint.every_steps=2",
            "--set",
            "validation.every_steps=0",
            "--set",
            f"checkpoint.upload={upload}",
        ]
    )


@pytest.mark.slow  # a 4-step DDP run, each checkpoint write held by the store
def test_async_upload_trains_on_while_the_store_is_slow(
    s3_server, s3_bucket, ray_cluster, faulty_s3, monkeypatch, tmp_path
):
    import pipeline.train.job

    shards, storage = f"{s3_bucket}/shards", f"{s3_bucket}/runs"
    write_train_shards(shards, videos=5, frames=6, size=32)
    # The driver's Ray Train storage (and so every checkpoint upload) goes through the proxy; shards, metrics and
    # the probe's check go to the store directly.
    faulty_s3.set_plan(slow_write_path=SLOW_REQUESTS, slow_write_s=SLOW_WRITE_S)
    left_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "hmhi-train-ckpt-*")))
    record = tmp_path / "async.jsonl"
    probe = ReportsObserved(str(record), s3_server.endpoint_url)
    monkeypatch.setattr(pipeline.train.job, "train_loop_per_worker", probe)  # the job's worker entry
    summary = _train(shards, storage, "async", "async")
    assert summary["counts"]["run"]["done"] == 1 and summary["figures"]["steps"] == 4
    reports = [json.loads(line) for line in record.read_text().splitlines()]
    run = open_storage(storage).child("async")
    for step in (2, 4):  # every checkpoint is in the store once the job has returned
        assert run.exists(checkpoint_file(step)), f"checkpoint {step} missing"
    assert summary["figures"]["latest_checkpoint"] == run.join("checkpoint_00000004")
    assert faulty_s3.seen("POST", "checkpoint.pt?upload") >= 4  # both uploads went through the slow store
    # Every report returned before its checkpoint was stored.
    assert [r["step"] for r in reports] == [2, 4]
    assert not any(r["stored_at_return"] for r in reports), reports
    # Ray Train deleted the local copies after uploading them.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "hmhi-train-ckpt-*"))) <= left_before

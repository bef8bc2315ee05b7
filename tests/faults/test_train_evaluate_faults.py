"""Training and evaluation against a faulty S3 (issue 14): 10% of requests answered 503/500, 1% of bodies cut.

Each job runs as its own driver (tests/faults/driver.py) with the fault proxy as the S3 endpoint of the driver and
of its Ray workers; its results must equal those of a fault-free run of the same inputs (for training, what such a
run writes: every step once, its checkpoints and validation).
"""

from __future__ import annotations

import csv
import io
import time

import pytest

from pipeline.lease import LEASE_NAME, LeaseHeldError
from pipeline.storage import open_storage
from tests.conftest import REPO_ROOT
from tests.faults.conftest import ISSUE_PLAN
from tests.faults.driver import finish_driver, start_driver

pytestmark = pytest.mark.usefixtures("ray_cluster")

CONFIG = str(REPO_ROOT / "configs" / "test.yaml")


def _refuses_a_second_run(first, output: str, second, timeout: float = 300) -> None:
    """While ``first`` (a driver process) holds the lease of ``output``, ``second()`` (the same job in this process,
    on the same output) is refused with an error naming the first run."""
    st = open_storage(output)
    deadline = time.time() + timeout
    while not st.exists(LEASE_NAME) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0][-3000:]
    with pytest.raises(
        LeaseHeldError, match=f"{output} is being written by another run .* pid {first.pid}, started"
    ):
        second()


@pytest.mark.slow  # shards, then a 4-step DDP run through the faults
def test_train_under_faults_logs_every_step_once_checkpoints_and_refuses_a_second_run(
    s3_bucket, tmp_path, ray_cluster, fault_proxy
):
    from jobs.precompute_flow import main as precompute_main
    from jobs.train import main as train_main
    from model import create_model, load_checkpoint
    from pipeline.run_layout import CHECKPOINT_FILE
    from pipeline.synthetic import main as synth_main
    from pipeline.train.metrics import read_metrics_csv

    # Shards written fault-free; the faults are the training job's.
    corpus = str(tmp_path / "corpus")
    synth_main(
        ["--out", corpus, "--videos", "4", "--frames", "10", "--size", "64x64", "--set", "val_fraction=0.25"]
    )
    shards = f"{s3_bucket}/shards"
    precompute_main(
        [
            "--input",
            corpus,
            "--output",
            shards,
            "--clip-length",
            "5",
            "--shard-size-mb",
            "0.3",
            "--val-fraction",
            "0.25",
        ]
    )

    def args(storage: str) -> list[str]:
        return [
            "--config",
            CONFIG,
            "--data",
            shards,
            "--storage",
            storage,
            "--run-name",
            "tiny",
            "--set",
            "model.input_size=64",
            "--max-steps",
            "4",
            "--set",
            "checkpoint.every_steps=2",
            "--set",
            "validation.every_steps=4",
        ]

    fault_proxy.set_plan(ISSUE_PLAN)
    faulty = start_driver(
        ray_cluster,
        {"AWS_ENDPOINT_URL": fault_proxy.endpoint_url},
        args(f"{s3_bucket}/faulty"),
        job="jobs.train",
        AWS_ENDPOINT_URL=fault_proxy.endpoint_url,
    )
    try:  # a second run of the same run folder, while the first trains, is refused by name; the first goes on
        _refuses_a_second_run(
            faulty, f"{s3_bucket}/faulty/tiny", lambda: train_main(args(f"{s3_bucket}/faulty"))
        )
    finally:
        log_text = finish_driver(faulty)
    assert fault_proxy.faults > 0, fault_proxy.counts
    assert fault_proxy.seen("GET", ".tar") > 0  # the training workers' shard reads went through the faults
    assert fault_proxy.seen("PUT", "checkpoint") > 0  # and so did Ray Train's checkpoint uploads
    fault_proxy.set_plan(None)

    # What a fault-free run of these arguments leaves (tests/jobs/test_train.py runs those): 4 steps, each logged
    # once, checkpoints at steps 2 and 4, validation at step 4.
    run = open_storage(f"{s3_bucket}/faulty").child("tiny")
    summary = run.read_json("summary.json")
    assert summary["counts"]["run"] == {"done": 1, "skipped": 0, "rejected": 0}, log_text[-3000:]
    assert summary["figures"]["steps"] == 4
    assert summary["figures"]["latest_checkpoint"] == run.join("checkpoint_00000004")
    rows = read_metrics_csv(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_JF_mean"] != ""
    # The checkpoints are readable: the training state, and the model's own loader (weights_only) takes it.
    assert sorted(n for n in run.list() if n.startswith("checkpoint_0")) == [
        "checkpoint_00000002",
        "checkpoint_00000004",
    ]
    path = tmp_path / "ckpt.pt"
    path.write_bytes(run.read_bytes(f"checkpoint_00000004/{CHECKPOINT_FILE}"))
    net = create_model("hmhi_mit_b0", memory_size=5, decoder_width=64)
    report = load_checkpoint(net, str(path))
    assert report.format
    assert run.exists("best/model.pt") and run.read_json("best/meta.json")["step"] == 4
    assert not run.exists(LEASE_NAME)


def test_evaluate_under_faults_scores_as_a_clean_run_and_refuses_a_second_run(
    s3_bucket, ray_cluster, fault_proxy
):
    from jobs.evaluate import main as evaluate_main
    from tests.jobs.test_evaluate import make_corpus

    make_corpus(s3_bucket)  # DAVIS-2016 ground truth and predictions (one missing frame, one corrupt)
    root = open_storage(s3_bucket)

    def args(out: str) -> list[str]:
        return ["--pred", root.join("pred"), "--gt", root.join("DAVIS"), "--output", root.join(out)]

    fault_proxy.set_plan(ISSUE_PLAN)
    first = start_driver(
        ray_cluster,
        {"AWS_ENDPOINT_URL": fault_proxy.endpoint_url},
        args("faulty"),
        job="jobs.evaluate",
        AWS_ENDPOINT_URL=fault_proxy.endpoint_url,
    )
    try:  # a second evaluation into the same output, while the first runs, is refused by name; the first goes on
        _refuses_a_second_run(first, root.join("faulty"), lambda: evaluate_main(args("faulty")))
    finally:
        finish_driver(first)
    assert fault_proxy.faults > 0 and fault_proxy.seen("GET", ".png") >= 30, fault_proxy.counts
    fault_proxy.set_plan(None)
    clean = evaluate_main(args("clean"))

    faulty_out, clean_out = root.child("faulty"), root.child("clean")
    faulty = faulty_out.read_json("summary.json")

    def scores(figures: dict) -> dict:  # without the report's URL and the driver's retry counts
        return {k: v for k, v in figures.items() if k != "report" and not k.startswith("storage_retries_")}

    assert scores(faulty["figures"]) == scores(clean["figures"]) and faulty["counts"] == clean["counts"]
    assert faulty["figures"]["storage_retries_s3_request"] > 0  # the driver met faults and retried them
    assert faulty["figures"]["n_sequences"] == 3
    # The one missing and the one corrupt prediction are the corpus's own, not the faults' doing.
    assert faulty["figures"]["missing_prediction_frames"] == {"dog": ["00002"]}
    assert faulty["figures"]["unreadable_prediction_frames"] == {"dog": ["00003"]}
    for name in ("per_frame.csv", "per_sequence.csv"):
        assert faulty_out.read_text(name) == clean_out.read_text(name), name
    frames = list(csv.DictReader(io.StringIO(faulty_out.read_text("per_frame.csv"))))
    assert len(frames) == 16
    assert not faulty_out.exists(LEASE_NAME)  # released at the end

"""End-to-end tests of ``jobs/train.py``: real local Ray cluster, moto S3 server, 2 gloo DDP workers.

The shards are written into S3 by the data pipeline's own job (``jobs/precompute_flow.py``) from a small synthetic
DAVIS-layout corpus; training uses ``configs/test.yaml`` (the tests' 8-step cadence) at 64x64.
"""

from __future__ import annotations

import glob
import io
import os
import tempfile
import uuid
from dataclasses import dataclass

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.run_layout import CHECKPOINT_FILE
from pipeline.storage import Storage, open_storage
from pipeline.train.metrics import read_metrics_csv
from pipeline.train.trainer import state_digest
from tests.conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "configs" / "test.yaml")
# 64 px keeps each 2-worker step well under a second on 2 shared cores; everything else is the test config.
SMALL = ["--set", "model.input_size=64"]


@pytest.fixture(scope="module")
def shard_set(s3_server, ray_cluster, tmp_path_factory):
    """Synthetic corpus -> precompute_flow job -> shards + index in S3; returns the shard set URL."""
    from jobs.precompute_flow import main as precompute_main
    from pipeline.synthetic import main as synth_main

    corpus = str(tmp_path_factory.mktemp("corpus"))
    synth_main(
        ["--out", corpus, "--videos", "6", "--frames", "12", "--size", "64x64", "--set", "val_fraction=0.34"]
    )
    bucket = s3_server.create_bucket("train")
    url = f"s3://{bucket}/shards"
    # Small shards: several train shards holding uneven sample counts.
    # The corpus's held-out videos ingest as 'test'; validation is carved from train (never the test set).
    precompute_main(
        [
            "--input",
            corpus,
            "--output",
            url,
            "--clip-length",
            "6",
            "--shard-size-mb",
            "0.3",
            "--val-fraction",
            "0.25",
        ]
    )
    return url


def _ckpt(run, step: int) -> dict:
    data = run.read_bytes(f"checkpoint_{step:08d}/{CHECKPOINT_FILE}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _scratch_dirs() -> set[str]:
    """Scratch directories of training workers and the metrics writer (workers share this machine's temp dir)."""
    return {
        p
        for prefix in ("hmhi-train-", "hmhi-tb-")
        for p in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*"))
    }


def _steps(run) -> list[int]:
    return [int(r["step"]) for r in read_metrics_csv(run)]


def _checkpoints(run) -> list[str]:
    return sorted(n for n in run.list() if n.startswith("checkpoint_0"))


@dataclass
class FirstRun:
    """The 8-step run every test of this module starts from, and what it left (read before any test changes it)."""

    args: list[str]
    """The job's arguments, without ``--max-steps`` and the checkpoint cadence."""
    summary: dict
    """The job's summary."""
    run: Storage
    """The run folder."""
    scratch_left: set[str]
    """Scratch directories the run left on this machine."""
    listing: list[str]
    """The run folder's top-level names."""
    checkpoint_8: dict
    """The state file of checkpoint 8."""
    rows: list[dict]
    """metrics.csv."""
    events: list[str]
    """Files in logs/tensorboard."""
    best_meta: dict
    """best/meta.json."""
    best_model: dict
    """The model file best/meta.json names."""


@pytest.fixture(scope="module")
def first_run(shard_set, s3_server, tmp_path_factory) -> FirstRun:
    """Train 8 steps on 2 workers from a project checkpoint in S3 (the fine-tuning path): checkpoints at steps 4 and
    8, validation at step 8."""
    from jobs.train import main
    from model import create_model, save_checkpoint
    from pipeline.shards import read_index

    index = read_index(shard_set)
    train_shards = {
        s
        for s, sp in zip(index.column("shard").to_pylist(), index.column("split").to_pylist())
        if sp == "train"
    }
    assert len(train_shards) >= 2  # the split below really spreads several shards over the workers

    storage = f"s3://{s3_server.create_bucket('runs')}/runs"
    init = tmp_path_factory.mktemp("init") / "init.pt"
    torch.manual_seed(0)
    save_checkpoint(create_model("hmhi_mit_b0", memory_size=5, decoder_width=64), str(init))
    open_storage(storage).upload_file(str(init), "weights/init.pt")
    args = [
        "--config",
        CONFIG,
        "--data",
        shard_set,
        "--storage",
        storage,
        "--run-name",
        "tiny",
        *SMALL,
        "--init-checkpoint",
        f"{storage}/weights/init.pt",
        "--set",
        "validation.every_steps=8",
    ]
    scratch_before = _scratch_dirs()
    summary = main([*args, "--max-steps", "8", "--set", "checkpoint.every_steps=4"])
    run = open_storage(storage).child("tiny")
    meta = run.read_json("best/meta.json")
    best = torch.load(
        io.BytesIO(run.read_bytes(f"best/{meta['model']}")), map_location="cpu", weights_only=True
    )
    return FirstRun(
        args,
        summary,
        run,
        _scratch_dirs() - scratch_before,
        sorted(run.list()),
        _ckpt(run, 8),
        read_metrics_csv(run),
        run.list("logs/tensorboard"),
        meta,
        best,
    )


def test_a_run_trains_from_the_init_checkpoint_and_leaves_no_local_files(first_run):
    assert first_run.summary["counts"]["run"]["done"] == 1 and first_run.summary["figures"]["steps"] == 8
    assert first_run.summary["figures"]["latest_checkpoint"] == first_run.run.join("checkpoint_00000008")
    assert (
        first_run.scratch_left == set()
    )  # checkpoints, best model and TensorBoard files left no local copies


def test_checkpoints_in_s3_hold_every_ranks_training_state(first_run):
    assert {"checkpoint_00000004", "checkpoint_00000008"} <= set(first_run.listing)
    ck8 = first_run.checkpoint_8
    assert ck8["format"] == "hmhi-uvos" and ck8["step"] == 8 and ck8["world_size"] == 2
    assert len(ck8["data_positions"]) == 2 and len(ck8["rng_states"]) == 2
    assert not torch.equal(ck8["rng_states"][0]["torch"], ck8["rng_states"][1]["torch"])  # one per rank
    assert ck8["scheduler"]["last_epoch"] == 8


def test_every_step_is_logged_once_and_the_loss_falls(first_run):
    assert [int(r["step"]) for r in first_run.rows] == list(range(1, 9))
    losses = [float(r["loss"]) for r in first_run.rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert any(n.startswith("events.out.tfevents") for n in first_run.events)  # TensorBoard next to the CSV


def test_validation_across_ranks_keeps_the_best_model(first_run):
    """Validation J&F (DAVIS-2016 protocol) at step 8, gathered from both ranks, and the best model published."""
    val_rows = [r for r in first_run.rows if r["val_JF_mean"] != ""]
    assert [int(r["step"]) for r in val_rows] == [8]
    jf = float(val_rows[0]["val_JF_mean"])
    assert 0.0 <= jf <= 1.0 and int(val_rows[0]["val_sequences"]) >= 2  # one sample per rank, gathered
    assert first_run.best_meta["step"] == 8 and "model.pt" in first_run.run.list("best")
    assert first_run.best_model["step"] == 8
    assert first_run.best_model["val"]["JF_mean"] == pytest.approx(jf)  # the pointer names its own model
    assert first_run.summary["figures"]["best_model"] == first_run.run.join("best/model.pt")


def test_a_resubmission_continues_and_a_worker_failure_resumes_from_the_last_checkpoint(
    first_run, monkeypatch, tmp_path
):
    """Same run name: continues at step 9 from checkpoint 8's optimiser state. Rank 0 then fails once after
    reporting step 9 (tests.plugins.faults, in the workers); Ray Train restarts the group from checkpoint 9.
    Synchronous uploads here: an asynchronous one may still be on its way when the failure comes right after the
    report, and the restart would then resume from checkpoint 8 (the asynchronous path: test_train_slow_storage)."""
    import pipeline.train.job
    from jobs.train import main
    from tests.plugins.faults import TrainLoopFailingOnce

    marker = tmp_path / "failed-after-step-9"
    # Where the job's build_trainer takes the worker entry from (Ray ships the probe to the workers).
    monkeypatch.setattr(pipeline.train.job, "train_loop_per_worker", TrainLoopFailingOnce(9, str(marker)))
    run = first_run.run
    second = main(
        [
            *first_run.args,
            "--max-steps",
            "10",
            "--set",
            "checkpoint.every_steps=1",
            "--set",
            "checkpoint.upload=sync",
        ]
    )
    assert marker.exists()  # the failure really fired (once)
    assert second["counts"]["run"]["done"] == 1 and second["figures"]["steps"] == 10
    # One restart, counted as a failure (preemptions are counted apart: test_train_preemption).
    assert second["figures"]["restarts_after_failure"] == 1
    assert second["figures"]["restarts_after_preemption"] == 0
    ck9, ck10 = _ckpt(run, 9), _ckpt(run, 10)
    assert ck9["resume_info"]["from_step"] == 8
    assert ck9["resume_info"]["optimizer_sha256"] == state_digest(first_run.checkpoint_8["optimizer"])
    assert ck10["resume_info"]["from_step"] == 9  # restarted from the last checkpoint, not from scratch
    assert ck10["resume_info"]["optimizer_sha256"] == state_digest(ck9["optimizer"])
    assert second["figures"]["resumed_from_step"] == 9
    adam_steps = {float(s["step"]) for s in ck10["optimizer"]["state"].values()}
    assert adam_steps == {10.0}  # a fresh optimiser would have counted 1 or 2
    assert _steps(run) == list(range(1, 11))
    assert _checkpoints(run) == ["checkpoint_00000009", "checkpoint_00000010"]  # keep_last=2


def test_resubmitting_a_finished_run_changes_nothing(first_run, caplog):
    from jobs.train import main
    from pipeline.train.job import TrainInputError

    run = first_run.run
    latest = int(_checkpoints(run)[-1].rpartition("_")[2])  # 8, or 10 after the resubmission test
    before = sorted(run.list(recursive=True))
    with caplog.at_level("INFO", logger="pipeline.train.job"):
        again = main([*first_run.args, "--max-steps", "8"])
    assert again["counts"]["run"]["done"] == 1 and again["figures"]["steps"] == latest
    assert again["figures"]["resumed_from_step"] == latest
    assert again["figures"]["latest_checkpoint"] == run.join(f"checkpoint_{latest:08d}")
    assert again["figures"]["best_model"] == run.join("best/model.pt")
    assert again["figures"]["restarts_after_failure"] == again["figures"]["restarts_after_preemption"] == 0
    assert run.read_json("summary.json")["figures"] == again["figures"]
    assert sorted(n for n in run.list(recursive=True) if n != "summary.json") == [
        n for n in before if n != "summary.json"
    ]
    # The driver answered from the run folder: no training workers started to find out.
    assert f"run {run.url} already reached step {latest}" in caplog.text
    assert "training on" not in caplog.text

    # Another architecture (without the init checkpoint, which would refuse it first) than the run's checkpoints
    # fit: refused before anything starts, naming the run and its checkpoint (a resume would load it).
    i = first_run.args.index("--init-checkpoint")
    other_model = [*first_run.args[:i], *first_run.args[i + 2 :], "--set", "model.options.decoder_width=32"]
    with pytest.raises(
        TrainInputError, match=rf"run {run.url} was trained with another model: .*checkpoint_0"
    ):
        main([*other_model, "--max-steps", "8"])
    assert sorted(n for n in run.list(recursive=True) if n != "summary.json") == [
        n for n in before if n != "summary.json"
    ]


def test_bad_inputs_fail_before_training(shard_set, s3_server, tmp_path, capsys):
    from jobs.train import main
    from pipeline.cli import run_job_main
    from pipeline.errors import UserError

    storage = f"s3://{s3_server.create_bucket('runs')}/runs"
    base = ["--config", CONFIG, "--storage", storage, "--run-name", "bad", *SMALL]

    def exit_status(argv: list[str]) -> tuple[int, str]:
        """What the command line gets: the exit status and stderr (one line, no traceback)."""
        status = run_job_main(main, argv)
        return status, capsys.readouterr().err

    empty = f"s3://{s3_server.create_bucket('empty')}/nothing"
    status, err = exit_status([*base, "--data", empty])
    # found by the pre-flight, before Ray starts: one line naming the field and the URL
    assert status == 2 and err.startswith(f"error: data.url {empty}: ") and len(err.splitlines()) == 1
    assert "Traceback" not in err
    with pytest.raises(UserError, match=empty):  # Python callers get the exception itself
        main([*base, "--data", empty])

    # a copy of the shard set with one byte of one shard flipped
    src, bad = open_storage(shard_set), open_storage(f"s3://{s3_server.create_bucket('bad')}/shards")
    for rel in src.list(recursive=True):
        bad.write_bytes(rel, src.read_bytes(rel))
    victim = sorted(n for n in bad.list("shards") if n.startswith("train-"))[0]  # a shard training reads
    data = bytearray(bad.read_bytes(f"shards/{victim}"))
    data[700] ^= 0xFF
    bad.write_bytes(f"shards/{victim}", bytes(data))
    # Verified by the worker that first reads the shard (not on the driver before the run): fails loudly, naming it.
    status, err = exit_status(
        [
            "--config",
            CONFIG,
            "--storage",
            storage,
            "--run-name",
            "bad-shard",
            *SMALL,
            "--data",
            bad.url,
            "--num-workers",
            "1",  # one worker reads every train shard, the flipped one among them
            "--set",
            "max_failures=0",
        ]
    )
    assert status == 2 and victim in err

    missing = f"{storage}/weights/{uuid.uuid4().hex}.pt"
    status, err = exit_status([*base, "--data", shard_set, "--init-checkpoint", missing])
    assert status == 2 and missing in err

    # a config error names the field
    with pytest.raises(ConfigError, match="data.batch_size_per_worker"):
        main([*base, "--data", shard_set, "--set", "data.batch_size_per_worker=0"])
    with pytest.raises(ConfigError, match="checkpoint.upload"):
        main([*base, "--data", shard_set, "--set", "checkpoint.upload=later"])
    with pytest.raises(ConfigError, match="checkpoint.preemption_check_steps"):
        main([*base, "--data", shard_set, "--set", "checkpoint.preemption_check_steps=-1"])
    assert not open_storage(storage).exists("bad/checkpoint_00000001")
    assert os.environ.get("AWS_ENDPOINT_URL")  # all of the above went to the moto server


def test_failed_run_writes_its_summary_exits_1_and_logs_without_framework_noise(
    shard_set, s3_server, ray_cluster, tmp_path
):
    """The command line as a user runs it (a subprocess attached to the test cluster): the workers fail for good
    (a failure injected by tests.plugins.faults, no restarts allowed), the job still writes summary.json, prints
    its summary and one ``failed:`` line, exits 1, and its log carries none of the framework notices
    pipeline.runtime silences."""
    import subprocess
    import sys

    from tests.plugins.faults import subprocess_env

    storage = f"s3://{s3_server.create_bucket('runs')}/runs"
    marker = tmp_path / "failed-after-step-2"
    env = subprocess_env(
        {**os.environ, "RAY_ADDRESS": ray_cluster},
        REPO_ROOT,
        train_fail_at_step=2,
        train_fail_marker=str(marker),
    )
    env.pop("HMHI_LOG_LEVEL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/train.py",
            "--config",
            CONFIG,
            "--data",
            shard_set,
            "--storage",
            storage,
            "--run-name",
            "doomed",
            *SMALL,
            "--num-workers",
            "1",  # the failure is rank 0's; DDP runs are the first run's and the resubmission's
            "--max-steps",
            "2",
            "--set",
            "max_failures=0",
            "--set",
            "validation.every_steps=0",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    # one line for the user (Ray may still stream worker lines after it: its log monitor is asynchronous)
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: training run ")
    assert "injected failure after step 2" in failed[0]
    assert "== train summary (" in proc.stdout and "1 rejected" in proc.stdout

    summary = open_storage(storage).child("doomed").read_json("summary.json")
    assert summary["counts"]["run"] == {"done": 0, "skipped": 0, "rejected": 1}
    assert "injected failure after step 2" in summary["rejected"][0]["reason"]
    assert marker.exists()

    # the workers really trained (their step lines reach the driver's log) ...
    assert "step 2/2" in out
    # ... without the notices silenced in pipeline.runtime.quiet_frameworks
    assert "Grad strides do not match bucket view strides" not in out
    assert (
        "Reporting training result" not in out
    )  # Ray Train's per-report INFO line, every metric, every rank
    assert "Moving model to device" not in out

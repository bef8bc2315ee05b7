"""Job utilities: the end-of-job summary is complete, printed, and written atomically to storage."""

from __future__ import annotations

from pipeline.storage import open_storage
from pipeline.summary import JobSummary


def test_summary_counts_reasons_and_file(storage_url, capsys):
    summary = JobSummary("demo")
    summary.done("video", "bear", frames=82)
    summary.done("video", "cows", frames=104)
    summary.skipped("video", "boat", reason="already done")
    summary.rejected("video", "bad clip", reason="bad clip/00003.jpg: truncated JPEG")
    summary.add("bytes_written", 1234)
    d = summary.finish(storage=open_storage(storage_url), rel="summary.json")

    assert d["counts"]["video"] == {"done": 2, "skipped": 1, "rejected": 1}
    assert d["figures"] == {"frames": 186, "bytes_written": 1234}
    assert d["rejected"] == [
        {"kind": "video", "name": "bad clip", "reason": "bad clip/00003.jpg: truncated JPEG"}
    ]
    out = capsys.readouterr().out
    assert "4 in: 2 done, 1 skipped, 1 rejected" in out and "truncated JPEG" in out
    assert open_storage(storage_url).read_json("summary.json") == d


def test_job_command_line_reports_config_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run(
        [
            sys.executable,
            "jobs/evaluate.py",
            "--pred",
            str(tmp_path),
            "--gt",
            str(tmp_path),
            "--protocol",
            "davis2099",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: config field 'protocol' = 'davis2099'" in proc.stderr


def test_summary_prints_durations_sizes_and_rates_by_their_names(capsys):
    from pipeline.summary import format_figure

    summary = JobSummary("demo")
    summary.add("driver_wait_s", 3.013183602000254)
    summary.add("train_s", 125.4)
    summary.add("bytes_written", 37980160)
    summary.add("frames", 1234)
    summary.set("frames_per_s", 19.3456)
    summary.set("final_loss", 0.451234)
    summary.set("output", "s3://bucket/shards")
    d = summary.finish()
    lines = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["driver_wait_s"] == "3.0 s"
    assert lines["train_s"] == "2 min 05 s"
    assert lines["bytes_written"] == "38.0 MB"
    assert lines["frames"] == "1,234"
    assert lines["frames_per_s"] == "19.3/s"
    assert lines["final_loss"] == "0.4512"
    assert lines["output"] == "s3://bucket/shards"
    # summary.json keeps the plain numbers (seconds, bytes)
    assert d["figures"]["bytes_written"] == 37980160 and d["figures"]["driver_wait_s"] == 3.013183602000254
    # a total is never shown as a rate, and the larger units
    assert "/s" not in lines["bytes_written"] and "/s" not in lines["driver_wait_s"]
    assert format_figure("bytes_read", 1.2e9) == "1.20 GB" and format_figure("shard_bytes", 512) == "512 B"
    assert format_figure("elapsed_s", 3725) == "1 h 02 min" and format_figure("decode_s", 0.012) == "0.012 s"
    assert format_figure("val_JF_mean", float("nan")) == "nan"


def test_job_failed_is_one_line_and_exit_status_1(capsys):
    from pipeline.cli import run_job_main
    from pipeline.errors import JobFailed, UserError

    def failing(argv):
        raise JobFailed("training run s3://b/runs/x failed: worker died", summary={"job": "train"})

    def bad_input(argv):
        raise UserError("shard index of s3://b/shards cannot be read")

    assert run_job_main(failing, []) == 1
    assert capsys.readouterr().err == "failed: training run s3://b/runs/x failed: worker died\n"
    assert run_job_main(bad_input, []) == 2
    assert capsys.readouterr().err == "error: shard index of s3://b/shards cannot be read\n"
    assert run_job_main(lambda argv: {"job": "ok"}, []) == 0


def test_quiet_frameworks_silences_the_ddp_stride_notice_only():
    import warnings

    from pipeline.runtime import quiet_frameworks

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_frameworks()
        warnings.warn(
            "Grad strides do not match bucket view strides. This may indicate grad was not created "
            "according to the gradient layout contract",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something the user should see", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert "something the user should see" in messages
    assert not any("Grad strides" in m for m in messages)

"""The metrics' one declaration (pipeline/telemetry.py), the README table made from it, metrics as no-ops outside
Ray, and the progress line every job logs (pipeline/summary.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from pipeline import telemetry
from pipeline.summary import JobSummary, ProgressLine, format_progress
from tests.conftest import REPO_ROOT


def test_every_metric_is_declared_once_with_a_prometheus_shape():
    names = [m.name for m in telemetry.METRICS]
    assert len(names) == len(set(names)) and len(names) >= 15
    for metric in telemetry.METRICS:
        assert metric.name.startswith("hmhi_") and metric.exported_name == "ray_" + metric.name
        assert metric.description and metric.label_names[0] == telemetry.JOB_LABEL == "hmhi_job"
        assert (metric.kind == "counter") == metric.name.endswith("_total")
        if metric.kind == "histogram":
            assert list(metric.boundaries) == sorted(metric.boundaries) and metric.boundaries[0] > 0
    # The declaration refuses what Prometheus or Ray would get wrong.
    with pytest.raises(ValueError, match="end in '_total'"):
        telemetry.Metric("hmhi_frames", "counter", "x", ())
    with pytest.raises(ValueError, match="have boundaries"):
        telemetry.Metric("hmhi_latency_seconds", "histogram", "x", ())
    with pytest.raises(ValueError, match="start with 'hmhi_'"):
        telemetry.Metric("frames_total", "counter", "x", ())
    with pytest.raises(ValueError, match="is implied"):  # Prometheus would rename a `job` label
        telemetry.Metric("hmhi_x_total", "counter", "x", ("job",))


def test_the_readme_table_is_the_declaration():
    """The README lists every metric exactly as declared (regenerate it with telemetry.markdown_table())."""
    readme = (REPO_ROOT / "README.md").read_text()
    table = telemetry.markdown_table()
    assert table in readme, "README.md's metric table differs from pipeline.telemetry.markdown_table()"
    for metric in telemetry.METRICS:
        assert f"`{metric.exported_name}`" in table


def test_recording_outside_ray_is_a_no_op_that_never_imports_ray():
    """A notebook (VideoSegmenter) or a plain process records through the same calls: nothing happens, Ray is
    not imported, nothing fails."""
    code = (
        "import sys\n"
        "from pipeline import telemetry\n"
        "from pipeline.summary import JobSummary\n"
        "s = JobSummary('segment')\n"
        "s.expect('video', 2)\n"
        "s.done('video', 'a', frames=10)\n"
        "telemetry.MODEL_FRAME_SECONDS.observe(0.1)\n"
        "telemetry.IN_FLIGHT.set(3)\n"
        "telemetry.STORAGE_BYTES.inc(5, direction='read')\n"
        "assert 'ray' not in sys.modules, 'telemetry imported Ray'\n"
        "assert telemetry.current_job() == 'segment'\n"
        "print('OK')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]


def test_progress_text_gives_done_total_rate_and_eta():
    assert format_progress(25, 100, "videos", 50.0) == "25/100 videos (25%), 0.5 videos/s, ETA 2 min 30 s"
    assert format_progress(0, 10, "videos", 5.0) == "0/10 videos (0%), 0 videos/s, ETA unknown"
    assert format_progress(1200, 1200, "steps", 600.0, "3 rejected").endswith(", 3 rejected, all done")
    assert "1,500 sequences/s" in format_progress(3000, 9000, "sequences", 2.0)


def test_progress_line_is_logged_when_due_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.summary")
    line = ProgressLine("segment", "video", 4, every_s=3600)
    assert not line.update(1)  # not due yet
    assert line.update(4, rejected=1, frames=120)  # the last item: always logged
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("segment: 4/4 videos (100%)") and "1 rejected" in message
    assert "frames/s" in message and message.endswith("all done")


def test_job_summary_logs_progress_for_the_expected_kind_only(caplog, monkeypatch):
    monkeypatch.setenv("HMHI_PROGRESS_EVERY_S", "0")
    caplog.set_level(logging.INFO, logger="pipeline.summary")
    summary = JobSummary("precompute_flow")
    summary.skipped("video", "old", "already done")  # before expect: not part of this run's progress
    summary.expect("video", 3)
    summary.done("video", "a", frames=8)
    summary.rejected("video", "b", "broken")
    summary.done("shard", "s0")  # another kind: no line
    lines = [r.getMessage() for r in caplog.records if "precompute_flow:" in r.getMessage()]
    assert lines[0].startswith("precompute_flow: 1/3 videos (33%)") and "ETA" in lines[0]
    assert lines[1].startswith("precompute_flow: 2/3 videos (67%)") and "1 rejected" in lines[1]
    assert len(lines) == 2
    assert summary.to_dict()["counts"]["video"] == {"done": 1, "skipped": 1, "rejected": 1}

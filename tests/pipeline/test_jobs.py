"""Job utilities: the end-of-job summary is complete, printed, and written atomically to storage."""

from __future__ import annotations

from pipeline.jobs import JobSummary
from pipeline.storage import open_storage


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
    assert d["rejected"] == [{"kind": "video", "name": "bad clip", "reason": "bad clip/00003.jpg: truncated JPEG"}]
    out = capsys.readouterr().out
    assert "4 in: 2 done, 1 skipped, 1 rejected" in out and "truncated JPEG" in out
    assert open_storage(storage_url).read_json("summary.json") == d


def test_job_command_line_reports_config_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--pred", str(tmp_path), "--gt", str(tmp_path),
                           "--protocol", "davis2099"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: config field 'protocol' = 'davis2099'" in proc.stderr

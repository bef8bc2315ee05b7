"""bench/gpu_all.sh --dry-run: the GPU benchmark script runs end to end on CPU at tiny sizes (issue 16).

Only the model step runs here (the segment, training and flow steps start Ray clusters and take minutes at any
size; `bash bench/gpu_all.sh --dry-run` runs them all by hand). The results go to a copy of RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _dry_run(step: str, results: Path) -> subprocess.CompletedProcess:
    """``bench/gpu_all.sh --dry-run`` of one step, appending to ``results``."""
    return subprocess.run(
        ["bash", "bench/gpu_all.sh", "--dry-run", "--steps", step, "--results", str(results)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # runs the model step of the script (~10 s)
def test_gpu_all_dry_run_model_step(tmp_path):
    results = tmp_path / "RESULTS.md"
    shutil.copy(REPO_ROOT / "bench" / "RESULTS.md", results)
    before = results.read_text()
    proc = _dry_run("model", results)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith(before)  # appended, nothing rewritten
    section = text[len(before) :]
    assert "## bench/gpu_all.sh --dry-run" in section and "Device: CPU dry run" in section
    assert "### model: exit 0" in section
    lines = [json.loads(line) for line in section.splitlines() if line.startswith("{")]
    steady = {line["dtype"]: line for line in lines if line["setting"] == "steady_state"}
    assert set(steady) == {"fp32", "bf16"} and steady["bf16"]["speedup_vs_fp32_same_run"] > 0
    assert {line["dtype"] for line in lines if line["setting"] == "memory"} == {"fp32", "bf16"}


def test_gpu_all_refuses_unknown_steps(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/gpu_all.sh", "--dry-run", "--steps", "nope", "--results", str(tmp_path / "R.md")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown step nope" in proc.stderr


@pytest.mark.slow  # builds every flow engine of the script (~11 s)
def test_gpu_all_dry_run_engines_step(tmp_path):
    """The flow-engine step (bench/flow_engines.py, issue 25) runs end to end: DIS and a ptlflow model, one line
    each with the same-run ratio to DIS medium."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    proc = _dry_run("engines", results)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = results.read_text()
    assert "### engines: exit 0" in section
    lines = {}
    for text in section.splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            lines[line["engine"]] = line
    assert set(lines) == {"dis:medium", "rapidflow"}
    assert lines["dis:medium"]["speed_vs_dis_medium"] == 1.0 and lines["rapidflow"]["s_per_flow"] > 0
    assert lines["rapidflow"]["weights"] == "random (speed only)"

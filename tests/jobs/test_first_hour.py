"""A user's first hour (issue 23), end to end: every job run as a user runs it (``hmhi-uvos <job>``, each in its own
process with its own local Ray, from a working folder, with relative paths) on a tiny corpus.

Each job exits 0 and says nothing it does not mean: no WARNING, ERROR or traceback line (Python's or Ray's C++) that
is not the job's own intended message. Outputs land where the relative paths say (not in a Ray worker's session
folder), the trained checkpoint records its model and its training data, and segment runs it at the size it was
trained at (96 px) without ``--input-size``, as its done markers say. One run of the five jobs, kept as small as the
jobs allow (3 videos of 6 frames, 2 training steps on one worker).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

NOISE = re.compile(r"\bWARNING\b|\bERROR\b|Traceback|Warning:|\[[\d-]+ [\d:,.]+ [EWF] \d+ \d+\]")
"""A warning or error of Python logging, Python's warnings, a traceback, or Ray's C++ logger (``[date E pid tid]``)."""
INTENDED: tuple[str, ...] = (
    # segment's own warning that its decode tasks get no CPU: only where the machine is starved (a loaded CI host)
    "pipeline.segment.runner: no chunk from",
)
"""Substrings of the jobs' own warnings this run may print (none else, on a healthy tiny corpus with matching
flags)."""


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory) -> tuple:
    """Run the five jobs one after the other from a fresh working folder; (folder, {job: (status, lines)})."""
    from pipeline.synthetic import SyntheticConfig, generate_corpus

    root = tmp_path_factory.mktemp("first-hour")
    generate_corpus(
        SyntheticConfig(out=str(root / "corpus"), videos=3, frames=6, size="64x64", val_fraction=0.34)
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("RAY_ADDRESS", None)
    logs: dict[str, tuple[int, list[str]]] = {}

    def job(name: str, *args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", name, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        logs[name] = (proc.returncode, (proc.stdout + proc.stderr).splitlines())

    job(
        "precompute_flow",
        "--input",
        "corpus",
        "--output",
        "shards",
        "--flow-preset",
        "ultrafast",
        "--val-fraction",
        "0.5",
    )
    job(
        "train",
        *("--config", str(REPO_ROOT / "configs" / "test.yaml"), "--data", "shards", "--storage", "runs"),
        *("--run-name", "first", "--num-workers", "1", "--max-steps", "2"),
        *("--set", "checkpoint.every_steps=2", "--set", "validation.every_steps=2"),
    )
    job("segment", "--input", "corpus", "--output", "seg", "--checkpoint", "runs/first/best/model.pt")
    job("evaluate", "--pred", "seg/masks", "--gt", "corpus", "--output", "eval")
    job("export", "--input", "seg")
    return root, logs


@pytest.mark.parametrize("name", ["precompute_flow", "train", "segment", "evaluate", "export"])
def test_every_job_exits_0_and_prints_only_what_it_means(first_hour, name):
    _, logs = first_hour
    status, lines = logs[name]
    noise = [line for line in lines if NOISE.search(line) and not any(i in line for i in INTENDED)]
    assert status == 0, "\n".join(lines[-30:])
    assert noise == [], "\n".join(noise)


def test_relative_paths_are_the_working_folder_s_for_every_job(first_hour):
    root, _ = first_hour
    for made in (
        "shards/index.parquet",
        "runs/first/best/model.pt",  # Ray Train's workers wrote it here, not in their session folders
        "runs/first/logs/metrics.csv",
        "seg/done/synth000.json",
        "eval/report.html",
        "seg/exports/instances_ytvis.json",
    ):
        assert (root / made).is_file(), made
    summary = json.loads((root / "runs/first/summary.json").read_text())
    assert summary["figures"]["best_model"] == str(root / "runs/first/best/model.pt")


def test_the_checkpoint_records_its_model_and_its_training_data(first_hour):
    from model import describe_checkpoint, project_version

    root, _ = first_hour
    info = describe_checkpoint(str(root / "runs/first/best/model.pt"))
    assert (info.settings.name, info.settings.input_size, info.settings.memory_size) == ("hmhi_mit_b0", 96, 5)
    assert info.settings.mean == (0.485, 0.456, 0.406) and info.settings.std == (0.229, 0.224, 0.225)
    data = info.provenance["training_data"]
    assert data["url"] == str(root / "shards") and data["fingerprint"].startswith("sha256:")
    assert data["flow"]["engine"] == "dis" and data["flow"]["preset"] == "ultrafast"
    assert info.project_version == project_version()


def test_segment_runs_at_the_size_the_model_was_trained_at(first_hour):
    """No --input-size: 96 from the checkpoint (the default 512 scored IoU 0.41 instead of 0.78), and the flow the
    model was trained on (DIS ultrafast); the done markers say so."""
    root, logs = first_hour
    for marker in sorted((root / "seg" / "done").glob("*.json")):
        done = json.loads(marker.read_text())
        assert done["input_size"] == 96 and done["defaults"] == "checkpoint record"
        assert done["checkpoint_record"]["input_size"] == 96 and done["flow"]["preset"] == "ultrafast"
    assert any("model hmhi_mit_b0 at 96x96" in line for line in logs["segment"][1])


def test_evaluate_prints_each_figure_once(first_hour):
    _, logs = first_hour
    lines = logs["evaluate"][1]
    assert sum(bool(re.match(r"\s+JF_mean\s", line)) for line in lines) == 1
    assert not any(line.strip() in ("{", "}") for line in lines)  # no JSON dump beside the summary

"""The bad command lines of a user's first hour (issue 23), as a user types them: each ends in at most five lines that
name the path or field, with exit status 2, before Ray starts and before anything is written. Also: exit status 1
for an evaluation that found no prediction at all, and the installed ``hmhi-uvos`` console script.

The first cases run as subprocesses (``python -m pipeline``, which is ``hmhi-uvos``) with a private ``RAY_TMPDIR``
that must stay free of Ray sessions; the others call the same ``main`` in this process (the subprocesses already
prove where in a job's life the checks run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from pipeline.commands import main
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_checkpoint):
    """A working folder with a small corpus, a text file and a truncated checkpoint, and a segment output root with
    one finished video."""
    from pipeline.synthetic import SyntheticConfig, generate_corpus

    root = tmp_path_factory.mktemp("first-hour")
    generate_corpus(SyntheticConfig(out=str(root / "corpus"), videos=2, frames=6, size="64x64"))
    (root / "notes.pth").write_text("these are my notes, not weights\n")
    (root / "truncated.pth").write_bytes(open(tiny_checkpoint, "rb").read()[:20000])
    (root / "seg" / "done").mkdir(parents=True)
    (root / "seg" / "done" / "synth000.json").write_text(json.dumps({"video_id": "synth000"}))
    (root / "empty-pred").mkdir()
    return root


def _run(place, *args: str) -> tuple[int, list[str]]:
    """``hmhi-uvos args`` in its own process, from ``place``; (exit status, output lines)."""
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # where a Ray the command started would put its session
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RAY_TMPDIR=ray_tmp)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=place,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    started = os.listdir(ray_tmp)
    shutil.rmtree(ray_tmp)
    assert started == [], "a Ray session was started"
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


@pytest.mark.parametrize(
    "args, named",
    [
        (["segment", "--input", "corpus", "--output", "out", "--checkpoint", "notes.pth"], "notes.pth"),
        (
            [
                "train",
                "--data",
                "shards",
                "--storage",
                "runs",
                "--run-name",
                "r",
                "--init-checkpoint",
                "truncated.pth",
            ],
            "truncated.pth",
        ),
        (["precompute_flow", "--input", "corpus", "--output", "/proc/x"], "output /proc/x"),
        (["evaluate", "--pred", "seg/mask", "--gt", "corpus", "--output", "eval"], "pred "),
        (["export", "--input", "seg", "--videos", "synth000,bear"], "bear"),
    ],
)
def test_a_bad_command_line_is_a_few_lines_exit_2_and_no_ray(place, args, named):
    before = sorted(os.listdir(place))
    status, lines = _run(place, *args)
    assert status == 2, lines
    assert len(lines) <= 5 and lines[-1].startswith("error: ") and named in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    assert sorted(os.listdir(place)) == before  # no output folder, no lease, no settings file


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["segment", "--input", "corpus", "--output", "out", "--checkpoint", "missing.pth"],
            "model.checkpoint {place}/missing.pth: no such file",
        ),
        (
            ["segment", "--input", "corpus", "--output", "out", "--checkpoint", "truncated.pth"],
            "{place}/truncated.pth: not a readable torch checkpoint",
        ),
        (
            ["precompute_flow", "--input", "corpus/JPEGImages/480p/synth000/00000.jpg", "--output", "out"],
            "input {place}/corpus/JPEGImages/480p/synth000/00000.jpg: is a file, not a folder",
        ),
        (["precompute_flow", "--input", "corpsu", "--output", "out"], "input {place}/corpsu: no such folder"),
        (
            ["precompute_flow", "--input", "corpus", "--output", "corpus/shards"],
            "is inside input {place}/corpus",
        ),
        (
            ["precompute_flow", "--input", "seg", "--output", "out"],
            "{place}/seg: cannot detect the corpus format",
        ),
        (
            ["segment", "--input", "corpus", "--output", "/proc/x", "--checkpoint", "{ckpt}"],
            "output /proc/x: cannot be created",
        ),
        (["evaluate", "--pred", "seg", "--gt", "corpus", "--output", "/proc/x"], "output /proc/x: cannot be"),
        (["export", "--input", "seg", "--output", "/proc/x"], "output /proc/x: cannot be created"),
        (
            ["train", "--data", "shards", "--storage", "/proc/x", "--run-name", "r"],
            "storage /proc/x/r: cannot be",
        ),
        (
            ["segment", "--input", "corpus", "--output", "out", "--checkpoint", "{ckpt}", "--videos", "bear"],
            "videos: 1 not in {place}/corpus (format davis2016): bear",
        ),
        (["export", "--input", "seg", "--output", "seg"], "output {place}/seg is input"),
    ],
)
def test_more_bad_command_lines(place, tiny_checkpoint, capsys, monkeypatch, args, message):
    monkeypatch.chdir(place)
    before = sorted(os.listdir(place))
    assert main([a.format(ckpt=tiny_checkpoint) for a in args]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("error: ") and message.format(place=place) in lines[-1], lines
    assert sorted(os.listdir(place)) == before


def test_evaluate_with_no_prediction_at_all_fails_and_writes_no_score(place, capsys, monkeypatch):
    monkeypatch.chdir(place)
    assert main(["evaluate", "--pred", "empty-pred", "--gt", "corpus", "--output", "eval-empty"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[-1].startswith("failed: evaluate: every item was rejected (2)") and "no predictions in" in err[-1]
    )
    summary = json.loads((place / "eval-empty" / "summary.json").read_text())
    assert summary["counts"]["sequence"] == {"done": 0, "skipped": 0, "rejected": 2}
    assert "JF_mean" not in summary["figures"]  # no score of 0 that looks like a real one
    # the summary and the output marker (pipeline/lease.py: whose folder this is), no CSV, plot or report
    assert sorted(os.listdir(place / "eval-empty")) == ["_output.json", "summary.json"]


@pytest.mark.slow
def test_the_installed_console_script_runs_the_jobs_without_the_checkout(tmp_path):
    """Build the wheel from a copy of the project, install it into a folder, and run ``hmhi-uvos`` from there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in ("model", "pipeline"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("hmhi_uvos-*.whl")
    target = tmp_path / "installed"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=600
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # the installed copy, not the checkout

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(target / "bin" / "hmhi-uvos"), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    listing = command("--help")
    assert listing.returncode == 0 and "\n  segment " in listing.stdout and "\n  demo " in listing.stdout
    segment_help = command("segment", "--help")
    assert segment_help.returncode == 0 and segment_help.stdout.startswith("usage: hmhi-uvos segment")
    where = subprocess.run(
        [sys.executable, "-c", "import pipeline.demo; print(pipeline.demo.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    missing = command("precompute_flow", "--input", "nowhere", "--output", "out")
    assert (
        missing.returncode == 2
        and missing.stderr.splitlines()[-1] == f"error: input {tmp_path}/nowhere: no such folder"
    )

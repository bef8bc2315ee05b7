"""The command line every job shares (pipeline.cli, pipeline.commands): whole help texts with examples, one usage
per help, the ``hmhi-uvos`` command, and exit statuses (0 done, 1 ran and failed, 2 a user error)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from pipeline.cli import JobSpec, job_main, run_job_main
from pipeline.commands import JOBS, TOOLS, main
from pipeline.config import field_docs
from pipeline.errors import JobFailed
from pipeline.summary import JobSummary, everything_rejected


def _doc(cls: type, dotted: str) -> str:
    """The docstring of the config field at ``dotted``."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return field_docs(cls)[leaf]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as done:  # argparse ends --help with SystemExit(0), as on a command line
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_help_shows_each_flag_s_whole_description_and_real_examples(capsys, name):
    job = JOBS[name]
    text = _help(capsys, [name])
    assert text.count("usage:") == 1 and text.startswith(f"usage: hmhi-uvos {name}")
    flat = " ".join(text.split())
    for flag, target in job.flags.items():
        words = " ".join(
            _doc(job.config, target[0] if isinstance(target, tuple) else target).replace("``", "").split()
        )
        assert f"{flag}" in text and words in flat, (flag, words)  # the whole docstring, every line of it
    examples = text.split("examples:", 1)[1]
    assert (
        examples.count(f"hmhi-uvos {name} ") >= 2
    )  # two or three real command lines, with the right program name
    assert "Exit status: 0 done" in text


def test_the_descriptions_the_issue_saw_cut_are_whole(capsys):
    segment = " ".join(_help(capsys, ["segment"]).split())
    assert "cvat_video (one zip per video). [outputs.export]" in segment
    assert "outputs.save_probs=true, frames=annotated. [preset]" in segment
    flow = " ".join(_help(capsys, ["precompute_flow"]).split())
    assert "frames, videos). [format]" in flow


def test_jobs_scripts_name_themselves_in_their_help(capsys):
    from jobs.segment import main as segment_main

    with pytest.raises(SystemExit) as done:
        segment_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: jobs/segment.py") and "  jobs/segment.py --input " in text


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tools_print_one_usage(capsys, tool):
    with pytest.raises(SystemExit) as done:
        main([tool, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.count("usage:") == 1 and text.startswith(f"usage: hmhi-uvos {tool}")


def test_the_installed_command_lists_its_jobs_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("precompute_flow", "train", "segment", "evaluate", "export", "demo", "synthetic"):
        assert f"\n  {name} " in text
    assert main(["segmnet"]) == 2
    assert "unknown command 'segmnet'" in capsys.readouterr().err
    assert main([]) == 2  # no command: the list, on stderr


def test_a_bad_value_is_one_line_and_exit_status_2(capsys):
    assert main(["evaluate", "--pred", "p", "--gt", "g", "--protocol", "davis2099"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: config field 'protocol' = 'davis2099'")


def test_everything_rejected_is_a_failure_and_some_rejected_is_not():
    def summary(**counts) -> dict:
        s = JobSummary("x")
        for state, n in counts.items():
            for i in range(n):
                getattr(s, state)("video", f"v{i}", **({} if state == "done" else {"reason": "broken"}))
        return s.to_dict()

    assert "every item was rejected (2)" in everything_rejected(summary(rejected=2))
    assert "first: video 'v0': broken" in everything_rejected(summary(rejected=2))
    assert everything_rejected(summary(done=1, rejected=3)) is None
    assert everything_rejected(summary(skipped=1, rejected=1)) is None  # a rerun: the rest was done before
    assert everything_rejected(summary()) is None  # nothing to do is no failure


@dataclasses.dataclass
class _Config:
    items: int = 1
    """How many items the job tries."""


def _job(run, preflight=lambda cfg: None) -> JobSpec:
    return JobSpec(
        name="toy",
        summary="a job for this test",
        config=_Config,
        run=run,
        preflight=preflight,
        flags={"--items": "items"},
        description="A toy job.",
    )


def test_job_main_runs_the_preflight_first_and_fails_a_run_that_rejected_everything(capsys):
    calls = []

    def rejecting_run(cfg):
        calls.append("run")
        s = JobSummary("toy")
        for i in range(cfg.items):
            s.rejected("video", f"v{i}", "unreadable")
        return s.finish()

    job = _job(rejecting_run, preflight=lambda cfg: calls.append("preflight"))
    with pytest.raises(JobFailed, match="every item was rejected"):
        job_main(job, ["--items", "2"])
    assert calls == ["preflight", "run"]
    assert run_job_main(lambda argv: job_main(job, argv), ["--items", "1"]) == 1
    # the last line (job_main's logging handler may also write to this test's captured stderr)
    assert capsys.readouterr().err.splitlines()[-1].startswith("failed: toy: every item was rejected (1)")


def test_a_preflight_error_stops_before_the_run(capsys):
    from pipeline.preflight import PreflightError

    ran = []

    def preflight(cfg):
        raise PreflightError("input /x: no such folder")

    job = _job(lambda cfg: ran.append(cfg), preflight=preflight)
    assert run_job_main(lambda argv: job_main(job, argv), []) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: input /x: no such folder" and ran == []

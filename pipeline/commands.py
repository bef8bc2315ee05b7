"""``hmhi-uvos``, the installed command: ``hmhi-uvos <job> [options]`` runs a job with the same flags as
``jobs/<job>.py`` (which stay, for ``ray job submit --working-dir .``), and ``hmhi-uvos --help`` lists the jobs.
``python -m pipeline`` is the same command (what ``make demo`` runs each stage with)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from model.version import project_version
from pipeline import demo, synthetic
from pipeline.cli import JobSpec, job_main, run_job_main
from pipeline.dataset.job import JOB as PRECOMPUTE_FLOW
from pipeline.evaluate.job import JOB as EVALUATE
from pipeline.export.job import JOB as EXPORT
from pipeline.segment.job import JOB as SEGMENT
from pipeline.train.job import JOB as TRAIN

__all__ = ["COMMAND", "JOBS", "TOOLS", "main"]

COMMAND = "hmhi-uvos"

JOBS: dict[str, JobSpec] = {job.name: job for job in (PRECOMPUTE_FLOW, TRAIN, SEGMENT, EVALUATE, EXPORT)}
"""The pipeline's jobs, in pipeline order."""

TOOLS: dict[str, tuple[Callable[..., int], str]] = {
    "demo": (demo.main, "the whole pipeline on a synthetic corpus, on the CPU (what `make demo` runs)"),
    "synthetic": (synthetic.main, "generate a seeded synthetic corpus in DAVIS-2016 layout"),
}
"""Commands that are no job: ``(main(argv, prog) -> exit status, one line)``."""


def usage() -> str:
    """``hmhi-uvos --help``: every command with its line."""
    width = max(len(name) for name in (*JOBS, *TOOLS))
    lines = [
        f"usage: {COMMAND} <command> [options]      ({COMMAND} <command> --help for its options)",
        "",
        "Unsupervised video object segmentation with HMHI-Net on Ray: flow, training, inference, scores, exports.",
        "",
        "jobs:",
        *(f"  {name:<{width}}  {job.summary}" for name, job in JOBS.items()),
        "",
        "tools:",
        *(f"  {name:<{width}}  {line}" for name, (_, line) in TOOLS.items()),
        "",
        "Exit status: 0 done, 1 the job ran and failed (or rejected every item), 2 a user error.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hmhi-uvos argv``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"{COMMAND} {project_version()}")
        return 0
    name, rest = args[0], args[1:]
    prog = f"{COMMAND} {name}"
    if name in JOBS:
        return run_job_main(lambda job_argv: job_main(JOBS[name], job_argv, prog=prog), rest)
    if name in TOOLS:
        return TOOLS[name][0](rest, prog=prog)
    print(f"error: unknown command {name!r}; commands: {', '.join([*JOBS, *TOOLS])}", file=sys.stderr)
    return 2

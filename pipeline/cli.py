"""The command line of every job: ``hmhi-uvos <job>`` and ``jobs/<job>.py`` are :func:`job_main` over the job's
:class:`JobSpec`, run by :func:`run_job_main`, which turns user errors into one line and exit status 2 and failed
runs into exit status 1.

A job's life on the command line: parse (``--help``, ``--print-config``, a bad value: exit 2 at once) -> its
pre-flight on the driver (``JobSpec.preflight``: paths, the checkpoint, the input's format, the output's
permissions; nothing written, no Ray) -> ``run`` (the lease, Ray, the work) -> its summary. Exit status: 0 the job
did its work (some items rejected is fine: they are listed in the summary); 1 it ran and failed, which includes a
run that rejected every item it tried; 2 a user error, found before any work starts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.errors import CheckpointError
from pipeline.config import FlagTarget, parse_job_args
from pipeline.errors import JobFailed, UserError
from pipeline.runtime import setup_logging
from pipeline.summary import everything_rejected

__all__ = ["JobSpec", "job_main", "run_job_main"]


@dataclass(frozen=True)
class JobSpec:
    """Everything the command line knows about a job; each job package defines one (``JOB`` in its ``job.py``)."""

    name: str
    """The job's name: ``hmhi-uvos <name>``, ``jobs/<name>.py``, the ``job`` of its summary."""
    summary: str
    """One line saying what the job does (``hmhi-uvos --help`` lists it)."""
    config: type
    """The job's config dataclass (a docstring per field: the help text of its flags)."""
    run: Callable[[Any], dict[str, Any]]
    """``run(cfg) -> summary dict``: the job itself (takes the output's lease, starts Ray, writes)."""
    preflight: Callable[[Any], None]
    """``preflight(cfg)``: every check that needs neither Ray nor a write (see :mod:`pipeline.preflight`), on the
    driver, within seconds; raises a :class:`UserError` naming the field and path. It may complete ``cfg`` with what
    a check reads (the model settings a checkpoint records)."""
    flags: Mapping[str, FlagTarget]
    """Command-line shortcuts (flag -> dotted config field); ``--set`` reaches every field."""
    description: str
    """The help text above the options: what the job reads and writes."""
    examples: tuple[str, ...] = ()
    """Real command lines that end the help, with ``{prog}`` standing for how the job was invoked."""

    def epilog(self, prog: str) -> str:
        """The end of the job's help: its examples, then how to reach the fields without a flag."""
        lines = (
            ["examples:", *(f"  {example.format(prog=prog)}" for example in self.examples)]
            if self.examples
            else []
        )
        lines += [
            "",
            "Every config field can be set with --set FIELD=VALUE (--print-config lists them).",
            "Exit status: 0 done, 1 the job ran and failed (or rejected every item), 2 a user error.",
        ]
        return "\n".join(lines)


def job_main(spec: JobSpec, argv: Sequence[str] | None, *, prog: str | None = None) -> dict[str, Any]:
    """The whole ``main`` of a job: set up logging, parse the command line into ``spec.config``, run the
    pre-flight, then ``spec.run``; returns the summary. A run that rejected every item it tried raises
    :class:`JobFailed` (its summary is written).

    ``jobs/<job>.py`` is ``main(argv=None)`` over this, and ``run_job_main(main)`` under ``__main__``.
    """
    setup_logging()
    prog = prog or f"hmhi-uvos {spec.name}"
    cfg: Any = parse_job_args(
        spec.config, argv, description=spec.description, flags=spec.flags, prog=prog, epilog=spec.epilog(prog)
    )
    spec.preflight(cfg)
    summary = spec.run(cfg)
    reason = everything_rejected(summary)
    if reason:
        raise JobFailed(f"{spec.name}: {reason}", summary=summary)
    return summary


def run_job_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """The ``__main__`` entry of every job: run ``main``; a user error or a failed run is one clear line.

    ``main`` itself raises (tests and other Python callers get the exception); on the command line the user gets
    ``error: <message naming the field or URL>`` and exit status 2 for a user error (``UserError``,
    ``model.CheckpointError``), and ``failed: <message>`` and exit status 1 when the job ran and failed
    (:class:`JobFailed`; its summary is already written). Anything else is a bug and keeps its traceback.
    """
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except JobFailed as e:
        print(f"failed: {e}", file=sys.stderr, flush=True)
        return 1
    return 0

"""The command line of every job: ``jobs/<job>.py`` is ``main(argv=None)`` over :func:`job_main`, run by
:func:`run_job_main`, which turns user errors into one line and exit status 2 and failed runs into exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from model.checkpoint import CheckpointError
from pipeline.config import parse_job_args
from pipeline.errors import JobFailed, UserError
from pipeline.runtime import setup_logging

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # typeshed's "any dataclass"; exists only for type checkers

__all__ = ["job_main", "run_job_main"]

C = TypeVar("C", bound="DataclassInstance")
"""A job's config class: a dataclass."""


def job_main(
    config_cls: type[C],
    run: Callable[[C], dict[str, Any]],
    argv: Sequence[str] | None,
    *,
    flags: Mapping[str, Any],
    description: str,
    prog: str,
) -> dict[str, Any]:
    """The whole ``main`` of every job: set up logging, parse the command line into ``config_cls``, ``run`` it.

    ``jobs/<job>.py`` is ``main(argv=None)`` over this, and ``run_job_main(main)`` under ``__main__``.
    """
    setup_logging()
    cfg = parse_job_args(config_cls, argv, description=description, flags=flags, prog=prog)
    return run(cfg)


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

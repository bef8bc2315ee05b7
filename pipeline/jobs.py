"""Utilities shared by every job in ``jobs/``: logging, attaching to Ray, and the end-of-job summary."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

log = logging.getLogger(__name__)

__all__ = ["JobSummary", "UserError", "init_ray", "job_main", "run_job_main", "setup_logging"]

class UserError(Exception):
    """Base of every error that is the user's to fix (a config field, an unreachable URL, a bad corpus or
    checkpoint): ``run_job_main`` prints it as one line and exits with status 2 instead of a traceback.

    Domain errors subclass it next to their own base (``class ConfigError(UserError, ValueError)``).
    ``model/`` stands alone and cannot import this, so ``run_job_main`` also names ``model.CheckpointError``.
    """


_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """One log format for every job (idempotent). ``HMHI_LOG_LEVEL`` overrides ``level``."""
    level = os.environ.get("HMHI_LOG_LEVEL", level)
    root = logging.getLogger()
    if not any(getattr(h, "_hmhi", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        handler._hmhi = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def init_ray(**kwargs: Any) -> None:
    """Attach to the Ray cluster the job runs on, or start a local one.

    No-op when Ray is already initialised (tests, or a driver that set it up). Otherwise ``ray.init`` connects to
    ``RAY_ADDRESS`` or a running local cluster (``ray job submit`` sets this up), and else starts a local cluster.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)
    ray.init(**kwargs)
    res = ray.cluster_resources()
    log.info("Ray: %d CPUs, %d GPUs, %d nodes", res.get("CPU", 0), res.get("GPU", 0), len(ray.nodes()))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


@dataclass
class JobSummary:
    """Counts what a job did, skipped and rejected (with reasons), and prints a one-screen summary at the end.

    Every job's ``summary.json`` has the same top-level fields: ``job``, ``config``, ``started``, ``finished``
    (ISO 8601, UTC), ``elapsed_s``, ``counts`` (kind -> done/skipped/rejected), ``skipped`` and ``rejected``
    (kind, name, reason each) and ``figures`` (the job's own totals and rates). ``kind`` is the unit being
    counted (``"video"``, ``"shard"``, ``"run"``...). Reasons name the item and file.
    """

    job: str
    """Job name shown in the summary."""
    config: dict[str, Any] | None = None
    """The resolved job config (``config_to_dict``), recorded in the summary."""
    started: float = field(default_factory=time.time)
    """Start time (epoch seconds)."""
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    """kind -> {"done", "skipped", "rejected"} -> count."""
    figures: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """The job's own totals (frames, bytes...) and rates."""
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    """One entry per skipped item: kind, name, reason."""
    rejected_items: list[dict[str, str]] = field(default_factory=list)
    """One entry per rejected item: kind, name, reason."""

    def done(self, kind: str, name: str, **figures: float) -> None:
        self.counts[kind]["done"] += 1
        for key, value in figures.items():
            self.figures[key] += value

    def skipped(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["skipped"] += 1
        self.skipped_items.append({"kind": kind, "name": name, "reason": reason})

    def rejected(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["rejected"] += 1
        self.rejected_items.append({"kind": kind, "name": name, "reason": reason})
        log.warning("rejected %s %r: %s", kind, name, reason)

    def add(self, figure: str, value: float = 1) -> None:
        self.figures[figure] += value

    def set(self, figure: str, value: Any) -> None:
        """Record a figure that is not a running total (a rate, a final metric, a URL)."""
        self.figures[figure] = value

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.started

    def to_dict(self) -> dict[str, Any]:
        now = time.time()

        def plain(v: Any) -> Any:
            return int(v) if isinstance(v, float) and v.is_integer() else v

        return {
            "job": self.job,
            "config": self.config,
            "started": _iso(self.started),
            "finished": _iso(now),
            "elapsed_s": round(now - self.started, 3),
            "counts": {k: {s: int(v.get(s, 0)) for s in ("done", "skipped", "rejected")} for k, v in self.counts.items()},
            "skipped": list(self.skipped_items),
            "rejected": list(self.rejected_items),
            "figures": {k: plain(v) for k, v in self.figures.items()},
        }

    def format(self, max_reasons: int = 20) -> str:
        d = self.to_dict()
        lines = [f"== {self.job} summary ({d['elapsed_s']:.1f} s) =="]
        for kind, c in d["counts"].items():
            total = sum(c.values())
            lines.append(f"  {kind + 's':<10} {total:>7} in: {c['done']} done, {c['skipped']} skipped, "
                         f"{c['rejected']} rejected")
        for key, value in d["figures"].items():
            lines.append(f"  {key:<20} {value}")
        if d["rejected"]:
            lines.append("  rejected:")
            for item in d["rejected"][:max_reasons]:
                lines.append(f"    - {item['kind']} {item['name']}: {item['reason']}")
            if len(d["rejected"]) > max_reasons:
                lines.append(f"    ... and {len(d['rejected']) - max_reasons} more (see the summary file)")
        return "\n".join(lines)

    def finish(self, storage=None, rel: str = "summary.json") -> dict[str, Any]:
        """Print the summary; write it as JSON (atomically) to ``storage``/``rel`` when given. Returns the dict."""
        d = self.to_dict()
        print(self.format(), flush=True)
        if storage is not None:
            storage.write_json(rel, d)
        log.debug("summary: %s", json.dumps(d))
        return d


C = TypeVar("C")


def job_main(config_cls: type[C], run: Callable[[C], dict[str, Any]], argv: Sequence[str] | None, *,
             flags: Mapping[str, Any], description: str, prog: str) -> dict[str, Any]:
    """The whole ``main`` of every job: set up logging, parse the command line into ``config_cls``, ``run`` it.

    ``jobs/<job>.py`` is ``main(argv=None)`` over this, and ``run_job_main(main)`` under ``__main__``.
    """
    from pipeline.config import parse_job_args

    setup_logging()
    cfg = parse_job_args(config_cls, argv, description=description, flags=flags, prog=prog)
    return run(cfg)


def run_job_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """The ``__main__`` entry of every job: run ``main``; a user error (``UserError``) is one clear line.

    ``main`` itself raises (tests and other Python callers get the exception); on the command line the user gets
    ``error: <message naming the field or URL>`` and exit status 2 instead of a traceback.
    """
    from model.checkpoint import CheckpointError

    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0

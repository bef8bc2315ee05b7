"""Utilities shared by every job in ``jobs/``: logging, attaching to Ray, and the end-of-job summary."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["JobSummary", "init_ray", "run_job_main", "setup_logging"]

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


@dataclass
class JobSummary:
    """Counts what a job did, skipped and rejected (with reasons), and prints a one-screen summary at the end.

    ``kind`` is the unit being counted (``"video"``, ``"shard"``, ``"frame"``...). Reasons name the item and file.
    """

    job: str
    """Job name shown in the summary."""
    started: float = field(default_factory=time.time)
    """Start time (epoch seconds)."""
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    """kind -> {"done", "skipped", "rejected"} -> count."""
    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Free-form totals (frames, bytes...)."""
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    """One entry per skipped item: kind, name, reason."""
    rejected_items: list[dict[str, str]] = field(default_factory=list)
    """One entry per rejected item: kind, name, reason."""

    def done(self, kind: str, name: str, **counters: float) -> None:
        self.counts[kind]["done"] += 1
        for key, value in counters.items():
            self.counters[key] += value

    def skipped(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["skipped"] += 1
        self.skipped_items.append({"kind": kind, "name": name, "reason": reason})

    def rejected(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["rejected"] += 1
        self.rejected_items.append({"kind": kind, "name": name, "reason": reason})
        log.warning("rejected %s %r: %s", kind, name, reason)

    def add(self, counter: str, value: float = 1) -> None:
        self.counters[counter] += value

    def to_dict(self) -> dict[str, Any]:
        elapsed = time.time() - self.started
        return {
            "job": self.job,
            "elapsed_s": round(elapsed, 3),
            "counts": {k: {s: int(v.get(s, 0)) for s in ("done", "skipped", "rejected")} for k, v in self.counts.items()},
            "counters": {k: (int(v) if float(v).is_integer() else v) for k, v in self.counters.items()},
            "skipped": list(self.skipped_items),
            "rejected": list(self.rejected_items),
        }

    def format(self, max_reasons: int = 20) -> str:
        d = self.to_dict()
        lines = [f"== {self.job} summary ({d['elapsed_s']:.1f} s) =="]
        for kind, c in d["counts"].items():
            total = sum(c.values())
            lines.append(f"  {kind + 's':<10} {total:>7} in: {c['done']} done, {c['skipped']} skipped, "
                         f"{c['rejected']} rejected")
        for key, value in d["counters"].items():
            rate = f"  ({value / d['elapsed_s']:.2f}/s)" if d["elapsed_s"] > 0 and isinstance(value, (int, float)) else ""
            lines.append(f"  {key:<20} {value}{rate}")
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


def run_job_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """The ``__main__`` entry of every job: run ``main``; a bad config or unreachable storage is one clear line.

    ``main`` itself raises (tests and other Python callers get the exception); on the command line the user gets
    ``error: <message naming the field or URL>`` and exit status 2 instead of a traceback.
    """
    from pipeline.config import ConfigError
    from pipeline.storage import StorageError

    try:
        main(sys.argv[1:] if argv is None else argv)
    except (ConfigError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0

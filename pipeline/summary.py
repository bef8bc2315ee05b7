"""The end-of-job summary every job writes: what was done, skipped and rejected, and the job's figures."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.retry import retry_counts

log = logging.getLogger(__name__)

__all__ = ["JobSummary", "everything_rejected", "format_duration", "format_figure", "format_size"]


def format_duration(seconds: float) -> str:
    """``0.25 s``, ``3.0 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds < 0.1 else f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_size(n_bytes: float) -> str:
    """Decimal units: ``512 B``, ``12.3 kB``, ``38.0 MB``, ``1.20 GB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            value = n_bytes / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    return f"{int(n_bytes)} B"


def format_figure(name: str, value: Any) -> str:
    """``value`` written for a person, by the unit ``name`` declares (see :class:`JobSummary`)."""
    if isinstance(value, (dict, list, tuple)) and len(str(value)) > 100:
        return (
            f"{len(value)} entries (see the summary file)"  # one screen: the whole value is in summary.json
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite: nothing to format
        return str(value)
    if name.endswith("_per_s"):
        return f"{value:,.3g}/s" if abs(value) < 100 else f"{value:,.0f}/s"
    if name.endswith("_s"):
        return format_duration(float(value))
    if "bytes" in name:
        return format_size(float(value))
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


@dataclass
class JobSummary:
    """Counts what a job did, skipped and rejected (with reasons), and prints a one-screen summary at the end.

    Every job's ``summary.json`` has the same top-level fields: ``job``, ``config``, ``started``, ``finished``
    (ISO 8601, UTC), ``elapsed_s``, ``counts`` (kind -> done/skipped/rejected), ``skipped`` and ``rejected``
    (kind, name, reason each) and ``figures`` (the job's own totals and rates). ``kind`` is the unit being
    counted (``"video"``, ``"shard"``, ``"run"``...). Reasons name the item and file.

    Figure names say their unit, and the printed summary formats them by it (``summary.json`` keeps the plain
    numbers, in seconds and bytes):

    - ``*_per_s``: a rate, per second (``frames_per_s`` -> ``19.3/s``);
    - ``*_s``: a duration in seconds (``driver_tar_s`` -> ``3.0 s``, ``2 min 05 s``, ``1 h 02 min``);
    - a name containing ``bytes``: a size in bytes (``bytes_written`` -> ``38.0 MB``, ``1.20 GB``);
    - anything else: a count or value as it is (``frames`` -> ``1,234``, ``final_loss`` -> ``0.4512``).

    A figure that is a total of something per unit of time is only a rate when its name says so: totals are
    never divided by the elapsed time for display.
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
            "counts": {
                k: {s: int(v.get(s, 0)) for s in ("done", "skipped", "rejected")}
                for k, v in self.counts.items()
            },
            "skipped": list(self.skipped_items),
            "rejected": list(self.rejected_items),
            "figures": {k: plain(v) for k, v in self.figures.items()},
        }

    def format(self, max_reasons: int = 20) -> str:
        d = self.to_dict()
        lines = [f"== {self.job} summary ({format_duration(d['elapsed_s'])}) =="]
        for kind, c in d["counts"].items():
            total = sum(c.values())
            lines.append(
                f"  {kind + 's':<10} {total:>7} in: {c['done']} done, {c['skipped']} skipped, "
                f"{c['rejected']} rejected"
            )
        for key, value in d["figures"].items():
            lines.append(f"  {key:<24} {format_figure(key, value)}")
        if d["rejected"]:
            lines.append("  rejected:")
            for item in d["rejected"][:max_reasons]:
                lines.append(f"    - {item['kind']} {item['name']}: {item['reason']}")
            if len(d["rejected"]) > max_reasons:
                lines.append(f"    ... and {len(d['rejected']) - max_reasons} more (see the summary file)")
        return "\n".join(lines)

    def __post_init__(self) -> None:
        self._retries_at_start = retry_counts()

    def _count_storage_retries(self) -> None:
        """Storage retries this job's driver made (``storage_retries_<kind>``; workers count their own, in their
        logs): a run that succeeded only after many retries shows it."""
        for kind, count in retry_counts().items():
            made = count - self._retries_at_start.get(kind, 0)
            if made:
                self.set(f"storage_retries_{kind}", made)

    def finish(self, storage=None, rel: str = "summary.json") -> dict[str, Any]:
        """Print the summary; write it as JSON (atomically) to ``storage``/``rel`` when given. Returns the dict."""
        self._count_storage_retries()
        d = self.to_dict()
        print(self.format(), flush=True)
        if storage is not None:
            storage.write_json(rel, d)
        log.debug("summary: %s", json.dumps(d))
        return d


def everything_rejected(summary: dict[str, Any]) -> str | None:
    """Why a finished job counts as failed although it ran, or None: it rejected every item it tried (nothing done,
    nothing skipped as already done, at least one rejected), e.g. every video of a corpus unreadable. Some items
    rejected beside others done is success (they are listed in the summary). ``summary``: :meth:`JobSummary.finish`'s
    dict."""
    counts = summary.get("counts") or {}
    totals = {
        state: sum(int(c.get(state, 0)) for c in counts.values()) for state in ("done", "skipped", "rejected")
    }
    if totals["rejected"] == 0 or totals["done"] or totals["skipped"]:
        return None
    first = (summary.get("rejected") or [{}])[0]
    example = f"; first: {first.get('kind')} {first.get('name')!r}: {first.get('reason')}" if first else ""
    return f"every item was rejected ({totals['rejected']}){example}"

"""What a job did: the periodic progress line while it runs, and the end-of-job summary every job writes (what was
done, skipped and rejected, and the job's figures)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline import telemetry
from pipeline.retry import retry_counts

log = logging.getLogger(__name__)

__all__ = [
    "JobSummary",
    "everything_rejected",
    "PROGRESS_EVERY_ENV",
    "ProgressLine",
    "format_duration",
    "format_eta",
    "format_figure",
    "format_progress",
    "format_size",
]

PROGRESS_EVERY_ENV = "HMHI_PROGRESS_EVERY_S"
"""Environment variable: seconds between two progress lines of a job (default 30)."""
_FRAME_FIGURES = ("frames",)
"""Summary figures that count frames (the ``hmhi_frames_total`` metric follows them)."""


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


def format_eta(left: float, rate: float) -> str:
    """The time left for ``left`` items at ``rate`` items per second: ``ETA 6 min 14 s``, ``all done``, or
    ``ETA unknown`` (no rate yet)."""
    if left <= 0:
        return "all done"
    return f"ETA {format_duration(left / rate)}" if rate > 0 else "ETA unknown"


def format_progress(done: float, total: float, unit: str, elapsed_s: float, extra: str = "") -> str:
    """``120/1,000 videos (12%), 2.35 videos/s, ETA 6 min 14 s`` (``extra`` goes after the rate): done/total,
    the rate since the start, and the time left at that rate (``ETA unknown`` before the first item)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    share = f" ({100 * done / total:.0f}%)" if total else ""
    eta = format_eta(total - done, rate)
    rate_text = f"{rate:,.3g} {unit}/s" if rate < 100 else f"{rate:,.0f} {unit}/s"
    return f"{done:,.0f}/{total:,.0f} {unit}{share}, {rate_text}{', ' + extra if extra else ''}, {eta}"


@dataclass
class ProgressLine:
    """A job's periodic progress line (the one helper every job uses): done/total, rate and ETA of ``kind`` items,
    logged at most every ``every_s`` seconds (``HMHI_PROGRESS_EVERY_S``, default 30); it also keeps the job's
    ``hmhi_videos_remaining`` gauge. :meth:`JobSummary.expect` makes one that follows the summary's counts."""

    job: str
    """The job, first word of the line."""
    kind: str
    """What is counted (``video``, ``sequence``...)."""
    total: int
    """Items this run is to finish."""
    every_s: float = field(default_factory=lambda: float(os.environ.get(PROGRESS_EVERY_ENV, "30")))
    """Seconds between two lines."""
    started: float = field(default_factory=time.monotonic)
    """When the count started (monotonic seconds)."""
    last_logged: float = field(default_factory=time.monotonic)
    """When the last line was logged (monotonic seconds)."""

    def line(self, finished: int, rejected: int = 0, frames: float = 0.0) -> str:
        """The line for ``finished`` items (done or rejected, ``rejected`` of them) and ``frames`` frames."""
        elapsed = time.monotonic() - self.started
        extra = []
        if rejected:
            extra.append(f"{rejected:,} rejected")
        if frames and elapsed > 0:
            extra.append(f"{frames / elapsed:,.3g} frames/s")
        return f"{self.job}: " + format_progress(
            finished, self.total, self.kind + "s", elapsed, ", ".join(extra)
        )

    def __post_init__(self) -> None:
        telemetry.REMAINING.set(self.total, job=self.job)

    def update(self, finished: int, rejected: int = 0, frames: float = 0.0) -> bool:
        """``finished`` items are finished (``rejected`` of them rejected): set the remaining gauge, and log the line
        if ``every_s`` has passed since the last one, or at the last item. True if it logged."""
        telemetry.REMAINING.set(max(0, self.total - finished), job=self.job)
        now = time.monotonic()
        if now - self.last_logged < self.every_s and finished < self.total:
            return False
        self.last_logged = now
        log.info("%s", self.line(finished, rejected, frames))
        return True


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
    _progress: ProgressLine | None = field(default=None, init=False, repr=False)
    """The progress line, once :meth:`expect` said how many items are to come."""
    _progress_base: tuple[int, int, float] = field(default=(0, 0, 0.0), init=False, repr=False)
    """Finished items, rejected items and frames when :meth:`expect` was called."""

    def expect(self, kind: str, total: int) -> None:
        """Say that this run is to finish ``total`` items of ``kind``: from now on every item done or rejected
        updates the remaining-videos gauge and, every ``HMHI_PROGRESS_EVERY_S`` seconds, logs the progress line
        (:class:`ProgressLine`: done/total, rate, ETA)."""
        self._progress = ProgressLine(self.job, kind, total)
        self._progress_base = (
            self._finished(kind),
            self.counts[kind]["rejected"],
            self.figures.get("frames", 0),
        )

    def done(self, kind: str, name: str, **figures: float) -> None:
        self.counts[kind]["done"] += 1
        telemetry.ITEMS.inc(job=self.job, kind=kind, status="done")
        for key, value in figures.items():
            self.add(key, value)
        self._tick(kind)

    def skipped(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["skipped"] += 1
        self.skipped_items.append({"kind": kind, "name": name, "reason": reason})
        telemetry.ITEMS.inc(job=self.job, kind=kind, status="skipped")

    def rejected(self, kind: str, name: str, reason: str) -> None:
        self.counts[kind]["rejected"] += 1
        self.rejected_items.append({"kind": kind, "name": name, "reason": reason})
        log.warning("rejected %s %r: %s", kind, name, reason)
        telemetry.ITEMS.inc(job=self.job, kind=kind, status="rejected")
        self._tick(kind)

    def add(self, figure: str, value: float = 1) -> None:
        self.figures[figure] += value
        if figure in _FRAME_FIGURES:
            telemetry.FRAMES.inc(value, job=self.job)

    def _finished(self, kind: str) -> int:
        return self.counts[kind]["done"] + self.counts[kind]["rejected"]

    def _tick(self, kind: str) -> None:
        """An item of ``kind`` finished: update the progress line (and the remaining gauge)."""
        progress = self._progress
        if progress is None or progress.kind != kind:
            return
        finished0, rejected0, frames0 = self._progress_base
        progress.update(
            self._finished(kind) - finished0,
            self.counts[kind]["rejected"] - rejected0,
            self.figures.get("frames", 0) - frames0,
        )

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
        telemetry.set_job(self.job)  # the job label of this process's metrics (storage bytes and retries)

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

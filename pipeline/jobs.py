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

__all__ = [
    "JobFailed",
    "JobSummary",
    "UserError",
    "format_figure",
    "init_ray",
    "job_main",
    "quiet_frameworks",
    "run_job_main",
    "setup_logging",
]

class UserError(Exception):
    """Base of every error that is the user's to fix (a config field, an unreachable URL, a bad corpus or
    checkpoint): ``run_job_main`` prints it as one line and exits with status 2 instead of a traceback.

    Domain errors subclass it next to their own base (``class ConfigError(UserError, ValueError)``).
    ``model/`` stands alone and cannot import this, so ``run_job_main`` also names ``model.CheckpointError``.
    """


class JobFailed(Exception):
    """The job ran and failed (e.g. training workers exhausted their restarts), after writing its summary.

    ``run`` raises it instead of ``SystemExit``: Python callers get the exception with the summary attached,
    and ``run_job_main`` turns it into one line on stderr and exit status 1 (2 is kept for user errors).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary
        """The summary dict the job wrote before failing."""


_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# Framework messages a user of the jobs cannot act on. Each entry says why it is silenced; everything else is kept.
_SILENCED_WARNINGS = (
    # (message regex, category, module regex, reason)
    ("Grad strides do not match bucket view strides", UserWarning, "",
     "DDP (torch/csrc/distributed/c10d/reducer.cpp, once per worker, every run) compares each gradient's strides "
     "with its parameter's. HMHI-Net's depthwise convolutions (MiT's Mix-FFN dwconv, the memory encoders' fusers, "
     "PLAM's down-projection) have (C, 1, k, k) weights with stride k*k on the size-1 axis, and their backward "
     "returns stride 1 there: the same memory layout, and the reducer still copies the right values into its bucket; "
     "no setting of a job changes it."),
)
_QUIET_ENV = {
    # Ray prints the same line from every worker once per worker: keep its de-duplication on (the default, made
    # explicit because a user's environment may have turned it off).
    "RAY_DEDUP_LOGS": "1",
    # The "ray.init(...) will be ignored / usage stats" notices and the Ray Train V2 migration banner repeat on
    # every run and ask nothing of the user.
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Ray Data's live progress bars redraw dozens of times a second; in a log file (not a terminal) each redraw
    # becomes a line, and the job's own log already reports progress per video.
}


def quiet_frameworks() -> None:
    """Silence framework noise that a user of the jobs cannot act on; the one place that does it (idempotent).

    Called by :func:`setup_logging` (the driver) and by the training workers (``pipeline.train.loop``), since the
    DDP warning is raised in the worker processes. What is silenced and why: :data:`_SILENCED_WARNINGS`,
    :data:`_QUIET_ENV` (environment variables a user may still set explicitly: only unset ones are filled in) and
    Ray Data's progress bars when stderr is not a terminal. ``HMHI_LOG_LEVEL=DEBUG`` keeps everything.
    """
    import warnings

    if os.environ.get("HMHI_LOG_LEVEL", "").upper() == "DEBUG":
        return
    for message, category, module, _reason in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # Ray Train's INFO lines in the training workers ("Moving model to device", and one "Reporting training
    # result" per report and rank that prints every metric) repeat what the job's own step lines say; its warnings
    # and errors stay. The report line comes from a logger named by its file path (logging.getLogger(__file__) in
    # ray/train/v2/_internal/execution/context.py, Ray 2.60), outside "ray.train", so it is named here.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if "ray.train" in sys.modules:  # only where training runs: importing Ray Train costs a second
        try:
            from ray.train.v2._internal.execution import context as train_context
        except ImportError:  # another Ray version: nothing to quiet
            pass
        else:
            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    if not sys.stderr.isatty():
        try:
            from ray.data import DataContext
        except ImportError:  # Ray Data not installed: nothing to quiet
            return
        with warnings.catch_warnings():
            # Ray 2.60's DataContext() assigns its own deprecated fields while it is built and warns about them.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "enable_operator_progress_bars"):
            ctx.enable_operator_progress_bars = False


def setup_logging(level: int | str = logging.INFO) -> None:
    """One log format for every job (idempotent). ``HMHI_LOG_LEVEL`` overrides ``level``."""
    level = os.environ.get("HMHI_LOG_LEVEL", level)
    quiet_frameworks()
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
    A local cluster starts without the dashboard: no job uses it, and its processes cost seconds of every local
    run's start-up (issue 16: 15-20 s vs 11-12 s for ``ray.init`` on the loaded 2-core machine); a job that needs it
    passes ``include_dashboard`` (the train job: Ray Train asks the State API). For the dashboard, start Ray with
    ``ray start --head`` and run the job against it.
    """
    import ray

    quiet_frameworks()
    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)  # the workers' progress lines (training steps) are the job's log
    kwargs.setdefault("include_dashboard", False)  # only used when ray.init starts a cluster
    started = time.perf_counter()
    ray.init(**kwargs)
    res = ray.cluster_resources()
    log.info("Ray: %d CPUs, %d GPUs, %d nodes (ray.init %.1f s)", res.get("CPU", 0), res.get("GPU", 0),
             len(ray.nodes()), time.perf_counter() - started)


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
            "counts": {k: {s: int(v.get(s, 0)) for s in ("done", "skipped", "rejected")} for k, v in self.counts.items()},
            "skipped": list(self.skipped_items),
            "rejected": list(self.rejected_items),
            "figures": {k: plain(v) for k, v in self.figures.items()},
        }

    def format(self, max_reasons: int = 20) -> str:
        d = self.to_dict()
        lines = [f"== {self.job} summary ({format_duration(d['elapsed_s'])}) =="]
        for kind, c in d["counts"].items():
            total = sum(c.values())
            lines.append(f"  {kind + 's':<10} {total:>7} in: {c['done']} done, {c['skipped']} skipped, "
                         f"{c['rejected']} rejected")
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
        from pipeline.storage import retry_counts

        self._retries_at_start = retry_counts()

    def _count_storage_retries(self) -> None:
        """Storage retries this job's driver made (``storage_retries_<kind>``; workers count their own, in their
        logs): a run that succeeded only after many retries shows it."""
        from pipeline.storage import retry_counts

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
    """The ``__main__`` entry of every job: run ``main``; a user error or a failed run is one clear line.

    ``main`` itself raises (tests and other Python callers get the exception); on the command line the user gets
    ``error: <message naming the field or URL>`` and exit status 2 for a user error (``UserError``,
    ``model.CheckpointError``), and ``failed: <message>`` and exit status 1 when the job ran and failed
    (:class:`JobFailed`; its summary is already written). Anything else is a bug and keeps its traceback.
    """
    from model.checkpoint import CheckpointError

    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except JobFailed as e:
        print(f"failed: {e}", file=sys.stderr, flush=True)
        return 1
    return 0

"""Live metrics of the running jobs: every ``hmhi_*`` metric, declared once, recorded through Ray's metrics API.

Each metric is a :class:`Metric` in :data:`METRICS` (name, type, description, labels, histogram boundaries); the
jobs record through the module-level objects (``telemetry.FRAMES.inc(n, job="segment")``). Ray exports them on
every node's Prometheus endpoint (``ray start --metrics-export-port``) with the prefix ``ray_`` and its own labels
(``NodeAddress``, ``WorkerId``, ``SessionName``...): ``hmhi_frames_total`` is scraped as ``ray_hmhi_frames_total``.
The README's metric table is :func:`markdown_table` (a test compares the two), and the Grafana dashboard
(``infra/grafana/``) queries only these names (a test checks that too).

Recording is cheap and never fails a job:

- in a process that is not attached to Ray (a notebook running ``VideoSegmenter``, unit tests, a driver before
  ``init_ray``) a record is a no-op; this module never imports Ray itself (it looks in ``sys.modules``);
- the Ray metric objects are made on first use in each process (Ray metrics belong to the process that records);
- an error of the metrics API is logged once per metric and the record dropped.

The job label, ``hmhi_job`` (not ``job``: Prometheus gives every scraped series a ``job`` label of its own, the
scrape job, and would rename ours to ``exported_job``): every metric has it. A record names the job with ``job=``;
without it, the job this process works for: the driver's :class:`pipeline.summary.JobSummary` and every worker
entry point (actors, Ray tasks, the training loop) call :func:`set_job`, so that metrics recorded deep in shared
code (storage bytes and retries) carry the job they worked for.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "EXPORT_PREFIX",
    "JOB_LABEL",
    "Metric",
    "current_job",
    "markdown_table",
    "set_job",
    "ITEMS",
    "FRAMES",
    "REMAINING",
    "IN_FLIGHT",
    "VIDEO_SECONDS",
    "BUSY_SECONDS",
    "WORKER_SECONDS",
    "STORAGE_BYTES",
    "STORAGE_RETRIES",
    "MODEL_FRAME_SECONDS",
    "FLOW_FRAME_SECONDS",
    "TRAIN_STEPS",
    "TRAIN_STEP_SECONDS",
    "TRAIN_DATA_WAIT_SECONDS",
    "TRAIN_LOSS",
    "TRAIN_CLIPS_PER_SECOND",
    "TRAIN_CHECKPOINTS",
    "TRAIN_RESTARTS",
]

EXPORT_PREFIX = "ray_"
"""What Ray puts before an application metric's name on its Prometheus endpoint."""
JOB_LABEL = "hmhi_job"
"""The label naming the job (precompute_flow, train, segment, evaluate, export) on every metric."""

_JOB = {"name": "unknown"}
_LOCK = threading.Lock()

# Histogram buckets (seconds), from a fast GPU frame to a slow CPU one, and from a short clip to a long video.
_FRAME_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_VIDEO_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_STEP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def set_job(name: str) -> None:
    """Name the job this process works for: the ``job`` label of the metrics recorded without one."""
    _JOB["name"] = name


def current_job() -> str:
    """The job this process works for (``unknown`` until :func:`set_job`)."""
    return _JOB["name"]


def _ray_attached() -> bool:
    """Whether this process is attached to Ray (a driver after ``ray.init``, or a Ray worker), without importing
    Ray where nothing did."""
    ray = sys.modules.get("ray")
    try:
        return ray is not None and bool(ray.is_initialized())
    except Exception:  # a half-imported or shut-down Ray: no metrics, never an error
        return False


@dataclass
class Metric:
    """One metric: its declaration and, per process, the Ray metric that records it."""

    name: str
    """Name as declared to Ray (``hmhi_...``; counters end in ``_total``); exported with :data:`EXPORT_PREFIX`."""
    kind: Literal["counter", "gauge", "histogram"]
    """Prometheus type."""
    description: str
    """What it measures (the README table and Prometheus' HELP line)."""
    labels: tuple[str, ...]
    """Label names besides :data:`JOB_LABEL`, which every metric has first, and those Ray adds (node, worker,
    session)."""
    boundaries: tuple[float, ...] = ()
    """Bucket upper bounds of a histogram (seconds); empty for the other kinds."""
    _impl: Any = field(default=None, init=False, repr=False, compare=False)
    _broken: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.name.startswith("hmhi_"):
            raise ValueError(f"metric {self.name!r}: names start with 'hmhi_'")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name!r}: counters, and only counters, end in '_total'")
        if (self.kind == "histogram") != bool(self.boundaries):
            raise ValueError(f"metric {self.name!r}: histograms, and only histograms, have boundaries")
        if JOB_LABEL in self.labels or "job" in self.labels:
            raise ValueError(f"metric {self.name!r}: the job label {JOB_LABEL!r} is implied, do not list it")

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label of the metric as exported (besides Ray's): the job label, then :attr:`labels`."""
        return (JOB_LABEL, *self.labels)

    @property
    def exported_name(self) -> str:
        """The name Prometheus scrapes."""
        return EXPORT_PREFIX + self.name

    def inc(self, value: float = 1.0, job: str | None = None, **labels: str) -> None:
        """Add ``value`` (> 0; zero is skipped) to a counter; ``job`` defaults to this process's job."""
        if value > 0:
            self._record("inc", value, job, labels)

    def set(self, value: float, job: str | None = None, **labels: str) -> None:
        """Set a gauge; ``job`` defaults to this process's job."""
        self._record("set", value, job, labels)

    def observe(self, value: float, job: str | None = None, **labels: str) -> None:
        """Add one observation to a histogram; ``job`` defaults to this process's job."""
        self._record("observe", value, job, labels)

    def _record(self, method: str, value: float, job: str | None, labels: dict[str, str]) -> None:
        if self._broken or not _ray_attached():
            return
        tags = {key: str(labels.get(key, "")) for key in self.labels}
        tags[JOB_LABEL] = job or _JOB["name"]
        try:
            impl = self._impl if self._impl is not None else self._make()
            getattr(impl, method)(float(value), tags=tags)
        except Exception as e:  # metrics are never worth failing a job for
            self._broken = True
            log.warning("metric %s disabled in this process: %s: %s", self.name, type(e).__name__, e)

    def _make(self):
        from ray.util import metrics

        with _LOCK:
            if self._impl is None:
                tag_keys = self.label_names
                if self.kind == "counter":
                    self._impl = metrics.Counter(self.name, self.description, tag_keys=tag_keys)
                elif self.kind == "gauge":
                    self._impl = metrics.Gauge(self.name, self.description, tag_keys=tag_keys)
                else:
                    self._impl = metrics.Histogram(
                        self.name, self.description, list(self.boundaries), tag_keys=tag_keys
                    )
        return self._impl


# -- every job --------------------------------------------------------------------------------------------------
ITEMS = Metric(
    "hmhi_items_total",
    "counter",
    "Items a job finished, by kind (video, sequence, run...) and status (done, skipped, rejected); the driver "
    "counts them as its summary does",
    ("kind", "status"),
)
FRAMES = Metric(
    "hmhi_frames_total",
    "counter",
    "Frames of the finished items (segment: segmented; precompute_flow: in committed shards; evaluate: scored); "
    "the driver counts them as its summary's frames figure",
    (),
)
REMAINING = Metric(
    "hmhi_videos_remaining",
    "gauge",
    "Videos (evaluate: sequences) of the run not finished yet, from the driver; queued = remaining - in flight",
    (),
)
IN_FLIGHT = Metric(
    "hmhi_videos_in_flight",
    "gauge",
    "Videos a worker is working on now (segment: model slots in use; precompute_flow: the videos of the groups "
    "being built); one series per worker, sum them",
    (),
)
VIDEO_SECONDS = Metric(
    "hmhi_video_seconds",
    "histogram",
    "Wall time of one video in a worker, from its start to its outputs written (its latency)",
    (),
    _VIDEO_BUCKETS_S,
)
BUSY_SECONDS = Metric(
    "hmhi_busy_seconds_total",
    "counter",
    "Seconds a stage's workers spent inside the stage's engine (stage model: the model step; stage flow: the "
    "flow engine); busy fraction = rate(busy) / rate(worker)",
    ("stage",),
)
WORKER_SECONDS = Metric(
    "hmhi_worker_seconds_total",
    "counter",
    "Wall seconds of the workers that host a stage (model actors, flow actors) since they were ready",
    ("stage",),
)
STORAGE_BYTES = Metric(
    "hmhi_storage_bytes_total",
    "counter",
    "Bytes read from and written to storage (local or S3) through pipeline.storage, by direction (read, write)",
    ("direction",),
)
STORAGE_RETRIES = Metric(
    "hmhi_storage_retries_total",
    "counter",
    "Storage requests retried, by kind (s3_request: resent by boto3/s3fs; s3_read_resume: a streamed read "
    "reopened where it broke)",
    ("kind",),
)
# -- segment ----------------------------------------------------------------------------------------------------
MODEL_FRAME_SECONDS = Metric(
    "hmhi_model_frame_seconds",
    "histogram",
    "Model time per frame: one batched model step divided by the frames it stepped (its count is the frames "
    "stepped, live)",
    (),
    _FRAME_BUCKETS_S,
)
# -- flow -------------------------------------------------------------------------------------------------------
FLOW_FRAME_SECONDS = Metric(
    "hmhi_flow_frame_seconds",
    "histogram",
    "Optical-flow time per frame: one engine call divided by the frames it computed, by engine",
    ("engine",),
    _FRAME_BUCKETS_S,
)
# -- train ------------------------------------------------------------------------------------------------------
TRAIN_STEPS = Metric("hmhi_train_steps_total", "counter", "Optimiser steps done, per rank", ("rank",))
TRAIN_STEP_SECONDS = Metric(
    "hmhi_train_step_seconds",
    "histogram",
    "Wall time of one training step (data wait included), per rank",
    ("rank",),
    _STEP_BUCKETS_S,
)
TRAIN_DATA_WAIT_SECONDS = Metric(
    "hmhi_train_data_wait_seconds",
    "histogram",
    "Time a training step waited for its batch, per rank",
    ("rank",),
    _STEP_BUCKETS_S,
)
TRAIN_LOSS = Metric("hmhi_train_loss", "gauge", "Training loss of the last step, per rank", ("rank",))
TRAIN_CLIPS_PER_SECOND = Metric(
    "hmhi_train_clips_per_second",
    "gauge",
    "Clips per second of all ranks over the last log window (rank 0)",
    (),
)
TRAIN_CHECKPOINTS = Metric(
    "hmhi_train_checkpoints_total",
    "counter",
    "Checkpoints handed to Ray Train, by reason (cadence: checkpoint.every_steps or the last step; preemption: "
    "a node hosting a worker is about to be taken away)",
    ("reason",),
)
TRAIN_RESTARTS = Metric(
    "hmhi_train_restarts_total",
    "counter",
    "Restarts of the training worker group, by cause (preemption, failure)",
    ("cause",),
)

METRICS: tuple[Metric, ...] = (
    ITEMS,
    FRAMES,
    REMAINING,
    IN_FLIGHT,
    VIDEO_SECONDS,
    BUSY_SECONDS,
    WORKER_SECONDS,
    STORAGE_BYTES,
    STORAGE_RETRIES,
    MODEL_FRAME_SECONDS,
    FLOW_FRAME_SECONDS,
    TRAIN_STEPS,
    TRAIN_STEP_SECONDS,
    TRAIN_DATA_WAIT_SECONDS,
    TRAIN_LOSS,
    TRAIN_CLIPS_PER_SECOND,
    TRAIN_CHECKPOINTS,
    TRAIN_RESTARTS,
)
"""Every metric the jobs record, in declaration order."""


def markdown_table() -> str:
    """The README's table of every metric: exported name, type, labels, meaning."""
    lines = ["| metric (as scraped) | type | labels | meaning |", "|---|---|---|---|"]
    for metric in METRICS:
        labels = ", ".join(f"`{label}`" for label in metric.label_names)
        lines.append(f"| `{metric.exported_name}` | {metric.kind} | {labels} | {metric.description} |")
    return "\n".join(lines)

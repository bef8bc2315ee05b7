"""Retries: the per-process count of what was retried, read by job summaries and exported as a metric.

Storage counts its own retries here (:func:`count_retry`); :class:`pipeline.summary.JobSummary` reports what a job
made (:func:`retry_counts`), so a run that succeeded only after many retries shows it, and each retry also goes to
the ``hmhi_storage_retries_total`` metric (:mod:`pipeline.telemetry`), so a running job shows it too.
"""

from __future__ import annotations

import threading
from collections import Counter

from pipeline import telemetry

__all__ = ["count_retry", "retry_counts"]

_LOCK = threading.Lock()
_RETRIES: Counter[str] = Counter()


def count_retry(kind: str, n: int = 1) -> None:
    """Add ``n`` retries of ``kind`` (``s3_request``, ``s3_read_resume``...) to this process's count."""
    with _LOCK:
        _RETRIES[kind] += n
    telemetry.STORAGE_RETRIES.inc(n, kind=kind)


def retry_counts() -> dict[str, int]:
    """Retries made by this process so far, by kind (a snapshot; it only grows).

    - ``s3_request``: requests that boto3 or s3fs resent after a throttle, a 5xx or a connection error
      (botocore's own count, ``RetryAttempts``);
    - ``s3_read_resume``: streamed GETs reopened at the byte they reached after their body failed.

    pyarrow's retries (the AWS C++ SDK inside Ray Data and Ray Train I/O) and s3fs's re-reads of a block are not
    counted: neither library reports them. Each Ray worker process has its own counts.
    """
    with _LOCK:
        return dict(_RETRIES)

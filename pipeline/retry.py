"""Retries: the one retry helper, and the per-process count of what was retried, read by job summaries.

:class:`RetryPolicy` says how an operation is retried (how many attempts, which errors, the capped exponential
back-off with jitter, the count it adds to); :class:`Retrying` applies it to one operation from the operation's own
``except`` clause, so a loop that resumes where it failed (a stream reopened at the byte or sample it reached) keeps
its shape::

    retrying = Retrying(policy, f"read {url}")
    while True:
        try:
            ...  # the work, resuming from what it already did
            break
        except Exception as error:
            retrying.failed(error)  # raises when not retryable or out of attempts; else logs, counts, waits

Storage counts its retries here (:func:`count_retry`, also through a policy's ``count_as``);
:class:`pipeline.summary.JobSummary` reports what a job made (:func:`retry_counts`), so a run that succeeded only
after many retries shows it; each retry also goes to the ``hmhi_storage_retries_total`` metric
(:mod:`pipeline.telemetry`), so a running job shows it too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import telemetry

__all__ = ["Backoff", "RetryPolicy", "Retrying", "count_retry", "retry_counts"]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Backoff:
    """Capped exponential back-off: the wait after the n-th failure in a row is ``first_s * 2**(n-1)``, at most
    ``max_s``; with ``jitter``, a uniform draw below that ("full jitter": retrying clients spread out instead of
    returning together)."""

    first_s: float
    """Wait after the first failure (the upper bound of the draw, with jitter)."""
    max_s: float
    """Longest wait."""
    jitter: bool = True
    """Draw the wait uniformly in ``[0, cap]`` instead of waiting the cap itself."""

    def __post_init__(self) -> None:
        if not 0 <= self.first_s <= self.max_s:
            raise ValueError(f"Backoff({self.first_s}, {self.max_s}): need 0 <= first_s <= max_s")

    def cap(self, failures: int) -> float:
        """The longest wait after ``failures`` (>= 1) failures in a row."""
        return min(self.max_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 60))

    def delay(self, failures: int) -> float:
        """The wait before the next attempt after ``failures`` failures in a row."""
        cap = self.cap(failures)
        return random.uniform(0.0, cap) if self.jitter else cap


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of operation is retried."""

    backoff: Backoff
    """The wait between attempts."""
    attempts: int | None = None
    """Attempts in all, the first included (None: no limit; the caller decides when to stop)."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Errors worth another attempt (a dropped connection, a storage blip)."""
    never_retry: tuple[type[BaseException], ...] = ()
    """Errors raised at once even if ``retry_on`` covers them: another attempt cannot fix them (a missing object,
    rejected credentials, bytes that fail their checksum)."""
    count_as: str | None = None
    """The :func:`count_retry` kind each retry adds to (None: not counted)."""
    log_level: int = logging.WARNING
    """Level of the line logged before each retry."""

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts = {self.attempts}: must be >= 1 (or None)")

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        return isinstance(error, self.retry_on) and not isinstance(error, self.never_retry)


class Retrying:
    """The failures in a row of one operation under a :class:`RetryPolicy`; see the module docstring.

    ``what`` names the operation in the log line (a URL; a callable when it changes, e.g. the byte or sample a
    resumable read reached) and ``action`` says what the retry does (``"reopening it there"``); ``give_up(error,
    failures)`` makes the error raised when the attempts are used up (default: the last error itself); ``sleep``
    waits (``threading.Event.wait`` makes the wait end early when the event is set); ``logger`` is the caller's.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        what: str | Callable[[], str],
        *,
        action: str = "retrying",
        give_up: Callable[[BaseException, int], BaseException] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        logger: logging.Logger = log,
    ):
        self.policy = policy
        self.failures = 0
        """Failures in a row so far."""
        self._what = what
        self._action = action
        self._give_up = give_up
        self._sleep = sleep
        self._log = logger

    def failed(self, error: BaseException) -> None:
        """Record that the operation failed with ``error`` (call it from the ``except`` clause).

        Raises ``error`` itself when the policy does not retry it, and ``give_up(error, failures)`` (from
        ``error``) when this was the last attempt; otherwise counts the retry, logs a line naming ``what``, the
        error and the wait, and returns after the back-off.
        """
        policy = self.policy
        if not policy.retryable(error):
            raise error
        self.failures += 1
        if policy.attempts is not None and self.failures >= policy.attempts:
            if self._give_up is None:
                raise error
            raise self._give_up(error, self.failures) from error
        wait = policy.backoff.delay(self.failures)
        if policy.count_as:
            count_retry(policy.count_as)
        of = "" if policy.attempts is None else f" of {policy.attempts - 1}"
        self._log.log(
            policy.log_level,
            "%s failed (%s: %s); %s in %.2f s (retry %d%s)",
            self._what() if callable(self._what) else self._what,
            type(error).__name__,
            error,
            self._action,
            wait,
            self.failures,
            of,
        )
        self._sleep(wait)

    def succeeded(self) -> None:
        """The operation went through: the next failure is the first in a row again."""
        self.failures = 0

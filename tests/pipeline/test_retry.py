"""The one retry helper (pipeline.retry): back-off bounds, which errors are retried, giving up, counting, logging."""

from __future__ import annotations

import logging

import pytest

from pipeline.retry import Backoff, Retrying, RetryPolicy, retry_counts


def test_backoff_doubles_up_to_its_cap_and_jitters_below_it():
    exact = Backoff(first_s=0.5, max_s=3.0, jitter=False)
    assert [exact.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = Backoff(first_s=0.5, max_s=3.0)
    for n in range(1, 6):
        draws = [jittered.delay(n) for _ in range(200)]
        assert all(0.0 <= d <= exact.cap(n) for d in draws)
        assert len(set(draws)) > 100  # spread out, not one value
    assert Backoff(1.0, 60.0).cap(10_000) == 60.0  # no overflow after very many failures
    with pytest.raises(ValueError, match="first_s <= max_s"):
        Backoff(first_s=2.0, max_s=1.0)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(Backoff(0, 0), attempts=0)


def test_retrying_retries_what_the_policy_allows_then_gives_up_with_the_callers_error(caplog):
    waits: list[float] = []
    policy = RetryPolicy(
        Backoff(first_s=0.25, max_s=1.0, jitter=False),
        attempts=3,
        retry_on=(OSError,),
        never_retry=(FileNotFoundError,),
        count_as="test_retry_kind",
    )
    before = retry_counts().get("test_retry_kind", 0)
    position = [0]
    retrying = Retrying(
        policy,
        lambda: f"read x at byte {position[0]}",
        action="reopening it there",
        give_up=lambda error, failures: RuntimeError(f"gave up after {failures}: {error}"),
        sleep=waits.append,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.retry"):
        for byte in (10, 20):
            position[0] = byte
            retrying.failed(ConnectionResetError("reset"))  # retryable: logs, counts, waits
        with pytest.raises(RuntimeError, match="gave up after 3: reset") as exc:
            retrying.failed(ConnectionResetError("reset"))
    assert isinstance(exc.value.__cause__, ConnectionResetError)
    assert waits == [0.25, 0.5] and retrying.failures == 3
    assert retry_counts()["test_retry_kind"] - before == 2
    assert [r.getMessage() for r in caplog.records] == [
        "read x at byte 10 failed (ConnectionResetError: reset); reopening it there in 0.25 s (retry 1 of 2)",
        "read x at byte 20 failed (ConnectionResetError: reset); reopening it there in 0.50 s (retry 2 of 2)",
    ]

    # Not retryable: the error itself, at once, with nothing waited or counted.
    fresh = Retrying(policy, "read y", sleep=waits.append)
    missing = FileNotFoundError("y")
    with pytest.raises(FileNotFoundError) as exc:
        fresh.failed(missing)
    assert exc.value is missing
    with pytest.raises(ValueError):
        fresh.failed(ValueError("not in retry_on"))
    assert fresh.failures == 0 and waits == [0.25, 0.5]


def test_retrying_without_a_limit_and_success_resets_the_run_of_failures():
    waits: list[float] = []
    retrying = Retrying(RetryPolicy(Backoff(1.0, 4.0, jitter=False)), "upload", sleep=waits.append)
    for _ in range(5):
        retrying.failed(OSError("503"))
    retrying.succeeded()
    retrying.failed(OSError("503"))
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0, 1.0]
    # Without give_up, the last error itself ends a limited run.
    last = OSError("still down")
    limited = Retrying(RetryPolicy(Backoff(0, 0), attempts=1), "once", sleep=waits.append)
    with pytest.raises(OSError) as exc:
        limited.failed(last)
    assert exc.value is last

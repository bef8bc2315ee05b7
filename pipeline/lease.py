"""One writer per output: a lease object at the output root that names the run holding it.

A job that writes an output root takes the lease first (``with OutputLease(storage, job="precompute_flow"):``, or
the :func:`holds_output_lease` decorator on its ``run``). A second run on the same output is refused with
:class:`LeaseHeldError`, which names the holder (job, host, pid, run id, when it started and last renewed). The
holder renews the lease from a background thread; a lease whose holder stopped renewing for ``ttl_s`` seconds is
taken over, and on the holder's own host a lease whose process is gone is taken over at once (a killed run can
be rerun immediately). Taking the lease also collects the leftovers of earlier runs
(:func:`pipeline.storage.clean_leftovers`). The lease is deleted when the block ends.

How the lease is written, by store:

- **S3** (and stores that honour conditional writes): ``_lease.json`` is created with ``PUT If-None-Match: *``, so
  of two runs starting together exactly one succeeds; renewal and takeover are ``PUT If-Match: <ETag>``
  (compare-and-swap), so a stale lease goes to exactly one taker and a holder that was taken over notices on its
  next renewal. Ages are measured on the store's clock (the object's ``Last-Modified`` against the response's
  ``Date``), so machines' clocks do not matter.
- **S3-compatible stores that ignore conditional headers** (detected once per lease with a probe object: a second
  ``If-None-Match: *`` PUT that succeeds): best effort, write then verify: the lease is written only if absent or
  stale, read back after a short pause, and kept only if it still names this run. Two runs starting within that
  pause may both proceed; the README says so.
- **Local disk**: ``_lease.json`` is created with ``O_CREAT | O_EXCL``; renewal rewrites it atomically; a stale one
  is renamed away (atomic) before the new one is created.

A holder that loses its lease (it stalled past ``ttl_s`` and another run took over) logs an error;
:meth:`OutputLease.check` raises :class:`LeaseLostError` so that jobs can stop before their next commit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from pipeline.errors import UserError
from pipeline.storage import (
    Storage,
    StorageError,
    StorageUnavailableError,
    _error_code,
    _s3_client,
    _transient_read_errors,
    clean_leftovers,
    open_storage,
)

log = logging.getLogger(__name__)

__all__ = [
    "LEASE_NAME",
    "LeaseHeldError",
    "LeaseLostError",
    "OutputLease",
    "check_lease",
    "holds_output_lease",
]

LEASE_NAME = "_lease.json"
"""Name of the lease object at an output root."""
DEFAULT_TTL_S = 120.0
"""A lease not renewed for this long is taken over (``HMHI_LEASE_TTL_S`` overrides it)."""


class LeaseHeldError(UserError, RuntimeError):
    """Another run holds the output's lease; the message names it and when it can be taken over."""


class LeaseLostError(StorageError):
    """This run's lease was taken over by another run (this one stopped renewing for longer than the TTL)."""


@dataclass
class LeaseInfo:
    """What the lease object says about the run holding it."""

    job: str
    """The job holding it (``precompute_flow``, ``segment``...)."""
    run_id: str
    """A random id of the run, unique per lease taken."""
    host: str
    """Host name of the holder's driver."""
    pid: int
    """Process id of the holder's driver."""
    pid_start: str
    """The process's start time on its host (``/proc/<pid>/stat``), so a reused pid is not mistaken for it."""
    started: float
    """When the run took the lease (epoch seconds, the holder's clock)."""
    renewed: float
    """When the holder last renewed it (epoch seconds, the holder's clock)."""
    ttl_s: float
    """The holder's TTL: not renewed for this long, the lease may be taken over."""
    output: str
    """The output root the lease protects."""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (
            f"job {self.job} run {self.run_id} on host {self.host} pid {self.pid}, started {when}, "
            f"renewed {max(0.0, time.time() - self.renewed):.0f} s ago"
        )


def _pid_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot, or "" where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _holder_is_dead(info: LeaseInfo) -> bool:
    """True only when the holder ran on this host and its process is gone (or the pid was reused)."""
    if info.host != socket.gethostname():
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    now = _pid_start(info.pid)
    return bool(info.pid_start and now and now != info.pid_start)


class OutputLease:
    """The lease of one output root for one run: ``with OutputLease(storage, job="segment"): ...``.

    ``ttl_s`` (default ``DEFAULT_TTL_S`` or ``HMHI_LEASE_TTL_S``): a lease not renewed for this long is taken
    over. ``renew_every_s`` (default ``ttl_s / 4``): the renewal period. ``clean``: collect earlier runs'
    leftovers once the lease is taken (see :func:`pipeline.storage.clean_leftovers`).
    """

    def __init__(
        self,
        storage: Storage | str,
        job: str,
        ttl_s: float | None = None,
        renew_every_s: float | None = None,
        clean: bool = True,
        name: str = LEASE_NAME,
    ):
        self.storage = open_storage(storage)
        self.job = job
        self.ttl_s = float(
            ttl_s if ttl_s is not None else os.environ.get("HMHI_LEASE_TTL_S") or DEFAULT_TTL_S
        )
        if self.ttl_s <= 0:
            raise ValueError(f"lease ttl_s = {self.ttl_s}: must be > 0")
        self.renew_every_s = renew_every_s if renew_every_s is not None else self.ttl_s / 4
        self.clean = clean
        self.name = name
        self.url = self.storage.join(name)
        self.info: LeaseInfo | None = None
        self.acquired_at: float | None = None
        """When the lease was taken, on the store's clock (epoch seconds): leftovers older than this are collected."""
        self.lost = False
        self.leftovers: dict[str, int] = {}
        self._etag: str | None = None
        self._conditional: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------------------
    def acquire(self) -> OutputLease:
        """Take the lease, or raise :class:`LeaseHeldError` naming the run that holds it."""
        now = time.time()
        self.info = LeaseInfo(
            job=self.job,
            run_id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=_pid_start(os.getpid()),
            started=now,
            renewed=now,
            ttl_s=self.ttl_s,
            output=self.storage.url,
        )
        self.storage.check("lease")
        if self.storage.is_local:
            self._acquire_local()
        else:
            self._acquire_s3()
        log.info("%s: lease taken by %s", self.url, self.info.describe())
        if self.clean:
            self.leftovers = clean_leftovers(self.storage, older_than=self.acquired_at)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-renew-{self.job}", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if another run took this lease over."""
        if self.lost:
            raise LeaseLostError(
                f"{self.url}: this run's lease was taken over by another run; stopping before "
                "writing more (the run stalled for longer than the lease TTL)"
            )

    def renew(self) -> None:
        """Extend the lease now (the background thread does this every ``renew_every_s``)."""
        with self._lock:
            if self.lost or self.info is None:
                return
            self.info.renewed = time.time()
            ok = self._renew_local() if self.storage.is_local else self._renew_s3()
            if not ok:
                self.lost = True
                log.error(
                    "%s: lease lost: another run took it over; this run (%s) must stop writing",
                    self.url,
                    self.info.run_id,
                )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if self.info is None or self.lost:
                return
            try:
                current = self._read()
                if current is not None and current[0].run_id == self.info.run_id:
                    self.storage.delete(self.name)
            except Exception as err:  # a lease left behind only delays the next run by the TTL
                log.warning(
                    "%s: could not release the lease (%s); the next run takes it over after %.0f s",
                    self.url,
                    err,
                    self.ttl_s,
                )
            self.info = None

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- shared ----------------------------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        return (json.dumps(asdict(self.info), indent=2, sort_keys=True) + "\n").encode()

    def _parse(self, data: bytes) -> LeaseInfo:
        try:
            fields = json.loads(data)
            return LeaseInfo(**{k: fields[k] for k in LeaseInfo.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as e:
            # An unreadable lease names no holder; treating it as held would block the output forever.
            log.warning("%s: unreadable lease (%s); treating it as stale", self.url, e)
            return LeaseInfo(
                job="?",
                run_id="?",
                host="?",
                pid=0,
                pid_start="",
                started=0.0,
                renewed=0.0,
                ttl_s=0.0,
                output=self.storage.url,
            )

    def _refuse(self, holder: LeaseInfo, age: float) -> None:
        raise LeaseHeldError(
            f"{self.storage.url} is being written by another run ({holder.describe()}; lease {self.url}). "
            f"Wait for it to finish; if it died, this output is taken over once its lease is {holder.ttl_s:.0f} s "
            f"old (now {age:.0f} s), or at once from its own host."
        )

    def _stale(self, holder: LeaseInfo, age: float) -> bool:
        return age > holder.ttl_s or _holder_is_dead(holder)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew()
            except Exception as err:  # a blip: the lease stays valid until its TTL; the next tick tries again
                log.warning(
                    "%s: lease renewal failed (%s); retrying in %.0f s", self.url, err, self.renew_every_s
                )
            if self.lost:
                return

    # -- local -----------------------------------------------------------------------------------------------------
    def _read(self) -> tuple[LeaseInfo, float, str | None] | None:
        """(holder, age in seconds on the store's clock, ETag) of the current lease, or None if there is none."""
        if self.storage.is_local:
            path = self.storage._path(self.name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                    age = time.time() - os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                return None
            return self._parse(data), age, None
        bucket, _, key = self.storage._path(self.name).partition("/")
        attempts = self.storage.s3.max_attempts or 1
        for attempt in range(1, attempts + 1):
            try:
                with self.storage._errors("read lease", self.name):
                    resp = _s3_client(self.storage.s3).get_object(Bucket=bucket, Key=key)
                    data = resp["Body"].read()
                break
            except StorageError as e:
                if isinstance(e.__cause__, Exception) and _error_code(e.__cause__) in ("NoSuchKey", "404"):
                    return None
                if attempt == attempts or not isinstance(e, StorageUnavailableError):
                    raise
            except _transient_read_errors():  # the body was cut: a few hundred bytes, read again whole
                if attempt == attempts:
                    raise
        return self._parse(data), _age(resp), resp.get("ETag")

    def _acquire_local(self) -> None:
        path = self.storage._path(self.name)
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = self._read()
                if current is None:
                    continue  # released meanwhile
                holder, age, _ = current
                if not self._stale(holder, age):
                    self._refuse(holder, age)
                # Rename is atomic: of two takers, one moves the stale lease away, the other retries the create.
                aside = f"{path}.stale-{uuid.uuid4().hex}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, aside)
                    log.warning("%s: taking over a stale lease (%s)", self.url, holder.describe())
                    os.remove(aside)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
                f.flush()
                os.fsync(f.fileno())
            self.acquired_at = os.stat(path).st_mtime
            return
        raise LeaseHeldError(f"{self.url}: could not take the lease (other runs keep taking it)")

    def _renew_local(self) -> bool:
        current = self._read()
        if current is None or current[0].run_id != self.info.run_id:
            return False
        path = self.storage._path(self.name)
        tmp = f"{path}.renew-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(self._payload())
        os.replace(tmp, path)
        return True

    # -- S3 ----------------------------------------------------------------------------------------------------------
    def _put(self, **condition: str) -> dict[str, Any] | None:
        """PUT the lease with a condition; None if the condition failed (412/409)."""
        bucket, _, key = self.storage._path(self.name).partition("/")
        try:
            with self.storage._errors("write lease", self.name):
                return _s3_client(self.storage.s3).put_object(
                    Bucket=bucket, Key=key, Body=self._payload(), ContentType="application/json", **condition
                )
        except StorageError as e:
            if isinstance(e.__cause__, Exception) and _error_code(e.__cause__) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "412",
                "409",
            ):
                return None
            raise
        except Exception as e:
            if _error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise

    def _supports_conditional_writes(self) -> bool:
        """Probe once: does a second ``If-None-Match: *`` PUT of the same key fail, as it must?"""
        if self._conditional is None:
            bucket, _, key = self.storage._path(f"{self.name}.probe-{uuid.uuid4().hex[:12]}").partition("/")
            client = _s3_client(self.storage.s3)
            with self.storage._errors("probe conditional writes", self.name):
                client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                    self._conditional = False
                except Exception as e:
                    if _error_code(e) not in (
                        "PreconditionFailed",
                        "ConditionalRequestConflict",
                        "412",
                        "409",
                    ):
                        raise
                    self._conditional = True
                finally:
                    with contextlib.suppress(Exception):
                        client.delete_object(Bucket=bucket, Key=key)
            if not self._conditional:
                log.warning(
                    "%s: this store ignores conditional writes (If-None-Match); the lease is best effort "
                    "(write, then verify)",
                    self.storage.url,
                )
        return self._conditional

    def _acquire_s3(self) -> None:
        conditional = self._supports_conditional_writes()
        for _ in range(5):
            if conditional:
                resp = self._put(IfNoneMatch="*")
                if resp is not None:
                    return self._took(resp)
            current = self._read()
            if current is None:
                if conditional:
                    continue  # released between our PUT and our read
                resp = self._put()
                if self._verified():
                    return self._took(resp)
                continue
            holder, age, etag = current
            if holder.run_id == self.info.run_id:  # our own PUT went through and its answer was lost
                return self._took({"ETag": etag, "ResponseMetadata": {}})
            if not self._stale(holder, age):
                self._refuse(holder, age)
            log.warning("%s: taking over a stale lease (%s; %.0f s old)", self.url, holder.describe(), age)
            resp = self._put(IfMatch=etag) if conditional else self._put()
            if resp is not None and (conditional or self._verified()):
                return self._took(resp)
        raise LeaseHeldError(f"{self.url}: could not take the lease (other runs keep taking it)")

    def _verified(self) -> bool:
        time.sleep(1.0)  # lets a concurrent writer's PUT land, so that the read below sees who won
        current = self._read()
        return current is not None and current[0].run_id == self.info.run_id

    def _took(self, resp: dict[str, Any]) -> None:
        self._etag = resp.get("ETag")
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        self.acquired_at = parsedate_to_datetime(date).timestamp() if date else time.time()

    def _renew_s3(self) -> bool:
        if self._conditional:
            resp = self._put(IfMatch=self._etag)
            if resp is None:
                return False
            self._etag = resp.get("ETag")
            return True
        current = self._read()
        if current is None or current[0].run_id != self.info.run_id:
            return False
        self._etag = self._put().get("ETag")
        return True


def _age(resp: dict[str, Any]) -> float:
    """Seconds since the object was last written, on the store's clock (``Date`` minus ``Last-Modified``)."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = resp.get("LastModified")
    if not date or modified is None:
        return 0.0
    return max(0.0, parsedate_to_datetime(date).timestamp() - modified.timestamp())


def holds_output_lease(job: str, output: Callable[[Any], str] = lambda cfg: cfg.output):
    """Decorator for a job's ``run(cfg)``: the whole run holds the lease of ``output(cfg)``.

    One line on the job's ``run``, wherever that function lives; refused runs raise :class:`LeaseHeldError`.
    Where ``output(cfg)`` is empty (a job whose output is optional, or a config that ``run`` itself rejects), there
    is nothing to protect and the run goes ahead without a lease.
    """

    def wrap(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(run)
        def wrapper(cfg, *args, **kwargs):
            global _CURRENT
            url = output(cfg)
            if not url:
                return run(cfg, *args, **kwargs)
            with OutputLease(open_storage(url), job=job) as lease:
                previous, _CURRENT = _CURRENT, lease
                try:
                    return run(cfg, *args, **kwargs)
                finally:
                    _CURRENT = previous

        return wrapper

    return wrap


_CURRENT: OutputLease | None = None


def check_lease() -> None:
    """Raise :class:`LeaseLostError` if the lease this process's job holds (``holds_output_lease``) was taken over.

    For a job's commit points (an index or done-marker write), so that a run that stalled past its TTL and was
    replaced stops instead of overwriting its successor's work. A no-op outside a leased run.
    """
    if _CURRENT is not None:
        _CURRENT.check()

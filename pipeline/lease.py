"""One writer per output: a lease object at the output root that names the run holding it, and the fence that
keeps a run that lost it from committing.

A job that writes an output root takes the lease first (the :func:`holds_output_lease` decorator on its ``run``,
or ``with OutputLease(storage, job="segment"):``) and writes through :func:`fenced` storage. A second run on the
same output is refused with :class:`LeaseHeldError`, which names the holder (job, host, pid, run id, when it
started and last renewed). The holder renews the lease from a background thread; a lease whose holder stopped
renewing for ``ttl_s`` seconds is taken over, and a lease whose holder's process is gone is taken over at once when
that process ran on this very machine and PID namespace (same host name, boot id and ``/proc/self/ns/pid``).

**Whose folder.** Taking the lease of a folder for the first time writes ``_output.json`` (:data:`OUTPUT_MARKER`)
naming the job. From then on the folder is that job's output: a run of another job is refused, and so is a first
run on a folder that already holds anything (exit 2, one line) -- a job never writes into, nor cleans, a folder it
did not make. (An output written before the marker existed is recognised by its ``summary.json`` naming the job.)
Outputs on a bucket root or the file-system root are refused. Once the folder is claimed, the leftovers of earlier
runs are collected (:func:`pipeline.storage.clean_leftovers`: this project's temporary files and incomplete
uploads, never inside a nested folder that holds another lease or output marker). The lease is deleted when the
run ends.

How the lease is written, by store:

- **Local disk**: every change of ``_lease.json`` (create, renew, take over, release) happens under an exclusive
  ``flock`` of the output folder, and the file is written to a temporary name and renamed, so it always appears
  whole: of two runs starting together one creates it and the other finds it; of two runs taking over the same
  stale lease the second finds the first one's fresh lease. A lease that cannot be parsed is held until its
  modification time is ``ttl_s`` old.
- **S3** (and stores that honour conditional writes): ``_lease.json`` is created with ``PUT If-None-Match: *``, so
  of two runs starting together exactly one succeeds; renewal and takeover are ``PUT If-Match: <ETag>``
  (compare-and-swap), so a stale lease goes to exactly one taker and a holder that was taken over notices on its
  next renewal. Ages are measured on the store's clock (the object's ``Last-Modified`` against the response's
  ``Date``), so machines' clocks do not matter.
- **S3-compatible stores that ignore conditional headers** (detected once per lease with a probe object): best
  effort, write then verify: the lease is written only if absent or stale, read back after a short pause, and kept
  only if it still names this run. Two runs starting within that pause may both proceed; the README says so.

**Fencing.** :meth:`OutputLease.check` passes only while the last *successful* renewal (by the monotonic clock)
is less than ``ttl_s`` minus a safety margin (:func:`safety_margin_s`) old; past that it first tries a
compare-and-swap renewal, and raises :class:`LeaseLostError` if that fails (taken over, or the store unreachable:
the message says which). No other run can take the lease over before the holder's ``check`` starts failing. A
:class:`LeaseFence` is the same check for the run's writers in other processes (Ray actors and Ray Train workers,
which receive it pickled): it reads the lease object and trusts it for as long as its age allows. A fenced
:class:`~pipeline.storage.Storage` checks the fence at the commit step of every write and before every delete;
writes that a run paused past the check would commit late are temporary files or multipart uploads, which the run
that took over collects first.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from pipeline.errors import UserError
from pipeline.storage import (
    Storage,
    StorageError,
    StorageNotFoundError,
    StorageUnavailableError,
    _error_code,
    _s3_client,
    _transient_read_errors,
    clean_leftovers,
    open_storage,
    temp_name,
)

log = logging.getLogger(__name__)

__all__ = [
    "LEASE_NAME",
    "OUTPUT_MARKER",
    "LeaseFence",
    "LeaseHeldError",
    "LeaseLostError",
    "OutputLease",
    "OutputRefusedError",
    "check_lease",
    "fenced",
    "holds_output_lease",
    "safety_margin_s",
]

LEASE_NAME = "_lease.json"
"""Name of the lease object at an output root."""
OUTPUT_MARKER = "_output.json"
"""Name of the marker a job writes into a folder the first time it takes the folder's lease: the folder is its
output from then on (``{"job", "created", "run_id", "output"}``)."""
DEFAULT_TTL_S = 120.0
"""A lease not renewed for this long is taken over (``HMHI_LEASE_TTL_S`` overrides it)."""
_LOCK_WAIT_S = 10.0  # how long a local lease operation waits for the folder's flock (held for microseconds)
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_CONDITIONAL_STORES: dict[
    tuple[str | None, str], bool
] = {}  # (endpoint, bucket) -> honours conditional writes


class LeaseHeldError(UserError, RuntimeError):
    """Another run holds the output's lease; the message names it and when it can be taken over."""


class LeaseLostError(StorageError):
    """This run may no longer write its output: another run took the lease over, or it could not be renewed."""


class OutputRefusedError(UserError, ValueError):
    """The output folder is not this job's to write: another job's output, a non-empty folder, a bucket root."""


def safety_margin_s(ttl_s: float, local: bool) -> float:
    """How long before a lease could be taken over its holder stops committing: 10% of the TTL, plus 2 s on S3.

    The 2 s cover the store's clock: ``Last-Modified`` and ``Date`` have whole seconds, so an age read from them is
    off by up to a second either way (the holder's and the taker's), and the margin also absorbs a small rate
    difference between the machines' clocks.
    """
    return 0.1 * ttl_s + (0.0 if local else 2.0)


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
    boot_id: str = ""
    """The holder's kernel boot id (``/proc/sys/kernel/random/boot_id``): with ``pid_ns``, tells this machine's
    processes from those of another container or machine that has the same host name."""
    pid_ns: str = ""
    """The holder's PID namespace (``readlink /proc/self/ns/pid``): its pid means something only in there."""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (
            f"job {self.job} run {self.run_id} on host {self.host} pid {self.pid}, started {when}, "
            f"renewed {max(0.0, time.time() - self.renewed):.0f} s ago"
        )


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot, or "" where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _holder_is_dead(info: LeaseInfo) -> bool:
    """True only when the holder ran in this very kernel and PID namespace and its process is gone (or the pid was
    reused). The host name alone is not enough: containers share host names."""
    same_machine = info.host == socket.gethostname() and info.boot_id and info.boot_id == _boot_id()
    if not (same_machine and info.pid_ns and info.pid_ns == _pid_ns()):
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    now = _pid_start(info.pid)
    return bool(info.pid_start and now and now != info.pid_start)


def _parse(data: bytes) -> LeaseInfo | None:
    """The lease's content, or None when it cannot be parsed (an unreadable lease is judged by its age alone)."""
    try:
        fields = json.loads(data)
        known = LeaseInfo.__dataclass_fields__
        return LeaseInfo(**{k: v for k, v in fields.items() if k in known})
    except (ValueError, TypeError, AttributeError):
        return None


def _read_lease(storage: Storage, name: str) -> tuple[LeaseInfo | None, float, str | None] | None:
    """``(holder or None if unreadable, age in seconds, ETag)`` of the lease at ``name``, or None if there is none.

    Local: the age is the file's modification time against this machine's clock. S3: the object's
    ``Last-Modified`` against the response's ``Date`` (the store's clock; whole seconds). A read whose body is cut
    is read again whole.
    """
    if storage.is_local:
        try:
            with open(storage._path(name), "rb") as f:
                data = f.read()
                age = time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _parse(data), age, None
    bucket, _, key = storage._path(name).partition("/")
    attempts = storage.s3.max_attempts or 1
    for attempt in range(1, attempts + 1):
        try:
            with storage._errors("read lease", name):
                resp = _s3_client(storage.s3).get_object(Bucket=bucket, Key=key)
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
    return _parse(data), _age(resp), resp.get("ETag")


def _age(resp: dict[str, Any]) -> float:
    """Seconds since the object was last written, on the store's clock (``Date`` minus ``Last-Modified``)."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = resp.get("LastModified")
    if not date or modified is None:
        return 0.0
    return max(0.0, parsedate_to_datetime(date).timestamp() - modified.timestamp())


@dataclass
class LeaseFence:
    """The lease check of a run's writers in other processes (Ray actors, Ray Train workers); picklable.

    :meth:`check` reads the lease object: it must still name ``run_id`` and be younger than ``ttl_s - margin_s``;
    it is then trusted, without another read, until it could be that old (no other run can take it over before).
    A driver that stopped renewing (paused, dead, cut off from the store) thus stops its writers too, before
    another run may take the output over.
    """

    storage: Storage
    """The output root (unfenced) where the lease lives."""
    run_id: str
    """The run the writers work for."""
    ttl_s: float
    """The lease's TTL."""
    margin_s: float
    """The safety margin (:func:`safety_margin_s`)."""
    name: str = LEASE_NAME
    """The lease object's name."""
    _valid_until: float = field(default=0.0, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _valid_until=0.0)  # another process, maybe another machine: check afresh

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the run still holds the lease with time to spare."""
        before = time.monotonic()
        if before < self._valid_until:
            return
        url = self.storage.join(self.name)
        try:
            current = _read_lease(self.storage, self.name)
        except StorageError as err:
            raise LeaseLostError(
                f"{url}: cannot confirm that run {self.run_id} still holds this output's lease (the store did not "
                f"answer: {err}); stopping before the next commit"
            ) from err
        holder, age = (current[0], current[1]) if current else (None, 0.0)
        if holder is None or holder.run_id != self.run_id:
            who = holder.describe() if holder else "no readable lease"
            raise LeaseLostError(
                f"{url}: run {self.run_id} no longer holds this output's lease ({who}); stopping before the next "
                "commit"
            )
        left = self.ttl_s - self.margin_s - age
        if left <= 0:
            raise LeaseLostError(
                f"{url}: the lease of run {self.run_id} was last renewed {age:.0f} s ago (TTL "
                f"{self.ttl_s:.0f} s): its driver stopped renewing it; stopping before the next commit"
            )
        self._valid_until = before + left

    def portable(self) -> LeaseFence:
        return self


class OutputLease:
    """The lease of one output root for one run: ``with OutputLease(storage, job="segment"): ...``.

    ``ttl_s`` (default ``DEFAULT_TTL_S`` or ``HMHI_LEASE_TTL_S``): a lease not renewed for this long is taken
    over. ``renew_every_s`` (default a quarter of the TTL, or less so that three renewals fit in the fenced span
    ``ttl_s - margin``). ``clean``: collect earlier runs' leftovers once the lease is taken (see
    :func:`pipeline.storage.clean_leftovers`). The lease is a :class:`~pipeline.storage.Fence`: pickled (into a
    Ray task, inside a fenced storage) it travels as its :class:`LeaseFence`.
    """

    def __init__(
        self,
        storage: Storage | str,
        job: str,
        ttl_s: float | None = None,
        renew_every_s: float | None = None,
        clean: bool = True,
    ):
        self.storage = open_storage(storage).fenced(None)
        self.job = job
        self.ttl_s = float(
            ttl_s if ttl_s is not None else os.environ.get("HMHI_LEASE_TTL_S") or DEFAULT_TTL_S
        )
        self.margin_s = safety_margin_s(self.ttl_s, self.storage.is_local)
        if self.ttl_s <= self.margin_s:
            raise ValueError(
                f"lease ttl_s = {self.ttl_s}: must be more than its safety margin ({self.margin_s:.1f} s)"
            )
        fenced_span = self.ttl_s - self.margin_s
        self.renew_every_s = (
            renew_every_s if renew_every_s is not None else min(self.ttl_s / 4, fenced_span / 3)
        )
        self.clean = clean
        self.name = LEASE_NAME
        self.url = self.storage.join(self.name)
        self.info: LeaseInfo | None = None
        self.acquired_at: float | None = None
        """When the lease was taken, on the store's clock (epoch seconds): leftovers older than this are collected."""
        self.lost = False
        self.leftovers: dict[str, int] = {}
        self._renewed_at: float | None = None  # monotonic time before the last successful write of the lease
        self._last_error: BaseException | None = None
        self._etag: str | None = None
        self._conditional: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------------------
    def acquire(self) -> OutputLease:
        """Take the lease, or raise :class:`LeaseHeldError` naming the run that holds it (or
        :class:`OutputRefusedError` when the folder is not this job's to write)."""
        self._refuse_roots()
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
            boot_id=_boot_id(),
            pid_ns=_pid_ns(),
        )
        self.storage.check("lease")
        started = time.monotonic()
        if self.storage.is_local:
            self._acquire_local()
        else:
            self._acquire_s3()
        self._renewed_at, self.lost, self._last_error = started, False, None
        log.info("%s: lease taken by %s", self.url, self.info.describe())
        # Renewing from now on: collecting the leftovers of a large output may take longer than the TTL.
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-renew-{self.job}", daemon=True)
        self._thread.start()
        try:
            self._claim_output()
            if self.clean:
                self.leftovers = clean_leftovers(
                    self.storage, older_than=self._acquired_at, protected=(LEASE_NAME, OUTPUT_MARKER)
                )
        except BaseException:
            self.release()
            raise
        return self

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this run may still commit (see the module docstring, Fencing)."""
        if not self.lost and self._expired():
            with contextlib.suppress(Exception):  # remembered in _last_error; judged below
                self.renew()
        if self.lost:
            raise LeaseLostError(
                f"{self.url}: this run's lease was taken over by another run; stopping before writing more "
                "(the run stalled for longer than the lease TTL)"
            )
        if self._renewed_at is None:
            raise LeaseLostError(f"{self.url}: this run does not hold the lease (not taken, or released)")
        if self._expired():
            age = time.monotonic() - self._renewed_at
            why = (
                f"renewing it failed ({self._last_error}): the store may be unreachable"
                if self._last_error is not None
                else "the run stalled"
            )
            raise LeaseLostError(
                f"{self.url}: the lease was last renewed {age:.0f} s ago, too close to its TTL of {self.ttl_s:.0f} s "
                f"for this run to keep writing ({why}); stopping before the next commit"
            )

    def portable(self) -> LeaseFence:
        """This lease's check for the run's writers in other processes."""
        if self.info is None:
            raise LeaseLostError(f"{self.url}: no lease held; nothing to fence writers with")
        return LeaseFence(self.storage, self.info.run_id, self.ttl_s, self.margin_s, self.name)

    def renew(self) -> None:
        """Extend the lease now, by compare-and-swap (the background thread does this every ``renew_every_s``)."""
        with self._lock:
            if self.lost or self.info is None:
                return
            started = time.monotonic()
            self.info.renewed = time.time()
            try:
                ok = self._renew_local() if self.storage.is_local else self._renew_s3()
            except BaseException as err:
                self._last_error = err
                raise
            if ok:
                self._renewed_at, self._last_error = started, None
                return
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
                self.info = None
                return
            try:
                if self.storage.is_local:
                    self._release_local()
                else:
                    self._release_s3()
            except Exception as err:  # a lease left behind only delays the next run by the TTL
                log.warning(
                    "%s: could not release the lease (%s); the next run takes it over after %.0f s",
                    self.url,
                    err,
                    self.ttl_s,
                )
            self.info, self._renewed_at = None, None

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- shared ----------------------------------------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._renewed_at is None or time.monotonic() - self._renewed_at > self.ttl_s - self.margin_s

    @property
    def _held(self) -> LeaseInfo:
        """The lease this run holds (or is taking)."""
        if self.info is None:
            raise LeaseLostError(f"{self.url}: this run holds no lease")
        return self.info

    @property
    def _acquired_at(self) -> float:
        if self.acquired_at is None:
            raise LeaseLostError(f"{self.url}: this run holds no lease")
        return self.acquired_at

    def _payload(self) -> bytes:
        return (json.dumps(asdict(self._held), indent=2, sort_keys=True) + "\n").encode()

    def _refuse_roots(self) -> None:
        st = self.storage
        if (not st.is_local and "/" not in st.root) or (st.is_local and os.path.dirname(st.root) == st.root):
            raise OutputRefusedError(
                f"output {st.url} is a {'bucket' if not st.is_local else 'file-system'} root: an output must be a "
                "folder of its own (e.g. s3://bucket/out or /data/out), which the job may clean"
            )

    def _refuse(self, holder: LeaseInfo | None, age: float) -> None:
        if holder is None:
            raise LeaseHeldError(
                f"{self.storage.url}: its lease {self.url} cannot be read; it was written {age:.0f} s ago and is "
                f"treated as held until it is {self.ttl_s:.0f} s old"
            )
        raise LeaseHeldError(
            f"{self.storage.url} is being written by another run ({holder.describe()}; lease {self.url}). "
            f"Wait for it to finish; if it died, this output is taken over once its lease is {holder.ttl_s:.0f} s "
            f"old (now {age:.0f} s), or at once from its own machine."
        )

    def _judge(self, holder: LeaseInfo | None, age: float) -> None:
        """Refuse unless the current lease may be taken over (stale, or its holder's process is gone)."""
        if holder is None:
            if age <= self.ttl_s:  # half-written or damaged: its age is all there is to go by
                self._refuse(None, age)
            log.warning("%s: taking over an unreadable lease %.0f s old", self.url, age)
            return
        if not (age > holder.ttl_s or _holder_is_dead(holder)):
            self._refuse(holder, age)
        log.warning("%s: taking over a stale lease (%s; %.0f s old)", self.url, holder.describe(), age)

    def _claim_output(self) -> None:
        """Make sure the folder is this job's output (see the module docstring); mark it so on the first run."""
        st = self.storage
        owner, where = self._owner()
        if owner == self.job:
            if where != OUTPUT_MARKER:
                log.info("%s: an earlier output of %s (its %s); marking it", st.url, owner, where)
                self._write_marker()
            return
        if owner is not None:
            raise OutputRefusedError(
                f"output {st.url} holds the output of job {owner!r} ({st.join(where or OUTPUT_MARKER)}); {self.job} writes only "
                "into a new folder or its own earlier output: choose another output"
            )
        foreign = self._entries()
        if foreign:
            raise OutputRefusedError(
                f"output {st.url} is not empty ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) "
                f"and is not an earlier output of {self.job} (no {OUTPUT_MARKER}): a job never writes into, nor "
                "cleans, a folder it did not make; choose a new or empty output folder"
            )
        self._write_marker()

    def _write_marker(self) -> None:
        marker = {
            "job": self.job,
            "created": time.time(),
            "run_id": self._held.run_id,
            "output": self.storage.url,
        }
        if self.storage.is_local:
            self.storage.write_json(OUTPUT_MARKER, marker)
            return
        bucket, _, key = self.storage._path(OUTPUT_MARKER).partition("/")
        with self.storage._errors("write", OUTPUT_MARKER):  # one PUT on the process's client, like the lease
            _s3_client(self.storage.s3).put_object(Bucket=bucket, Key=key, Body=json.dumps(marker).encode())

    def _entries(self) -> list[str]:
        """A few of the folder's entries other than the lease (and a racing run's lease probe)."""
        st = self.storage
        if st.is_local:
            return [n for n in st.list() if not n.startswith(LEASE_NAME)]
        bucket, _, prefix = st.root.partition("/")
        with st._errors("list", ""):
            page = _s3_client(st.s3).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=20)
        names = (item["Key"][len(prefix) + 1 :] for item in page.get("Contents", []))
        return [n for n in names if n and not n.startswith(LEASE_NAME)]  # "" is a directory-marker object

    def _owner(self) -> tuple[str | None, str | None]:
        """``(job, file that says so)`` of the folder: its marker, else (outputs older than markers) the job its
        ``summary.json`` names; ``(None, None)`` if neither."""
        for name in (OUTPUT_MARKER, "summary.json"):
            try:
                doc = self.storage.read_json(name)
            except StorageNotFoundError:
                continue
            except StorageError:
                doc = None
            job = doc.get("job") if isinstance(doc, dict) else None
            if isinstance(job, str) and job:
                return job, name
            if name == OUTPUT_MARKER:
                raise OutputRefusedError(
                    f"output marker {self.storage.join(name)} names no job: the folder's owner is unknown; choose "
                    "another output"
                )
        return None, None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew()
            except Exception as err:  # a blip: check() fails only once the fenced span has passed
                log.warning(
                    "%s: lease renewal failed (%s); retrying in %.0f s", self.url, err, self.renew_every_s
                )
            if self.lost:
                return

    # -- local -----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """Hold the output folder's exclusive flock (every change of the local lease happens under it)."""
        fd = os.open(self.storage.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + _LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseHeldError(
                            f"{self.url}: another process has held the lock of {self.storage.root} for "
                            f"{_LOCK_WAIT_S:.0f} s (a paused run?); try again later"
                        ) from None
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def _prepared_lease(self) -> Iterator[str]:
        """The lease's next content, written whole and fsynced in a temporary file before the folder lock is
        taken: under the lock only a read and a rename remain, so a holder paused there (SIGSTOP) is unlikely to
        be paused while holding it, which would block every other run until it resumes."""
        tmp = os.path.join(self.storage.root, temp_name(self.name))
        try:
            with open(tmp, "wb") as f:
                f.write(self._payload())
                f.flush()
                os.fsync(f.fileno())
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)  # not used: refused, or no longer ours

    def _acquire_local(self) -> None:
        path = self.storage._path(self.name)
        with self._prepared_lease() as tmp, self._folder_lock():
            current = _read_lease(self.storage, self.name)
            if current is not None:
                self._judge(current[0], current[1])
            os.replace(tmp, path)
            self.acquired_at = os.stat(path).st_mtime

    def _still_ours(self) -> bool:
        current = _read_lease(self.storage, self.name)
        return current is not None and current[0] is not None and current[0].run_id == self._held.run_id

    def _renew_local(self) -> bool:
        with self._prepared_lease() as tmp, self._folder_lock():
            if not self._still_ours():
                return False
            os.replace(tmp, self.storage._path(self.name))
            return True

    def _release_local(self) -> None:
        with self._folder_lock():
            if self._still_ours():
                os.remove(self.storage._path(self.name))

    # -- S3 ----------------------------------------------------------------------------------------------------------
    def _put(self, **condition: str | None) -> dict[str, Any] | None:
        """PUT the lease with a condition; None if the condition failed (412/409) or names no ETag to match."""
        if any(value is None for value in condition.values()):
            return None  # a condition on an unknown ETag cannot hold
        bucket, _, key = self.storage._path(self.name).partition("/")
        try:
            with self.storage._errors("write lease", self.name):
                return _s3_client(self.storage.s3).put_object(
                    Bucket=bucket, Key=key, Body=self._payload(), ContentType="application/json", **condition
                )
        except StorageError as e:
            if isinstance(e.__cause__, Exception) and _error_code(e.__cause__) in _CONDITION_FAILED:
                return None
            raise
        except Exception as e:
            if _error_code(e) in _CONDITION_FAILED:
                return None
            raise

    def _supports_conditional_writes(self) -> bool:
        """Probe once per store and bucket in this process: does a second ``If-None-Match: *`` PUT of the same key
        fail, as it must?"""
        store = (self.storage.s3.endpoint_url, self.storage.root.partition("/")[0])
        self._conditional = _CONDITIONAL_STORES.get(store, self._conditional)
        if self._conditional is None:
            bucket, _, key = self.storage._path(f"{self.name}.probe-{uuid.uuid4().hex[:12]}").partition("/")
            client = _s3_client(self.storage.s3)
            with self.storage._errors("probe conditional writes", self.name):
                client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
                    self._conditional = False
                except Exception as e:
                    if _error_code(e) not in _CONDITION_FAILED:
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
            _CONDITIONAL_STORES[store] = self._conditional
        return self._conditional

    def _acquire_s3(self) -> None:
        conditional = self._supports_conditional_writes()
        for _ in range(5):
            if conditional:
                resp = self._put(IfNoneMatch="*")
                if resp is not None:
                    return self._took(resp)
            current = _read_lease(self.storage, self.name)
            if current is None:
                if conditional:
                    continue  # released between our PUT and our read
                resp = self._put()
                if self._verified():
                    return self._took(resp)
                continue
            holder, age, etag = current
            if (
                holder is not None and holder.run_id == self._held.run_id
            ):  # our PUT went through, its answer lost
                return self._took({"ETag": etag, "ResponseMetadata": {}})
            self._judge(holder, age)
            resp = self._put(IfMatch=etag) if conditional else self._put()
            if resp is not None and (conditional or self._verified()):
                return self._took(resp)
        raise LeaseHeldError(f"{self.url}: could not take the lease (other runs keep taking it)")

    def _verified(self) -> bool:
        time.sleep(1.0)  # lets a concurrent writer's PUT land, so that the read below sees who won
        return self._still_ours()

    def _took(self, resp: dict[str, Any] | None) -> None:
        resp = resp or {}
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
        if not self._still_ours():
            return False
        self._etag = (self._put() or {}).get("ETag")
        return True

    def _release_s3(self) -> None:
        if not (self._conditional and self._etag):
            if self._still_ours():
                self.storage.delete(self.name)
            return
        # Deleted only if it is still the object this run last wrote (a store without conditional deletes ignores
        # the header: the lease is then deleted as before conditional deletes existed).
        bucket, _, key = self.storage._path(self.name).partition("/")
        try:
            with self.storage._errors("release lease", self.name):
                _s3_client(self.storage.s3).delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
        except StorageError as e:
            if not (isinstance(e.__cause__, Exception) and _error_code(e.__cause__) in _CONDITION_FAILED):
                raise


def holds_output_lease(job: str, output: Callable[[Any], str] = lambda cfg: cfg.output):
    """Decorator for a job's ``run(cfg)``: the whole run holds the lease of ``output(cfg)``.

    One line on the job's ``run``, wherever that function lives; refused runs raise :class:`LeaseHeldError` (or
    :class:`OutputRefusedError`). Inside the run, :func:`fenced` gives the output storage fenced by this lease and
    :func:`check_lease` checks it. Where ``output(cfg)`` is empty (a job whose output is optional, or a config that
    ``run`` itself rejects), there is nothing to protect and the run goes ahead without a lease.
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
    """Raise :class:`LeaseLostError` if this process's job (``holds_output_lease``) may no longer commit.

    For a job's commit points that are not a write through :func:`fenced` storage (accepting a worker's result,
    reporting a checkpoint). A no-op outside a leased run.
    """
    if _CURRENT is not None:
        _CURRENT.check()


def fenced(storage: Storage) -> Storage:
    """``storage`` fenced by the lease this process's job holds (``holds_output_lease``); unchanged outside one.

    Every write through it checks the lease at its commit step, and every delete before it is sent; pickled into
    a Ray task or actor it carries the lease's :class:`LeaseFence`.
    """
    return storage.fenced(_CURRENT) if _CURRENT is not None else storage

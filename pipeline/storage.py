"""The one storage layer of hmhi-uvos.

A URL or path resolves to a :class:`Storage` rooted there:

- ``/local/dir``, ``relative/dir`` or ``file:///local/dir``: the local disk;
- ``s3://bucket/prefix``: S3 or any S3-compatible store.

Every job reads and writes through it, so that the same code runs on a laptop and on a cluster. It offers an
fsspec filesystem for Python code (:attr:`Storage.fs`) and the *matching* ``pyarrow.fs.FileSystem`` for Ray Data
and Ray Train (:meth:`Storage.pyarrow`, :func:`storage_filesystem`): both are built from one :class:`S3Options`, so
they reach the same endpoint with the same credentials. (A directly constructed ``pyarrow.fs.S3FileSystem``
ignores ``AWS_ENDPOINT_URL``, apache/arrow#49643, which is why the endpoint is passed explicitly.)

Guarantees:

- Writes are atomic: a reader never sees half a file. Local files are written under a temporary name in the same
  directory and renamed; S3 objects are streamed as a multipart upload (parts of ``S3_PART_BYTES``, sent while the
  block is still writing), which S3 makes visible only when it completes, or sent in one PUT when smaller than a
  part. Nothing is written if the writing block raises (the multipart upload is aborted) or the process dies.
- Listings ignore zero-byte directory-marker objects (``prefix/``) and in-flight temporary files.
- A *fenced* storage (:meth:`Storage.fenced`, what a job writes its output through while it holds the output's
  lease) checks its :class:`Fence` at the commit step of every write and before every delete: a run that may have
  lost its lease commits nothing more. Its S3 writes are always multipart uploads, committed by the final
  ``CompleteMultipartUpload`` right after the check, so that a writer paused between the check and the commit
  finds its upload aborted by the run that took the output over (:func:`clean_leftovers`); locally the same holds
  for the temporary file the final rename needs.
- Errors name the URL, never a secret: :class:`StorageNotFoundError` for a missing bucket or path,
  :class:`StorageAuthError` for missing or rejected credentials, :class:`StorageUnavailableError` when the store
  kept failing after every retry.
- Transient failures are retried with one policy for every client (:attr:`S3Options.max_attempts`): botocore's
  ``standard`` (or ``adaptive``) retry mode for boto3 and s3fs, the same number of attempts for s3fs's own retries
  and pyarrow's ``AwsStandardS3RetryStrategy``. A streamed GET whose body fails part-way (connection reset,
  incomplete read) is reopened at the byte it reached, with ``If-Match`` on the first response's ETag so that a
  replaced object is never spliced. Permanent errors (missing bucket or key, access denied) are not retried.
  :func:`pipeline.retry.retry_counts` counts the retries of this process, for job summaries.
- Credentials are never frozen into a ``Storage``: unless keys are given explicitly, each process uses its own
  SDK provider chain (environment, profile, IRSA web identity, instance role; refreshed tokens), and pickling a
  ``Storage`` for a Ray task carries the endpoint and region but no key material (explicit keys only with
  :attr:`S3Options.share_credentials`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import io
import json
import logging
import os
import posixpath
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import fsspec

from pipeline import telemetry
from pipeline.errors import UserError
from pipeline.retry import Backoff, Retrying, RetryPolicy, count_retry

log = logging.getLogger(__name__)

__all__ = [
    "Fence",
    "S3Options",
    "absolute_url",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageNotFoundError",
    "StorageUnavailableError",
    "LocalDiskFullError",
    "clean_leftovers",
    "local_disk_full_errors",
    "open_storage",
    "storage_filesystem",
    "url_sha256",
]

S3_PART_BYTES = 16 << 20
"""Part size of streamed S3 writes: a part is uploaded as soon as the writer has produced this much."""
_TMP_MARK = ".tmp-"  # in-flight files are named ".<name>.tmp-<uuid>" and never listed
_NAME_MAX = 255  # bytes in a file name on common file systems (ext4, XFS, APFS, NTFS)


def temp_name(leaf: str) -> str:
    """The hidden temporary name ``.<leaf>.tmp-<uuid4 hex>`` an atomic write of ``leaf`` goes through.

    The leaf is shortened (never the random part) so that the name fits the file-system limit even for the longest
    legal ``leaf``; :func:`clean_leftovers` recognises exactly this shape.
    """
    suffix = f"{_TMP_MARK}{uuid.uuid4().hex}"
    room = _NAME_MAX - 1 - len(suffix)
    encoded = leaf.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        leaf = encoded[:room].decode("utf-8", "ignore")
    return f".{leaf}{suffix}"


class Fence(Protocol):
    """What a fenced :class:`Storage` asks before each commit: may this run still write its output?

    ``check()`` raises (a :class:`StorageError`) once the run may have lost its output's lease;
    ``portable()`` is the form that travels when the storage is pickled into a Ray task or actor (a fence that
    needs no process-local state). :class:`pipeline.lease.OutputLease` and its ``LeaseFence`` implement it.
    """

    def check(self) -> None: ...

    def portable(self) -> Fence: ...


class StorageError(UserError, RuntimeError):
    """A storage operation failed; the message names the URL (never a credential)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The bucket, object or local path does not exist."""


class StorageAuthError(StorageError, PermissionError):
    """Credentials are missing, or the store rejected them."""


class StorageUnavailableError(StorageError):
    """The store kept failing (throttling, 5xx, dropped connections) after every retry."""


class LocalDiskFullError(StorageError, OSError):
    """A local disk (an output directory, or the temporary directory a download goes to) is full."""


@contextlib.contextmanager
def local_disk_full_errors(op: str, url: str, path: str) -> Iterator[None]:
    """Turn "no space left" while writing the local file ``path`` into an error naming it and the way out."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, StorageError):
            raise
        directory = os.path.dirname(os.path.abspath(path))
        raise LocalDiskFullError(
            f"{op} {url}: no space left on the local disk holding {directory} ({os.strerror(e.errno)}); free "
            "space there (or point TMPDIR at a larger disk for temporary files) and rerun: finished work is kept"
        ) from e


DEFAULT_MAX_ATTEMPTS = 8
"""Attempts per S3 request when neither ``S3Options.max_attempts`` nor ``AWS_MAX_ATTEMPTS`` says otherwise.

Eight attempts with botocore's capped exponential backoff ride out about 20-60 s of throttling or 5xx answers."""


def _count_call_retries(context=None, **_: Any) -> None:
    """botocore ``after-call``/``after-call-error`` hook: add the retries this API call needed."""
    attempt = ((context or {}).get("retries") or {}).get("attempt", 1)
    if attempt > 1:
        count_retry("s3_request", attempt - 1)


def _prepare_session(session) -> None:
    """Make a new botocore (or aiobotocore) session count its retries and share this process's data loader."""
    events = session.get_component("event_emitter")
    events.register("after-call.s3", _count_call_retries, unique_id="hmhi-retry-count")
    events.register("after-call-error.s3", _count_call_retries, unique_id="hmhi-retry-count-error")
    session.register_component("data_loader", _botocore_loader())


@functools.cache
def _botocore_loader():
    """One botocore data loader per process: it caches what it parses, so the boto3 client and the s3fs one read
    botocore's S3 model (megabytes of JSON) once between them. (A forked child inherits it, already filled.)"""
    import botocore.loaders

    return botocore.loaders.create_loader()


# Environment variables that decide which credentials the SDK's chain finds (the values are never stored).
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def _credential_env_fingerprint() -> str:
    """A digest of the credential environment, so a client is rebuilt when it changes (no secret is kept)."""
    text = "\0".join(f"{k}={os.environ.get(k, '')}" for k in _CREDENTIAL_ENV)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store. Unset fields fall back to the standard AWS environment variables.

    Endpoint, region and retry settings are resolved once, where the ``Storage`` is made, and travel with it to
    Ray workers, so they reach the same store. Credentials are *not* resolved here: left unset, every process
    asks its own SDK provider chain (which reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
    ``AWS_SESSION_TOKEN``, a profile, IRSA or an instance role, and refreshes expiring tokens).
    """

    endpoint_url: str | None = None
    """Endpoint such as ``http://127.0.0.1:9000``; default ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (AWS when unset)."""
    region: str | None = None
    """Region; default ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else ``us-east-1``."""
    access_key_id: str | None = field(default=None, repr=False)
    """Explicit access key id. Unset (the normal case): the SDK's chain of the process using the storage
    (``AWS_ACCESS_KEY_ID``, a profile, IRSA, an instance role)."""
    secret_access_key: str | None = field(default=None, repr=False)
    """Explicit secret key, with ``access_key_id``. Never logged; not pickled unless ``share_credentials``."""
    session_token: str | None = field(default=None, repr=False)
    """Explicit session token, with the keys. A token given here cannot be refreshed: prefer the chain."""
    anonymous: bool = False
    """Unsigned requests (public buckets)."""
    max_attempts: int | None = None
    """Attempts per request, the first included, for every client (boto3, s3fs, pyarrow) and for reopening a
    streamed read; default ``AWS_MAX_ATTEMPTS``, else ``DEFAULT_MAX_ATTEMPTS``."""
    retry_mode: str | None = None
    """botocore's retry mode, ``standard`` or ``adaptive`` (client-side rate limiting under throttling); default
    ``AWS_RETRY_MODE``, else ``standard``. pyarrow always uses the AWS SDK's standard strategy."""
    share_credentials: bool = False
    """Pickle explicit keys along with the storage (into Ray tasks, the object store, spill files). Off: a worker
    receiving the storage uses its own provider chain, so no secret travels or lands on disk."""

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise StorageError(f"S3Options.max_attempts = {self.max_attempts}: must be >= 1")
        if self.retry_mode not in (None, "standard", "adaptive"):
            raise StorageError(
                f"S3Options.retry_mode = {self.retry_mode!r}: must be 'standard' or 'adaptive'"
            )

    @property
    def explicit_credentials(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def resolved(self) -> S3Options:
        """These options with endpoint, region and retry settings filled from the environment (not credentials)."""
        env = os.environ
        attempts = self.max_attempts
        if attempts is None:
            try:
                attempts = int(env.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS)
            except ValueError as e:
                raise StorageError(f"AWS_MAX_ATTEMPTS={env.get('AWS_MAX_ATTEMPTS')!r}: not an integer") from e
        mode = self.retry_mode or env.get("AWS_RETRY_MODE") or "standard"
        if mode == "legacy":  # botocore's old default; its backoff is not what this module promises
            mode = "standard"
        return replace(
            self,
            endpoint_url=self.endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            max_attempts=attempts,
            retry_mode=mode,
        )

    def without_secrets(self) -> S3Options:
        """These options without any key material (what a pickled ``Storage`` carries by default)."""
        return replace(self, access_key_id=None, secret_access_key=None, session_token=None)

    def _botocore_config(self):
        import botocore
        import botocore.config

        return botocore.config.Config(
            max_pool_connections=32,
            signature_version=botocore.UNSIGNED if self.anonymous else None,
            retries={
                "mode": self.retry_mode or "standard",
                "max_attempts": self.max_attempts or DEFAULT_MAX_ATTEMPTS,
            },
            connect_timeout=20,
            read_timeout=120,
        )

    def _explicit_keys(self) -> dict[str, str | None]:
        if not self.explicit_credentials:
            return {}
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }


_S3_CLIENTS: dict[tuple[int, S3Options, str], Any] = {}
_S3_FILESYSTEMS: dict[tuple[int, S3Options, str], Any] = {}
_S3_CACHE_LOCK = threading.Lock()


def _per_process(cache: dict[tuple[int, S3Options, str], Any], options: S3Options, make):
    """``cache``'s entry for these options in this process, made by ``make(options)`` on first use. Keyed by the
    pid, the options and, unless the keys are explicit, the credential environment (a change of it makes a new
    one); made once even when several threads ask at the same time."""
    key = (os.getpid(), options, "" if options.explicit_credentials else _credential_env_fingerprint())
    made = cache.get(key)
    if made is None:
        with _S3_CACHE_LOCK:
            made = cache.get(key)
            if made is None:
                made = cache[key] = make(options)
    return made


def _s3_client(options: S3Options):
    """A boto3 S3 client for these options, one per process (clients are thread-safe, not fork-safe).

    Plain GETs go through it: a single streaming GET reads ~3x faster than s3fs's block reads and costs less per
    request, which is what shard streaming and per-frame reads need. Without explicit keys the client's session
    resolves credentials through the SDK chain and refreshes them; a change of the credential environment gives
    a new client.
    """
    return _per_process(_S3_CLIENTS, options, _new_s3_client)


def _new_s3_client(options: S3Options):
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    _prepare_session(core)
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        region_name=options.region,
        endpoint_url=options.endpoint_url,
        config=options._botocore_config(),
        **options._explicit_keys(),
    )


def _s3_filesystem(options: S3Options):
    """The ``s3fs.S3FileSystem`` for these options, one per process like :func:`_s3_client` (s3fs runs every call
    on fsspec's one event-loop thread, so any thread may use it).

    Why shared: a new filesystem builds a new botocore client on its first request, which parses botocore's S3
    service model (megabytes of JSON): ~0.2 CPU-s, twenty times the request itself. One per ``Storage`` made every
    ``open_storage`` in a task or a worker pay that.
    """
    return _per_process(_S3_FILESYSTEMS, options, _new_s3_filesystem)


def _new_s3_filesystem(o: S3Options):
    """A new ``s3fs.S3FileSystem`` for these options: the retry policy of :func:`_s3_client`, no listing cache."""
    import s3fs
    from aiobotocore.session import AioSession

    client_kwargs = {"region_name": o.region}
    if o.endpoint_url:
        client_kwargs["endpoint_url"] = o.endpoint_url
    session = AioSession()
    _prepare_session(session)
    keys = (
        {"key": o.access_key_id, "secret": o.secret_access_key, "token": o.session_token}
        if o.explicit_credentials
        else {}
    )
    # Listing caches would hide objects written by other processes (Ray workers, a resumed run). botocore retries
    # throttles, 5xx and connection errors (same mode and attempts as boto3); s3fs's own loop re-reads a block whose
    # body was cut, up to the same number of attempts. fsspec's instance cache is skipped: _s3_filesystem is the
    # cache, keyed by the options and the credential environment.
    fs = s3fs.S3FileSystem(
        anon=o.anonymous,
        client_kwargs=client_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
        session=session,
        config_kwargs={
            "retries": {
                "mode": o.retry_mode or "standard",
                "max_attempts": o.max_attempts or DEFAULT_MAX_ATTEMPTS,
            },
            "connect_timeout": 20,
            "read_timeout": 120,
        },
        **keys,
    )
    fs.retries = o.max_attempts or DEFAULT_MAX_ATTEMPTS
    return fs


def _credential_errors() -> tuple[type[BaseException], ...]:
    """botocore's errors for credentials that are missing or cannot be obtained (not for rejected ones: those come
    back from the store as error codes)."""
    import botocore.exceptions as bx

    return (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)


def _transient_read_errors() -> tuple[type[BaseException], ...]:
    """Errors of a response body that failed part-way: the connection, not the object, is at fault."""
    import botocore.exceptions as bx
    import urllib3.exceptions as ux

    return (
        bx.ResponseStreamingError,
        bx.IncompleteReadError,
        bx.ReadTimeoutError,
        bx.ConnectionClosedError,
        bx.EndpointConnectionError,
        ux.ProtocolError,
        ux.ReadTimeoutError,
        ux.IncompleteRead,
        http.client.IncompleteRead,
        ConnectionError,
        socket.timeout,
        TimeoutError,
    )


def _read_resume_policy(attempts: int) -> RetryPolicy:
    """Reopening a streamed GET whose body failed part-way: ``attempts`` reads in a row at most, short jittered
    waits (data was flowing), counted as ``s3_read_resume``."""
    return RetryPolicy(
        Backoff(first_s=0.1, max_s=2.0),
        attempts=attempts,
        retry_on=_transient_read_errors(),
        count_as="s3_read_resume",
        log_level=logging.INFO,
    )


class _S3Body(io.RawIOBase):
    """Raw reader of bytes ``start:stop`` of one S3 object through streaming GETs.

    When the body fails part-way (connection reset, incomplete read, read timeout), the GET is reopened at the
    byte reached, up to ``max_attempts`` times in a row, with ``If-Match`` on the first response's ETag: an
    object replaced meanwhile is an error, never a splice of two versions.
    """

    def __init__(self, storage: Storage, rel: str, start: int, stop: int | None):
        self._storage, self._rel = storage, rel
        self._bucket, _, self._key = storage._path(rel).partition("/")
        self._pos, self._stop = start, stop
        self._etag: str | None = None
        self._end: int | None = stop  # one past the last byte this reader must deliver, once known
        self._attempts = storage.s3.max_attempts or DEFAULT_MAX_ATTEMPTS
        self._body: Any = None  # botocore's StreamingBody (botocore ships no type hints)
        self._open()

    def _open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._pos or self._stop is not None:
            kwargs["Range"] = f"bytes={self._pos}-{'' if self._stop is None else self._stop - 1}"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        with self._storage._errors("read", self._rel):
            try:
                resp = _s3_client(self._storage.s3).get_object(Bucket=self._bucket, Key=self._key, **kwargs)
            except Exception as e:
                if self._etag and _error_code(e) in ("PreconditionFailed", "412"):
                    raise StorageError(
                        f"read {self._storage.join(self._rel)}: the object changed while it was being read"
                    ) from e
                raise
        self._body = resp["Body"]
        if self._etag is None:
            self._etag = resp.get("ETag")
            length = resp.get("ContentLength")
            if length is not None:
                self._end = self._pos + int(length)

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        if self._end is not None:
            n = min(n, self._end - self._pos)
        if n <= 0:
            return b""
        retrying: Retrying | None = None  # made on the first failure: most reads never need it
        while True:
            try:
                data = self._body.read(n)
                if not data and self._end is not None and self._pos < self._end:
                    raise ConnectionError(f"body ended at byte {self._pos} of {self._end}")
                break
            except Exception as e:
                retrying = retrying or Retrying(
                    _read_resume_policy(self._attempts),
                    lambda: f"read {self._storage.join(self._rel)} at byte {self._pos}",
                    action="reopening it there",
                    give_up=self._gave_up,
                    logger=log,
                )
                retrying.failed(e)  # raises unless the connection, not the object, is at fault
                with contextlib.suppress(Exception):
                    self._body.close()
                self._open()
        self._pos += len(data)
        telemetry.STORAGE_BYTES.inc(len(data), direction="read")
        return data

    def _gave_up(self, error: BaseException, failures: int) -> BaseException:
        return StorageUnavailableError(
            f"read {self._storage.join(self._rel)}: the connection failed {failures} times in a row at byte "
            f"{self._pos} ({type(error).__name__})"
        )

    def readinto(self, buffer) -> int:
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # Large pieces: RawIOBase.readall would read 8 KiB at a time.
        pieces = []
        while data := self._read(8 << 20):
            pieces.append(data)
        return b"".join(pieces)

    def close(self) -> None:
        if not self.closed and self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class _FencedS3Upload(io.BufferedIOBase):
    """A write to one S3 object of a fenced storage: a multipart upload from the first byte, committed only by
    :meth:`commit`, which checks the fence and then sends ``CompleteMultipartUpload`` (nothing in between).

    Why always multipart, even for a few bytes: an upload is visible to the store until it completes, so the run
    that takes an output over aborts it (:func:`clean_leftovers`); a writer that was paused after its fence check
    and resumes after the takeover then finds its upload gone and commits nothing. A single PUT cannot be recalled.
    Parts of :data:`S3_PART_BYTES` go out while the block writes; the rest goes as the last part at the commit.
    """

    def __init__(self, storage: Storage, rel: str):
        super().__init__()
        self._storage, self._rel = storage, rel
        self._bucket, _, self._key = storage._path(rel).partition("/")
        self._client = _s3_client(storage.s3)
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._written = 0
        with storage._errors("write", rel):
            self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)[
                "UploadId"
            ]

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data) -> int:
        if self.closed:
            raise ValueError(f"write to {self._storage.join(self._rel)} after it was committed or aborted")
        view = memoryview(data).cast("B")
        self._buffer += view
        self._written += len(view)
        while len(self._buffer) >= S3_PART_BYTES:
            self._send_part(bytes(self._buffer[:S3_PART_BYTES]))
            del self._buffer[:S3_PART_BYTES]
        return len(view)

    def _send_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        with self._storage._errors("write", self._rel):
            resp = self._client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def commit(self) -> None:
        """Send the last part, check the fence, complete the upload (the object appears)."""
        try:
            if self._buffer or not self._parts:  # the last part may be short, even empty
                self._send_part(bytes(self._buffer))
                self._buffer.clear()
            self._storage.check_fence()
            with self._storage._errors("write", self._rel):
                try:
                    self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                except Exception as e:
                    if _error_code(e) == "NoSuchUpload":
                        raise StorageError(
                            f"write {self._storage.join(self._rel)}: the upload was aborted before its commit "
                            "(another run took this output over and collected it); nothing was written"
                        ) from e
                    raise
        except BaseException:
            self.abort()
            raise
        super().close()

    def abort(self) -> None:
        """Drop the upload (best effort: a leftover upload is collected by the output's next run)."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
            super().close()

    def close(self) -> None:
        """Closing without :meth:`commit` aborts: only the commit makes the object appear."""
        self.abort()


def _error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    return (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


class _RangeReader(io.RawIOBase):
    """Raw reader over a local file, stopping after ``limit`` bytes if given."""

    def __init__(self, stream, limit: int | None = None):
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._stream.read(want) if want else b""
        buffer[: len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        telemetry.STORAGE_BYTES.inc(len(data), direction="read")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


@functools.cache
def _keyless_pickle_s3_filesystem() -> type:
    """A ``pyarrow.fs.S3FileSystem`` class that pickles without its keys (made on first use: pyarrow loads lazily).

    Pickled into a Ray task (Ray Train ships its storage filesystem to every worker) such a filesystem is rebuilt
    without key material, as a pickled :class:`Storage` is: the receiving process uses its own provider chain.
    """
    import pyarrow.fs as pafs

    class KeylessPickleS3FileSystem(pafs.S3FileSystem):
        def __reduce__(self):
            rebuild, (options,) = super().__reduce__()
            keyless = {
                k: v for k, v in options.items() if k not in ("access_key", "secret_key", "session_token")
            }
            return rebuild, (keyless,)

    return KeylessPickleS3FileSystem


def _split_url(url: str) -> tuple[str, str]:
    """(scheme, path) with scheme "file" or "s3"; local paths become absolute."""
    url = os.fspath(url)
    if url.startswith("s3://"):
        path = url[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"{url!r}: an S3 URL needs a bucket, e.g. s3://bucket/prefix")
        return "s3", path
    if "://" in url and not url.startswith("file://"):
        raise StorageError(
            f"{url!r}: unsupported URL scheme (use a local path, file://... or s3://bucket/prefix)"
        )
    if url.startswith("file://"):
        url = url[len("file://") :]
    return "file", os.path.abspath(os.path.expanduser(url))


def _clean_rel(rel: str) -> str:
    """A relative POSIX path inside the root; refuses absolute paths and ``..`` so names cannot escape it."""
    rel = os.fspath(rel).replace("\\", "/")
    if rel.startswith("/"):
        raise ValueError(f"storage path {rel!r} must be relative to the storage root")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"storage path {rel!r} must not contain '..'")
    return "/".join(parts)


class Storage:
    """A storage root (local directory or S3 prefix) with atomic writes and marker-free listings.

    Relative names (``rel``) are POSIX paths below the root. A ``Storage`` is cheap, picklable and safe to send to
    Ray tasks: the filesystems are created lazily in each process, and no key material is pickled (see
    :attr:`S3Options.share_credentials`).
    """

    def __init__(self, url: str, s3: S3Options | None = None, fence: Fence | None = None):
        self.scheme, self.root = _split_url(url)
        self.url = f"s3://{self.root}" if self.scheme == "s3" else self.root
        self.s3: S3Options = (s3 or S3Options()).resolved() if self.scheme == "s3" else (s3 or S3Options())
        """How S3 is reached: resolved from the environment for an ``s3://`` root; for a local root, what its
        children (and storages derived from it) would use, unresolved."""
        self.fence = fence
        """Checked at the commit step of every write and before every delete (None: an unfenced storage)."""
        self._fs: fsspec.AbstractFileSystem | None = None

    # -- construction -----------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # filesystems are rebuilt in the receiving process
        if self.fence is not None:
            state["fence"] = self.fence.portable()  # e.g. a lease (threads, locks) travels as its LeaseFence
        if not self.s3.share_credentials:
            # The receiving process uses its own provider chain (its role, its refreshed token): a key pickled
            # into a task would sit in the object store and spill files, and a token would expire there.
            state["s3"] = self.s3.without_secrets()
        return state

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (``s3fs.S3FileSystem`` or the local one)."""
        if self._fs is None:
            if self.scheme == "s3":
                self._fs = _s3_filesystem(self.s3)
            else:
                self._fs = fsspec.filesystem("file", auto_mkdir=True)
        return self._fs

    def pyarrow(self):
        """``(pyarrow.fs.FileSystem, path)`` for Ray Data / Ray Train, reaching the same place as :attr:`fs`."""
        import pyarrow.fs as pafs

        if self.scheme == "file":
            return pafs.LocalFileSystem(), self.root
        o = self.s3
        kwargs: dict[str, Any] = {
            "region": o.region,
            "anonymous": o.anonymous,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                max_attempts=o.max_attempts or DEFAULT_MAX_ATTEMPTS
            ),
            # With background writes (pyarrow's default), a part upload that fails for good is dropped: copy_files,
            # which Ray Train persists checkpoints with, returns as if the object were written (pyarrow 26, seen
            # under S3 faults: a run's last checkpoint reported stored and never in the store). Written in the
            # writing thread, the failure is raised, so Ray Train fails the attempt and resumes from a stored one.
            "background_writes": False,
        }
        if o.endpoint_url:
            kwargs["endpoint_override"] = o.endpoint_url
            if o.endpoint_url.startswith("http://"):
                kwargs["scheme"] = "http"
        if not o.explicit_credentials:  # the AWS SDK's own chain in each process (env, profile, IRSA, role)
            return pafs.S3FileSystem(**kwargs), self.root
        keys = {
            "access_key": o.access_key_id,
            "secret_key": o.secret_access_key,
            "session_token": o.session_token,
        }
        if o.share_credentials:
            return pafs.S3FileSystem(**kwargs, **keys), self.root
        return _keyless_pickle_s3_filesystem()(**kwargs, **keys), self.root

    def child(self, rel: str) -> Storage:
        """A storage rooted at ``rel`` below this one (same credentials, same fence)."""
        return Storage(self.join(rel), self.s3, self.fence)

    def fenced(self, fence: Fence | None) -> Storage:
        """This storage with ``fence`` checked before every commit and delete (see the module docstring)."""
        return Storage(self.url, self.s3, fence)

    def check_fence(self) -> None:
        """Raise if this storage's fence says the run may no longer write (a no-op for an unfenced storage)."""
        if self.fence is not None:
            self.fence.check()

    def join(self, rel: str = "") -> str:
        """Full URL (or absolute local path) of ``rel``."""
        rel = _clean_rel(rel)
        return f"{self.url}/{rel}" if rel else self.url

    def _path(self, rel: str) -> str:
        rel = _clean_rel(rel)
        return posixpath.join(self.root, rel) if rel else self.root

    # -- errors ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, op: str, rel: str = "") -> Iterator[None]:
        """Translate filesystem and SDK errors into storage errors that name the URL and no secret."""
        url = self.join(rel)
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as e:
            raise StorageNotFoundError(f"{op} {url}: not found (does the bucket or path exist?)") from e
        except PermissionError as e:
            raise StorageAuthError(
                f"{op} {url}: access denied (check the credentials and their permissions)"
            ) from e
        except Exception as e:  # botocore raises its own types for credential problems
            if isinstance(e, _credential_errors()):
                raise StorageAuthError(
                    f"{op} {url}: no usable S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "a profile, or an instance role)"
                ) from e
            code = _error_code(e)
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise StorageAuthError(f"{op} {url}: credentials rejected ({code})") from e
            if code in ("NoSuchBucket", "NoSuchKey", "404"):
                raise StorageNotFoundError(f"{op} {url}: not found ({code})") from e
            attempts = self.s3.max_attempts or DEFAULT_MAX_ATTEMPTS
            if code in (
                "SlowDown",
                "InternalError",
                "ServiceUnavailable",
                "RequestTimeout",
                "500",
                "502",
                "503",
                "504",
                "Throttling",
                "ThrottlingException",
                "RequestLimitExceeded",
            ):
                raise StorageUnavailableError(
                    f"{op} {url}: the store kept failing after {attempts} attempts ({code})"
                ) from e
            if isinstance(e, _transient_read_errors()):
                raise StorageUnavailableError(
                    f"{op} {url}: the connection kept failing after {attempts} attempts ({type(e).__name__})"
                ) from e
            raise

    def check(self, op: str = "check") -> None:
        """Raise a clear error unless the root is reachable: the bucket exists and the credentials work.

        For local storage, the directory is created if missing (writing jobs create their outputs).
        """
        if self.scheme == "file":
            os.makedirs(self.root, exist_ok=True)
            return
        bucket = self.root.split("/", 1)[0]
        with self._errors(op, ""):
            # One HEAD on the process's client: s3fs's info() of a bucket took ~1 s (a new client, several calls).
            _s3_client(self.s3).head_bucket(Bucket=bucket)

    # -- reading ----------------------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        with self._errors("exists", rel):
            return self.fs.exists(self._path(rel))

    def isdir(self, rel: str = "") -> bool:
        with self._errors("isdir", rel):
            return self.fs.isdir(self._path(rel))

    def size(self, rel: str) -> int:
        with self._errors("size", rel):
            return int(self.fs.size(self._path(rel)))

    def list(self, rel: str = "", suffix: str | None = None, recursive: bool = False) -> list[str]:
        """Sorted names below ``rel``, relative to ``rel``.

        Non-recursive: immediate children, files and directories (no trailing slash). Recursive: every file.
        Zero-byte directory markers and in-flight temporary files are never listed. A missing ``rel`` gives ``[]``
        when the bucket exists (object stores have no empty directories); a missing bucket raises.
        """
        base = self._path(rel)
        with self._errors("list", rel):
            if self.scheme == "s3" and not self.fs.exists(base):
                self.check("list")  # a missing bucket is an error, a missing prefix is just empty
                return []
            if self.scheme == "file":
                # exists, then isdir: a folder made by another process between the two is listed, not refused
                if not os.path.exists(base):
                    return []
                if not os.path.isdir(base):
                    raise StorageError(f"list {self.join(rel)}: not a directory")
            entries = (
                self.fs.find(base, detail=True)
                if recursive
                else {e["name"]: e for e in self.fs.ls(base, detail=True)}
            )
        names = []
        prefix = base.rstrip("/") + "/"
        for name, info in entries.items():
            if name.endswith("/") and info.get("type") != "directory":
                continue  # a zero-byte directory-marker object ("prefix/")
            name = name.rstrip("/")
            if not name.startswith(prefix):
                continue  # the listed directory itself
            relname = name[len(prefix) :]
            leaf = relname.rsplit("/", 1)[-1]
            if leaf.startswith(".") and _TMP_MARK in leaf:
                continue
            if recursive and info.get("type") == "directory":
                continue
            if suffix and not relname.endswith(suffix):
                continue
            names.append(relname)
        return sorted(set(names))

    def open_read(self, rel: str):
        """A binary file object for reading (a context manager)."""
        with self._errors("read", rel):
            return self.fs.open(self._path(rel), "rb")

    def open_stream(self, rel: str, start: int = 0, stop: int | None = None) -> io.BufferedReader:
        """A forward-only binary reader of bytes ``start:stop`` of ``rel`` (a context manager): one GET on S3.

        For sequential reads (a shard, a rank's block of samples); :meth:`open_read` seeks.
        """
        if stop is not None and stop <= start:
            return io.BufferedReader(_RangeReader(io.BytesIO(b"")))
        path = self._path(rel)
        with self._errors("read", rel):
            if self.scheme == "file":
                f = open(path, "rb")
                f.seek(start)
                return io.BufferedReader(_RangeReader(f, None if stop is None else stop - start), 1 << 20)
        return io.BufferedReader(_S3Body(self, rel, start, stop), 1 << 20)

    def read_bytes(self, rel: str) -> bytes:
        path = self._path(rel)
        with self._errors("read", rel):
            if self.scheme == "file":
                with open(path, "rb") as f:
                    data = f.read()
                telemetry.STORAGE_BYTES.inc(len(data), direction="read")
                return data
        with _S3Body(self, rel, 0, None) as body:  # reopened at the byte reached if the connection drops
            return body.readall()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise StorageError(f"read {self.join(rel)}: not valid JSON ({e})") from e

    def read_parquet(self, rel: str):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read_bytes(rel)))

    def download_file(self, rel: str, local_path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local_path)) or ".", exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(os.path.abspath(local_path)), temp_name(os.path.basename(local_path))
        )
        try:
            with local_disk_full_errors("download", f"{self.join(rel)} to {local_path}", tmp):
                if self.scheme == "file":
                    with self._errors("download", rel):
                        shutil.copyfile(self._path(rel), tmp)
                    telemetry.STORAGE_BYTES.inc(os.path.getsize(tmp), direction="read")
                else:  # one streaming GET, resumed at the byte reached if the connection drops
                    with self.open_stream(rel) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=8 << 20)
            os.replace(tmp, local_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # -- writing (all atomic) ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[io.BufferedIOBase]:
        """Write ``rel`` atomically: the object appears, complete, only if the block succeeds.

        A fenced storage checks its fence at the commit step (the final rename; the ``CompleteMultipartUpload``).
        """
        path = self._path(rel)
        if not _clean_rel(rel):
            raise ValueError("open_write needs a file name below the storage root")
        if self.scheme == "file":
            directory, leaf = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, temp_name(leaf))
            try:
                with local_disk_full_errors("write", path, tmp), open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                    written = f.tell()
                self._commit_local(tmp, path, rel)
                telemetry.STORAGE_BYTES.inc(written, direction="write")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        elif self.fence is not None:
            upload = _FencedS3Upload(self, rel)
            try:
                yield upload
            except BaseException:
                upload.abort()
                raise
            upload.commit()
        else:
            with self._errors("write", rel):
                f = self.fs.open(path, "wb", block_size=S3_PART_BYTES)
            try:
                yield f
            except BaseException:
                with contextlib.suppress(Exception):  # the block's error matters more than a failed abort
                    f.discard()
                f.closed = True  # discarded: closing it later (or at garbage collection) must not commit
                raise
            written = f.tell()
            with self._errors("write", rel):
                f.close()
            telemetry.STORAGE_BYTES.inc(written, direction="write")

    def _commit_local(self, tmp: str, path: str, rel: str) -> None:
        """The commit of a local write: the fence, then the rename (nothing else in between)."""
        self.check_fence()
        try:
            os.replace(tmp, path)
        except FileNotFoundError as e:
            # Only another run's leftover collection removes a live temporary file: it took the output over.
            raise StorageError(
                f"write {self.join(rel)}: its temporary file was removed before the commit (another run took "
                "this output over and collected it); nothing was written"
            ) from e

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_write(rel) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))

    def write_parquet(self, rel: str, table) -> None:
        import pyarrow.parquet as pq

        with self.open_write(rel) as f:
            pq.write_table(table, f)

    def upload_file(self, local_path: str, rel: str) -> None:
        """Copy a local file to ``rel`` atomically."""
        if self.scheme != "file" and self.fence is None:
            # A single PUT or multipart upload: S3 shows the object only once it is complete.
            with self._errors("upload", rel):
                self.fs.put_file(local_path, self._path(rel))
            telemetry.STORAGE_BYTES.inc(os.path.getsize(local_path), direction="write")
            return
        with open(local_path, "rb") as src, self.open_write(rel) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def delete(self, rel: str, recursive: bool = False) -> None:
        """Delete ``rel`` (with ``recursive``, everything below it). Deleting what is absent is not an error."""
        path = self._path(rel)
        with self._errors("delete", rel):
            if not self.fs.exists(path):
                return
            self.check_fence()
            self.fs.rm(path, recursive=recursive)


# temp_name()'s shape and nothing else: a dot, the (maybe shortened) leaf, ".tmp-" and a version-4 UUID in hex.
_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", re.DOTALL)


def clean_leftovers(storage: Storage, older_than: float, protected: Sequence[str] = ()) -> dict[str, int]:
    """Collect what runs that died left below ``storage``'s root; returns counts by kind.

    - S3: incomplete multipart uploads under the root prefix initiated before ``older_than`` (epoch seconds,
      compared with the store's ``Initiated``: pass a time on the store's clock, as :class:`pipeline.lease.
      OutputLease` does). They are invisible but billed; a bucket lifecycle rule (infra/README.md) collects those
      of outputs no job reruns.
    - Local: this module's temporary files (:func:`temp_name`'s ``.<name>.tmp-<uuid4 hex>``, nothing else)
      older than ``older_than``.

    Nothing is touched in or below a folder that holds one of the files named in ``protected`` (another output's
    lease or output marker: a nested output, whose own runs collect its leftovers). A root that is a whole bucket
    or the file-system root is refused (``ValueError``): nothing there is one job's to collect.

    Call it only while holding the output's lease: nothing else tells a live run's upload or temporary file from a
    dead one's. Failures are logged, not raised: leftovers cost money, not correctness.
    """
    bucket, _, prefix = storage.root.partition("/")
    if (storage.scheme == "s3" and not prefix) or (
        storage.is_local and os.path.dirname(storage.root) == storage.root
    ):
        raise ValueError(
            f"clean_leftovers: {storage.url} is a bucket or file-system root; refusing to clean it"
        )
    counts = {"multipart_uploads_aborted": 0, "temp_files_removed": 0}
    try:
        if storage.scheme == "s3":
            counts["multipart_uploads_aborted"] = _abort_old_uploads(storage, older_than, protected)
        elif os.path.isdir(storage.root):
            counts["temp_files_removed"] = _remove_old_temp_files(storage.root, older_than, protected)
    except Exception as err:
        log.warning("%s: could not collect leftovers of earlier runs: %s", storage.url, err)
    return counts


def _abort_old_uploads(storage: Storage, older_than: float, protected: Sequence[str]) -> int:
    bucket, _, prefix = storage.root.partition("/")
    client = _s3_client(storage.s3)
    nested: dict[str, bool] = {}  # folder below the root -> holds a protected file

    def in_nested_output(key: str) -> bool:
        folders = key[len(prefix) + 1 :].split("/")[:-1]
        for depth in range(1, len(folders) + 1):
            folder = "/".join(folders[:depth])
            if folder not in nested:
                nested[folder] = any(storage.exists(f"{folder}/{name}") for name in protected)
            if nested[folder]:
                return True
        return False

    aborted = 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{prefix}/"}
    while True:
        with storage._errors("list uploads", ""):
            page = client.list_multipart_uploads(**kwargs)
        for up in page.get("Uploads", []):
            if up["Initiated"].timestamp() >= older_than or in_nested_output(up["Key"]):
                continue
            with storage._errors("abort upload", ""):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted += 1
            log.info(
                "aborted an incomplete upload of s3://%s/%s (initiated %s)",
                bucket,
                up["Key"],
                up["Initiated"].isoformat(),
            )
        if not page.get("IsTruncated"):
            return aborted
        kwargs.update(
            KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", "")
        )


def _remove_old_temp_files(root: str, older_than: float, protected: Sequence[str]) -> int:
    removed = 0
    for directory, folders, files in os.walk(root):
        if directory != root and any(name in files for name in protected):
            folders[:] = []  # a nested output: its own runs collect its leftovers
            continue
        for name in files:
            if not _TEMP_NAME.fullmatch(name):
                continue
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < older_than:
                    os.remove(path)
                    removed += 1
                    log.info("removed a leftover temporary file %s", path)
    return removed


def open_storage(url: str | Storage, s3: S3Options | None = None) -> Storage:
    """The storage rooted at ``url`` (a ``Storage`` is returned as is)."""
    if isinstance(url, Storage):
        return url
    return Storage(url, s3)


def absolute_url(url: str) -> str:
    """``url`` with a local path made absolute against this process's working directory (a ``file://`` prefix
    dropped) and an S3 URL normalised; ``""`` stays ``""``. Job configs apply it to every path field where they are
    built, on the driver: a Ray worker's working directory is its session folder, so a relative path sent to it
    would name another place."""
    return open_storage(url).url if url else url


def storage_filesystem(url: str, s3: S3Options | None = None):
    """``(pyarrow.fs.FileSystem, path)`` for ``url``: what Ray Data and Ray Train take (no ``s3://`` in the path)."""
    return open_storage(url, s3).pyarrow()


# -- single files named by a full URL ----------------------------------------------------------------------------


def open_url(url: str, s3: S3Options | None = None) -> tuple[Storage, str]:
    """``(storage of the parent folder, leaf name)`` of the file at ``url`` (a local path or ``s3://...``).

    The one place that turns a file URL into a storage and a name (``s3://b/runs/x/model.pt`` ->
    ``(Storage("s3://b/runs/x"), "model.pt")``); a bare file name resolves against the working directory.
    """
    parent, _, leaf = str(url).rstrip("/").rpartition("/")
    if not leaf:
        raise StorageError(f"{url!r} does not name a file")
    if parent.endswith(":/") or parent.endswith(":"):  # "s3://bucket" has no folder above the object
        raise StorageError(f"{url!r} names a bucket, not a file")
    return open_storage(parent or ".", s3), leaf


@contextlib.contextmanager
def local_copy(url: str, s3: S3Options | None = None, *, prefix: str = "hmhi-copy-") -> Iterator[str]:
    """A local path holding the file at ``url`` for the duration of the block.

    A local file is used in place (nothing is copied); a remote one is downloaded to a private temporary folder
    that is removed when the block ends. A missing file raises :class:`StorageNotFoundError` naming the URL.
    """
    import tempfile

    storage, leaf = open_url(url, s3)
    if storage.is_local:
        path = os.path.join(storage.root, leaf)
        if not os.path.isfile(path):
            raise StorageNotFoundError(f"{url}: no such file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = os.path.join(tmp, leaf)
        storage.download_file(leaf, path)
        yield path


def url_sha256(url: str, s3: S3Options | None = None) -> str:
    """SHA-256 of the file at ``url`` (a local path or ``s3://...``), streamed: a shard's or checkpoint's fingerprint."""
    storage, leaf = open_url(url, s3)
    digest = hashlib.sha256()
    with storage.open_stream(leaf) as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

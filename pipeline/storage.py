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
- Errors name the URL, never a secret: :class:`StorageNotFoundError` for a missing bucket or path,
  :class:`StorageAuthError` for missing or rejected credentials.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec

from pipeline.jobs import UserError

log = logging.getLogger(__name__)

__all__ = [
    "S3Options",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageNotFoundError",
    "open_storage",
    "storage_filesystem",
]

S3_PART_BYTES = 16 << 20
"""Part size of streamed S3 writes: a part is uploaded as soon as the writer has produced this much."""
_TMP_MARK = ".tmp-"  # in-flight files are named ".<name>.tmp-<uuid>" and never listed


class StorageError(UserError, RuntimeError):
    """A storage operation failed; the message names the URL (never a credential)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The bucket, object or local path does not exist."""


class StorageAuthError(StorageError, PermissionError):
    """Credentials are missing, or the store rejected them."""


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: str | None = None
    """Endpoint such as ``http://127.0.0.1:9000``; default ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (AWS when unset)."""
    region: str | None = None
    """Region; default ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else ``us-east-1``."""
    access_key_id: str | None = field(default=None, repr=False)
    """Access key id; default ``AWS_ACCESS_KEY_ID``, else the SDK's chain (profile, IRSA, instance profile)."""
    secret_access_key: str | None = field(default=None, repr=False)
    """Secret key; default ``AWS_SECRET_ACCESS_KEY``. Never logged."""
    session_token: str | None = field(default=None, repr=False)
    """Session token; default ``AWS_SESSION_TOKEN``."""
    anonymous: bool = False
    """Unsigned requests (public buckets)."""

    def resolved(self) -> S3Options:
        """These options with every unset field filled from the environment."""
        env = os.environ
        return replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=self.session_token or env.get("AWS_SESSION_TOKEN") or None,
        )


_S3_CLIENTS: dict[tuple[int, S3Options], Any] = {}


def _s3_client(options: S3Options):
    """A boto3 S3 client for these options, one per process (clients are thread-safe, not fork-safe).

    Plain GETs go through it: a single streaming GET reads ~3x faster than s3fs's block reads and costs less per
    request, which is what shard streaming and per-frame reads need.
    """
    key = (os.getpid(), options)
    client = _S3_CLIENTS.get(key)
    if client is None:
        import boto3
        import botocore
        import botocore.config

        config = botocore.config.Config(max_pool_connections=32,
                                        signature_version=botocore.UNSIGNED if options.anonymous else None)
        client = _S3_CLIENTS[key] = boto3.session.Session().client(
            "s3", region_name=options.region, endpoint_url=options.endpoint_url, config=config,
            aws_access_key_id=options.access_key_id, aws_secret_access_key=options.secret_access_key,
            aws_session_token=options.session_token)
    return client


class _RangeReader(io.RawIOBase):
    """Raw reader over a stream (an S3 GET body or a local file), stopping after ``limit`` bytes if given."""

    def __init__(self, stream, limit: int | None = None):
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._stream.read(want) if want else b""
        buffer[:len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def _split_url(url: str) -> tuple[str, str]:
    """(scheme, path) with scheme "file" or "s3"; local paths become absolute."""
    url = os.fspath(url)
    if url.startswith("s3://"):
        path = url[len("s3://"):].strip("/")
        if not path:
            raise StorageError(f"{url!r}: an S3 URL needs a bucket, e.g. s3://bucket/prefix")
        return "s3", path
    if "://" in url and not url.startswith("file://"):
        raise StorageError(f"{url!r}: unsupported URL scheme (use a local path, file://... or s3://bucket/prefix)")
    if url.startswith("file://"):
        url = url[len("file://"):]
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
    Ray tasks: the filesystems are created lazily in each process.
    """

    def __init__(self, url: str, s3: S3Options | None = None):
        self.scheme, self.root = _split_url(url)
        self.url = f"s3://{self.root}" if self.scheme == "s3" else self.root
        self.s3 = (s3 or S3Options()).resolved() if self.scheme == "s3" else None
        self._fs: fsspec.AbstractFileSystem | None = None

    # -- construction -----------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # filesystems are rebuilt in the receiving process
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
                import s3fs

                o = self.s3
                client_kwargs = {"region_name": o.region}
                if o.endpoint_url:
                    client_kwargs["endpoint_url"] = o.endpoint_url
                # Listing caches would hide objects written by other processes (Ray workers, a resumed run).
                self._fs = s3fs.S3FileSystem(
                    key=o.access_key_id, secret=o.secret_access_key, token=o.session_token, anon=o.anonymous,
                    client_kwargs=client_kwargs, use_listings_cache=False, skip_instance_cache=True,
                )
            else:
                self._fs = fsspec.filesystem("file", auto_mkdir=True)
        return self._fs

    def pyarrow(self):
        """``(pyarrow.fs.FileSystem, path)`` for Ray Data / Ray Train, reaching the same place as :attr:`fs`."""
        import pyarrow.fs as pafs

        if self.scheme == "file":
            return pafs.LocalFileSystem(), self.root
        o = self.s3
        kwargs: dict[str, Any] = {"region": o.region, "anonymous": o.anonymous}
        if o.access_key_id and o.secret_access_key:
            kwargs.update(access_key=o.access_key_id, secret_key=o.secret_access_key, session_token=o.session_token)
        if o.endpoint_url:
            kwargs["endpoint_override"] = o.endpoint_url
            if o.endpoint_url.startswith("http://"):
                kwargs["scheme"] = "http"
        return pafs.S3FileSystem(**kwargs), self.root

    def child(self, rel: str) -> Storage:
        """A storage rooted at ``rel`` below this one (same credentials)."""
        return Storage(self.join(rel), self.s3)

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
            raise StorageAuthError(f"{op} {url}: access denied (check the credentials and their permissions)") from e
        except Exception as e:  # botocore raises its own types for credential problems
            name = type(e).__name__
            if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
                raise StorageAuthError(
                    f"{op} {url}: no usable S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "a profile, or an instance role)") from e
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "") if hasattr(e, "response") else ""
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise StorageAuthError(f"{op} {url}: credentials rejected ({code})") from e
            if code in ("NoSuchBucket", "NoSuchKey", "404"):
                raise StorageNotFoundError(f"{op} {url}: not found ({code})") from e
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
            self.fs.info(bucket)

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
            if self.scheme == "file" and not os.path.isdir(base):
                if os.path.exists(base):
                    raise StorageError(f"list {self.join(rel)}: not a directory")
                return []
            entries = self.fs.find(base, detail=True) if recursive else {
                e["name"]: e for e in self.fs.ls(base, detail=True)}
        names = []
        prefix = base.rstrip("/") + "/"
        for name, info in entries.items():
            if name.endswith("/") and info.get("type") != "directory":
                continue  # a zero-byte directory-marker object ("prefix/")
            name = name.rstrip("/")
            if not name.startswith(prefix):
                continue  # the listed directory itself
            relname = name[len(prefix):]
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
            bucket, _, key = path.partition("/")
            kwargs = {"Range": f"bytes={start}-{'' if stop is None else stop - 1}"} if start or stop else {}
            body = _s3_client(self.s3).get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
            return io.BufferedReader(_RangeReader(body), 1 << 20)

    def read_bytes(self, rel: str) -> bytes:
        path = self._path(rel)
        with self._errors("read", rel):
            if self.scheme == "file":
                with open(path, "rb") as f:
                    return f.read()
            bucket, _, key = path.partition("/")
            return _s3_client(self.s3).get_object(Bucket=bucket, Key=key)["Body"].read()

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
        tmp = f"{local_path}{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            with self._errors("download", rel):
                self.fs.get_file(self._path(rel), tmp)
            os.replace(tmp, local_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # -- writing (all atomic) ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[io.BufferedWriter]:
        """Write ``rel`` atomically: the object appears, complete, only if the block succeeds."""
        path = self._path(rel)
        if not _clean_rel(rel):
            raise ValueError("open_write needs a file name below the storage root")
        if self.scheme == "file":
            directory, leaf = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{leaf}{_TMP_MARK}{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
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
            with self._errors("write", rel):
                f.close()

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
        if self.scheme != "file":  # a single PUT or multipart upload: S3 shows the object only once it is complete
            with self._errors("upload", rel):
                self.fs.put_file(local_path, self._path(rel))
            return
        with open(local_path, "rb") as src, self.open_write(rel) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def delete(self, rel: str, recursive: bool = False) -> None:
        """Delete ``rel`` (with ``recursive``, everything below it). Deleting what is absent is not an error."""
        path = self._path(rel)
        with self._errors("delete", rel):
            if not self.fs.exists(path):
                return
            self.fs.rm(path, recursive=recursive)


def open_storage(url: str | Storage, s3: S3Options | None = None) -> Storage:
    """The storage rooted at ``url`` (a ``Storage`` is returned as is)."""
    if isinstance(url, Storage):
        return url
    return Storage(url, s3)


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

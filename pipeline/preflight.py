"""The checks every job runs on its driver before Ray starts and before anything is written (no lease, no settings
file, no folder): what ``pipeline.cli.job_main`` runs through the job's ``preflight(cfg)``.

Each check raises :class:`PreflightError` (a :class:`~pipeline.errors.UserError`: one line, exit status 2) naming
the config field (its dotted path, as ``--set`` names it) and the path. Nothing here creates anything: a missing
input stays missing, and an output is probed with a temporary entry that is removed at once. A job's own
``preflight`` (in ``pipeline/<job>/job.py``) combines these with what only it knows (the corpus format, the
checkpoint's architecture).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Mapping

from pipeline.errors import UserError
from pipeline.storage import Storage, StorageError, open_storage

__all__ = ["PreflightError", "check_disjoint", "check_input", "check_output", "within"]


class PreflightError(UserError, ValueError):
    """A job's argument cannot work (a missing input, an output that cannot be written, an output inside its
    input); the message names the field and the path."""


def check_input(field: str, url: str, *, folder: bool = True) -> Storage:
    """The input at ``url`` exists: a folder (``folder``) or a file; for S3, the bucket is reachable and the
    prefix or object exists. Never creates anything. Returns the folder's storage (the file's parent for a file)."""
    if not url:
        raise PreflightError(f"{field} is required")
    storage = open_storage(url)
    if storage.is_local:
        path = storage.root
        if not os.path.exists(path):
            raise PreflightError(f"{field} {path}: no such {'folder' if folder else 'file'}")
        if folder and not os.path.isdir(path):
            raise PreflightError(f"{field} {path}: is a file, not a folder")
        if not folder and os.path.isdir(path):
            raise PreflightError(f"{field} {path}: is a folder, not a file")
        if not os.access(path, os.R_OK):
            raise PreflightError(f"{field} {path}: cannot be read (permission denied)")
        return storage
    try:
        storage.check()
        found = storage.exists("")
    except StorageError as e:  # its message names the URL
        raise PreflightError(f"{field}: {e}") from e
    if not found:
        raise PreflightError(f"{field} {storage.url}: nothing there (no such prefix or object)")
    return storage


def check_output(field: str, url: str) -> Storage:
    """The output at ``url`` can be created and written: probed with a temporary file (or folder, where the
    output does not exist yet) that is removed at once, so nothing is left behind. Returns its storage."""
    if not url:
        raise PreflightError(f"{field} is required")
    storage = open_storage(url)
    if storage.is_local:
        _probe_local(field, storage.root)
        return storage
    probe = f".hmhi-preflight-{uuid.uuid4().hex}"
    try:
        storage.check()
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except StorageError as e:  # its message names the URL and the reason
        raise PreflightError(f"{field} {storage.url}: cannot be written ({e})") from e
    return storage


def _probe_local(field: str, path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreflightError(f"{field} {path}: is a file, not a folder")
    existing = path
    while not os.path.exists(existing):  # the nearest folder that exists: where the output would be created
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PreflightError(f"{field} {path}: cannot be created ({existing} is a file)")
    try:
        if existing == path:
            fd, probe = tempfile.mkstemp(prefix=".hmhi-preflight-", dir=path)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".hmhi-preflight-", dir=existing))
    except OSError as e:
        what = "cannot be written" if existing == path else "cannot be created"
        raise PreflightError(f"{field} {path}: {what} ({e.strerror or e} in {existing})") from None


def within(inner_url: str, outer_url: str) -> bool:
    """The storage at ``inner_url`` is the one at ``outer_url`` or below it (local paths compared after resolving
    symbolic links; different schemes never overlap)."""
    inner, outer = open_storage(inner_url), open_storage(outer_url)
    if inner.scheme != outer.scheme:
        return False
    a, b = (os.path.realpath(s.root) if s.is_local else s.root for s in (inner, outer))
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_disjoint(output_field: str, output: str, inputs: Mapping[str, str | None]) -> None:
    """The output is neither one of the inputs, nor inside one, nor around one: a job never writes where it
    reads (its cleanup and its reruns would touch its own input). ``inputs`` maps field names to URLs (empty ones
    are skipped)."""
    for field, url in inputs.items():
        if not url:
            continue
        inside, around = within(output, url), within(url, output)
        if not (inside or around):
            continue
        relation = "is" if inside and around else "is inside" if inside else "contains"
        raise PreflightError(
            f"{output_field} {open_storage(output).url} {relation} {field} {open_storage(url).url}: "
            "a job never writes where it reads; choose another output"
        )

"""Names from data that become part of a path: each must be exactly one safe path component.

A video id read from a shard index, an index part, a manifest, a done marker or an archive, or a frame name from an
RLE table, ends up in an output path (``masks/<video>/<frame>.png``, ``done/<video>.json``, a CVAT archive's
member). A crafted or corrupt one must not reach outside its own place: ``.`` or ``''`` would name the folder of
*every* video (``masks/.`` is ``masks/``), ``..`` its parent, ``a/b`` another video's folder. :func:`check_name`
is the one test every such name passes before it is used; a name that fails is rejected by name (that item only).
"""

from __future__ import annotations

__all__ = ["MAX_NAME_BYTES", "UnsafeNameError", "check_name"]

MAX_NAME_BYTES = 200
"""Longest accepted name, in UTF-8 bytes. File systems cap a file name at 255 bytes (NAME_MAX on ext4, XFS, APFS,
NTFS); a job adds at most a suffix such as ``.parquet`` (8) or, in a temporary name, ``.<name>.tmp-<32 hex>``
(which pipeline.storage shortens when needed), so 200 leaves room for every name a job derives from it."""


class UnsafeNameError(ValueError):
    """A name from data cannot be used as a path component; the message says which name and why."""


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is one safe path component, else :class:`UnsafeNameError` naming it and ``what`` it is.

    Safe: a non-empty ``str``, not ``.`` or ``..``, without ``/`` or ``\\``, without NUL or another control
    character (a newline would split the line-based lists some formats keep, e.g. CVAT's), at most
    :data:`MAX_NAME_BYTES` bytes in UTF-8.
    """
    if not isinstance(name, str):
        raise UnsafeNameError(f"{what} {name!r} is not a string")
    problem = None
    if name in ("", ".", ".."):
        problem = "is empty or a relative folder name ('.', '..')"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator ('/' or '\\')"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problem = "contains NUL or another control character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        shown = name if len(name) <= 80 else f"{name[:77]}..."
        raise UnsafeNameError(f"{what} {shown!r} {problem}: it cannot be a file or folder name")
    return name

"""Which hmhi-uvos this is: recorded in every checkpoint the project writes, and printed by ``hmhi-uvos --version``.
Imports nothing heavy (no torch), so the command line can answer without importing the network."""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "project_version"]

DISTRIBUTION = "hmhi-uvos"
"""The installed distribution's name (also the format name of the checkpoints it writes)."""


def project_version() -> str:
    """The installed hmhi-uvos version ("unknown" when the code runs from a checkout that was never installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

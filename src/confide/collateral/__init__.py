"""Collateral sources: the I/O side of verification (files, vendor web services, caches)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "is_url"]


def is_url(location: str) -> bool:
    """Whether a ``--collateral`` location names a web service rather than a file."""
    return location.startswith(("http://", "https://"))


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/confide/<name>`` (default ``~/.cache/confide/<name>``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "confide" / name

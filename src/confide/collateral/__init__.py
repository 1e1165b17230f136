"""Collateral sources: the I/O side of verification (files, vendor web services, caches)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["cache_dir", "is_url", "public_url"]


def is_url(location: str) -> bool:
    """Whether a ``--collateral`` location names a web service rather than a file."""
    return location.startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """``url`` as refusals and logs may show it: without the userinfo (``user:password@``), so
    credentials written into a ``--collateral``/``--kds``/``--nvidia-ocsp`` URL never reach a
    message (clients see refusal messages); the fragment is dropped too."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        # Not an absolute URL (RFC 3986 §4.3): its parts are not where the userinfo would be
        # (urlsplit reads "user:pw@host" as scheme "user", path "pw@host"), so none is shown.
        return "<not an absolute URL>"
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/confide/<name>`` (default ``~/.cache/confide/<name>``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "confide" / name

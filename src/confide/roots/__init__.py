"""Vendor root certificates shipped with confide (package data, read-only).

Files here are trusted only through the fingerprints pinned in code next to their verifiers
(e.g. ``confide.verify.sev_snp.PINNED_ARK_SHA256``); this module only reads them.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["read_root"]


def read_root(name: str) -> bytes:
    """Return the bytes of the shipped root file ``name`` (e.g. ``amd_milan_vcek_chain.pem``)."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"root file name: got {name!r}, expected a plain file name")
    return resources.files("confide").joinpath("roots", name).read_bytes()

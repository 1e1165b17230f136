"""Protected volumes: per-file chunked AES-256-GCM, an authenticated manifest, a volume tag.

See ``docs/volume-format.md``. Public surface: create/add/seal (``store``), verify/open
(``check``), random access (``reader``), keys (``keys``) and the pure format (``format``).
"""

from __future__ import annotations

from confide.volume.check import OpenResult, Problem, VerifyReport, open_volume, verify_volume
from confide.volume.format import Region, RegionRule
from confide.volume.keys import KEY_ENV, VolumeKey, load_key, write_key
from confide.volume.reader import VolumeReader
from confide.volume.store import add_sources, create_volume, load_sealed, remove_paths, seal_volume

__all__ = [
    "KEY_ENV",
    "OpenResult",
    "Problem",
    "Region",
    "RegionRule",
    "VerifyReport",
    "VolumeKey",
    "VolumeReader",
    "add_sources",
    "create_volume",
    "load_key",
    "load_sealed",
    "open_volume",
    "remove_paths",
    "seal_volume",
    "verify_volume",
    "write_key",
]

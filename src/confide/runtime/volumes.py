"""Protected volumes in ``confide run``: mount what the CAS released, report new tags.

For each volume in the release (name, the directory holding the encrypted volume, key, current
tag), the runtime mounts the decrypted view (``confide.volume.mount``: FUSE, else tmpfs) in a
private mount namespace, refusing a volume whose tag is not the current one (an old copy).

Where the plaintext appears:

- images made by ``confide sconify`` carry a contract (``$CONFIDE_SCONIFY``, default
  ``/confide/sconify.json``) listing each volume's protected paths; the volume is mounted at a
  staging directory and each protected path is bind-mounted at its original place (root, in the
  private mount namespace);
- otherwise the volume is mounted at ``/run/confide/volumes/<name>`` and the application finds
  it through ``CONFIDE_VOLUME_<NAME>`` in its environment.

Volumes are mounted writable; after the application exits, each changed volume is sealed and its
new tag reported to the CAS (compare-and-swap on the old tag), so the next run gets the new one
and an old copy is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confide.errors import ParseError, StorageError, UsageError
from confide.volume.keys import VolumeKey
from confide.volume.mount import MountHandle, _private_namespace, mount_volume

__all__ = ["MountedVolumes", "VolumeRelease", "bind_mount", "mount_released"]

CONTRACT = Path("/confide/sconify.json")
STAGING = Path("/run/confide/volumes")
_MS_BIND = 4096
_MNT_DETACH = 2


@dataclass(frozen=True)
class VolumeRelease:
    name: str
    directory: Path
    key: bytes = field(repr=False)
    tag: str

    @classmethod
    def from_config(cls, item: Any) -> VolumeRelease:
        try:
            return cls(
                str(item["name"]), Path(str(item["path"])), bytes.fromhex(str(item["key"])), str(item["tag"])
            )
        except (KeyError, ValueError, TypeError):
            raise ParseError("malformed volume in the release", structure="release") from None


def _contract_mounts(name: str) -> list[tuple[str, str]] | None:
    path = Path(os.environ.get("CONFIDE_SCONIFY") or CONTRACT)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ParseError(f"cannot read the image contract {path}", structure="sconify contract") from None
    for vol in doc.get("volumes", []):
        if vol.get("name") == name:
            return [(str(m["path"]), str(m.get("kind", "dir"))) for m in vol.get("mounts", [])]
    return None


def bind_mount(source: Path, target: Path) -> None:
    """Bind ``source`` at ``target`` (both must exist and be of the same kind); root only."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(str(source).encode(), str(target).encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise StorageError(
            f"cannot bind {source} at {target}: {os.strerror(err)} (needs root, CAP_SYS_ADMIN)"
        )


def _detach(target: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.umount2(str(target).encode(), _MNT_DETACH)


@dataclass
class MountedVolumes:
    handles: list[tuple[VolumeRelease, MountHandle]]
    environment: dict[str, str]
    binds: list[Path] = field(default_factory=list)

    def integrity_failure(self) -> str | None:
        """``volume:path`` of the first file that failed authentication, if any (never blocks)."""
        for release, handle in self.handles:
            path = handle.integrity_failure()
            if path is not None:
                return f"{release.name}:{path}"
        return None

    def abort(self) -> None:
        """Unmount everything without sealing: the session's changes are discarded."""
        for target in reversed(self.binds):
            _detach(target)
        self.binds.clear()
        for _, handle in reversed(self.handles):
            with contextlib.suppress(StorageError):
                handle.abort()

    def close(self) -> dict[str, tuple[str, str]]:
        """Seal and unmount; returns {name: (old tag, new tag)} for volumes that changed."""
        for target in reversed(self.binds):
            _detach(target)
        self.binds.clear()
        changed: dict[str, tuple[str, str]] = {}
        errors: list[str] = []
        for release, handle in reversed(self.handles):
            try:
                new = handle.close()
            except StorageError as exc:
                errors.append(f"{release.name}: {exc.message}")
                continue
            if new and new != release.tag:
                changed[release.name] = (release.tag, new)
        if errors:
            raise StorageError("; ".join(errors))
        return changed


def mount_released(volumes: list[VolumeRelease]) -> MountedVolumes:
    """Mount every released volume (call from the thread that will run the application)."""
    if not volumes:
        return MountedVolumes([], {})
    if os.geteuid() == 0:
        _private_namespace()
    handles: list[tuple[VolumeRelease, MountHandle]] = []
    env: dict[str, str] = {}
    binds: list[Path] = []
    try:
        for vol in volumes:
            mounts = _contract_mounts(vol.name)
            staging = STAGING / vol.name
            staging.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = mount_volume(
                vol.directory, VolumeKey(vol.key), staging, expected_tag=vol.tag or None, writable=True
            )
            handles.append((vol, handle))
            if mounts is None:
                env["CONFIDE_VOLUME_" + re.sub(r"[^A-Za-z0-9]", "_", vol.name).upper()] = str(staging)
                continue
            if os.geteuid() != 0:
                raise UsageError(
                    "exposing protected paths at their original places needs root (CAP_SYS_ADMIN)"
                )
            for path, _kind in mounts:
                bind_mount(staging / path.lstrip("/"), Path(path))
                binds.append(Path(path))
    except BaseException:
        for target in reversed(binds):
            _detach(target)
        for _, h in reversed(handles):
            with contextlib.suppress(StorageError):
                h.close()
        raise
    return MountedVolumes(handles, env, binds)

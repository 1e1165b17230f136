"""The owner's staging state file (`confide volume add|rm|seal --state FILE`): the last pending
tag per volume directory, so that scripts need not carry it between commands
(docs/volume-format.md, "Pending tag").

Format (JSON, version 1)::

    {"version": 1, "volumes": {"/abs/path/of/DIR": "<64 hex pending tag>" | "none", ...}}

``"none"``: the last command through this file left nothing staged (a `seal`). A directory not
listed has no expectation (the first use). Keys are the volume directories as given, made
absolute lexically (:func:`os.path.abspath`: symlinks in the path, which the host may control,
are not followed), so the same volume reached by two paths has two entries.

The file is the owner's, but read as hostile input, as the ledger's auditor state file is:
bounded (:data:`MAX_STAGING_STATE`), a regular file only (no FIFO that blocks), the user's
(or root's) and writable by nobody else (another local user could otherwise drop an
expectation), strict JSON
(:mod:`confide.jsonstrict`: no duplicate names), an exact schema (:class:`ParseError`, exit 10,
nothing changed otherwise). It is replaced atomically and durably (mode 0600, a temporary name,
fsync, rename, fsync of the directory) and read-modify-written under ``FILE.lock``
(:func:`confide.fsutil.lock_beside`), so that commands sharing a file do not lose each other's
updates. It holds no secret: a pending tag is a MAC the volume directory holds too.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from confide import jsonstrict
from confide.errors import ParseError, StorageError, UsageError
from confide.fsutil import lock_beside, write_atomic
from confide.volume.store import check_expected_pending

__all__ = ["MAX_STAGING_STATE", "StagingState"]

MAX_STAGING_STATE = 16 * 1024 * 1024
"""The largest staging state file read (bytes): some 50,000 volumes with 200-byte paths."""

_VERSION = 1
_MAX_PATH = 4096


class StagingState:
    """One staging state file: :meth:`locked` around :meth:`load`, the command and :meth:`save`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.volumes: dict[str, str] = {}

    @staticmethod
    def key_of(directory: Path) -> str:
        """The entry name of a volume directory: its absolute path, made lexically."""
        return os.path.abspath(directory)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``FILE.lock`` (mode 0600, left in place) until the block ends."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(lock_beside(self.path))
            except OSError as exc:
                raise StorageError(
                    f"cannot lock staging state file {str(self.path)!r}: {exc.strerror or exc}"
                ) from None
            yield

    def _fail(self, expected: str) -> ParseError:
        return ParseError(f"expected {expected}", structure=f"staging state file {str(self.path)!r}")

    def load(self) -> None:
        """Read the file (an absent file is an empty state)."""
        self.volumes = {}
        where = f"staging state file {str(self.path)!r}"
        try:
            # without blocking (a FIFO: refused below, not a read that waits for a writer);
            # judged and read through one descriptor, so the file checked is the file read
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if not os.path.lexists(self.path):
                return
            raise StorageError(f"{where}: No such file or directory") from None  # a dangling symlink
        except OSError as exc:
            raise StorageError(f"{where}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            try:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{where}: not a regular file")
                self._check_owner(st)
                raw = f.read(MAX_STAGING_STATE + 1)
            except OSError as exc:
                raise StorageError(f"{where}: {exc.strerror or exc}") from None
        if len(raw) > MAX_STAGING_STATE:
            raise ParseError(
                f"got more than {MAX_STAGING_STATE} bytes, expected a staging state file",
                structure="staging state file",
            )
        doc = jsonstrict.loads(raw, structure=f"staging state file {str(self.path)!r}")
        shape = '{"version": 1, "volumes": {"<absolute path>": "<64 hex pending tag>" or "none"}}'
        if not isinstance(doc, dict) or set(doc) != {"version", "volumes"}:
            raise self._fail(shape)
        if type(doc["version"]) is not int or doc["version"] != _VERSION:
            raise self._fail(f"version {_VERSION}")
        volumes = doc["volumes"]
        if not isinstance(volumes, dict):
            raise self._fail(shape)
        for name, value in volumes.items():
            if not (0 < len(name) <= _MAX_PATH and name.startswith("/") and "\0" not in name):
                raise self._fail(f"volume directories as absolute paths (got {name[:200]!r})")
            if not isinstance(value, str) or _normalised(value) != value:
                raise self._fail(f"{name[:200]!r}: a pending tag (64 lower-case hex digits) or 'none'")
        self.volumes = dict(volumes)

    def _check_owner(self, st: os.stat_result) -> None:
        """FILE (``st``, its fstat) must be the user's (or root's) and writable by nobody else:
        another local user who could write it (a state file in a shared directory, made or
        replaced by them) could drop the expectation for a volume (its first use again: whatever
        is staged is accepted) or plant one. :class:`StorageError` otherwise (exit 50)."""
        if st.st_uid not in (os.geteuid(), 0):
            raise StorageError(
                f"staging state file {str(self.path)!r}: owned by uid {st.st_uid}, expected yours "
                f"({os.geteuid()}) or root's: another user could change what it expects"
            )
        if st.st_mode & 0o022:
            raise StorageError(
                f"staging state file {str(self.path)!r}: mode {st.st_mode & 0o777:04o}, writable by group "
                "or others: expected a file only you can write (0600)"
            )

    def expected(self, directory: Path) -> str | None:
        """The pending tag (or ``"none"``) remembered for ``directory``, None when not listed."""
        return self.volumes.get(self.key_of(directory))

    def remember(self, directory: Path, pending: str) -> None:
        """Remember ``pending`` (a pending tag, or ``"none"`` after a seal) for ``directory``."""
        self.volumes[self.key_of(directory)] = pending

    def save(self) -> None:
        doc = {"version": _VERSION, "volumes": dict(sorted(self.volumes.items()))}
        try:
            write_atomic(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600)
        except OSError as exc:
            raise StorageError(
                f"cannot write staging state file {str(self.path)!r}: {exc.strerror or exc}"
            ) from None


def _normalised(value: str) -> str | None:
    """``value`` as :func:`check_expected_pending` normalises it, None when it is neither a
    pending tag nor ``"none"``."""
    try:
        return check_expected_pending(value)
    except UsageError:
        return None

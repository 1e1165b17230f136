"""The disk half the CAS's NVIDIA RIM and OCSP caches share (:mod:`confide.cas.rims`,
:mod:`confide.cas.revocation`): one file per key in a directory of the CAS's, so that a
restarted CAS does not need the source for what it verified before. Each cache names its files,
checks what they hold and logs the events its own way; :class:`CacheFiles` does the rest:

- reading (:meth:`CacheFiles.load`): the files are hostile. At most ``max_size`` + 1 bytes are
  read (a larger file is refused by the cache's check), with the file's modification time, and
  only from a regular file, opened without blocking (a FIFO put in a file's place would hold the
  prefetch's worker thread, and every later fetch of that key, for ever). An absent file is a
  miss; one that cannot be read, or is not a regular file, is a miss too, logged ``unreadable``
  and left in place (a store replaces it). The cache's ``check(data, mtime)`` returns an entry,
  ``None`` (not usable now: left in place, the source is asked and the file replaced), or raises a
  :class:`~confide.errors.ConfideError`: the file is removed (``remove-failed`` when it cannot
  be), counted in :attr:`CacheFiles.rejected` and logged ``rejected``.
- writing (:meth:`CacheFiles.store`): atomically (a temporary file, fsync, rename; mode 0600, the
  directory 0700), then the oldest files matching ``pattern`` beyond ``max_files`` removed. A
  failure is logged ``write-failed`` and otherwise ignored: the entry is in memory, and a
  restarted CAS asks the source again.

``directory`` ``None``: no files (memory only); every load misses, every store does nothing.
Blocking (the disk): worker threads only. Thread-safe.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from confide.errors import ConfideError
from confide.fsutil import prune_oldest, write_atomic

__all__ = ["CacheFiles", "Log"]

T = TypeVar("T")
Log = Callable[[str, str], None]
"""``log(event, error)``: the cache's log line for ``event`` (``unreadable``, ``rejected``,
``remove-failed``, ``write-failed``) about the key at hand, naming ``error`` (a class name)."""


class CacheFiles:
    """The files of one cache (module docstring); ``rejected`` counts those that did not pass
    the cache's check (removed)."""

    def __init__(self, directory: Path | None, pattern: str, max_files: int, *, max_size: int) -> None:
        if max_files < 1:
            raise ValueError("disk_entries must be >= 1")
        self.directory = directory
        self.pattern = pattern
        self.max_files = max_files
        self.max_size = max_size
        self.rejected = 0
        self._count_lock = threading.Lock()

    def load(self, name: str, check: Callable[[bytes, float], T | None], log: Log) -> T | None:
        """The entry ``check`` makes of file ``name`` (and its modification time), or ``None``
        (module docstring)."""
        if self.directory is None:
            return None
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    log("unreadable", "NotARegularFile")
                    return None
                mtime = st.st_mtime
                data = fh.read(self.max_size + 1)  # larger: refused by the check
        except FileNotFoundError:
            return None
        except OSError as exc:
            log("unreadable", type(exc).__name__)
            return None
        try:
            return check(data, mtime)
        except ConfideError as exc:
            with self._count_lock:
                self.rejected += 1
            log("rejected", exc.kind)
            try:
                path.unlink(missing_ok=True)
            except OSError as unlink_error:
                log("remove-failed", type(unlink_error).__name__)
            return None

    def store(self, name: str, data: bytes, log: Log) -> None:
        """Write file ``name`` and keep at most ``max_files`` (module docstring)."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.directory / name, data, mode=0o600)
            prune_oldest(self.directory, self.pattern, self.max_files)
        except OSError as exc:
            log("write-failed", type(exc).__name__)

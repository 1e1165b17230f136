"""The CAS run lock: a running CAS holds it shared, an offline maintenance command
(``confide cas rotate-master-key``) exclusively, so neither runs while the other does.

Two locks, both released by the kernel or the database server when the process dies (a crash
never leaves a stale lock behind):

- ``flock(2)`` on the data directory itself (no lock file is created): every CAS process and
  command using the directory on this machine;
- with PostgreSQL, a session-level advisory lock on the database (key :data:`ADVISORY_KEY`),
  held on a dedicated connection: every replica sharing the database, on any machine.

Both are taken without waiting: a CAS that finds a rotation running, or a rotation that finds a
CAS running, stops with a :class:`~confide.errors.UsageError` that says which.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confide.errors import StorageError, UsageError
from confide.ledger.db import connect_postgres

__all__ = ["ADVISORY_KEY", "run_lock"]

ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"confide-cas run lock/v1").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock key (a signed 64-bit integer, as ``pg_advisory_lock`` takes)."""


def _postgres_url(db_url: str | None) -> str | None:
    if db_url is None or not db_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return None
    return db_url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def run_lock(data_dir: Path, db_url: str | None, *, exclusive: bool) -> Iterator[None]:
    """Hold the run lock of ``data_dir`` (and of the PostgreSQL database ``db_url``, if it is
    one) until the block ends: shared for a running CAS, ``exclusive`` for maintenance."""
    who = "a CAS is running" if exclusive else "a master-key rotation is running"
    hint = "stop it (every replica) first" if exclusive else "start the CAS when it has finished"
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--data-dir {str(data_dir)!r}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(
                    f"{who} on {str(data_dir)!r} (it holds the directory's lock): {hint}"
                ) from None
            raise StorageError(f"cannot lock {str(data_dir)!r}: {exc.strerror or exc}") from None
        url = _postgres_url(db_url)
        if url is None:
            yield
            return
        conn: Any = connect_postgres(url)
        try:
            function = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            got = conn.execute(f"SELECT {function}(%s)", (ADVISORY_KEY,)).fetchone()[0]
            if not got:
                raise UsageError(f"{who} on the database (a replica holds its advisory lock): {hint}")
            yield
        finally:
            conn.close()  # the session ends: the advisory lock is released with it
    finally:
        os.close(fd)  # releases the flock

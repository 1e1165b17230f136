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

A running CAS can raise its shared hold to an exclusive one for an online master-key rotation
(:meth:`RunLock.exclusive`): that succeeds only if no other process holds either lock (no other
CAS on the directory, no replica on the database), and while it is held no CAS starts and no
offline rotation runs (docs/cas.md "Online rotation").
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

__all__ = ["ADVISORY_KEY", "RunLock", "run_lock"]

ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"confide-cas run lock/v1").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock key (a signed 64-bit integer, as ``pg_advisory_lock`` takes)."""


def _postgres_url(db_url: str | None) -> str | None:
    if db_url is None or not db_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return None
    return db_url.replace("postgresql+psycopg://", "postgresql://", 1)


class RunLock:
    """A held run lock (:func:`run_lock`)."""

    def __init__(self, data_dir: Path, fd: int, conn: Any) -> None:
        self.data_dir, self._fd, self._conn = data_dir, fd, conn

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this (shared) lock exclusively until the block ends, without waiting: a
        :class:`~confide.errors.UsageError` if another process holds it (another CAS on the
        directory or a replica on the database)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            # A failed conversion drops the shared lock (flock(2): "the existing lock is first
            # removed"); take it back at once (nothing but another shared holder exists).
            self._share()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(
                    f"another CAS process uses {str(self.data_dir)!r} (it holds the directory's lock): "
                    "online rotation needs the only CAS; stop the others or rotate offline"
                ) from None
            raise StorageError(f"cannot lock {str(self.data_dir)!r}: {exc.strerror or exc}") from None
        try:
            if self._conn is not None:
                # The same session holds the key shared: a session never conflicts with itself,
                # so this succeeds exactly when no other session (replica) holds it.
                got = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]
                if not got:
                    raise UsageError(
                        "another CAS replica uses the database (it holds the advisory lock): online "
                        "rotation needs the only CAS; stop the others or rotate offline"
                    )
                try:
                    yield
                finally:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
            else:
                yield
        finally:
            self._share()

    def _share(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:  # only if an offline rotation won the instant between: say so
            raise StorageError(
                f"lost the run lock of {str(self.data_dir)!r} ({exc.strerror or exc}): stop this CAS"
            ) from None


@contextmanager
def run_lock(data_dir: Path, db_url: str | None, *, exclusive: bool) -> Iterator[RunLock]:
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
            yield RunLock(data_dir, fd, None)
            return
        conn: Any = connect_postgres(url)
        try:
            function = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            got = conn.execute(f"SELECT {function}(%s)", (ADVISORY_KEY,)).fetchone()[0]
            if not got:
                raise UsageError(f"{who} on the database (a replica holds its advisory lock): {hint}")
            yield RunLock(data_dir, fd, conn)
        finally:
            conn.close()  # the session ends: the advisory lock is released with it
    finally:
        os.close(fd)  # releases the flock

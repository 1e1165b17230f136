"""The CAS run lock: one process at a time on a data directory (a running CAS, or an offline
maintenance command: ``confide cas rotate-master-key``), and no offline maintenance while any
replica of a PostgreSQL database runs.

Two locks, both released by the kernel or the database server when the process dies (a crash,
even ``kill -9``, never leaves a stale lock behind):

- ``flock(2)``, exclusive, on :data:`LOCK_NAME` in the data directory: every process that uses
  the directory on this machine, ``cas serve`` or maintenance. Taken before anything else in the
  directory is read or written, held for the process's life. The file is created mode 0600,
  never through a symbolic link (``O_NOFOLLOW``; a symlink or a non-regular file there is
  refused), not inherited by programs the process starts (``O_CLOEXEC``), and never deleted
  (deleting a lock file races: a process that opened the old one and one that creates a new one
  would both hold "the" lock). The holder writes ``PID COMMAND`` into it, which a refused
  process reads for its message: a hint only, never trusted for anything else.
- with PostgreSQL, a session-level advisory lock on the database (key :data:`ADVISORY_KEY`),
  held on a dedicated connection: shared by every CAS replica sharing the database (on any
  machine, each with its own data directory), exclusive for maintenance.

Both are taken without waiting: a second CAS on one directory, a CAS that finds a rotation
running, or a rotation that finds a CAS running, stops at once with a
:class:`~confide.errors.UsageError` (exit 2) that says which, and changes nothing in the
directory.

A running CAS can raise its shared advisory lock to an exclusive one for an online master-key
rotation (:meth:`RunLock.exclusive`): that succeeds only if no replica holds it, and while it
is held no replica starts and no offline rotation runs (docs/cas.md "Online rotation"). The
directory's lock is exclusive all along.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from confide.errors import StorageError, UsageError
from confide.ledger.db import connect_postgres

__all__ = ["ADVISORY_KEY", "LOCK_NAME", "RunLock", "run_lock"]

ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"confide-cas run lock/v1").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock key (a signed 64-bit integer, as ``pg_advisory_lock`` takes)."""

LOCK_NAME = "run.lock"
"""The data directory's lock file (mode 0600; kept between runs)."""

SERVE = "cas serve"
ROTATE = "cas rotate-master-key"
_HOLDER = re.compile(
    rb"([1-9][0-9]{0,9}) (%b|%b)\n" % (re.escape(SERVE.encode()), re.escape(ROTATE.encode()))
)
"""What a holder writes into the lock file: its pid and command, one line (anything else is
shown as ``pid unknown``: the file is only a hint, and never echoed as it is)."""
_HINT_MAX = 64


def _postgres_url(db_url: str | None) -> str | None:
    if db_url is None or not db_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return None
    return db_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _open_lock_file(data_dir: Path) -> int:
    """The lock file's descriptor, created (0600) if absent; a symlink, a non-regular file or a
    missing directory is a :class:`UsageError`. Opening an existing file changes nothing."""
    path = data_dir / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(
                f"--data-dir {str(data_dir)!r}: {LOCK_NAME} is a symbolic link, expected a regular file "
                "(the run lock is never taken through a link; remove it)"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EROFS):
            raise UsageError(
                f"--data-dir {str(data_dir)!r}: cannot open {LOCK_NAME}: {exc.strerror or exc}"
            ) from None
        raise StorageError(
            f"--data-dir {str(data_dir)!r}: cannot open {LOCK_NAME}: {exc.strerror or exc}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(
                f"--data-dir {str(data_dir)!r}: {LOCK_NAME} is not a regular file, expected one (the run "
                "lock; remove what is there)"
            )
        if st.st_nlink != 1:
            # Another name for the same file (a hard link: O_NOFOLLOW does not see it), which
            # the holder would truncate, rewrite and chmod (the master key's file, say).
            raise UsageError(
                f"--data-dir {str(data_dir)!r}: {LOCK_NAME} has {st.st_nlink} hard links, expected 1 (the "
                "run lock is truncated and rewritten by its holder; remove it)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> tuple[int, str] | None:
    """Who holds the lock, as its holder wrote it (pid, command), or ``None`` (not written yet,
    or not in the expected form). A hint for the message only."""
    try:
        found = _HOLDER.fullmatch(os.pread(fd, _HINT_MAX, 0))
    except OSError:
        return None
    return None if found is None else (int(found[1]), found[2].decode())


def _refusal(data_dir: Path, fd: int, exclusive: bool) -> UsageError:
    """The one-line refusal of a process that found the directory's lock held."""
    holder = _holder(fd)
    where = f"the data directory {str(data_dir)!r}"
    one_cas = (
        "one cas serve per data directory; replicas share a database (--db), each with its own --data-dir"
    )
    if holder is None:
        advice = "stop it (every replica) first" if exclusive else one_cas
        return UsageError(f"{where} is in use by another confide process (pid unknown): {advice}")
    who = f"pid {holder[0]}, confide {holder[1]}"
    if holder[1] == ROTATE:
        advice = "wait for it to finish" if exclusive else "start the CAS when it has finished"
        return UsageError(f"a master-key rotation is running on {where} ({who}): {advice}")
    if exclusive:
        return UsageError(f"a CAS is running on {where} ({who}): stop it (every replica) first")
    return UsageError(f"{where} is in use by another CAS ({who}): {one_cas}")


class RunLock:
    """A held run lock (:func:`run_lock`)."""

    def __init__(self, data_dir: Path, conn: Any) -> None:
        self.data_dir, self._conn = data_dir, conn

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this lock exclusively until the block ends, without waiting: a
        :class:`~confide.errors.UsageError` if another replica holds the database's advisory
        lock. The data directory's lock is exclusive already (no other process uses it)."""
        if self._conn is None:
            yield
            return
        # The same session holds the key shared: a session never conflicts with itself, so
        # this succeeds exactly when no other session (replica) holds it.
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


@contextmanager
def run_lock(data_dir: Path, db_url: str | None, *, exclusive: bool) -> Iterator[RunLock]:
    """Hold the run lock of ``data_dir`` (and of the PostgreSQL database ``db_url``, if it is
    one) until the block ends: the directory's always exclusively; the database's shared for a
    running CAS, ``exclusive`` for maintenance (``confide cas rotate-master-key``)."""
    fd = _open_lock_file(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _refusal(data_dir, fd, exclusive) from None
            raise StorageError(f"cannot lock {str(data_dir / LOCK_NAME)!r}: {exc.strerror or exc}") from None
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:  # created under a umask, or widened
                os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {ROTATE if exclusive else SERVE}\n".encode(), 0)
        except OSError as exc:
            raise StorageError(f"cannot write {str(data_dir / LOCK_NAME)!r}: {exc.strerror or exc}") from None
        try:
            url = _postgres_url(db_url)
            if url is None:
                yield RunLock(data_dir, None)
                return
            conn: Any = connect_postgres(url)
            try:
                function = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
                got = conn.execute(f"SELECT {function}(%s)", (ADVISORY_KEY,)).fetchone()[0]
                if not got:
                    who = "a CAS is running" if exclusive else "a master-key rotation is running"
                    hint = (
                        "stop it (every replica) first" if exclusive else "start the CAS when it has finished"
                    )
                    raise UsageError(f"{who} on the database (a replica holds its advisory lock): {hint}")
                yield RunLock(data_dir, conn)
            finally:
                conn.close()  # the session ends: the advisory lock is released with it
        finally:
            with suppress(OSError):  # the hint only: the next holder writes its own
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock

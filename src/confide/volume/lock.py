"""A protected volume's lock: shared by mounts that write nothing into the volume directory
(read-only and ephemeral), exclusive for writers (``add``, ``rm``, ``seal``, a writable mount),
with a bounded wait and priority for a waiting writer (docs/volume-mount.md, "Sharing a volume").

Two ``flock(2)`` files in the volume directory, both empty, both released by the kernel when
their holder dies (a crash, even SIGKILL, leaves nothing that blocks):

- ``DIR/.lock``, the lock itself: held for the whole mount or write;
- ``DIR/.lock.intent``, a writer's place in the queue: a writer that has to wait holds it
  exclusively while it waits (and lets it go once it holds ``.lock``); a shared locker takes it
  shared, without waiting, only for the instant in which it takes ``.lock``. So while a writer
  waits, new read-only and ephemeral mounts wait behind it (or are refused at once without a
  wait of their own); mounts already live are not disturbed, and the writer gets ``.lock`` when
  the last of them ends (flock(2) alone gives a waiting writer no priority: overlapping shared
  mounts could hold it off for ever).

The order is always ``.lock.intent`` before ``.lock``, and nobody waits for ``.lock.intent``
while holding ``.lock``: no two lockers can wait for each other. Waiting is polling (every
:data:`POLL` seconds, non-blocking ``flock`` calls), so that a deadline and a stop signal end it
at once and a waiting process holds nothing but its place in the queue. Among waiting writers,
and among waiting shared lockers, there is no order: whoever polls first after the lock is free.

Both are used only as regular files, never through a symlink, opened without blocking
(:func:`open_lock`); a ``.lock`` that is no longer the file taken (removed or replaced while it
was locked: flock(2) locks an inode) is refused (:func:`acquire`). The host that owns the
directory can still defeat the lock (docs/limitations.md); a mount's seal checks MANIFEST
(:func:`confide.volume.store.seal_entries`) and the CAS takes new tags only from its own.

Both files are created with the volume (:func:`confide.volume.store.create_volume`); in a volume
made by an older confide the first writer creates ``.lock.intent`` (and the first locker
``.lock``, as before). A shared locker never creates ``.lock.intent``: without it (a volume
directory it may not write), it takes ``.lock`` without asking for its place.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from confide.errors import StorageError, UsageError, WaitStoppedError

__all__ = [
    "INTENT_NAME",
    "LOCK_NAME",
    "POLL",
    "VOLUME_WAIT_ENV",
    "VOLUME_WAIT_MAX",
    "lock_volume",
    "open_lock",
    "parse_wait",
    "volume_wait",
]

LOCK_NAME = ".lock"
INTENT_NAME = ".lock.intent"
_MANIFEST = "MANIFEST"  # confide.volume.store.MANIFEST_NAME (store imports this module)
POLL = 0.05
"""Seconds between two attempts of a waiting locker."""
PROC_LOCKS = "/proc/locks"
"""Where the kernel lists the file locks held (read only to name a lock's holders in messages)."""
VOLUME_WAIT_ENV = "CONFIDE_VOLUME_WAIT"
VOLUME_WAIT_MAX = 86400.0
"""The longest wait that may be asked for (a day: the attested session of ``confide run``, which
reports the volumes' new tags at its end, lasts 24 hours)."""

log = logging.getLogger("confide.volume")

Stop = Callable[[], int | None]
"""Asked between two attempts: the number of a stop signal that came (the wait then ends with
:class:`~confide.errors.WaitStoppedError`), else None."""


def parse_wait(text: str, what: str) -> float:
    """Seconds to wait for a volume's lock: a decimal number from 0 to :data:`VOLUME_WAIT_MAX`
    (``30``, ``2.5``; 0: do not wait); :class:`UsageError` naming ``what`` otherwise."""
    m = re.fullmatch(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", text.strip())
    value = float(m[0]) if m is not None else -1.0
    if not 0 <= value <= VOLUME_WAIT_MAX:
        raise UsageError(
            f"{what}: got {text[:40]!r}, expected seconds to wait for a volume's lock: a number from 0 "
            f"(fail at once) to {VOLUME_WAIT_MAX:g}, e.g. 30 or 2.5"
        )
    return value


def volume_wait(given: str | None = None, environ: Mapping[str, str] | None = None) -> float:
    """The wait for a volume's lock: ``given`` (``--volume-wait``), else $CONFIDE_VOLUME_WAIT
    (empty: unset), else 0 (fail at once)."""
    if given is not None:
        return parse_wait(given, "--volume-wait")
    text = (os.environ if environ is None else environ).get(VOLUME_WAIT_ENV)
    if text is None or text == "":
        return 0.0
    return parse_wait(text, f"${VOLUME_WAIT_ENV}")


def open_lock(directory: Path, name: str = LOCK_NAME, *, create: bool = True) -> int:
    """A lock file of the volume, opened read-write, never through a symlink (the host could
    point it anywhere in our file system and ``O_CREAT`` would create the file there). It is
    created (``create``) only in a protected volume: in an existing directory without
    ``MANIFEST`` nothing is created (a command that fails there leaves the directory as it found
    it) and the :class:`UsageError` is the one reading ``MANIFEST`` would raise. Other failures
    are the ``OSError`` of the open (``FileNotFoundError`` for a missing file without
    ``create``)."""
    path = directory / name
    # O_NONBLOCK: a FIFO the host put in its place is refused below, not an open that waits for
    # a writer for ever (an O_RDONLY open of a FIFO blocks), past every deadline and stop signal
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return _regular(os.open(path, flags))
    except FileNotFoundError:
        if directory.is_dir() and not os.path.lexists(directory / _MANIFEST):
            raise UsageError(f"{str(directory)!r} is not a protected volume: {_MANIFEST} missing") from None
        if not create:
            raise
    except PermissionError:
        if create:
            raise
        # a shared locker of a volume directory it may not write: read-only is enough for flock
        return _regular(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
    return _regular(os.open(path, flags | os.O_CREAT, 0o600))


def _regular(fd: int) -> int:
    """``fd`` if it is open on a regular file; else it is closed and ``OSError`` (``EINVAL``,
    "not a regular file") raised: a lock file is an empty regular file, and a FIFO, device or
    socket in its place is the host's, not a lock every confide process shares."""
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def _still_linked(directory: Path, fd: int) -> bool:
    """Whether ``DIR/.lock`` is still the file open at ``fd`` (same device and inode; never
    through a symlink). flock(2) locks an inode: a holder of a lock file that was removed or
    replaced since it was opened (``rm``, a backup restored, the host) excludes nobody who opens
    the new one."""
    try:
        now = os.stat(directory / LOCK_NAME, follow_symlinks=False)
        held = os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _cannot_create(directory: Path, exc: OSError) -> StorageError:
    """A writer's lock file that cannot be opened: why, and for a directory that is absent or a
    file (a wrong path in a policy's image volume, a volume never created) what makes one."""
    hint = ""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        hint = ": not a protected volume (`confide volume create DIR` makes one)"
    why = exc.strerror or exc
    return StorageError(f"volume {str(directory)!r}: cannot create the lock file: {why}{hint}")


def _flock(fd: int, op: int) -> bool:
    """``flock(fd, op | LOCK_NB)``: True if taken, False if another holds it."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def holders(fd: int, *, writers_only: bool = False) -> list[int]:
    """The pids that hold a lock on the file open at ``fd``, as /proc/locks lists them (this
    process left out; ``writers_only``: exclusive locks only). A hint for messages: the pid is
    the process that took the lock (a FUSE server holds its mounting process's), processes of
    other pid namespaces are not listed, and an empty list means unknown."""
    try:
        st = os.fstat(fd)
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2d:1234 0 EOF"; a blocked request has "->" after the id
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[5] != where:
            continue
        if writers_only and parts[3] != "WRITE":
            continue
        # a pid is at most 7 digits (pid_max 4194304): anything else is not a pid (and int()
        # of thousands of digits raises ValueError in this message path)
        if not (parts[4].isascii() and parts[4].isdigit() and len(parts[4]) <= 10):
            continue
        pid = int(parts[4])
        if pid not in (os.getpid(), 0) and pid not in found:
            found.append(pid)
    return found


def _pids(pids: list[int]) -> str:
    if not pids:
        return ""
    shown = ", ".join(str(p) for p in pids[:8]) + (", …" if len(pids) > 8 else "")
    return f" (pid{'s' if len(pids) > 1 else ''} {shown})"


def lock_volume(
    directory: Path,
    *,
    shared: bool,
    wait: float = 0.0,
    stop: Stop | None = None,
    asked: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Take the volume's lock: exclusive for a writer, ``shared`` for a mount that writes nothing
    into the directory (read-only or ephemeral; any number at once). Waits at most ``wait``
    seconds (0: not at all; ``math.inf``: until it gets it) while another holds it, saying once
    that it waits (a warning, with the holders' pids where /proc/locks shows them); a writer
    waiting holds its place (module doc), so shared lockers wait behind it or, with ``wait``
    0, are refused. ``stop``: asked between attempts (a stop signal ends the wait:
    :class:`~confide.errors.WaitStoppedError`); ``asked``: the wait the user asked for, where
    ``wait`` is what is left of it (several volumes' locks), for the messages; ``clock`` and
    ``sleep`` are injectable.

    Returns the lock's file descriptor (close it to release), or ``None`` for a shared lock
    whose file cannot be created (a read-only volume directory: nothing writes there anyway).
    Raises :class:`StorageError` when it is still held at the end of the wait (``… is in use``),
    :class:`UsageError` for a directory that is not a volume (nothing created). Nothing is left
    held or open when it raises."""
    try:
        fd = open_lock(directory)
    except OSError as exc:
        if shared:
            return None
        raise _cannot_create(directory, exc) from None
    try:
        acquire(directory, fd, shared=shared, wait=wait, stop=stop, asked=asked, clock=clock, sleep=sleep)
    except BaseException:
        os.close(fd)
        raise
    return fd


def acquire(
    directory: Path,
    fd: int,
    *,
    shared: bool,
    wait: float,
    stop: Stop | None = None,
    asked: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """:func:`lock_volume` on the lock file open at ``fd`` (which it leaves open, locked or
    not)."""
    if not (wait >= 0):  # NaN too
        raise UsageError(f"volume lock wait: got {wait}, expected 0 or more seconds")
    intent: int | None = None
    try:
        # a writer that may wait needs its place in the queue; a shared locker looks whether a
        # writer holds one (it never creates the file: it writes nothing into the directory)
        if wait > 0 or shared:
            try:
                intent = open_lock(directory, INTENT_NAME, create=not shared)
            except FileNotFoundError:
                intent = None
            except OSError as exc:
                if not shared:
                    raise _cannot_create(directory, exc) from None
        deadline = clock() + wait
        shown = wait if asked is None else asked
        queued = False  # a writer: holds its place (the intent lock, exclusive)
        told = False
        while True:
            why: str | None
            if shared:
                why = _try_shared(fd, intent)
            else:
                if intent is not None and not queued:
                    queued = _flock(intent, fcntl.LOCK_EX)
                why = None if _flock(fd, fcntl.LOCK_EX) else "held"
            if why is None:
                if _still_linked(directory, fd):
                    return
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise StorageError(
                    f"volume {str(directory)!r}: its lock file {LOCK_NAME} was removed or replaced while "
                    "this process took it (another process may hold the lock through the new file): "
                    "nothing was mounted or changed; try again"
                )
            now = clock()
            if now >= deadline:
                waited = "" if shown == 0 else f"; gave up after waiting {shown:g} s"
                reason = _reason(directory, fd, intent, shared, why)
                raise StorageError(f"volume {str(directory)!r} is in use: {reason}{waited}")
            sig = stop() if stop is not None else None
            if sig is not None:
                raise WaitStoppedError(
                    f"stopped by {_signal_name(sig)} while waiting for the lock of volume "
                    f"{str(directory)!r}: nothing was mounted or changed",
                    signal=sig,
                )
            if not told:
                reason = _reason(directory, fd, intent, shared, why)
                limit = "" if math.isinf(shown) else f" up to {shown:g} s"
                log.warning(
                    "confide: volume %r is in use: %s; waiting%s for it", str(directory), reason, limit
                )
                told = True
            sleep(min(POLL, deadline - now))
    finally:
        if intent is not None:
            os.close(intent)  # lets the writer's place go once it holds the lock (or gave up)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _try_shared(fd: int, intent: int | None) -> str | None:
    """One attempt of a shared locker: None if it holds the lock now, else why not: ``queued``
    (a writer waits for it) or ``held`` (a writer holds it)."""
    if intent is not None and not _flock(intent, fcntl.LOCK_SH):
        return "queued"
    try:
        return None if _flock(fd, fcntl.LOCK_SH) else "held"
    finally:
        if intent is not None:
            fcntl.flock(intent, fcntl.LOCK_UN)


def _reason(directory: Path, fd: int, intent: int | None, shared: bool, why: str) -> str:
    """Why the lock cannot be had now, in words (the same phrases as before the wait existed)."""
    if not shared:
        return f"a writer or a mount holds its lock{_pids(holders(fd))}, and writing needs it alone"
    if why == "queued" and intent is not None:
        pids = _pids(holders(intent, writers_only=True))
        return f"a writer (add, rm, seal or a writable mount){pids} waits for its lock, and goes first"
    return f"a writer (add, rm, seal or a writable mount) holds its lock{_pids(holders(fd))}"

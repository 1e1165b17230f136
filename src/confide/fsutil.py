"""Durable file writes shared by the CAS's state files, volume manifests and the collateral
cache: every byte written, fsynced, and (for replacements) renamed into place and the directory
synced, so a crash leaves either the old file or the new one, never a torn one. Also
:func:`read_bounded`, for small files whose size is not trusted."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from confide.errors import ParseError, StorageError, UsageError

__all__ = [
    "PATH_ERRNOS",
    "TMP_PREFIX",
    "fsync_dir",
    "lock_beside",
    "new_file_error",
    "read_bounded",
    "read_regular",
    "write_atomic",
    "write_new",
    "write_new_whole",
]

TMP_PREFIX = ".tmp-"
"""Temporary files are ``TMP_PREFIX + name + '-' + random`` next to their target."""


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_beside(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (created, mode 0600; left in place) while
    the block runs: the read-modify-write of a state file that :func:`write_atomic` replaces
    (a lock on the file itself would be on the inode the rename takes away). Other processes
    (and other open file descriptions in this one) wait. An OSError opening it is raised as is;
    a path that names no file (``/``, ``.``, ``..``, ``dir/..``) is an ``IsADirectoryError``."""
    if path.name in ("", ".", ".."):  # with_name: ValueError, or "...lock" beside the wrong file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist; never through a symlink) with ``data``, durably.
    A failed write removes the partial file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_new_whole(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` and exactly ``mode`` (whatever the umask), atomically, and
    never over an existing entry: written and synced to a fresh temporary file in the same
    directory (``O_EXCL | O_NOFOLLOW``), hard-linked to ``path`` (``link(2)`` fails when
    ``path`` exists, a dangling symlink included, so nothing is ever replaced), then removed.
    ``path`` appears whole or not at all; a failure that raises (a full disk, an interrupt)
    leaves neither a partial file at ``path`` nor a copy of ``data`` in a stray file (a crash of
    the process can leave the ``TMP_PREFIX`` temporary file, never a partial ``path``). The
    directory is synced so that the new name survives a crash (best effort: the file itself is
    synced). Raises :class:`FileExistsError` when ``path`` exists, another :class:`OSError`
    when the write fails; the caller words the error (never with ``data``, a key) and picks its
    class with :func:`new_file_error`."""
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _rename_noreplace(tmp, path, exc)  # a file system without hard links (vfat, sshfs)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # durability of the name; the file itself is synced
        fsync_dir(path.parent)


PATH_ERRNOS = frozenset(
    {
        errno.EEXIST,  # the target exists (FileExistsError)
        errno.ENOENT,  # its directory does not exist
        errno.ENOTDIR,  # a component of the path is not a directory
        errno.EISDIR,
        errno.ELOOP,  # a symlink where O_NOFOLLOW refuses one
        errno.ENAMETOOLONG,
        errno.EACCES,  # permission denied on the user's path
        errno.EPERM,
    }
)
"""The errors of creating a new file that say the path the user gave is wrong (see
:func:`new_file_error`); every other one is the storage failing."""


def new_file_error(exc: OSError, message: str) -> UsageError | StorageError:
    """The confide error for ``exc``, an :class:`OSError` of :func:`write_new_whole` (or of
    creating a user's new file), worded ``message``. The split: what the user asked wrongly is a
    :class:`~confide.errors.UsageError` (exit 2): the target exists, its directory does not
    exist or is not one, permission is denied on the path (:data:`PATH_ERRNOS`). Any other
    failure is the storage's, a :class:`~confide.errors.StorageError` (exit 50): a full disk
    (``ENOSPC``), an exceeded quota (``EDQUOT``), an I/O error (``EIO``), a read-only file
    system (``EROFS``), and whatever else the write, fsync or link reports."""
    if exc.errno in PATH_ERRNOS:
        return UsageError(message)
    return StorageError(message)


# link(2) on a file system without hard links: EPERM (vfat, exfat), EOPNOTSUPP/ENOTSUP (FUSE
# file systems such as sshfs, CIFS without the unix extensions), EMLINK (no more links).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})
_RENAME_NOREPLACE = 1  # include/uapi/linux/fs.h
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path, link_error: OSError) -> None:
    """``renameat2(src, dst, RENAME_NOREPLACE)`` (Linux 3.15, glibc 2.28): the rename that, like
    ``link``, fails with EEXIST instead of replacing ``dst``. ``link_error`` is raised when
    neither the C library nor the file system offers it (nothing is then ever replaced)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        raise link_error from None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    if err in (errno.EINVAL, errno.ENOSYS):  # the flag is not supported there
        raise link_error
    raise OSError(err, os.strerror(err), str(dst))


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (a uniquely named temporary file,
    fsync, rename, fsync of the directory); the temporary file is removed on failure."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path``, which must be a regular file (after symlinks),
    opened without blocking: a FIFO or a device put in its place raises :class:`OSError`
    (``EINVAL``, "not a regular file") instead of waiting for a writer for ever. Other errors are
    the :class:`OSError` of the open or read (``FileNotFoundError`` when absent); the caller
    judges the size."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read(limit + 1)


def read_small_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a small file the caller names (``what``: how errors name it), at most
    ``limit``: a regular file (after symlinks) opened without blocking, so a FIFO or a device is
    a :class:`UsageError` at once, not a read that waits for a writer for ever; so are a file
    that cannot be read and one larger than ``limit``."""
    try:
        data = read_regular(path, limit)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {os.fspath(path)}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(f"cannot read {what} {os.fspath(path)}: larger than {limit} bytes")
    return data


def read_bounded(
    path: Path, limit: int, *, label: str | None, expected: str, structure: str, regular: bool = False
) -> bytes:
    """The contents of ``path``, reading at most ``limit + 1`` bytes. Raises
    :class:`~confide.errors.StorageError` (``"<label> '<path>': <reason>"``, or without the label
    when it is ``None``) when the file cannot be read, and :class:`~confide.errors.ParseError`
    (``"got more than <limit> bytes, expected <expected>"`` for ``structure``) when it is
    larger than ``limit``. ``regular``: only a regular file (after symlinks) is read, opened
    without blocking, so a FIFO or a device put in its place is a StorageError, not a read that
    waits for a writer for ever."""
    where = f"{label} {str(path)!r}" if label is not None else repr(str(path))
    try:
        if regular:
            data = read_regular(path, limit)  # "not a regular file" is its OSError's strerror
        else:
            with path.open("rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise StorageError(f"{where}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ParseError(f"got more than {limit} bytes, expected {expected}", structure=structure)
    return data


def prune_oldest(directory: Path, pattern: str, keep: int) -> None:
    """Keep at most ``keep`` files of ``directory`` matching ``pattern``, removing the oldest (by
    modification time): the bound of the CAS's on-disk caches."""
    files = []
    for path in directory.glob(pattern):
        try:
            files.append((path.stat().st_mtime, str(path), path))
        except OSError:
            continue
    files.sort()
    for _mtime, _name, path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)

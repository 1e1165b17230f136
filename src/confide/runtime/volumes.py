"""Protected volumes in ``confide run``: mount what the CAS released, report new tags.

For each volume in the release (name, the directory holding the encrypted volume, key, current
tag), the runtime mounts the decrypted view (``confide.volume.mount``: FUSE, else tmpfs) in a
private mount namespace, refusing a volume whose tag is not the current one (an old copy).

Where the plaintext appears:

- images made by ``confide sconify`` carry a contract (``$CONFIDE_SCONIFY``, default
  ``/confide/sconify.json``) listing each volume's protected paths; the volume is mounted at a
  staging directory and each protected path is bind-mounted at its original place (root, in the
  private mount namespace);
- otherwise the volume is mounted at ``/run/confide/volumes/<name>`` (as root, in the private
  namespace) and the application finds it through ``CONFIDE_VOLUME_<NAME>`` in its environment.
  Without root there is no private namespace: concurrent runs share one, so each run mounts its
  volumes in a directory of its own, ``/run/confide/volumes/run-XXXXXXXX/<name>`` (removed at the
  end), which only ``CONFIDE_VOLUME_<NAME>`` names; where that directory cannot be made, at
  ``/run/confide/volumes/<name>``, refused while another run's mount or link is there.

Volumes are mounted writable. What happens to the changes follows the volume's update policy,
which the release names (``docs/policy.md``, "Volume update policies"):

- ``rollback_protected`` (also when the release names none): only the CAS's current tag is
  accepted; after the application exits each changed volume is sealed and its new tag reported
  (compare-and-swap on the old tag), so the next run gets the new one and an old copy is refused;
- ``ephemeral``: only the current tag is accepted; the mount is ephemeral (its changes stay in
  its private copy, never in the volume directory, and the volume's lock is shared), so
  several services may mount the same copy at once; at exit the changes are dropped and
  nothing is reported, so every run starts from the CAS's current version;
- ``no_rollback_protection``: any version whose manifest authenticates under the key is
  accepted; a changed volume is sealed and its tag reported (the CAS records it without
  compare-and-swap).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confide import jsonstrict
from confide.errors import ConfideError, ParseError, SignatureError, StorageError, UsageError
from confide.policy.model import UpdatePolicy
from confide.volume.keys import VolumeKey
from confide.volume.lock import Stop, lock_volume, volume_wait
from confide.volume.mount import (
    HeldLock,
    MountHandle,
    _listed_mount,
    _private_namespace,
    _unmount_cmd,
    mount_volume,
)

if TYPE_CHECKING:
    from confide.cas.client import CasClient

__all__ = [
    "MountedVolumes",
    "VolumeRelease",
    "bind_mount",
    "lock_released",
    "mount_released",
    "seal_and_report",
]

log = logging.getLogger("confide.runtime")

CONTRACT = Path("/confide/sconify.json")
STAGING = Path("/run/confide/volumes")
_RUN_PREFIX = "run-"
_RUN_NAME = re.compile(r"run-[a-z0-9_]{8}\Z")  # tempfile.mkdtemp's names
_RUN_LOCK = ".lock"  # in a run's directory: flock'ed (exclusive) by the live run
_MS_BIND = 4096
_MNT_DETACH = 2


@dataclass(frozen=True)
class VolumeRelease:
    name: str
    directory: Path
    key: bytes = field(repr=False)
    tag: str
    update_policy: UpdatePolicy = UpdatePolicy.ROLLBACK_PROTECTED

    @classmethod
    def from_config(cls, item: Any) -> VolumeRelease:
        try:
            return cls(
                str(item["name"]),
                Path(str(item["path"])),
                bytes.fromhex(str(item["key"])),
                str(item["tag"]),
                # a CAS that names no mode releases under today's rule, rollback_protected
                UpdatePolicy(str(item.get("update_policy", UpdatePolicy.ROLLBACK_PROTECTED))),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            raise ParseError("malformed volume in the release", structure="release") from None

    @property
    def expected_tag(self) -> str | None:
        """The tag the mounted version must have: the CAS's current one, or None (any
        authentic version) under ``no_rollback_protection`` or for a volume with no tag yet."""
        if self.update_policy is UpdatePolicy.NO_ROLLBACK_PROTECTION:
            return None
        return self.tag or None


def _contract_mounts(name: str) -> list[tuple[str, str]] | None:
    path = Path(os.environ.get("CONFIDE_SCONIFY") or CONTRACT)
    try:
        doc = jsonstrict.loads(path.read_bytes(), structure="sconify contract")
    except FileNotFoundError:
        return None
    except OSError:
        raise ParseError(f"cannot read the image contract {path}", structure="sconify contract") from None
    for vol in doc.get("volumes", []):
        if vol.get("name") == name:
            return [(str(m["path"]), str(m.get("kind", "dir"))) for m in vol.get("mounts", [])]
    return None


def bind_mount(source: Path, target: Path) -> None:
    """Bind ``source`` at ``target`` (both must exist and be of the same kind); root only."""
    libc = ctypes.CDLL(None, use_errno=True)  # ours: find_library may run PATH programs
    if libc.mount(str(source).encode(), str(target).encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise StorageError(
            f"cannot bind {source} at {target}: {os.strerror(err)} (needs root, CAP_SYS_ADMIN)"
        )


def _detach(target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)  # ours: find_library may run PATH programs
    libc.umount2(str(target).encode(), _MNT_DETACH)


@dataclass
class MountedVolumes:
    handles: list[tuple[VolumeRelease, MountHandle]]
    environment: dict[str, str]
    binds: list[Path] = field(default_factory=list)
    mounted_tags: dict[str, str] = field(default_factory=dict)  # name -> the tag mounted
    # not root: the run's own mount point directories, removed (if empty) once unmounted
    staging_dirs: list[Path] = field(default_factory=list)
    # the volumes' locks (copies of the mounts' own descriptors): held until the new tags are
    # reported, so that a run waiting for a volume finds the CAS's tag current once it has it
    locks: list[int] = field(default_factory=list)
    staging_lock: int | None = None  # not root: the descriptor holding the run directory's lock

    def release_locks(self) -> None:
        """Let the volumes go (after :func:`seal_and_report`'s reports, or an abort)."""
        while self.locks:
            os.close(self.locks.pop())

    def paths(self) -> dict[str, Path]:
        """Where each volume is mounted, by name (the staging directory; under an image contract
        its protected paths are also bound at their original places)."""
        return {release.name: handle.mountpoint for release, handle in self.handles}

    def regions(self) -> list[Path]:
        """Where this run's protected volumes are visible: each volume's mount (or files
        directory) and the protected paths bound at their original places."""
        return [*self.binds, *(handle.path for _, handle in self.handles)]

    def integrity_failure(self) -> str | None:
        """``volume:path`` of the first file that failed authentication, if any (never blocks)."""
        for release, handle in self.handles:
            path = handle.integrity_failure()
            if path is not None:
                return f"{release.name}:{path}"
        return None

    def lost_mount(self) -> str | None:
        """``volume at mountpoint`` of the first volume whose mount went away before it was
        unmounted (its FUSE server died, or the mount was removed from outside), if any (never
        blocks)."""
        for release, handle in self.handles:
            if handle.mount_lost():
                return f"{release.name} at {handle.mountpoint}"
        return None

    def abort(self) -> None:
        """Unmount everything without sealing: the session's changes are discarded."""
        for target in reversed(self.binds):
            _detach(target)
        self.binds.clear()
        for _, handle in reversed(self.handles):
            with contextlib.suppress(StorageError):
                handle.abort()
        _remove_staging(self.staging_dirs, self.staging_lock)
        self.staging_lock = None
        self.release_locks()

    def close(self) -> dict[str, tuple[str, str]]:
        """Seal and unmount (an ``ephemeral`` volume: unmount and discard); returns
        {name: (old tag, new tag)} for the volumes whose new tag is to be reported. The old tag
        is the CAS's (``rollback_protected``) or the version mounted (``no_rollback_protection``,
        where the two may differ). :class:`StorageError` if a volume could not be sealed (every
        volume is closed first; use :meth:`seal` to get the others' new tags as well)."""
        try:
            changed, errors = self.seal()
        finally:
            self.release_locks()
        if errors:
            raise StorageError("; ".join(errors))
        return changed

    def seal(self) -> tuple[dict[str, tuple[str, str]], list[str]]:
        """:meth:`close`, but returning the failures ("name: message") with the tags: a volume
        that sealed has replaced its previous version in its directory, so its new tag must
        reach the CAS even when another volume failed (else the next run is refused its
        volume, whose released tag no longer exists). Every handle is closed whatever fails."""
        for target in reversed(self.binds):
            _detach(target)
        self.binds.clear()
        changed: dict[str, tuple[str, str]] = {}
        errors: list[str] = []
        try:
            for release, handle in reversed(self.handles):
                if release.update_policy is UpdatePolicy.EPHEMERAL:
                    try:
                        handle.abort()
                    except _CLOSE_ERRORS as exc:
                        errors.append(f"{release.name}: {_message(exc)}")
                        continue
                    log.info("confide: volume %s is ephemeral: this run's changes were discarded",
                             release.name)  # fmt: skip
                    continue
                try:
                    new = handle.close()
                except _CLOSE_ERRORS as exc:  # the others are closed all the same
                    errors.append(f"{release.name}: {_message(exc)}")
                    continue
                old = (
                    self.mounted_tags.get(release.name, release.tag)
                    if release.update_policy is UpdatePolicy.NO_ROLLBACK_PROTECTION
                    else release.tag
                )
                if new and new != old:
                    changed[release.name] = (old, new)
        finally:  # also on an interrupt: the run directory's lock is never kept past the mounts
            _remove_staging(self.staging_dirs, self.staging_lock)
            self.staging_lock = None
        return changed, errors


# what one volume's close may raise without ending the others' (a FUSE server's wait for its
# seal raises subprocess.TimeoutExpired after STOP_TIMEOUT)
_CLOSE_ERRORS = (ConfideError, OSError, subprocess.SubprocessError)


def _message(exc: BaseException) -> str:
    """The failure of one volume's close, without file names (an OSError's ``filename`` may
    be a path in the decrypted tree)."""
    if isinstance(exc, ConfideError):
        return exc.message
    if isinstance(exc, subprocess.TimeoutExpired):
        return "cannot seal the session's changes: its FUSE server did not end within the time limit"
    if isinstance(exc, OSError):
        return f"cannot seal the session's changes: {exc.strerror or type(exc).__name__}"
    return type(exc).__name__


def _remove_staging(dirs: list[Path], lock: int | None = None) -> None:
    """Remove a run's own mount point directories, deepest first, if empty: an rmdir, never more
    (a directory that is not empty holds what was written after its mount was lost: left, with
    a warning, as is one still mounted). The run directory (``dirs[0]`` with a ``lock``) loses
    its lock file first, once nothing else is left in it; the lock is released at the end
    (a directory left behind then has its lock file: the next run collects it,
    :func:`_collect_stale`)."""
    while dirs:
        path = dirs.pop()
        try:
            if not dirs and lock is not None and os.listdir(path) == [_RUN_LOCK]:
                os.unlink(path / _RUN_LOCK)
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("confide: cannot remove the volume mount point %s: %s", path, exc.strerror or exc)
    if lock is not None:
        os.close(lock)


def _safe_staging() -> Path:
    """Not root: :data:`STAGING` (made if missing and possible), symlinks resolved, once no other
    user could change what it leads to: each existing directory from it up to ``/`` owned by
    root or this user, and writable by group or others only with the sticky bit. Otherwise
    :class:`StorageError`: another user could rename this run's mount point directory away and
    put one of theirs there, where ``$CONFIDE_VOLUME_<NAME>`` then leads the program."""
    with contextlib.suppress(OSError):
        STAGING.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(STAGING))
    me = os.geteuid()
    for path in (real, *real.parents):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot inspect {path}: {exc.strerror or exc}; nothing was mounted") from None
        why = None
        if not stat.S_ISDIR(st.st_mode):
            why = "not a directory"
        elif st.st_uid not in (0, me):
            why = f"owned by uid {st.st_uid}"
        elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            why = "writable by group or others without the sticky bit"
        if why is not None:
            raise StorageError(
                f"the volume mount point directory {STAGING}: {path} is {why}, so another user could "
                f"replace this run's mount points; nothing was mounted"
            )
    return real


def _run_directory(staging: Path) -> tuple[Path, int] | None:
    """Not root: a new directory (0700) of this run's own under ``staging`` (:func:`_safe_staging`)
    for its volumes' mount points, as concurrent runs share the mount namespace, and the
    descriptor that holds its lock (:data:`_RUN_LOCK`, flock'ed exclusively until the run ends:
    a lock another run can take proves this one gone, :func:`_collect_stale`). The lock file
    is locked before it gets its name (a rename), so it is never seen unlocked. None where no
    directory can be made there (e.g. a :data:`STAGING` the user may not write to)."""
    try:
        path = Path(tempfile.mkdtemp(prefix=_RUN_PREFIX, dir=staging))
    except OSError:
        return None
    new = path / (_RUN_LOCK + ".new")
    try:
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        raise StorageError(
            f"cannot create the lock of {path}: {exc.strerror or exc}; nothing was mounted"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(new, path / _RUN_LOCK)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            new.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}; nothing was mounted") from None
    return path, fd


def _mounted_at(path: Path) -> bool:
    """Whether anything is mounted at ``path`` by the mount table (the calling thread's)."""
    want = os.path.join(os.path.realpath(path.parent), path.name)
    try:
        with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return os.path.ismount(path)
    unescape = re.compile(r"\\([0-7]{3})")
    return any(
        len(fields) > 4 and unescape.sub(lambda m: chr(int(m[1], 8)), fields[4]) == want
        for fields in (line.split(" ") for line in lines)
    )


def _collect_stale(staging: Path, uid: int) -> None:
    """Not root, before this run makes its own directory: remove the ``run-XXXXXXXX``
    directories that runs of this user left in ``staging`` (:func:`_safe_staging`'s, checked)
    when they were killed (SIGKILL: nothing of theirs removed it). Only what is provably dead
    and this user's: a directory (not a symlink, not a mount point: on ``staging``'s file
    system) owned by ``uid``, mode 0700, whose lock file (:data:`_RUN_LOCK`: a regular file
    owned by ``uid`` with no other link, checked before it is opened) this process can lock (a
    live run holds it; a pid could be reused, a lock cannot outlive its holder). A directory without a lock
    file (made by an older confide, or killed between its creation and its lock) is left
    alone. Under the lock: symlinks (the ``/dev/shm`` links of tmpfs mounts, dangling once the
    guard removed the plaintext) are unlinked, never followed; empty directories removed; a
    dead confide FUSE mount (its server killed too: ENOTCONN) is detached first (``fusermount
    -u -z``; the session was lost with the server); anything else (a live mount, a directory
    that is not empty, a file) is left with a warning, and the run directory with it. Nothing
    here fails the run: what cannot be inspected is left."""
    try:
        sfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            names = [n for n in os.listdir(sfd) if _RUN_NAME.match(n)]
        except OSError:
            return  # not listable (e.g. mode 1733): nothing to collect from here
        dev = os.fstat(sfd).st_dev
        # a mount point there is no run directory (a run's is a plain directory of staging's file
        # system): e.g. a volume of that name mounted at the shared path, whose files are not
        # this collector's to remove; left without a look (a stat of a FUSE mount may block)
        mounted = _mount_points_in(staging) if names else set()
        for name in names:
            if name in mounted:
                continue
            try:
                _collect_one(staging, sfd, name, uid, dev)
            except FileNotFoundError:
                continue  # removed meanwhile (another run collecting at the same time)
            except OSError as exc:
                log.warning(
                    "confide: left the stale volume directory %s: %s", staging / name, exc.strerror or exc
                )
    finally:
        os.close(sfd)


def _collect_one(staging: Path, sfd: int, name: str, uid: int, dev: int) -> None:
    st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o700:
        return  # another user's, or not one of ours
    if st.st_dev != dev:
        return  # a mount point (the root of another file system): not a run's directory
    dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        dst = os.fstat(dfd)
        if (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino):
            return  # replaced since
        try:
            # its kind first: a FIFO or a device is never opened (an open may act: a tape rewinds)
            lst = os.stat(_RUN_LOCK, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return  # nothing proves its run gone
        if not _run_lock_file(lst, uid):
            return
        lock = os.open(_RUN_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        try:
            opened = os.fstat(lock)
            if (opened.st_dev, opened.st_ino) != (lst.st_dev, lst.st_ino) or not _run_lock_file(opened, uid):
                return  # replaced since
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its run is alive
            run = staging / name
            left = [why for entry in os.listdir(dfd) if entry != _RUN_LOCK
                    for why in [_collect_entry(run / entry, dfd, entry, dst.st_dev)] if why]  # fmt: skip
            if left:
                log.warning("confide: the volume directory %s of a run that ended without removing it is "
                            "left: %s", run, "; ".join(left))  # fmt: skip
                return
            os.unlink(_RUN_LOCK, dir_fd=dfd)
            os.rmdir(name, dir_fd=sfd)
            log.info("confide: removed the volume directory %s of a run that ended without removing it", run)
        finally:
            os.close(lock)
    finally:
        os.close(dfd)


def _run_lock_file(st: os.stat_result, uid: int) -> bool:
    """Whether ``st`` is a run's lock file as :func:`_run_directory` makes it: a regular file of
    ``uid`` with no other name (a hard link's other name could be a lock that is not a run's,
    e.g. a volume's: taking it, even for a moment, would make that volume's users wait)."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_nlink == 1


def _mount_points_in(staging: Path) -> set[str]:
    """The names of the mount points directly in ``staging`` by the mount table (the calling
    thread's), without touching them."""
    want = os.path.realpath(staging)
    try:
        with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()  # the device number check (_collect_one) still tells a mount point
    unescape = re.compile(r"\\([0-7]{3})")
    found = set()
    for fields in (line.split(" ") for line in lines):
        if len(fields) > 4:
            parent, name = os.path.split(unescape.sub(lambda m: chr(int(m[1], 8)), fields[4]))
            if parent == want:
                found.add(name)
    return found


def _collect_entry(path: Path, dfd: int, entry: str, dev: int) -> str | None:
    """Remove one entry of a dead run's directory (see :func:`_collect_stale`); why not, if not.
    A mount there is found by the mount table first, without a ``stat``: a FUSE mount's is
    answered by its server, which may be stopped or hung."""
    if _mounted_at(path):
        why = _dead_fuse_mount(path)
        if why is not None:
            return f"{path}: {why}"
        # a confide FUSE mount whose server is dead (killed too): nothing behind it to lose
        subprocess.run(_unmount_cmd(path, True), capture_output=True, check=False)  # noqa: S603
        if _mounted_at(path):
            return f"{path}: a dead FUSE mount that cannot be detached"
    try:
        st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        os.unlink(entry, dir_fd=dfd)  # the link only; its target is the shm guard's to remove
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{path}: not a directory"
    if st.st_dev != dev:
        return f"{path}: still mounted"  # a mount the table did not list
    try:
        os.rmdir(entry, dir_fd=dfd)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


_PROBE_TIMEOUT = 2.0  # seconds for a FUSE server to answer a collector's statfs


def _dead_fuse_mount(path: Path, timeout: float = _PROBE_TIMEOUT) -> str | None:
    """None if the mount on top at ``path`` is a confide FUSE mount whose server is gone
    (``statfs``, which the kernel never answers from its cache, fails with ENOTCONN; a ``stat``
    may still succeed), else why it is left. The ``statfs`` is asked from a thread of its own
    for ``timeout`` seconds: a server that is stopped (SIGSTOP) or hung would hold the start of
    the run for ever; that thread is left waiting for it."""
    if not _listed_mount(path):
        return "still mounted"
    answer: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(path)
        except OSError as exc:
            answer.append(exc.errno or -1)
        else:
            answer.append(0)

    thread = threading.Thread(target=probe, name="confide-collect-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return f"still mounted (its FUSE server did not answer within {timeout:g} s)"
    return None if answer[0] == errno.ENOTCONN else "still mounted"


def _check_free(staging: Path, name: str) -> None:
    """Not root, at the shared path: refuse a mount point another run is using (its FUSE mount
    would be covered, its /dev/shm link cannot be replaced)."""
    if os.path.islink(staging) or os.path.ismount(staging) or _listed_mount(staging):
        raise StorageError(
            f"the mount point {staging} of protected volume {name!r} is in use (the mount or /dev/shm "
            f"link of another run of a volume of that name): runs without root share it unless they "
            f"may create a directory of their own in {STAGING}; nothing was mounted"
        )


def lock_released(
    volumes: list[VolumeRelease],
    wait: float | None = None,
    stop: Stop | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[HeldLock]:
    """Take the lock of every released volume (:func:`confide.volume.lock.lock_volume`: shared
    for an ``ephemeral`` one, else exclusive), in one order every process follows (the volume
    directories' device and inode numbers), so that two runs that need the same volumes never
    hold one each and wait for the other's. ``wait``: the seconds to wait for them all
    together (None: $CONFIDE_VOLUME_WAIT, else 0); ``stop``: a stop signal ends the wait.
    Returns the locks in the order of ``volumes``; on a failure none is left held."""
    budget = volume_wait() if wait is None else wait
    deadline = clock() + budget
    keys: list[tuple[int, int, int, str]] = []
    seen: dict[tuple[int, int], int] = {}
    for i, vol in enumerate(volumes):
        try:
            st = os.stat(vol.directory)
        except OSError:  # refused by lock_volume, after the others (in the same order)
            keys.append((1, 0, 0, str(vol.directory)))
            continue
        keys.append((0, st.st_dev, st.st_ino, str(vol.directory)))
        # One directory, two volumes (two paths to it: a symlink, a bind mount, "dir/."): its lock
        # would be taken twice, and the second attempt would wait for the first, its own, until
        # the wait ran out. Refused at once, before any lock is taken.
        first = seen.setdefault((st.st_dev, st.st_ino), i)
        if first != i:
            raise StorageError(
                f"volumes {volumes[first].name!r} and {vol.name!r} of the release are one directory "
                f"({str(vol.directory)!r}): a directory holds one volume; nothing was mounted"
            )

    def order(i: int) -> tuple[int, int, int, str]:
        return keys[i]

    held: dict[int, HeldLock] = {}
    try:
        for i in sorted(range(len(volumes)), key=order):
            vol = volumes[i]
            left = max(0.0, deadline - clock()) if budget else 0.0
            shared = vol.update_policy is UpdatePolicy.EPHEMERAL
            fd = lock_volume(vol.directory.resolve(), shared=shared, wait=left, stop=stop, asked=budget)
            held[i] = HeldLock(fd)
    except BaseException:
        for lock in held.values():
            lock.release()
        raise
    return [held[i] for i in range(len(volumes))]


def mount_released(volumes: list[VolumeRelease], locks: list[HeldLock] | None = None) -> MountedVolumes:
    """Mount every released volume (call from the thread that will run the application).
    ``locks``: their locks, taken by :func:`lock_released` (this call then owns them: released
    by the mounts, or at once on a failure); None: taken here, with the wait of
    $CONFIDE_VOLUME_WAIT."""
    if not volumes:
        return MountedVolumes([], {})
    if locks is None:
        locks = lock_released(volumes)
    try:
        return _mount_locked(volumes, locks)
    finally:
        for lock in locks:
            lock.release()  # those not handed over to a mount (a failure)


def _mount_locked(volumes: list[VolumeRelease], locks: list[HeldLock]) -> MountedVolumes:
    kept = [os.dup(lock.fd) for lock in locks if lock.fd is not None]  # one lock, another descriptor
    try:
        mounted = _mount_all(volumes, locks)
    except BaseException:
        for fd in kept:
            os.close(fd)
        raise
    mounted.locks = kept
    return mounted


def _mount_all(volumes: list[VolumeRelease], locks: list[HeldLock]) -> MountedVolumes:
    root = os.geteuid() == 0
    if root:
        _private_namespace()
    handles: list[tuple[VolumeRelease, MountHandle]] = []
    env: dict[str, str] = {}
    binds: list[Path] = []
    mounted: dict[str, str] = {}
    created: list[Path] = []  # the run's own directories, to remove at the end
    base = STAGING
    shared = True  # base is STAGING (root: in the run's private namespace)
    run_lock: int | None = None  # not root: the lock of the run's own directory
    if not root:
        base = _safe_staging()
        _collect_stale(base, os.geteuid())
        own = _run_directory(base)
        if own is not None:
            (base, run_lock), shared = own, False
            created.append(base)
    try:
        for vol, lock in zip(volumes, locks, strict=True):
            mounts = _contract_mounts(vol.name)
            staging = base / vol.name
            try:
                if shared:
                    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
                else:
                    staging.mkdir(mode=0o700)
                    created.append(staging)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the volume's mount point {staging}: {exc.strerror or exc}"
                ) from None
            if not root and shared:
                _check_free(staging, vol.name)
            # ephemeral stays writable for the service, in its private copy (tmpfs, or the FUSE
            # server's memory), under the shared lock; abort() drops the changes at the end.
            handle = mount_volume(
                vol.directory, VolumeKey(vol.key), staging, expected_tag=vol.expected_tag, writable=True,
                ephemeral=vol.update_policy is UpdatePolicy.EPHEMERAL, held=lock,
            )  # fmt: skip
            handles.append((vol, handle))
            mounted[vol.name] = handle.tag
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
        for v, h in reversed(handles):
            with contextlib.suppress(StorageError):
                if v.update_policy is UpdatePolicy.EPHEMERAL:
                    h.abort()
                else:
                    h.close()
        _remove_staging(created, run_lock)
        raise
    return MountedVolumes(handles, env, binds, mounted, created, staging_lock=run_lock)


def seal_and_report(
    mounted: MountedVolumes,
    client: CasClient,
    policy: str,
    session: str,
    *,
    tampered: str | None = None,
    lost: str | None = None,
) -> None:
    """End a session's use of its volumes: the one code path of ``confide run``
    (:func:`confide.runtime.run.supervise`) and of :meth:`confide.sdk.Cas.mount_volumes`.

    A volume that reported an integrity failure (``tampered``, or
    :meth:`MountedVolumes.integrity_failure` now): every volume is unmounted unsealed (a seal
    would bless state derived from an attack) and :class:`SignatureError` is raised. Otherwise
    each volume is sealed (an ``ephemeral`` one discarded) and each changed volume's new tag
    reported to the CAS (``client.report_volume_tag``: ``session``, old tag, new tag), also when
    another volume failed to seal (a sealed volume no longer holds the version the CAS knows).
    Then the first report the CAS refused is raised as its error class, else the volumes that
    failed to seal as one :class:`StorageError`. ``tampered`` given: the caller stopped the
    service because of that failure (said in the message).

    A volume whose mount was lost before this seal (``lost``, or
    :meth:`MountedVolumes.lost_mount` now: its FUSE server died, e.g. SIGKILL, or the mount was
    removed from outside) is handled as an integrity failure: every volume is unmounted unsealed
    (what the session wrote after that moment failed or went to the bare mountpoint directory,
    unencrypted, and the end of the session is unknown) and :class:`StorageError` is raised.
    ``lost`` given: the caller stopped the service because of it."""
    try:
        _seal_and_report(mounted, client, policy, session, tampered, lost)
    finally:
        mounted.release_locks()  # after the reports: a run waiting for a volume gets its new tag


def _seal_and_report(
    mounted: MountedVolumes,
    client: CasClient,
    policy: str,
    session: str,
    tampered: str | None,
    lost: str | None,
) -> None:
    stopped = tampered is not None
    if tampered is None:
        tampered = mounted.integrity_failure()
    if tampered is not None:
        mounted.abort()
        what = "the service was stopped and " if stopped else ""
        raise SignatureError(
            f"protected volume integrity failure in {tampered}: {what}"
            "this session's volume changes were discarded"
        )
    stopped = lost is not None
    if lost is None:
        lost = mounted.lost_mount()
    if lost is not None:
        mounted.abort()
        what = "the service was stopped and " if stopped else ""
        raise StorageError(
            f"the mount of protected volume {lost} was lost (its FUSE server died or it was unmounted "
            f"from outside): anything written there since is outside the volume; {what}"
            "this session's volume changes were discarded"
        )
    changed, errors = mounted.seal()
    first: BaseException | None = None
    for name, (old, new) in changed.items():
        try:
            client.report_volume_tag(policy, name, session, old, new)
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first
    if errors:
        raise StorageError("; ".join(errors))

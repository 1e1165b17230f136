"""Mounting a protected volume for an application: FUSE, or decryption into tmpfs.

``mount_volume(dir, key, mountpoint, expected_tag=..., mode=..., writable=...)`` checks the
manifest and the tag *before* anything is served (a wrong tag raises
:class:`~confide.errors.RollbackError`), then:

* ``fuse``: a child process (``python -m confide.volume._fusefs``) serves the files through
  FUSE (mfusepy, libfuse 3): decrypted on demand, authenticated per chunk, integrity failures
  logged and returned as EIO. The child asks the kernel for :data:`SERVER_STOP_SIGNAL` when
  its parent dies (``prctl(PR_SET_PDEATHSIG)``), so it unmounts and exits with the
  launcher/application; the signals a service manager sends (:data:`HELD_SIGNALS`) it ignores,
  and that signal from any other process than its parent, serving until its parent unmounts it.
* ``tmpfs``: as root, the *calling thread* moves into a private mount namespace
  (``unshare(CLONE_NEWNS)`` + ``mount --make-rprivate /``), a tmpfs is mounted at the
  mountpoint and the whole volume is authenticated and decrypted into it; processes outside
  the namespace do not see it, and it disappears with the namespace. Not root: decryption
  into a mode-0700 directory under /dev/shm, the mountpoint becomes a symlink to it, and a
  guard child removes it if the caller dies (weaker: visible to the same uid).
* ``auto``: FUSE when /dev/fuse opens and libfuse loads, else tmpfs (also when the FUSE
  mount itself fails).

``MountHandle.close()`` unmounts; for writable mounts it first seals the changes (new
generation) and returns the new tag, which the runtime reports to the CAS. An ``ephemeral``
mount is writable but never sealed: its changes stay private to it (the tmpfs copy, or the
FUSE server's memory) and are dropped at unmount, nothing is written into the volume
directory, and it takes the volume's lock shared, so any number of read-only and ephemeral
mounts of one copy can be live at once (a sealing writer still needs the lock alone). See
``docs/volume-mount.md``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import importlib.util
import json
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn

import confide
from confide.errors import (
    ConfideError,
    ParseError,
    SignatureError,
    StorageError,
    UsageError,
    WaitStoppedError,
)
from confide.termsafe import printable_lines
from confide.volume._chunked import ChunkReader, write_chunks
from confide.volume._io import LARGE_FOLIO_PIECE, equal_contents, open_object, same_plaintext
from confide.volume.check import open_volume
from confide.volume.format import (
    ROOT_SIZE,
    ChunkCodec,
    ChunkKeys,
    Entry,
    EntryKind,
    Manifest,
    Region,
    check_path,
    check_symlink_target,
    clamp_mtime_ns,
    region_for,
)
from confide.volume.keys import VolumeKey
from confide.volume.lock import Stop
from confide.volume.store import (
    PENDING_NAME,
    _store_file,
    load_sealed,
    lock_volume,
    object_path,
    open_objects_dir,
    pending_changes,
    seal_entries,
)

__all__ = [
    "HELD_SIGNALS",
    "SERVER_STOP_SIGNAL",
    "STOP_SIGNALS",
    "HeldLock",
    "MountHandle",
    "MountMode",
    "StopSignals",
    "end_by_signal",
    "fuse_usable",
    "mount_volume",
]

log = logging.getLogger("confide.volume.mount")

MountMode = Literal["auto", "fuse", "tmpfs"]

START_TIMEOUT = 30.0  # seconds for the FUSE child to report the mount live
STOP_TIMEOUT = 600.0  # seconds for the child to commit open files, seal and exit
_CLONE_NEWNS, _CLONE_FS = 0x00020000, 0x00000200  # <linux/sched.h>
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 2, 4, 0x4000, 1 << 18  # <linux/mount.h>
_MS_RDONLY, _MS_REMOUNT = 1, 32
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
_SI_USER = 0  # <asm-generic/siginfo.h>: kill(2), and the kernel's parent-death signal

# The FUSE server ignores these from the moment it is mounted ('ready') until its loop ends: a
# service manager's stop (systemd's KillMode=control-group signals every process of the unit,
# the server included) or a `kill` of its pid must not take the mount away from the application
# while it still runs (its later files would land in the bare directory below the mountpoint).
# The mounting process alone ends the loop: by unmounting (close()), by SERVER_STOP_SIGNAL
# (abort()) or by dying (the same signal, PR_SET_PDEATHSIG). The signals `confide run` forwards.
HELD_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
SERVER_STOP_SIGNAL = signal.SIGRTMIN  # acted on from the parent only (_fusefs._StopSignal, _from_parent)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _errno_msg(what: str) -> str:
    e = ctypes.get_errno()
    return f"{what}: {os.strerror(e)} (errno {e})"


def _error_for(code: int, message: str) -> ConfideError:
    """Rebuild the child's error as the same class (matched by exit code)."""
    stack: list[type[ConfideError]] = [ConfideError]
    while stack:
        cls = stack.pop()
        if cls.exit_code == code and cls.__init__ is ConfideError.__init__:
            return cls(message)
        stack.extend(cls.__subclasses__())
    return StorageError(message)


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Where the helper programs a mount runs (``fusermount3``, ``fusermount``, ``umount``) are
looked up: the container engines' default ``PATH``, never the caller's. ``confide run`` gets its
environment from the host's operator; a ``PATH`` of theirs must not choose a program that runs
as root in the runtime's mount namespace while a volume's decrypted files are mounted there."""

_LDCONFIG = "/sbin/ldconfig"
_LIBRARY_DIRS = ("/usr/local/lib", "/lib", "/usr/lib", "/lib64", "/usr/lib64")


def _helper(name: str) -> str | None:
    """The absolute path of the helper program ``name`` in :data:`SYSTEM_PATH`, or None."""
    return shutil.which(name, path=SYSTEM_PATH)


def find_shared_library(name: str) -> str | None:
    """The shared library ``lib<name>.so*`` as :func:`ctypes.util.find_library` finds it on Linux
    (a name from ``/sbin/ldconfig -p``, which ``dlopen`` resolves), else a ``lib<name>.so.*`` file
    in the usual library directories; None if neither has one. Unlike ``find_library`` it never
    runs ``gcc``, ``cc``, ``ld`` or ``objdump``, which that falls back to (found on ``PATH``, with
    the caller's ``LD_LIBRARY_PATH``) when ldconfig lists no such library: in ``confide run``
    those would be the host operator's programs, run by the process that holds the release."""
    machine = os.uname().machine
    abi = {"x86_64": "libc6,x86-64", "ppc64": "libc6,64bit", "s390x": "libc6,64bit"}.get(machine, "libc6")
    try:
        listing = subprocess.run(  # noqa: S603 - an absolute path, a fixed environment
            [_LDCONFIG, "-p"], stdin=subprocess.DEVNULL, capture_output=True, check=False,
            env={"LC_ALL": "C", "LANG": "C"}, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        listing = b""
    pattern = rb"\s+(lib%s\.[^\s]+)\s+\(%s" % (re.escape(name.encode()), re.escape(abi.encode()))
    found = re.search(pattern, listing)
    if found:
        return os.fsdecode(found.group(1))
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [*_LIBRARY_DIRS, *([f"/lib/{multiarch}", f"/usr/lib/{multiarch}"] if multiarch else [])]
    for directory in dirs:
        with contextlib.suppress(OSError):
            names = sorted(n for n in os.listdir(directory) if n.startswith(f"lib{name}.so."))
            if names:
                return os.path.join(directory, names[0])
    return None


def fuse3_library() -> dict[str, str]:
    """Environment that makes mfusepy load libfuse 3 (it picks libfuse 2 first when both are
    installed; libfuse 2 when there is no libfuse 3). libfuse 2 negotiates FUSE protocol 7.19:
    128 KiB requests at most; libfuse 3 up to 1 MiB. Empty if the caller already chose. The
    library is always named here (:func:`find_shared_library`), so that mfusepy does not look
    for it with ``ctypes.util.find_library`` (programs on ``PATH``); without either the name
    ``libfuse3.so.3`` is given, which ``dlopen`` then fails to load."""
    if "FUSE_LIBRARY_PATH" in os.environ or "FUSE_LIBRARY_NAME" in os.environ:
        return {}
    library = find_shared_library("fuse3") or find_shared_library("fuse")
    return {"FUSE_LIBRARY_PATH": library or "libfuse3.so.3"}


def _isolated_python(paths: Sequence[str], then: str) -> list[str]:
    """The argv of this interpreter in isolated mode (``-I``: ``PYTHON*`` variables, the user
    site and the current directory ignored: ``PYTHONPATH``'s or ``~/.local``'s ``sitecustomize``,
    ``PYTHONSTARTUP``, ``PYTHONINSPECT`` would otherwise run in a process that gets a volume key)
    with ``paths`` first on ``sys.path``, running the statements ``then``."""
    return [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {list(paths)!r}\n{then}"]


def _server_paths() -> list[str]:
    """Where the FUSE server finds confide and mfusepy: this process's own copies."""
    paths = [_package_path()]
    spec = importlib.util.find_spec("mfusepy")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent))
    return list(dict.fromkeys(paths))


def fuse_usable() -> str | None:
    """None if FUSE can be used here, else the reason (for ``auto`` and for test skips)."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse is not usable: {exc.strerror or exc}"
    os.close(fd)
    env = {**os.environ, **fuse3_library()}
    # In a session of its own, as the FUSE server: a terminal's ^C (or `timeout -s INT`) sent to
    # the caller's process group while it runs must not kill the probe, which read as "libfuse
    # cannot be loaded" and failed the mount that `volume mount` holds such a signal for.
    probe = subprocess.run(  # noqa: S603 - this interpreter, isolated
        _isolated_python(_server_paths(), "import mfusepy"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,
    )
    if probe.returncode < 0:
        return f"the libfuse probe ({sys.executable} -c 'import mfusepy') was {_how(probe.returncode)}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"libfuse cannot be loaded (apt-get install fuse3 libfuse3-3): {last}"
    if os.geteuid() != 0 and _helper("fusermount3") is None and _helper("fusermount") is None:
        return "not root and no fusermount3 (apt-get install fuse3)"
    return None


class MountHandle:
    """A mounted volume. ``tag`` is its current tag; ``close()`` unmounts (and seals)."""

    def __init__(
        self, mountpoint: Path, mode: str, writable: bool, tag: str, path: Path, ephemeral: bool = False
    ) -> None:
        self.mountpoint = mountpoint
        self.mode = mode  # "fuse", "tmpfs" (private namespace) or "shm" (not root)
        self.writable = writable
        self.ephemeral = ephemeral  # writable, never sealed: close() drops the changes
        self.memory_limit: int | None = None  # an ephemeral FUSE session's budget (bytes)
        self.tag = tag
        self.path = path  # where the files are (the mountpoint, except in "shm" mode)
        self.closed = False
        self.stopped_at: float | None = None  # time.time() of a FUSE server's ``stopped`` report

    def close(self) -> str:
        """Unmount; for writable mounts seal the changes first (not ephemeral ones: their
        changes are dropped). Return the (new) tag."""
        raise NotImplementedError

    def abort(self) -> None:
        """Unmount without sealing: this session's changes are discarded."""
        raise NotImplementedError

    def integrity_failure(self) -> str | None:
        """Path of a file whose authentication failed while mounted, if any (never blocks).
        Only lazily-verifying mounts (FUSE) can fail after mounting; the others verify all
        data before the mount appears."""
        return None

    def mount_lost(self) -> bool:
        """Whether the mount went away before this handle unmounted it (never blocks): a FUSE
        server whose loop ended without being asked (its mountpoint unmounted from outside)
        reports ``stopped``; one that died (SIGKILL) closes its status pipe, its mount left
        dead (docs/volume-mount.md, "Signals"). What is written under the mountpoint from
        then on is not in the volume. The tmpfs mounts have no server to lose."""
        return False

    def status_fd(self) -> int | None:
        """A descriptor that becomes readable when the server reports something (a ``select``
        on it wakes for :meth:`mount_lost`), or None (no server, or it has closed the pipe)."""
        return None

    def __enter__(self) -> MountHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.closed:
            self.close()


# --- FUSE ------------------------------------------------------------------------------------


def _package_path() -> str:
    return str(Path(confide.__file__).resolve().parent.parent)


READAHEAD_KB = 4096


def _raise_readahead(mountpoint: Path) -> None:
    """Raise the FUSE mount's read-ahead window (its backing-device info in sysfs) so that
    sequential reads arrive as 1 MiB requests instead of 128 KiB ones: ~1.5x the throughput.
    Best effort: needs root and a writable /sys; the mount works without it."""
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(f"{READAHEAD_KB}\n")
    except OSError as exc:
        log.debug("confide volume: cannot raise read-ahead via %s: %s", path, exc.strerror or exc)


def _unmount_cmd(mountpoint: Path, lazy: bool) -> list[str]:
    """The command that unmounts the FUSE mount at ``mountpoint``: a helper from :data:`SYSTEM_PATH`
    (never the caller's ``PATH``)."""
    exe = _helper("fusermount3") or _helper("fusermount")
    if exe is not None:
        return [exe, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    return [_helper("umount") or "/bin/umount", *(["-l"] if lazy else []), str(mountpoint)]


def _listed_mount(path: Path) -> bool:
    """Whether the mount on top at ``path`` is a confide FUSE mount by the mount table: a dead
    FUSE server's mount is one, though ``os.path.ismount`` says no (its ``lstat`` fails:
    ENOTCONN). Only ours: once the server's own mount is gone, the path may still be listed
    with the mount it covered (a mountpoint that was one already: a tmpfs, a bind mount), which
    an unmount must not take away."""
    try:
        # the calling thread's table: its mount namespace is the one the unmount command runs in
        with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return os.path.ismount(path)
    # as the kernel lists it, symlinks resolved (/var/run/x is /run/x); not the last component:
    # the mountpoint itself may be dead (ENOTCONN)
    want = os.path.join(os.path.realpath(path.parent), path.name)
    unescape = re.compile(r"\\([0-7]{3})")  # mountinfo writes space, tab, newline, backslash as \ooo
    here: dict[str, tuple[str, bool]] = {}  # mount ID -> (parent ID, whether ours), at ``path``
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and unescape.sub(lambda m: chr(int(m[1], 8)), fields[4]) == want:
            # after the optional fields: "-", the file system type and the source (_fuse_options)
            sep = fields.index("-", 6) if "-" in fields[6:] else len(fields)
            fstype, source = [*fields[sep + 1 : sep + 3], "", ""][:2]
            ours = fstype == "fuse.confide" or (fstype.startswith("fuse") and source == "confide-volume")
            here[fields[0]] = (fields[1], ours)
    parents = {parent for parent, _ in here.values()}
    return any(ours for mount_id, (_, ours) in here.items() if mount_id not in parents)  # on top


class _FuseMount(MountHandle):
    def __init__(
        self,
        volume_dir: Path,
        key: VolumeKey,
        mountpoint: Path,
        tag: str,
        writable: bool,
        on_parent_exit: str,
        ephemeral: bool = False,
        memory_limit: int | None = None,
        lock: int | None = None,
    ) -> None:
        """``lock``: the volume's lock, taken by the caller; the server inherits it and holds it
        until it ends (one open file description: the volume is free once both have let it go).
        Once the server is started this handle owns the descriptor and closes it after the
        server has ended; on a failure here it stays the caller's."""
        super().__init__(mountpoint, "fuse", writable, tag, mountpoint, ephemeral)
        self.memory_limit = memory_limit if ephemeral else None
        self._lock: int | None = None
        r, w = os.pipe()
        env = {**os.environ, **fuse3_library()}
        # isolated (see _isolated_python): confide and mfusepy from this process's own copies
        run = "import runpy; runpy.run_module('confide.volume._fusefs', run_name='__main__', alter_sys=True)"
        argv = [
            *_isolated_python(_server_paths(), run), str(volume_dir), str(mountpoint), tag,
            str(os.getpid()), str(w), "eph" if ephemeral else "rw" if writable else "ro", on_parent_exit,
            "-" if self.memory_limit is None else str(self.memory_limit), "-" if lock is None else str(lock),
        ]  # fmt: skip
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own module, absolute paths
                argv, stdin=subprocess.PIPE, pass_fds=(w,) if lock is None else (w, lock), env=env, cwd="/",
                text=True,
                start_new_session=True,  # a terminal's ^C or a group's signal is the caller's to handle
            )  # fmt: skip
        finally:
            os.close(w)
        self._status = r
        self._buffer = b""
        self._lines: collections.deque[str] = collections.deque()
        self.integrity_paths: list[str] = []
        self._eof = False
        self._live = False  # mounted and not yet being closed: an end of the status pipe is a death
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(key.hex() + "\n")  # the key travels through a pipe only
            self._proc.stdin.flush()
            line = self._next_line(START_TIMEOUT)
            if line != "ready":
                raise self._failure(line, "start")
            deadline = time.monotonic() + 5
            while not os.path.ismount(mountpoint):
                if time.monotonic() > deadline:
                    raise StorageError(f"FUSE server reported ready but {str(mountpoint)!r} is not mounted")
                time.sleep(0.01)
            _raise_readahead(mountpoint)
            self._live = True
        except BaseException:
            self._discard()
            self._kill()
            raise
        self._lock = lock  # owned from here on

    def _pump(self, wait: float) -> bool:
        """Read what the server has written (waiting at most ``wait`` seconds); False at EOF.
        ``integrity PATH`` lines are reports, not replies: they are set aside."""
        ready, _, _ = select.select([self._status], [], [], wait)
        if not ready:
            return True
        data = os.read(self._status, 4096)
        if not data:
            self._eof = True
            if self._live and self.stopped_at is None:  # died while mounted (SIGKILL, a crash)
                self.stopped_at = time.time()
                rc = self._exit_status()
                log.warning("confide volume: the FUSE server at %r has died (%s): the mount is dead",
                            str(self.mountpoint), _how(rc))  # fmt: skip
            return False
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("integrity "):
                try:
                    path = json.loads(line[len("integrity ") :])
                except ValueError:
                    path = line[len("integrity ") :]
                self.integrity_paths.append(str(path))
            elif line == "stopped":  # the loop ended unasked (an outside umount); it awaits close()
                self.stopped_at = time.time()
                where = str(self.mountpoint)
                log.warning("confide volume: the FUSE mount at %r was removed from outside", where)
            else:
                self._lines.append(line)
        return True

    def _next_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while not self._lines:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._pump(min(left, 0.5)):
                return self._lines.popleft() if self._lines else "eof"
        return self._lines.popleft()

    def integrity_failure(self) -> str | None:
        if not self.closed and not self.integrity_paths:
            with contextlib.suppress(OSError):
                self._pump(0)
        return self.integrity_paths[0] if self.integrity_paths else None

    def mount_lost(self) -> bool:
        if not self.closed and self.stopped_at is None and not self._eof:
            with contextlib.suppress(OSError):
                self._pump(0)
        return self.stopped_at is not None

    def status_fd(self) -> int | None:
        return None if self.closed or self._eof else self._status

    def abort(self) -> None:
        if not self.closed:
            self._live = False
            self._discard()
            self._kill()

    def _exit_status(self) -> int | None:
        """The server's exit status once its status pipe ended (it is exiting: waited for a
        moment), None if it still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._proc.wait(10)
        return None

    def _discard(self) -> None:
        """Say ``discard`` before the signal of :meth:`_kill`: a server whose loop that signal
        ends without a decision reports ``stopped`` and waits for one
        (``_fusefs._await_decision``), and would be SIGKILLed 10 s later, its session's new
        objects left behind."""
        if self._proc.stdin is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.write("discard\n")
                self._proc.stdin.flush()

    def _failure(self, line: str | None, what: str) -> ConfideError:
        if line is None:
            return StorageError(f"FUSE server did not {what} within the time limit")
        if line.startswith("error "):
            _, code, message = line.split(" ", 2)
            return _error_for(int(code), message)
        rc = self._exit_status() if line == "eof" else self._proc.poll()
        if rc is not None and rc < 0:
            lost = ": this session's changes are lost" if self.writable else ""
            return StorageError(
                f"the FUSE server of {str(self.mountpoint)!r} has died ({_how(rc)}) and cannot {what}{lost}"
            )
        return StorageError(f"FUSE server failed to {what} (got {line!r}, exit status {rc}); see its log")

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(SERVER_STOP_SIGNAL)  # the server ends its loop: unmounted
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if _listed_mount(self.mountpoint):  # also a dead server's (ENOTCONN: not os.path.ismount)
            subprocess.run(_unmount_cmd(self.mountpoint, True), capture_output=True, check=False)  # noqa: S603
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(OSError):
            os.close(self._status)
        if self._lock is not None:  # after the server has ended: the volume is free now
            os.close(self._lock)
            self._lock = None
        self.closed = True

    def close(self) -> str:
        if self.closed:
            return self.tag
        self._live = False
        try:
            assert self._proc.stdin is not None
            # read-only and ephemeral too: the server then takes the end of its loop for this
            # unmount, not for one from outside (which it reports: 'stopped')
            try:
                self._proc.stdin.write("commit\n")
                self._proc.stdin.flush()
            except BrokenPipeError:  # the server exited: what it said before tells why
                pass
            line = self._next_line(30)
            if line != "ack":
                raise self._failure(line, "acknowledge the commit")
            for attempt in range(50):  # busy while the application still has files open
                if not _listed_mount(self.mountpoint):  # gone already (from outside): what is
                    break  # listed there now, if anything, is the mount ours covered
                r = subprocess.run(_unmount_cmd(self.mountpoint, lazy=attempt == 49), capture_output=True,  # noqa: S603
                                   text=True, check=False)  # fmt: skip
                if r.returncode == 0 or not os.path.ismount(self.mountpoint):
                    break
                time.sleep(0.1)
            while True:
                line = self._next_line(STOP_TIMEOUT)
                if line and line.split(" ")[0] in ("sealed", "unchanged"):
                    self.tag = line.split(" ", 1)[1]
                    break
                if line != "discarded":
                    raise self._failure(line, "seal the volume")
            self._proc.wait(STOP_TIMEOUT)
        finally:
            self._kill()
        return self.tag


def _how(rc: int | None) -> str:
    """A dead server's exit status in words: 'killed by SIGKILL', 'exit status 1'."""
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


# --- tmpfs -----------------------------------------------------------------------------------


# What an EPERM from unshare(CLONE_NEWNS) as root means, and what to do (docs/sconify.md
# "Running the image").
NEEDS_SYS_ADMIN = (
    "mounting protected volumes and injecting files over disk paths takes CAP_SYS_ADMIN (in a"
    " container: --cap-add SYS_ADMIN, and --device /dev/fuse for FUSE)"
)


def _private_namespace() -> None:
    """Move the calling thread into a new mount namespace where no mount propagates out."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS) != 0:
        denied = ctypes.get_errno() == errno.EPERM
        message = _errno_msg("unshare(CLONE_NEWNS) for a private mount namespace failed")
        if denied:  # root without CAP_SYS_ADMIN: a container started without it, typically
            message += f": {NEEDS_SYS_ADMIN}"
        raise StorageError(message)
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise StorageError(_errno_msg("mount --make-rprivate / failed"))


def join_namespace(fd: int) -> None:
    """Move the calling thread into the mount namespace ``fd`` names (an open
    ``/proc/thread-self/ns/mnt`` of a thread that ran :func:`_private_namespace`), leaving the
    file-system attributes it shared with the other threads first, as setns(2) requires. Its
    working directory stays the one it had (setns(2) moves it to the namespace's root): the
    same path, looked up in the namespace (a copy of the caller's, as unshare(2) would make it),
    else that very directory."""
    libc = _libc()
    try:
        path: str | None = os.getcwd()
    except OSError:  # removed: nothing to keep
        path = None
    try:
        here: int | None = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        here = None
    try:
        if libc.unshare(_CLONE_FS) != 0 or libc.setns(fd, _CLONE_NEWNS) != 0:
            raise StorageError(_errno_msg("joining the volumes' private mount namespace failed"))
        try:
            if path is not None:
                os.chdir(path)
            elif here is not None:
                os.fchdir(here)
        except OSError as exc:
            if here is None:
                raise StorageError(f"cannot keep the working directory {path!r}: {exc.strerror}") from None
            try:
                os.fchdir(here)
            except OSError as again:
                raise StorageError(f"cannot keep the working directory {path!r}: {again.strerror}") from None
    finally:
        if here is not None:
            os.close(here)


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (major, minor)


# Options of the private tmpfs (4 KiB pages), and an opt-in large-folio variant tried first:
# (options, write piece for open_volume), e.g. LARGE_FOLIO_TMPFS. Since Linux 6.14 a tmpfs
# with huge=within_size sizes each new folio by the write (mm/shmem.c), so writes of at most
# LARGE_FOLIO_PIECE give 512 KiB folios: on the test VM first read +16 % on average over 18
# interleaved runs and later reads +27 %, but 0.6 GiB/s (4 KiB pages: 1.8-2.0) in 2 of the 3
# runs that followed 4 KiB-page activity, when the free large blocks had gone back to the
# host (free page reporting; docs/performance.md, "tmpfs first read"). Hence off by default.
# Used only on Linux >= 6.14: older kernels give 2 MiB folios to writes inside the file size
# (the workers write out of order). Falls back to TMPFS_OPTIONS when huge= is refused (EINVAL).
TMPFS_OPTIONS = b"mode=0755"
LARGE_FOLIO_TMPFS: tuple[bytes, int | None] = (b"mode=0755,huge=within_size", LARGE_FOLIO_PIECE)
TMPFS_LARGE_FOLIOS: tuple[bytes, int | None] | None = None
# The operator's switch for the same choice (e.g. `docker run -e CONFIDE_TMPFS_FOLIOS=large` for a
# sconified image, whose entrypoint is `confide run`): "small" (4 KiB pages, the default) or
# "large" (LARGE_FOLIO_TMPFS). Only performance changes: the content is the same either way.
FOLIOS_ENV = "CONFIDE_TMPFS_FOLIOS"


def _large_folio_choice() -> tuple[bytes, int | None] | None:
    """TMPFS_LARGE_FOLIOS when set from Python, else what $CONFIDE_TMPFS_FOLIOS asks for."""
    if TMPFS_LARGE_FOLIOS is not None:
        return TMPFS_LARGE_FOLIOS
    choice = os.environ.get(FOLIOS_ENV, "small")
    if choice == "small":
        return None
    if choice == "large":
        return LARGE_FOLIO_TMPFS
    raise UsageError(f"${FOLIOS_ENV}: got {choice[:40]!r}, expected small or large")


# The byte budget of an ephemeral FUSE session's memory files (docs/volume-mount.md, "Sharing a
# volume"): `confide volume mount --ephemeral-memory SIZE`, else $CONFIDE_EPHEMERAL_MEMORY (what
# `confide run` and the SDK read), else the larger of EPHEMERAL_MEMORY_FLOOR and the volume's
# file bytes (every file can be rewritten once at its size).
EPHEMERAL_MEMORY_ENV = "CONFIDE_EPHEMERAL_MEMORY"
EPHEMERAL_MEMORY_FLOOR = 1 << 30
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# the largest budget: the largest file size (off_t); more would overflow statfs's block counts
EPHEMERAL_MEMORY_MAX = (1 << 63) - 1


def parse_size(text: str, what: str) -> int:
    """Bytes from ``N`` or ``N`` followed by K, M, G or T (powers of 1024; ``B``, ``KiB``…
    allowed), at most :data:`EPHEMERAL_MEMORY_MAX`; :class:`UsageError` naming ``what``
    otherwise."""
    m = re.fullmatch(r"([0-9]{1,19})(?:([KMGT])(?:i?B)?|B)?", text.strip(), re.IGNORECASE)
    size = int(m[1]) * _SIZE_UNITS[(m[2] or "").upper()] if m is not None else -1
    if not 0 <= size <= EPHEMERAL_MEMORY_MAX:
        raise UsageError(
            f"{what}: got {text[:40]!r}, expected a size in bytes (e.g. 1073741824, 512M, 2G) of at "
            f"most {EPHEMERAL_MEMORY_MAX}"
        )
    return size


def ephemeral_memory(manifest: Manifest, given: int | None) -> int:
    """The budget of an ephemeral FUSE session over ``manifest``: ``given``, else
    $CONFIDE_EPHEMERAL_MEMORY, else the default (see EPHEMERAL_MEMORY_FLOOR)."""
    setting = _memory_setting(given)
    if setting is not None:
        return setting
    files = sum(e.size for e in manifest.entries if e.kind is EntryKind.FILE)
    return max(EPHEMERAL_MEMORY_FLOOR, files)


def _memory_setting(given: int | None) -> int | None:
    """``given`` or $CONFIDE_EPHEMERAL_MEMORY (:class:`UsageError` if not a size), else None."""
    if given is not None:
        if not 0 <= given <= EPHEMERAL_MEMORY_MAX:
            raise UsageError(
                f"ephemeral memory: got {given}, expected a size of 0 to {EPHEMERAL_MEMORY_MAX} bytes"
            )
        return given
    text = os.environ.get(EPHEMERAL_MEMORY_ENV)
    if text is not None:
        return parse_size(text, f"${EPHEMERAL_MEMORY_ENV}")
    return None


def mount_tmpfs_at(mountpoint: Path, opts: bytes = TMPFS_OPTIONS) -> None:
    """Mount a tmpfs (nosuid, nodev) at ``mountpoint``; root, in a private namespace."""
    if _libc().mount(b"tmpfs", bytes(mountpoint), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) != 0:
        raise StorageError(_errno_msg(f"mount -t tmpfs at {str(mountpoint)!r} (-o {opts.decode()}) failed"))


def _mount_tmpfs(mountpoint: Path) -> int | None:
    """Mount the private tmpfs; return the write piece for ``open_volume`` into it."""

    def mount(opts: bytes) -> bool:
        rc: int = _libc().mount(b"tmpfs", bytes(mountpoint), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts)
        return rc == 0

    def failed(opts: bytes) -> StorageError:
        return StorageError(_errno_msg(f"mount -t tmpfs at {str(mountpoint)!r} (-o {opts.decode()}) failed"))

    large = _large_folio_choice()
    if large is not None and _kernel_at_least(6, 14):
        opts, piece = large
        if mount(opts):
            return piece
        if ctypes.get_errno() != errno.EINVAL:
            raise failed(opts)
    if not mount(TMPFS_OPTIONS):
        raise failed(TMPFS_OPTIONS)
    return None


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """(inode, size, mtime, ctime) of every regular file, to find the ones written later."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _reseal_tree(
    directory: Path,
    key: VolumeKey,
    manifest: Manifest,
    tag: str,
    root: Path,
    baseline: dict[str, tuple[int, int, int, int]],
    *,
    owners: bool = True,
) -> str:
    """Seal the tree under ``root`` as the next generation; only changed files are re-encrypted.

    A file whose (inode, size, mtime, ctime) is what it was after decryption keeps its object,
    and so does a file whose bytes equal its sealed version (touched, chmod'ed or rewritten
    with the same contents; :func:`_same_protected` authenticates each sealed chunk before
    comparing, :func:`_same_unprotected` compares with the object as it is now);
    a changed file that was chunked (format version 3) keeps the chunk objects whose
    plaintext is unchanged (compared with the authenticated old chunk) and gets new chunk
    objects for the others (:func:`_reseal_chunked`). Any other changed or new file of a
    protected region is written chunked, every chunk under a new random chunk id, as the FUSE
    commit path writes every protected file (:func:`_write_chunked`): a one-object file
    changed now is converted, so that later unmounts re-seal only its changed chunks. A
    changed unprotected file gets a new object under a new file id. Special files are
    skipped (logged). Returns ``tag`` unchanged when the tree equals the manifest.

    ``owners``: whether the decryption applied the recorded uid/gid (root). When it could not
    (the non-root ``shm`` fallback: every file belongs to the caller, who cannot chown), an
    entry that was in the manifest keeps its recorded owner, and new entries get the caller's.
    """
    chunks = ChunkReader(directory, ChunkKeys(key.raw, manifest.volume_id), manifest.chunk_size, key_cache=0)
    try:
        return _reseal_entries(directory, key, manifest, tag, root, baseline, chunks, owners)
    finally:
        chunks.close()


def _open_regular(p: Path) -> int:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{str(p)!r} changed into a non-regular file while sealing")
    return fd


def _reseal_chunked(
    directory: Path, chunks: ChunkReader, prev: Entry, p: Path, objects_fd: int
) -> tuple[int, tuple[bytes, ...]]:
    """Write the new version of the chunked file ``prev`` from ``p``: only the chunks that
    differ from the sealed ones are sealed (under new chunk ids). Returns (size, chunk ids)."""
    fd = _open_regular(p)
    try:
        size = os.fstat(fd).st_size
        dirty, unauthentic = chunks.changed(prev, fd, size)
        if unauthentic:
            log.warning(
                "confide volume: %d sealed chunk(s) of %r failed authentication at unmount (changed "
                "in storage during the session); sealed anew from the mounted copy",
                len(unauthentic),
                prev.path,
            )
        old = (prev.chunks or (), prev.size)
        w = write_chunks(
            directory,
            chunks.keys,
            chunks.chunk_size,
            prev.region,
            fd,
            size,
            old,
            dirty,
            objects_fd=objects_fd,
        )
    finally:
        os.close(fd)
    return size, w.chunks


def _write_chunked(
    directory: Path, chunks: ChunkReader, region: Region, p: Path, objects_fd: int
) -> tuple[int, tuple[bytes, ...]]:
    """Write ``p`` as a chunked file of ``region`` (format version 3): every chunk sealed as a
    new chunk object under a new random chunk id (:func:`write_chunks`, durable on return, its
    objects removed on error). Returns (size, chunk ids)."""
    fd = _open_regular(p)
    try:
        size = os.fstat(fd).st_size
        w = write_chunks(directory, chunks.keys, chunks.chunk_size, region, fd, size, objects_fd=objects_fd)
    finally:
        os.close(fd)
    return size, w.chunks


def _same_unprotected(directory: Path, prev: Entry, p: Path) -> bool:
    """True when the unprotected file ``prev``'s object holds exactly the bytes of ``p`` now.

    Unprotected content is not authenticated (no tag, no root: docs/volume-format.md, "File
    objects"), so whether the sealed version keeps this object or a new copy makes no
    difference to what a reader can rely on: either is host storage that the host can change
    before or after the seal. What must hold is that the sealed version holds what the
    application left, so the comparison is with the object as it is at the seal (not with a
    record of the mount time): an object changed in storage during the session differs and is
    rewritten from the mounted copy, as before. Missing or unreadable object: False.
    """
    if prev.chunks is not None or prev.region is not Region.UNPROTECTED:
        return False
    try:
        obj = open_object(object_path(directory, prev.file_id))
    except OSError:
        return False
    try:
        fd = _open_regular(p)
        try:
            return equal_contents(fd, obj, prev.size)
        finally:
            os.close(fd)
    finally:
        os.close(obj)


def _same_protected(directory: Path, key: VolumeKey, manifest: Manifest, prev: Entry, p: Path) -> bool:
    """True when ``p`` holds exactly the plaintext of the protected one-object file ``prev``.

    Each sealed chunk is authenticated before it is compared (:func:`same_plaintext`), so
    only an authentic object is kept as "unchanged"; one that no longer authenticates (changed
    in storage during the session) is logged and counts as changed: the mounted copy is then
    sealed anew. Only files of the same size are compared (the first differing chunk ends the
    comparison); which files an unmount rewrites is visible in the volume directory anyway.
    """
    if prev.chunks is not None or prev.region is Region.UNPROTECTED:
        return False
    fd = _open_regular(p)
    try:
        if os.fstat(fd).st_size != prev.size:
            return False
        try:
            obj = open_object(object_path(directory, prev.file_id))
        except OSError:
            return False
        try:
            codec = ChunkCodec(key.raw, manifest.volume_id, prev.file_id, prev.region)
            return same_plaintext(obj, fd, codec, prev, manifest.chunk_size)
        except SignatureError as exc:
            log.warning(
                "confide volume: the sealed object of %r failed authentication at unmount (%s; changed "
                "in storage during the session); sealed anew from the mounted copy",
                prev.path,
                exc.message,
            )
            return False
        finally:
            os.close(obj)
    finally:
        os.close(fd)


def _reseal_entries(
    directory: Path,
    key: VolumeKey,
    manifest: Manifest,
    tag: str,
    root: Path,
    baseline: dict[str, tuple[int, int, int, int]],
    chunks: ChunkReader,
    owners: bool,
) -> str:
    # every new object is written relative to the objects directory opened once here, never
    # through a symlink the host put in its place (docs/volume-format.md, "Directory layout")
    objects_fd = open_objects_dir(directory)
    try:
        return _reseal_entries_at(directory, key, manifest, tag, root, baseline, chunks, owners, objects_fd)
    finally:
        os.close(objects_fd)


def _reseal_entries_at(
    directory: Path,
    key: VolumeKey,
    manifest: Manifest,
    tag: str,
    root: Path,
    baseline: dict[str, tuple[int, int, int, int]],
    chunks: ChunkReader,
    owners: bool,
    objects_fd: int,
) -> str:
    old = manifest.by_path()
    entries: list[Entry] = []
    for dirpath, dirs, files in os.walk(root, onerror=_unlistable):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            vpath = str(p.relative_to(root))
            st = p.lstat()
            why = _unrepresentable(vpath, p)
            if why is not None:
                # a tmpfs cannot refuse the name when it is made (a FUSE mount does: EINVAL), and
                # a manifest with it could never be read again: skipped, like special files
                log.warning(
                    "confide volume: the volume format cannot hold %r (%s); not stored in the volume%s",
                    vpath,
                    why,
                    ", nor anything below it" if stat.S_ISDIR(st.st_mode) else "",
                )
                if name in dirs:
                    dirs.remove(name)  # os.walk does not descend into it
                continue
            mode = st.st_mode & 0o7777
            t = clamp_mtime_ns(st.st_mtime_ns)  # the format's range (docs/volume-format.md)
            prev = old.get(vpath)
            uid, gid = (prev.uid, prev.gid) if prev is not None and not owners else (st.st_uid, st.st_gid)
            if p.is_symlink():
                entries.append(
                    Entry(
                        vpath,
                        EntryKind.SYMLINK,
                        mode,
                        uid,
                        gid,
                        Region.UNPROTECTED,
                        target=os.readlink(p),
                        mtime_ns=t,
                    )
                )
            elif p.is_dir():
                if prev is None and mode == 0o755 and any(p.iterdir()):
                    continue  # an implicit directory stays implicit
                entries.append(Entry(vpath, EntryKind.DIR, mode, uid, gid, Region.UNPROTECTED, mtime_ns=t))
            elif p.is_file():
                if prev is not None and prev.kind is not EntryKind.FILE:
                    prev = None  # a directory or symlink replaced by a file: a new file
                now = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if prev is not None and (
                    baseline.get(vpath) == now
                    or _same_unprotected(directory, prev, p)
                    or _same_protected(directory, key, manifest, prev, p)
                ):
                    # unchanged: keeps its object(s), chunk ids included (version 3)
                    entries.append(replace(prev, mode=mode, uid=uid, gid=gid, mtime_ns=t))
                    continue
                if prev is not None and prev.chunks is not None:
                    size, ids = _reseal_chunked(directory, chunks, prev, p, objects_fd)
                    entries.append(
                        replace(prev, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=t, chunks=ids)
                    )
                    continue
                region = (
                    prev.region
                    if prev is not None
                    else region_for(vpath, manifest.rules, manifest.default_region)
                )
                chunk_ids: tuple[bytes, ...] | None = None
                if region is Region.UNPROTECTED:
                    fid, size, froot, _ = _store_file(
                        directory, key, manifest, vpath, p, region=region, deterministic=False,
                        objects_fd=objects_fd,
                    )  # fmt: skip
                else:
                    # a protected file stored as one object (or new): written chunked, as the FUSE
                    # commit path does (docs/volume-mount.md); later unmounts re-seal only its
                    # changed chunks
                    size, chunk_ids = _write_chunked(directory, chunks, region, p, objects_fd)
                    fid, froot = b"", bytes(ROOT_SIZE)
                entries.append(
                    Entry(
                        vpath, EntryKind.FILE, mode, uid, gid, region, fid, size, froot,
                        mtime_ns=t, chunks=chunk_ids,
                    )
                )  # fmt: skip
            else:
                log.warning("confide volume: %r is a special file; not stored in the volume", vpath)
    normalized = {e.path: e for e in entries}
    if normalized == {e.path: e for e in manifest.entries}:
        return tag
    return seal_entries(directory, key, manifest, entries, base_tag=tag)


def _unlistable(exc: OSError) -> None:
    """os.walk's error handler: a directory of the tree that cannot be listed (without
    CAP_DAC_OVERRIDE, one the application made unreadable) would otherwise be skipped, and its
    files, in the volume since before, would vanish from the sealed version. Nothing is sealed."""
    raise StorageError(
        f"cannot list a directory of the mounted tree ({exc.strerror or type(exc).__name__}); "
        "nothing was sealed"
    )


def _unrepresentable(vpath: str, p: Path) -> str | None:
    """Why the manifest cannot hold the entry at ``vpath`` (its path, or a symlink's target:
    docs/volume-format.md, "Manifest"), or None. Names come from the file system as str with
    surrogate escapes for bytes that are not UTF-8."""
    try:
        check_path(vpath)
        if p.is_symlink():
            check_symlink_target(os.readlink(p))
    except ParseError as exc:
        return exc.message
    return None


def _remove_plaintext(path: Path | str) -> None:
    """Remove the decrypted tree at ``path`` (the /dev/shm fallback), also where the application
    made a directory of it unreadable or unwritable: without CAP_DAC_OVERRIDE (a non-root
    caller, the fallback's case) ``shutil.rmtree`` skipped such a directory silently and left
    its plaintext in /dev/shm for good. Every entry is the caller's own, so it may chmod the
    directories (a directory, by ``lstat``: never a symlink's target) to 0700 and remove them
    then, one level further each pass, until a pass has nothing left to change.
    :data:`_GUARD_REMOVE` is the same, in the guard's own interpreter."""
    shutil.rmtree(path, ignore_errors=True)
    while os.path.isdir(path) and not os.path.islink(path):
        unlocked = _unlock(str(path))
        for root, dirs, _files in os.walk(path):
            unlocked += sum(_unlock(os.path.join(root, d)) for d in dirs)
        shutil.rmtree(path, ignore_errors=True)
        if not unlocked:
            break


def _unlock(path: str) -> int:
    """1 when ``path`` is a directory (not a symlink) whose mode was not 0700 and now is."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) == 0o700:
            return 0
        os.chmod(path, 0o700)
    except OSError:
        return 0
    return 1


# The guard's removal (a fresh interpreter, ``-I``: nothing of confide imported): as
# :func:`_remove_plaintext`.
_GUARD_REMOVE = (
    "import stat\n"
    "def unlock(c):\n"
    "    try:\n"
    "        m = os.lstat(c).st_mode\n"
    "        if not stat.S_ISDIR(m) or stat.S_IMODE(m) == 0o700:\n"
    "            return 0\n"
    "        os.chmod(c, 0o700)\n"
    "    except OSError:\n"
    "        return 0\n"
    "    return 1\n"
    "def remove(p):\n"
    "    shutil.rmtree(p, ignore_errors=True)\n"
    "    while os.path.isdir(p) and not os.path.islink(p):\n"
    "        n = unlock(p)\n"
    "        for r, ds, _ in os.walk(p):\n"
    "            n += sum(unlock(os.path.join(r, d)) for d in ds)\n"
    "        shutil.rmtree(p, ignore_errors=True)\n"
    "        if not n:\n"
    "            break\n"
)


def _from_parent(info: signal.struct_siginfo, parent: int) -> bool:
    """A stop signal the shm guard (or the FUSE server, ``_fusefs._StopSignal``) acts on: sent
    by ``parent`` with kill(2) (``SI_USER``, the kernel's sender pid), or any once the parent is
    gone (the parent-death signal)."""
    return (info.si_code == _SI_USER and info.si_pid == parent) or os.getppid() != parent


def _fork_guard(shm: Path) -> int:
    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; only os/signal/ctypes calls, then _exit
        try:
            os.close(r)
            os.setsid()  # out of the caller's process group, as the exec'd guard
            for sig in HELD_SIGNALS:  # a service manager's stop is the caller's, as for the FUSE server
                signal.signal(sig, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_BLOCK, [SERVER_STOP_SIGNAL])  # taken with its sender
            _libc().prctl(_PR_SET_PDEATHSIG, int(SERVER_STOP_SIGNAL), 0, 0, 0)
            if os.getppid() == parent:
                os.write(w, b"r")
                os.close(w)
                while not _from_parent(signal.sigwaitinfo([SERVER_STOP_SIGNAL]), parent):
                    pass  # another process's: ignored
            _remove_plaintext(shm)
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return pid


class _Guard:
    def __init__(self, pid: int, proc: subprocess.Popen[bytes] | None) -> None:
        self.pid, self.proc = pid, proc

    def stop(self) -> None:
        """Stop the guard (the caller removed the tree already). Killed after 10 s: a stop
        signal that reaches it without its sender (the user's queue of pending signals full,
        RLIMIT_SIGPENDING) is ignored as another process's."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, SERVER_STOP_SIGNAL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc is not None:
                done = self.proc.poll() is not None
            else:
                done = os.waitpid(self.pid, os.WNOHANG)[0] != 0
            if done:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                if self.proc is not None:
                    self.proc.wait()
                else:
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.005)


class _TmpfsMount(MountHandle):
    def __init__(
        self,
        volume_dir: Path,
        key: VolumeKey,
        mountpoint: Path,
        tag: str,
        writable: bool,
        manifest: Manifest,
        lock: int | None,
        private_namespace: bool,
        ephemeral: bool = False,
    ) -> None:
        self._dir, self._key, self._manifest, self._lock = volume_dir, key, manifest, lock
        self._write_piece: int | None = None
        self._owners = os.geteuid() == 0  # open_volume applies the recorded owners only as root
        self._guard: _Guard | None = None
        self._restore_dir = False
        try:
            if private_namespace:
                _private_namespace()
                mountpoint.mkdir(parents=True, exist_ok=True)
                self._write_piece = _mount_tmpfs(mountpoint)
                super().__init__(mountpoint, "tmpfs", writable, tag, mountpoint, ephemeral)
            else:
                shm = Path(tempfile.mkdtemp(prefix="confide-volume-", dir="/dev/shm"))  # mode 0700
                super().__init__(mountpoint, "shm", writable, tag, shm, ephemeral)
                self._guard = self._start_guard(shm)
        except BaseException:
            if lock is not None:
                os.close(lock)
            if not private_namespace and getattr(self, "path", None) is not None:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        try:
            open_volume(
                volume_dir, key, self.path, tag, preserve_owner=self._owners, write_piece=self._write_piece
            )
            self._baseline = _snapshot(self.path) if writable and not ephemeral else {}
            if self.mode == "tmpfs" and not writable:
                flags = _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
                if _libc().mount(None, bytes(mountpoint), None, flags, None) != 0:
                    raise StorageError(_errno_msg(f"remounting {str(mountpoint)!r} read-only failed"))
            if self.mode == "shm":
                if mountpoint.is_dir() and not mountpoint.is_symlink():
                    mountpoint.rmdir()  # must be empty: refuses otherwise
                    self._restore_dir = True
                mountpoint.symlink_to(self.path, target_is_directory=True)
        except OSError as exc:
            self._teardown()
            raise StorageError(
                f"cannot expose the volume at {str(mountpoint)!r}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            self._teardown()
            raise

    @staticmethod
    def _start_guard(shm: Path) -> _Guard:
        """A child that removes ``shm`` when we die (PR_SET_PDEATHSIG) or when told to, both by
        :data:`SERVER_STOP_SIGNAL` (SIGTERM before 2026-12-07). In a session of its own: a signal
        to the caller's process group (a terminal's ^C, which killed it without removing
        anything) is the caller's to handle; :data:`HELD_SIGNALS` sent to it directly (a service
        manager's stop) are ignored, as by the FUSE server: they removed the tree still in use.

        A fresh interpreter when ours can be executed (no inherited descriptors), else a fork.
        """
        stop = int(SERVER_STOP_SIGNAL)
        code = (
            "import ctypes,os,shutil,signal,sys\n" + _GUARD_REMOVE + "parent = int(sys.argv[2])\n"
            f"for s in {tuple(int(x) for x in HELD_SIGNALS)}: signal.signal(s, signal.SIG_IGN)\n"
            f"signal.pthread_sigmask(signal.SIG_BLOCK, [{stop}])\n"
            f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, {stop}, 0, 0, 0)\n"
            "if os.getppid() == parent:\n"
            "    print('ready', flush=True)\n"
            "    while True:\n"
            f"        i = signal.sigwaitinfo([{stop}])\n"
            f"        if (i.si_code == {_SI_USER} and i.si_pid == parent) or os.getppid() != parent:\n"
            "            break\n"
            "        print(f'confide volume: the /dev/shm guard ignored signal {i.si_signo} from pid '"
            " f'{i.si_pid}', file=sys.stderr, flush=True)\n"
            "remove(sys.argv[1])\n"
        )
        try:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-I", "-c", code, str(shm), str(os.getpid())],
                stdout=subprocess.PIPE,
                cwd="/",
                start_new_session=True,  # a terminal's ^C is the caller's to handle, as the FUSE server's
            )
        except OSError:
            return _Guard(_fork_guard(shm), None)
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()
        return _Guard(proc.pid, proc)

    def _teardown(self) -> None:
        if self.mode == "tmpfs":
            libc = _libc()
            if (
                libc.umount2(bytes(self.mountpoint), 0) != 0
                and libc.umount2(bytes(self.mountpoint), _MNT_DETACH) != 0
            ):
                log.error("%s", _errno_msg(f"umount {str(self.mountpoint)!r}"))
        else:
            if self.mountpoint.is_symlink() and Path(os.readlink(self.mountpoint)) == self.path:
                self.mountpoint.unlink()
                if self._restore_dir:
                    self.mountpoint.mkdir(mode=0o755)
            _remove_plaintext(self.path)
            if self._guard is not None:
                self._guard.stop()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self.closed = True

    def abort(self) -> None:
        if not self.closed:
            self._teardown()

    def close(self) -> str:
        if self.closed:
            return self.tag
        try:
            if self.writable and not self.ephemeral:
                self.tag = _reseal_tree(
                    self._dir,
                    self._key,
                    self._manifest,
                    self.tag,
                    self.path,
                    self._baseline,
                    owners=self._owners,
                )
        except OSError as exc:  # the volume directory (ENOSPC, EIO, removed); no file name (plaintext tree)
            raise StorageError(
                f"volume {str(self._dir)!r}: cannot seal the session's changes "
                f"({exc.strerror or type(exc).__name__}); they are discarded"
            ) from None
        except StorageError as exc:  # e.g. a symlinked objects directory (open_objects_dir)
            raise StorageError(f"{exc.message}; the session's changes are discarded") from None
        finally:
            self._teardown()
        return self.tag


# --- entry point -----------------------------------------------------------------------------


def mount_volume(
    volume_dir: Path,
    key: VolumeKey,
    mountpoint: Path,
    *,
    expected_tag: str | None,
    mode: MountMode = "auto",
    writable: bool = False,
    on_parent_exit: Literal["discard", "commit"] = "discard",
    ephemeral: bool = False,
    memory_limit: int | None = None,
    wait: float = 0.0,
    stop: Stop | None = None,
    held: HeldLock | None = None,
) -> MountHandle:
    """Expose the sealed volume at ``mountpoint``; refuse before serving anything if the
    manifest does not authenticate (:class:`SignatureError`) or its tag is not
    ``expected_tag`` (:class:`RollbackError`). ``expected_tag=None`` accepts the current
    version (no freshness check; for manual use only).

    ``on_parent_exit`` (FUSE, writable): what the child does with the changes when the caller
    dies without ``close()``: ``discard`` (default: the volume stays at the tag the CAS knows)
    or ``commit`` (seal anyway; the new tag is then only in the volume, so the CAS will refuse
    it until told). Call from the thread that will exec the application (the FUSE child's
    parent-death signal and the tmpfs namespace are tied to the calling thread).

    ``ephemeral``: writable, but never sealed (``close()`` drops the changes and returns the
    tag mounted; ``on_parent_exit`` does not apply): the changes stay in the private tmpfs copy
    or in the FUSE server's memory, never in the volume directory, and the volume's lock is
    taken shared, as for a read-only mount, so other read-only and ephemeral mounts of the same
    directory may be live at the same time; a writable (sealing) mount, ``add``, ``rm`` and
    ``seal`` still need the lock alone. An ephemeral FUSE session holds its files' changes in
    at most ``memory_limit`` bytes (else $CONFIDE_EPHEMERAL_MEMORY, else the larger of 1 GiB and
    the volume's file bytes: :func:`ephemeral_memory`); past it writes fail with ``ENOSPC``.
    The tmpfs modes do not apply it (their copy is bounded by the tmpfs's own size).

    The volume's lock is taken before the key is used (shared for read-only and ephemeral
    mounts, else exclusive), waiting at most ``wait`` seconds while another holds it, and
    behind a waiting writer (:func:`confide.volume.lock.lock_volume`; ``stop``: a stop signal
    ends the wait), unless the caller took it already (``held``, which this call then owns).
    """
    volume_dir = volume_dir.resolve()
    mountpoint = Path(os.path.abspath(mountpoint))
    writable = writable or ephemeral
    sealable = writable and not ephemeral  # may write into the volume directory
    # what can be refused without the volume comes before any wait for its lock
    if mode not in ("auto", "fuse", "tmpfs"):
        raise UsageError(f"mount mode: got {mode!r}, expected auto, fuse or tmpfs")
    _large_folio_choice()  # a bad $CONFIDE_TMPFS_FOLIOS is a usage error before anything is mounted
    if ephemeral:  # a bad $CONFIDE_EPHEMERAL_MEMORY too, whatever the mode
        _memory_setting(memory_limit)
    use_fuse = False
    if mode in ("auto", "fuse"):
        why = fuse_usable()
        if why is None:
            if not mountpoint.is_dir():
                raise UsageError(f"mountpoint {str(mountpoint)!r}: got a missing path or a non-directory")
            use_fuse = True
        elif mode == "fuse":
            raise StorageError(f"cannot mount with FUSE: {why}")
        else:
            log.info("confide volume: %s; using tmpfs", why)
    # The lock first (waiting for it, if asked): the key decrypts nothing before it is held. A
    # volume in use is refused here, in one line, whatever the mode (a FUSE server's failure
    # would make `auto` try tmpfs, with a misleading warning).
    if held is None:
        held = HeldLock(lock_volume(volume_dir, shared=not sealable, wait=wait, stop=stop))
    try:
        manifest, tag = load_sealed(volume_dir, key, expected_tag)
        if sealable and pending_changes(volume_dir, key, locked=True):
            raise UsageError(
                f"volume {str(volume_dir)!r} has unsealed changes ({PENDING_NAME}); seal or remove them "
                "before mounting it writable"
            )
        budget = ephemeral_memory(manifest, memory_limit) if ephemeral else None
        if use_fuse:
            try:
                handle: MountHandle = _FuseMount(
                    volume_dir, key, mountpoint, tag, writable, on_parent_exit, ephemeral, budget, held.fd
                )
            except StorageError as exc:
                if mode == "fuse":
                    raise
                log.warning("confide volume: FUSE mount failed (%s); falling back to tmpfs", exc.message)
            else:
                held.fd = None  # the handle's now
                return handle
        lock, held.fd = held.fd, None
        # owns the lock from here on (released by close(), or on a failure inside)
        root = os.geteuid() == 0
        return _TmpfsMount(volume_dir, key, mountpoint, tag, writable, manifest, lock, root, ephemeral)
    finally:
        held.release()


class HeldLock:
    """A volume's lock taken before :func:`mount_volume` (``held=``): its descriptor
    (:func:`~confide.volume.lock.lock_volume`; None: a shared lock without a lock file).
    :func:`mount_volume` takes it over: the mount releases it at its end, and a failure to
    mount at once. :meth:`release` a lock not handed over."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def end_by_signal(exc: WaitStoppedError) -> NoReturn:
    """The end of a command whose wait for a volume's lock a stop signal ended (nothing mounted
    or changed): its one-line error on stderr, then the signal again with its default action,
    so that the caller sees the process ended by it (a shell: 128 + N; a service manager: a
    stop that worked), as it would have without the handlers that held it during the wait."""
    sys.stderr.write(f"error: {printable_lines(exc.diagnostics())}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    signal.signal(exc.signal, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [exc.signal])
    os.kill(os.getpid(), exc.signal)
    sys.exit(128 + exc.signal)  # not reached: the default action of a stop signal ends the process


class StopSignals:
    """Hold SIGINT, SIGTERM and SIGHUP for the whole life of a mount (``confide volume mount``).

    Entered before anything is mounted and left after the unmount: a stop signal that arrives
    while the volume is being mounted, after it is mounted, or while it is unmounted and sealed
    is recorded instead of stopping the process (a ``KeyboardInterrupt`` between the mount and
    the wait, or SIGTERM's default action, left the session unsealed), and :meth:`wait` returns
    at once if one already came. Handlers, not a blocked signal mask: a mask would be inherited
    by the FUSE server and the tmpfs guard, which must keep reacting to SERVER_STOP_SIGNAL. Main thread
    only (``signal.signal``); ``set_wakeup_fd`` wakes :meth:`wait` whichever thread the kernel
    delivers a signal to."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._previous: dict[int, object] = {}
        self._wakeup_r = self._wakeup_w = -1
        self._old_wakeup = -1
        self._wakeup_set = False

    def _note(self, sig: int, _frame: object) -> None:
        self.received.append(sig)

    def __enter__(self) -> StopSignals:
        self._wakeup_r, self._wakeup_w = os.pipe()
        try:
            os.set_blocking(self._wakeup_w, False)
            self._old_wakeup = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
            self._wakeup_set = True
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._note)
        except BaseException:  # e.g. ValueError outside the main thread: leave nothing behind
            self.__exit__(None, None, None)
            raise
        return self

    def wait(self, handle: MountHandle | None = None) -> int | None:
        """The first stop signal received; blocks until one arrives if none did yet. With a
        ``handle``: None as soon as it reports its mount lost (:meth:`MountHandle.mount_lost`,
        its FUSE server died or was unmounted from outside) before a stop signal came."""
        while not self.received:
            if handle is not None and handle.mount_lost():
                return None
            fd = None if handle is None else handle.status_fd()
            ready, _, _ = select.select([self._wakeup_r] + ([] if fd is None else [fd]), [], [])
            if self._wakeup_r in ready:
                os.read(self._wakeup_r, 64)  # the handler has run (PEP 475) or runs before the next read
        return self.received[0]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
        if self._wakeup_set:
            signal.set_wakeup_fd(self._old_wakeup)
            self._wakeup_set = False
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

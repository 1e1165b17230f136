"""Run ``confide`` as a user that is not root, from a test running as root: ``nobody`` (else a
throwaway ``useradd`` user) in a private mount namespace held by a root helper (``unshare
--mount``), where a tmpfs on ``/run/confide`` holds ``/run/confide/volumes`` (root's, mode
1777: the documented setup for runs of several users) and the interpreter, the virtual
environment's packages and this checkout's sources are bound at paths every user may reach
(the interpreter may lie under a 0700 ``/root``, as pyenv's does; its shared libpython, found by
an absolute RUNPATH, through ``LD_LIBRARY_PATH``). What the user must read or own goes in
:attr:`User.work`, a directory of its own under ``/tmp``, removed at the end. The machine is left
as it was. Used by tests/integration/test_run_not_root_e2e.py and test_volume_mount_cli.py."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cas_harness import ROOT

SRC = ROOT / "src"
PY = Path("/run/confide/test-python")  # in the namespace: the interpreter, packages, sources


def why_not() -> str | None:
    """Why this machine cannot run a command as another user this way (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (to create the namespace and switch to another uid)"
    missing = [t for t in ("unshare", "nsenter", "setpriv") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (util-linux)"
    return None


_HOLDER = """
import os, subprocess, sys
base, site, src = sys.argv[1:]
def run(*a):
    subprocess.run(a, check=True)
os.makedirs("/run/confide", exist_ok=True)
run("mount", "-t", "tmpfs", "-o", "mode=0755", "confide-test", "/run/confide")
os.mkdir("/run/confide/volumes")
os.chmod("/run/confide/volumes", 0o1777)
for name, source in (("base", base), ("site", site), ("src", src)):
    target = "/run/confide/test-python/" + name
    os.makedirs(target)
    run("mount", "--bind", "-o", "ro", source, target)
print("ready", flush=True)
sys.stdin.read()  # the namespace lives until the test closes this
"""


@contextmanager
def user_uid() -> Iterator[int]:
    """A uid with a passwd entry (``fusermount3`` wants the user's name): ``nobody``'s, else a
    throwaway user (``useradd``, removed at the end)."""
    try:
        nobody: int | None = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        nobody = None
    if nobody is not None:  # (not a yield under suppress(KeyError): the test's own KeyError)
        yield nobody
        return
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs a user 'nobody' or useradd/userdel to make one (fusermount3 wants a user name)")
    name = f"confide-test-{os.getpid()}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@dataclass
class User:
    uid: int
    work: Path
    holder: subprocess.Popen[str]
    env: dict[str, str]

    def as_user(self, *argv: str) -> list[str]:
        """The command line that runs ``argv`` as this user, in the namespace."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", "setpriv", f"--reuid={self.uid}",
                f"--regid={self.uid}", "--clear-groups", "--", *argv]  # fmt: skip

    def command(self, *args: str) -> list[str]:
        """``python -m confide ARGS`` as this user, in the namespace."""
        return self.as_user(str(PY / "base" / "bin" / Path(sys.executable).name), "-m", "confide", *args)

    def confide(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``confide ARGS`` started in :attr:`work` (``env``: added to :attr:`env`)."""
        return subprocess.Popen(
            self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**self.env, **(env or {})}, cwd=self.work,
        )  # fmt: skip

    def in_namespace(self, path: Path) -> Path:
        return Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")


@contextmanager
def not_root_user() -> Iterator[User]:
    """A :class:`User` (skips the test where the namespace cannot be made)."""
    why = why_not()
    if why is not None:
        pytest.skip(why)
    with user_uid() as uid:
        yield from in_namespace(uid)


def in_namespace(uid: int) -> Iterator[User]:
    """The namespace and the :class:`User` of ``uid`` in it, yielded once. Whatever the outcome,
    every process in that namespace (runs, FUSE servers, programs of killed runs) is SIGKILLed at
    the end (a descriptor of the namespace held meanwhile, so that its inode number, by which its
    processes are found, cannot pass to a new namespace), and the namespace goes with the last."""
    work = Path(tempfile.mkdtemp(prefix="confide-not-root-"))
    work.chmod(0o755)
    base = Path(sys.base_prefix).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", _HOLDER,
         str(base), str(site), str(SRC)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    ns: tuple[int, int] | None = None
    pin = -1  # a descriptor of the namespace: while open, its inode number is not reused
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            pytest.skip("cannot make the test's mount namespace (unshare --mount, tmpfs, bind mounts)")
        # only now: before its unshare, the holder is in ours
        pin = os.open(f"/proc/{holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        theirs = (os.fstat(pin).st_dev, os.fstat(pin).st_ino)
        assert theirs != namespace(os.getpid()), "the holder is not in a namespace of its own"
        ns = theirs  # never ours: every process in it is killed at the end
        home = work / "home"
        home.mkdir()
        os.chown(home, uid, uid)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "PYTHONPATH": f"{PY / 'src'}:{PY / 'site'}",
        }
        libdir = Path(sysconfig.get_config_var("LIBDIR") or "/").resolve()
        if libdir.is_relative_to(base):  # a shared libpython found by an absolute RUNPATH (pyenv)
            env["LD_LIBRARY_PATH"] = str(PY / "base" / libdir.relative_to(base))
        yield User(uid, work, holder, env)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        if ns is not None:  # whatever entered it: runs, FUSE servers, programs left running
            kill_namespace(ns)
        if pin >= 0:  # the namespace (and its mounts) goes once this is closed
            os.close(pin)
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


def namespace(pid: int) -> tuple[int, int]:
    """The mount namespace of process ``pid`` (device and inode of ``/proc/PID/ns/mnt``)."""
    st = os.stat(f"/proc/{pid}/ns/mnt")
    return (st.st_dev, st.st_ino)


def kill_namespace(ns: tuple[int, int], timeout: float = 30) -> None:
    """SIGKILL every process in the mount namespace ``ns`` (the test's own: only what the test
    started entered it, through ``nsenter``) until none is left, so that a test that failed
    midway leaves no process, and with the last one the namespace and its mounts, behind (a
    program of a killed run loops until its ``go`` file appears; it is not a child of the test).
    The caller keeps a descriptor of the namespace open meanwhile: a namespace's inode number
    is reused at once once it is gone (the next new namespace, e.g. a root ``confide run``'s
    private one, would be taken for it)."""
    assert ns != namespace(os.getpid()), "not the test's own namespace"
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):  # gone, or a zombie (no namespace any more)
                    if namespace(int(entry)) == ns:
                        left.append(int(entry))
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {left} of the test's mount namespace survive SIGKILL")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)

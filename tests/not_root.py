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
import subprocess
import sys
import sysconfig
import tempfile
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
def _uid() -> Iterator[int]:
    """A uid with a passwd entry (``fusermount3`` wants the user's name): ``nobody``'s, else a
    throwaway user (``useradd``, removed at the end)."""
    with contextlib.suppress(KeyError):
        yield pwd.getpwnam("nobody").pw_uid
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
    with _uid() as uid:
        work = Path(tempfile.mkdtemp(prefix="confide-not-root-"))
        work.chmod(0o755)
        base = Path(sys.base_prefix).resolve()
        site = Path(sysconfig.get_paths()["purelib"]).resolve()
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", _HOLDER,
             str(base), str(site), str(SRC)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "ready":
                pytest.skip("cannot make the test's mount namespace (unshare --mount, tmpfs, bind mounts)")
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
            holder.wait(30)
            assert holder.stdout is not None
            holder.stdout.close()
            shutil.rmtree(work, ignore_errors=True)

"""Two real ``confide run``s without root at the same time, end to end (docs/volume-mount.md,
"Sharing a volume"): real processes of a uid that is not root, a real CAS, real FUSE mounts
through the setuid ``fusermount3``, and a run killed with SIGKILL whose directory the next run
collects.

The runs are ``nobody``'s (else a throwaway user's), in a private mount namespace of the test's
where ``/run/confide/volumes`` is root's with mode 1777 (tests/not_root.py); whatever the outcome,
every process in that namespace is SIGKILLed at the end and the namespace goes with it."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess, running_cas
from confide.volume.mount import fuse_usable
from not_root import SRC, User, in_namespace, namespace, not_root_user, user_uid
from not_root import why_not as namespace_why_not

VOLUMES = Path("/run/confide/volumes")


def _why_not() -> str | None:
    why = namespace_why_not()
    if why is not None:
        return why
    why = fuse_usable()
    if why is not None:
        return f"FUSE: {why}"
    if shutil.which("fusermount3") is None or not os.stat(shutil.which("fusermount3") or "").st_mode & 0o4000:
        return "needs a setuid fusermount3 (FUSE mounts without root)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture
def user() -> Iterator[User]:
    with not_root_user() as u:
        yield u


def _root_confide(cas: CasProcess, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), **cas.env}
    r = subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True, env=env,
                       timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


_PROGRAM = """
out="$(dirname "$0")/out"
printf '%s\\n' "$CONFIDE_VOLUME_DATA" > "$out/$$.path"
echo "$$" > "$CONFIDE_VOLUME_DATA/who"
while [ ! -e "$out/go" ]; do sleep 0.05; done
[ "$(cat "$CONFIDE_VOLUME_DATA/who")" = "$$" ] || { echo "saw another run's file"; exit 3; }
cat "$CONFIDE_VOLUME_DATA/notes.txt"
echo "done $$"
"""


def _mounts(pid: int) -> dict[str, str]:
    """Mount point -> file system type, in the mount namespace of ``pid``."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-", 6)
        found[fields[4]] = fields[sep + 1]
    return found


def _wait_paths(out: Path, n: int, procs: list[subprocess.Popen[str]]) -> dict[int, Path]:
    deadline = time.monotonic() + 90
    while True:
        got = {int(p.name.split(".")[0]): Path(p.read_text().strip()) for p in out.glob("*.path")}
        if len(got) >= n and all(str(p) for p in got.values()):
            return got
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"confide run ended early ({proc.returncode}): {proc.communicate()}")
        assert time.monotonic() < deadline, "the runs did not start their programs"
        time.sleep(0.05)


def _stop(out: Path, *runs: subprocess.Popen[str]) -> None:
    """Kill what is left of the runs and their programs (which hold the runs' output pipes)."""
    for pid_file in out.glob("*.path"):
        pid = pid_file.name.split(".")[0]
        with contextlib.suppress(OSError):  # only a program of ours still running (not a reused pid)
            if str(out.parent / "app.sh").encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
    for run in runs:
        if run.poll() is None:
            run.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.communicate(timeout=30)


def test_two_concurrent_runs_without_root_and_a_killed_runs_directory(user: User, tmp_path: Path) -> None:
    with running_cas(tmp_path / "cas", None) as cas:
        # the CAS's client files, readable by the run's user
        client = user.work / "client"
        client.mkdir()
        shutil.copy(cas.env["CONFIDE_CAS_CERT"], client / "cas-cert.pem")
        shutil.copytree(cas.env["CONFIDE_SIM_DIR"], client / "sim")
        user.env.update(cas.env)
        user.env.update(CONFIDE_CAS_CERT=str(client / "cas-cert.pem"), CONFIDE_SIM_DIR=str(client / "sim"))
        # an ephemeral volume: several runs may mount it at once
        vol, keyfile, src = user.work / "vol", tmp_path / "vol.key", tmp_path / "src"
        src.mkdir()
        (src / "notes.txt").write_text("first line\n")
        _root_confide(cas, "volume", "create", str(vol), "--key-out", str(keyfile))
        _root_confide(cas, "volume", "add", str(vol), str(src), "--key", str(keyfile))
        tag = _root_confide(cas, "volume", "seal", str(vol), "--key", str(keyfile)).split()[-1]
        program = user.work / "app.sh"
        program.write_text(_PROGRAM)
        out = user.work / "out"
        out.mkdir()
        for p in [client, *client.rglob("*"), vol, *vol.rglob("*"), out]:
            os.lchown(p, user.uid, user.uid)
        alice = tmp_path / "alice.id"
        _root_confide(cas, "identity", "create", "--out", str(alice), "--name", "alice")
        measurement = _root_confide(cas, "sim", "measure", "--", "/bin/sh", str(program)).strip()
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"""
name: shared
version: "0.3"
services:
  - name: app
    image_name: img
    attestation:
      sim:
        measurement: "{measurement}"
volumes:
  - name: data
    fspf_key: {keyfile.read_text().strip()}
    fspf_tag: "{tag}"
images:
  - name: img
    volumes:
      - name: data
        path: {vol}
        update_policy: ephemeral
security:
  attestation:
    tolerate: [simulation]
""")
        _root_confide(cas, "policy", "apply", str(policy), "--identity", str(alice))
        run = ("run", "--config-id", "shared/app", "--tee", "sim", "--", "/bin/sh", str(program))

        # two runs at the same time: each mounts in a directory of its own
        a, b = user.confide(*run), user.confide(*run)
        try:
            paths = _wait_paths(out, 2, [a, b])
            pa, pb = sorted(paths.values())
            assert pa != pb and pa.name == pb.name == "data"
            assert pa.parent.parent == pb.parent.parent == VOLUMES and pa.parent.name.startswith("run-")
            mounts = _mounts(a.pid)
            assert mounts.get(str(pa)) == mounts.get(str(pb)) == "fuse.confide", mounts
            own = user.in_namespace(pa.parent)
            assert own.stat().st_uid == user.uid and (own.stat().st_mode & 0o777) == 0o700
            (out / "go").touch()
            ra, rb = a.communicate(timeout=120), b.communicate(timeout=120)
        finally:
            _stop(out, a, b)
        for proc, (stdout, stderr) in ((a, ra), (b, rb)):
            assert proc.returncode == 0, stderr
            assert stdout.startswith("first line\ndone "), stdout
        assert os.listdir(user.in_namespace(VOLUMES)) == []  # both directories removed

        # a run killed with SIGKILL leaves its directory; the next run collects it
        (out / "go").unlink()
        for p in out.glob("*.path"):
            p.unlink()
        killed = user.confide(*run)
        try:
            [(program_pid, path)] = _wait_paths(out, 1, [killed]).items()
            killed.send_signal(signal.SIGKILL)
            killed.wait(30)
            os.kill(program_pid, signal.SIGKILL)  # its program, left running (it holds the pipes)
            killed.communicate(timeout=30)
        finally:
            _stop(out, killed)
        deadline = time.monotonic() + 30
        while str(path) in _mounts(user.holder.pid):  # its FUSE server unmounts (its parent died)
            assert time.monotonic() < deadline, "the killed run's FUSE server did not unmount"
            time.sleep(0.1)
        left = user.in_namespace(path.parent)
        assert sorted(os.listdir(left)) == [".lock", "data"]  # nothing removed it
        (out / "go").touch()
        nxt = user.confide(*run)
        try:
            stdout, stderr = nxt.communicate(timeout=120)
        finally:
            _stop(out, nxt)
        assert nxt.returncode == 0, stderr
        assert not left.exists() and os.listdir(user.in_namespace(VOLUMES)) == []


def test_a_failed_test_leaves_no_process_in_its_namespace_and_nouser_uid() -> None:
    # what a failure midway leaves: a run's program that is no child of the test's (its run was
    # killed), looping in the namespace; the fixture's end must take it and the namespace away
    with user_uid() as uid:
        gen = in_namespace(uid)
        user = next(gen)
        shell = subprocess.run(
            ["nsenter", f"--mount=/proc/{user.holder.pid}/ns/mnt", "--", "sh", "-c",
             "sleep 300 >/dev/null 2>&1 </dev/null & echo $!"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        orphan = int(shell.stdout)
        ns = namespace(user.holder.pid)
        pin = os.open(f"/proc/{user.holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)  # its number kept
        try:
            assert namespace(orphan) == ns
            gen.close()  # as pytest ends a fixture after a failure
            deadline = time.monotonic() + 10
            while _in(orphan, ns) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _in(orphan, ns), "a process of the test's namespace survives"
        finally:
            if _in(orphan, ns):
                os.kill(orphan, signal.SIGKILL)
            os.close(pin)


def _in(pid: int, ns: tuple[int, int]) -> bool:
    """Whether ``pid`` is a live process in ``ns`` (a zombie, killed, has no namespace)."""
    try:
        return namespace(pid) == ns
    except OSError:
        return False


def test_a_key_error_in_the_test_is_the_tests_and_makes_no_user(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody': the throwaway user's path is the one taken")

    def no_useradd(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a user would be made: {args}")

    monkeypatch.setattr(subprocess, "run", no_useradd)
    with pytest.raises(KeyError, match="the test's own"), user_uid():
        raise KeyError("the test's own")


def test_a_new_namespace_is_never_taken_for_the_tests_own() -> None:
    # a namespace's inode number passes to the next new namespace once it is gone (the lowest
    # free one): the fixture keeps its namespace's while it kills by it, so a root `confide
    # run`'s private namespace made meanwhile (another test's) is not killed as the test's
    with user_uid() as uid:
        gen = in_namespace(uid)
        user = next(gen)
        ns = namespace(user.holder.pid)
        assert user.holder.stdin is not None
        user.holder.stdin.close()
        user.holder.wait(30)  # its last process gone: the namespace lives on only if pinned
        other = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sleep", "60"])
        try:
            deadline = time.monotonic() + 10
            while namespace(other.pid) == namespace(os.getpid()):  # until its unshare
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert namespace(other.pid) != ns
            gen.close()
            assert other.poll() is None, "another namespace's process was killed as the test's"
        finally:
            other.kill()
            other.wait()

"""Two real ``confide run``s without root at the same time, end to end (docs/volume-mount.md,
"Sharing a volume"): real processes of a uid that is not root, a real CAS, real FUSE mounts
through the setuid ``fusermount3``, and a run killed with SIGKILL whose directory the next run
collects.

The runs are ``nobody``'s (else a throwaway user's), in a private mount namespace of the test's
where ``/run/confide/volumes`` is root's with mode 1777 (tests/not_root.py)."""

from __future__ import annotations

import contextlib
import os
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
from not_root import SRC, User, not_root_user
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
        stdout, stderr = nxt.communicate(timeout=120)
        assert nxt.returncode == 0, stderr
        assert not left.exists() and os.listdir(user.in_namespace(VOLUMES)) == []

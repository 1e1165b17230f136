"""Services sharing one copy of a protected volume: ``confide run`` (simulated TEE, a real CAS)
of two services that get the same volume ``ephemeral`` at the same time, over FUSE and over the
tmpfs fallback; a sealing (``rollback_protected``) run excludes them and they exclude it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, running_cas
from confide import errors
from confide.volume import VolumeKey
from confide.volume.mount import fuse_usable
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="concurrent runs mount in private mount namespaces (root)"
)

# A bogus libfuse path makes fuse_usable() fail in the confide processes: `auto` takes tmpfs.
NO_FUSE = {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so"}


def _modes() -> list[object]:
    why = fuse_usable()
    return [pytest.param("fuse", marks=pytest.mark.skipif(why is not None, reason=f"FUSE: {why}")), "tmpfs"]


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasProcess]:
    with running_cas(tmp_path / "cas", None) as proc:
        yield proc


def confide(
    cas: CasProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True,
                          env=_env(cas, env), timeout=180, check=False)  # fmt: skip


def _env(cas: CasProcess, extra: dict[str, str] | None) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **cas.env, **(extra or {})}


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def tree_digest(root: Path) -> str:
    """Every name, type, mode, size, mtime and content below ``root`` (the lock file included)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)}|{st.st_mode:o}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


# The service: shows the data, changes it (a file appended to, a file created, a file removed),
# then waits at a barrier (a directory outside the volume) until WANT services have arrived,
# so that the runs overlap and each has written before any looks; then lists what it sees.
SERVICE = """d="$CONFIDE_VOLUME_DATA"
printf 'fs=%s\\n' "$(awk -v m="$d" '$2 == m {{print $3}}' /proc/self/mounts)"
cat "$d/notes.txt"
echo "run $$" >> "$d/notes.txt"
echo "$$" > "$d/mine-$$"
rm -f "$d/shared.txt"
touch "{barrier}/$$"
i=0
while [ "$(ls "{barrier}" | wc -l)" -lt "$(cat "{want}")" ]; do
  sleep 0.1; i=$((i + 1)); [ "$i" -lt 1200 ] || {{ echo "barrier timeout" >&2; exit 7; }}
done
echo "--"
ls "$d"
cat "$d/notes.txt"
"""


class Setup:
    def __init__(self, cas: CasProcess, tmp: Path) -> None:
        self.cas, self.tmp = cas, tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.barrier, self.want = tmp / "barrier", tmp / "want"
        self.barrier.mkdir()
        self.want.write_text("2\n")
        src, self.vol, keyfile = tmp / "src", tmp / "vol", tmp / "vol.key"
        src.mkdir()
        (src / "notes.txt").write_text("first line\n")
        (src / "shared.txt").write_text("removed by each run, in its own view only\n")
        ok(confide(cas, "volume", "create", str(self.vol), "--key-out", str(keyfile)))
        ok(confide(cas, "volume", "add", str(self.vol), str(src), "--key", str(keyfile)))
        self.tag = ok(confide(cas, "volume", "seal", str(self.vol), "--key", str(keyfile))).split()[-1]
        self.key = keyfile.read_text().strip()
        self.script = tmp / "service.sh"
        self.script.write_text(SERVICE.format(barrier=self.barrier, want=self.want))
        self.argv = ["/bin/sh", str(self.script)]
        measurement = ok(confide(cas, "sim", "measure", "--", *self.argv)).strip()
        self.ident = ident = tmp / "owner.id"
        ok(confide(cas, "identity", "create", "--out", str(ident), "--name", "owner"))
        # two policies over the same directory: one gets the volume ephemeral, one may seal it
        for name, mode in (("eph", "ephemeral"), ("rw", "rollback_protected")):
            text = f"""name: {name}
version: "0.3"
services:
  - name: app
    image_name: img
    attestation:
      sim:
        measurement: "{measurement}"
volumes:
  - name: data
    fspf_key: {self.key}
    fspf_tag: "{self.tag}"
images:
  - name: img
    volumes:
      - name: data
        path: {self.vol}
        update_policy: {mode}
security:
  attestation:
    tolerate: [simulation]
"""
            f = tmp / f"{name}.yaml"
            f.write_text(text)
            ok(confide(cas, "policy", "apply", str(f), "--identity", str(ident)))

    def start(self, policy: str, env: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "confide", "run", "--config-id", f"{policy}/app", "--tee", "sim", "--",
             *self.argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(self.cas, env),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """After a failure: no run left waiting at the barrier (its FUSE server follows it)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

    def run(self, policy: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return confide(
            self.cas, "run", "--config-id", f"{policy}/app", "--tee", "sim", "--", *self.argv, env=env
        )

    def arrived(self, n: int, procs: list[subprocess.Popen[str]]) -> None:
        """Wait until ``n`` services are at the barrier (each has mounted and written)."""
        deadline = time.monotonic() + 120
        while len(os.listdir(self.barrier)) < n:
            for p in procs:
                if p.poll() is not None:
                    out, err = p.communicate()
                    pytest.fail(f"a run ended early ({p.returncode}): {out}{err}")
            assert time.monotonic() < deadline, "the services did not reach the barrier"
            time.sleep(0.1)

    def reset(self, want: int) -> None:
        for name in os.listdir(self.barrier):
            (self.barrier / name).unlink()
        self.want.write_text(f"{want}\n")


def _finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=180)
    return p.returncode, out, err


@pytest.fixture
def s(cas: CasProcess, tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(cas, tmp_path)
    try:
        yield setup
    finally:
        setup.stop_all()


@pytest.mark.parametrize("mode", _modes())
def test_two_runs_share_an_ephemeral_volume_at_once(s: Setup, mode: str) -> None:
    env = {} if mode == "fuse" else NO_FUSE
    before = tree_digest(s.vol)
    procs = [s.start("eph", env), s.start("eph", env)]
    s.arrived(2, procs)  # both mounted the same copy and changed it; neither has looked yet
    assert tree_digest(s.vol) == before  # nothing of either session is in the volume directory
    results = [_finish(p) for p in procs]
    pids = []
    for rc, out, err in results:
        assert rc == 0, out + err
        fs, shown, after = out.split("\n", 1)[0], *out.split("\n", 1)[1].split("--\n")
        assert fs == ("fs=fuse.confide" if mode == "fuse" else "fs=tmpfs"), out
        assert shown == "first line\n", out  # each run started from the sealed version
        names = after.splitlines()[:-2]
        [mine] = [n for n in names if n.startswith("mine-")]  # its own file, not the other's
        assert names == sorted([mine, "notes.txt"]), out  # shared.txt gone in its view only
        pid = mine.removeprefix("mine-")
        assert after.splitlines()[-2:] == ["first line", f"run {pid}"], out  # its own append only
        pids.append(pid)
    assert pids[0] != pids[1]
    # the volume directory is byte for byte what it was; the CAS's tag did not move
    assert tree_digest(s.vol) == before
    manifest, _ = load_sealed(s.vol, VolumeKey(bytes.fromhex(s.key)), s.tag)
    assert sorted(manifest.by_path()) == ["notes.txt", "shared.txt"]
    events = ok(confide(s.cas, "policy", "events", "eph", "--identity", str(s.ident))).splitlines()
    assert [e["payload"]["tag"] for e in map(json.loads, events) if e["type"] == "volume-tag"] == [s.tag]
    # a third run sees the sealed version again
    s.reset(1)
    rc, out, err = _finish(s.start("eph", env))
    assert rc == 0 and out.split("\n", 1)[1].startswith("first line\n--\n"), out + err


@pytest.mark.parametrize("mode", _modes())
def test_a_sealing_run_and_ephemeral_runs_exclude_each_other(s: Setup, mode: str) -> None:
    env = {} if mode == "fuse" else NO_FUSE
    before = tree_digest(s.vol)
    # an ephemeral run is live: a run that may seal the volume is refused before its program runs
    eph = s.start("eph", env)
    s.arrived(1, [eph])
    refused = s.run("rw", env)
    assert refused.returncode == errors.StorageError.exit_code, refused.stdout + refused.stderr
    assert "is in use: a writer or a mount holds its lock" in refused.stderr, refused.stderr
    assert "fs=" not in refused.stdout  # the program never started
    (s.barrier / "release").touch()
    rc, out, err = _finish(eph)
    assert rc == 0, out + err
    assert tree_digest(s.vol) == before
    # a sealing run is live: an ephemeral run is refused; the sealing run's change persists
    s.reset(2)
    rw = s.start("rw", env)
    s.arrived(1, [rw])
    refused = s.run("eph", env)
    assert refused.returncode == errors.StorageError.exit_code, refused.stdout + refused.stderr
    assert "is in use: a writer (add, rm, seal or a writable mount) holds its lock" in refused.stderr
    (s.barrier / "release").touch()
    rc, out, err = _finish(rw)
    assert rc == 0, out + err
    mine = next(n for n in out.split() if n.startswith("mine-"))
    manifest, tag = load_sealed(s.vol, VolumeKey(bytes.fromhex(s.key)))
    assert tag != s.tag and sorted(manifest.by_path()) == [mine, "notes.txt"]
    # nothing was lost: the CAS has the new tag, the next run of the policy starts from it
    s.reset(1)
    rc, out2, err = _finish(s.start("rw", env))
    assert rc == 0, out2 + err
    assert out2.split("\n", 1)[1].startswith(f"first line\nrun {mine.removeprefix('mine-')}\n--"), out2

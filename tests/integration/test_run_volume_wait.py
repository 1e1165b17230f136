"""`confide run --volume-wait` (simulated TEE, a real CAS, real processes and locks): a run that
may seal a volume waits for the ephemeral runs sharing it and goes before new ones; its wait
comes before anything is injected or mounted, and a stop signal or the deadline ends it with
nothing left behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess, running_cas
from confide import errors
from confide.policy import command_secret_warning
from confide.volume.lock import VOLUME_WAIT_ENV
from confide.volume.mount import fuse_usable

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="concurrent runs mount in private mount namespaces (root)"
)

NO_FUSE = {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so"}  # `auto` takes tmpfs


def _modes() -> list[object]:
    why = fuse_usable()
    return [pytest.param("fuse", marks=pytest.mark.skipif(why is not None, reason=f"FUSE: {why}")), "tmpfs"]


# The service: says it runs (a file named by its pid in the barrier directory), waits until told
# to go on (go-PID), appends to the volume if asked (a file "write" next to the barrier), lists it.
SERVICE = """d="$CONFIDE_VOLUME_DATA"
touch "{barrier}/$$"
i=0
while [ ! -e "{barrier}/go-$$" ]; do
  sleep 0.1; i=$((i + 1)); [ "$i" -lt 1800 ] || {{ echo "barrier timeout" >&2; exit 7; }}
done
if [ -e "{write}" ]; then echo "run $$" >> "$d/notes.txt"; fi
ls "$d"
cat "$d/notes.txt"
"""


def _confide(
    cas: CasProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True,
                          env=_env(cas, env), timeout=180, check=False)  # fmt: skip


def _env(cas: CasProcess, extra: dict[str, str] | None) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **cas.env, **(extra or {})}


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


class Run:
    """A `confide run` in the background, its stderr read without blocking."""

    def __init__(self, s: Setup, policy: str, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confide", "run", "--config-id", f"{policy}/app", "--tee", "sim", *args, "--",
             *s.argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(s.cas, env),
        )  # fmt: skip
        self.s = s
        self.err = b""
        s.runs.append(self)

    def until_err(self, what: str, timeout: float = 120) -> None:
        """Wait until ``what`` appears on its stderr."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while what.encode() not in self.err:
            assert time.monotonic() < deadline, f"no {what!r} in {self.err!r}"
            if select.select([self.proc.stderr], [], [], 0.1)[0]:
                data = os.read(self.proc.stderr.fileno(), 65536)
                if not data:
                    pytest.fail(f"ended ({self.proc.wait()}) before {what!r}: {self.err!r}")
                self.err += data

    def arrived(self, timeout: float = 120) -> str:
        """Wait until its program runs (its barrier file); returns the program's pid."""
        deadline = time.monotonic() + timeout
        while True:
            new = [n for n in os.listdir(self.s.barrier) if not n.startswith("go-") and n not in self.s.seen]
            if new:
                self.s.seen.add(new[0])
                return new[0]
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"ended ({self.proc.returncode}) early: {out!r} {self.err + err!r}")
            assert time.monotonic() < deadline, "the program did not start"
            time.sleep(0.1)

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), (self.err + err).decode()


class Setup:
    def __init__(self, cas: CasProcess, tmp: Path) -> None:
        self.cas, self.tmp = cas, tmp
        self.runs: list[Run] = []
        self.seen: set[str] = set()
        self.barrier, self.write = tmp / "barrier", tmp / "write"
        self.barrier.mkdir()
        # an injected file on a memory file system: written there directly (confide run)
        self.inject = Path("/dev/shm") / f"confide-test-{uuid.uuid4().hex}"
        self.inject.mkdir()
        src, self.vol, keyfile = tmp / "src", tmp / "vol", tmp / "vol.key"
        src.mkdir()
        (src / "notes.txt").write_text("first line\n")
        _ok(_confide(cas, "volume", "create", str(self.vol), "--key-out", str(keyfile)))
        _ok(_confide(cas, "volume", "add", str(self.vol), str(src), "--key", str(keyfile)))
        self.tag = _ok(_confide(cas, "volume", "seal", str(self.vol), "--key", str(keyfile))).split()[-1]
        key = keyfile.read_text().strip()
        script = tmp / "service.sh"
        script.write_text(SERVICE.format(barrier=self.barrier, write=self.write))
        self.argv = ["/bin/sh", str(script)]
        measurement = _ok(_confide(cas, "sim", "measure", "--", *self.argv)).strip()
        ident = tmp / "owner.id"
        _ok(_confide(cas, "identity", "create", "--out", str(ident), "--name", "owner"))
        self.texts: dict[str, str] = {}
        self.hashes: dict[str, str] = {}
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
    fspf_key: {key}
    fspf_tag: "{self.tag}"
images:
  - name: img
    injection_files:
      - path: {self.inject}/{name}.txt
        content: "injected"
    volumes:
      - name: data
        path: {self.vol}
        update_policy: {mode}
security:
  attestation:
    tolerate: [simulation]
"""
            self.texts[name] = text
            self.hashes[name] = self.apply(name, text)

    def apply(self, name: str, text: str) -> str:
        """Apply the policy ``text`` (as ``name``.yaml); returns its hash."""
        f = self.tmp / f"{name}.yaml"
        f.write_text(text)
        return _ok(
            _confide(self.cas, "policy", "apply", str(f), "--identity", str(self.tmp / "owner.id"))
        ).strip()

    def go(self, pid: str) -> None:
        (self.barrier / f"go-{pid}").touch()

    def close(self) -> None:
        for r in self.runs:
            if r.proc.poll() is None:
                r.proc.kill()
            r.proc.communicate()
        for p in self.inject.iterdir():
            p.unlink()
        self.inject.rmdir()


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Setup]:
    with running_cas(tmp_path / "cas", None) as cas:
        setup = Setup(cas, tmp_path)
        try:
            yield setup
        finally:
            setup.close()


def _error_line(err: str) -> str:
    [line] = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    return line


@pytest.mark.parametrize("mode", _modes())
def test_a_sealing_run_waits_for_ephemeral_runs_and_goes_before_new_ones(s: Setup, mode: str) -> None:
    env = {} if mode == "fuse" else NO_FUSE
    first = Run(s, "eph", env)
    first_pid = first.arrived()
    writer = Run(s, "rw", env, "--volume-wait", "300")
    writer.until_err("waiting up to 300 s for it")
    assert "a writer or a mount holds its lock" in writer.err.decode(), writer.err
    # it waits before anything is injected or mounted
    assert not (s.inject / "rw.txt").exists()
    # a new ephemeral run that may wait ($CONFIDE_VOLUME_WAIT) waits behind the writer ...
    late = Run(s, "eph", {**env, VOLUME_WAIT_ENV: "300"})
    late.until_err("waits for its lock, and goes first")
    # ... one that may not is refused at once, its program never started
    rc, out, err = Run(s, "eph", env).finish()
    assert rc == errors.StorageError.exit_code and "goes first" in _error_line(err), out + err
    s.go(first_pid)  # the first ephemeral run ends: the writer is next
    rc, out, err = first.finish()
    assert rc == 0, out + err
    writer_pid = writer.arrived()
    time.sleep(1.0)
    assert len([n for n in os.listdir(s.barrier) if not n.startswith("go-")]) == 2  # the late one waits
    s.go(writer_pid)  # it changes nothing: the tag stays, the late run's release still holds
    rc, out, err = writer.finish()
    assert rc == 0 and out == "notes.txt\nfirst line\n", out + err
    s.go(late.arrived())
    rc, out, err = late.finish()
    assert rc == 0, out + err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_a_runs_wait_with_nothing_left_behind(s: Setup, sig: int) -> None:
    env = NO_FUSE
    first = Run(s, "eph", env)
    first_pid = first.arrived()
    writer = Run(s, "rw", env, "--volume-wait", "300")
    writer.until_err("waiting up to 300 s for it")
    writer.proc.send_signal(sig)
    rc, out, err = writer.finish(timeout=60)
    assert rc == -sig, (rc, out, err)  # ended by the signal, as without confide run's handlers
    assert _error_line(err) == (
        f"error: WaitStoppedError: stopped by {signal.Signals(sig).name} while waiting for the lock of volume "
        f"{str(s.vol)!r}: nothing was mounted or changed"
    ), err
    assert not (s.inject / "rw.txt").exists()  # nothing injected
    assert len([n for n in os.listdir(s.barrier) if not n.startswith("go-")]) == 1  # never started
    # its place in the queue went with it: an ephemeral run comes in at once
    second = Run(s, "eph", env)
    s.go(second.arrived())
    rc, out, err = second.finish()
    assert rc == 0, out + err
    s.go(first_pid)
    rc, out, err = first.finish()
    assert rc == 0, out + err


def test_a_runs_wait_ends_at_its_deadline_and_by_default_it_fails_at_once(s: Setup) -> None:
    env = NO_FUSE
    first = Run(s, "eph", env)
    first_pid = first.arrived()
    rc, out, err = Run(s, "rw", env).finish()
    assert rc == errors.StorageError.exit_code and "waiting" not in err, out + err
    assert _error_line(err).endswith(
        f"a writer or a mount holds its lock (pid {first.proc.pid}), and writing needs it alone"
    ), err
    rc, out, err = Run(s, "rw", env, "--volume-wait", "1").finish()
    assert rc == errors.StorageError.exit_code, out + err
    assert _error_line(err).endswith("and writing needs it alone; gave up after waiting 1 s"), err
    assert not (s.inject / "rw.txt").exists()
    rc, out, err = Run(s, "rw", env, "--volume-wait", "soon").finish()
    assert rc == errors.UsageError.exit_code and "--volume-wait: got 'soon'" in _error_line(err), out + err
    s.go(first_pid)
    rc, out, err = first.finish()
    assert rc == 0, out + err


def test_a_run_behind_a_writer_that_sealed_attests_again(s: Setup) -> None:
    """A run attests (and gets the CAS's current tag) before it waits; when the writer ahead of
    it seals a new version, its release names the old one: it attests again, once it holds the
    lock, and runs on the new version. The writer reported its new tag before it let the volume
    go, so the second attestation gets it."""
    env = NO_FUSE
    s.write.touch()  # the writer's program appends to the volume
    writer = Run(s, "rw", env)
    writer_pid = writer.arrived()
    late = Run(s, "rw", env, "--volume-wait", "300")
    late.until_err("waiting up to 300 s for it")
    s.go(writer_pid)
    rc, out, err = writer.finish()
    assert rc == 0 and out.endswith(f"first line\nrun {writer_pid}\n"), out + err
    late_pid = late.arrived()
    s.write.unlink()
    s.go(late_pid)
    rc, out, err = late.finish()
    assert rc == 0, out + err
    assert out == f"notes.txt\nfirst line\nrun {writer_pid}\n", out  # the writer's version
    assert "attesting again for its current version" in err, err
    # the ledger has both of the late run's releases
    events = _ok(
        _confide(s.cas, "policy", "events", "rw", "--identity", str(s.tmp / "owner.id"))
    ).splitlines()
    releases = [e for e in events if '"secret-release"' in e or '"secret.released"' in e]
    assert len(releases) == 3, events  # the writer's, and the late run's two


def test_after_attesting_again_the_command_secret_warning_is_the_new_releases(s: Setup) -> None:
    """The policy changed while the run waited: its new version puts a secret into the command's
    arguments. The run attests again (the writer sealed) and runs on the new release: the warning
    printed right before the program starts names that secret (the first release had none)."""
    env = NO_FUSE
    s.write.touch()
    writer = Run(s, "rw", env)
    writer_pid = writer.arrived()
    late = Run(s, "rw", env, "--volume-wait", "300")
    late.until_err("waiting up to 300 s for it")
    text = s.texts["rw"].replace('version: "0.3"', f'version: "0.3"\npredecessor: "{s.hashes["rw"]}"', 1)
    command = f"    image_name: img\n    command: {' '.join(s.argv)} $$SCONE::tok$$\n"
    text = (
        text.replace("    image_name: img\n", command, 1)
        + "secrets:\n  - name: tok\n    kind: ascii\n    size: 16\n"
    )
    s.apply("rw2", text)
    s.go(writer_pid)
    rc, out, err = writer.finish()
    assert rc == 0, out + err
    late_pid = late.arrived()
    s.write.unlink()
    s.go(late_pid)
    rc, out, err = late.finish()
    assert rc == 0 and out == f"notes.txt\nfirst line\nrun {writer_pid}\n", out + err
    assert "attesting again for its current version" in err, err
    assert [ln for ln in err.splitlines() if "/proc/PID/cmdline" in ln] == [
        command_secret_warning("app", "tok")
    ], err

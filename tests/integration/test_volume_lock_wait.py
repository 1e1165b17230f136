"""`confide volume mount --volume-wait`: real processes, real flock(2) locks, real FUSE and tmpfs
mounts. A writer waits for the shared mounts and goes first; new shared mounts wait behind it;
the wait ends at its deadline or at a stop signal with nothing left behind, and a SIGKILLed
waiter leaves nothing that blocks. Without the option (or $CONFIDE_VOLUME_WAIT) it fails at
once, as before."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.errors import StorageError, UsageError
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, write_key
from confide.volume.lock import INTENT_NAME, VOLUME_WAIT_ENV
from confide.volume.mount import fuse_usable

SRC = Path(__file__).resolve().parents[2] / "src"


def _modes() -> list[str]:
    out = []
    if os.geteuid() == 0:
        out.append("tmpfs")  # in a private mount namespace: root only
    if fuse_usable() is None:
        out.append("fuse")
    return out


pytestmark = pytest.mark.skipif(not _modes(), reason="neither FUSE nor root (tmpfs) here")


class Mount:
    """A `confide volume mount` process whose output is read without blocking."""

    def __init__(
        self, vol: Path, mnt: Path, key: Path, mode: str, *args: str, env: dict[str, str] | None = None
    ):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONFIDE_")}
        environ["PYTHONPATH"] = str(SRC)
        environ.update(env or {})
        self.mnt, self.mode = mnt, mode
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confide", "volume", "mount", str(vol), str(mnt), "--key", str(key),
             "--mode", mode, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ,
        )  # fmt: skip
        self.out = self.err = b""

    def _pump(self, timeout: float) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        fds = [f for f in (self.proc.stdout, self.proc.stderr) if not f.closed]
        ready, _, _ = select.select(fds, [], [], timeout)
        for f in ready:
            data = os.read(f.fileno(), 65536)
            if f is self.proc.stdout:
                self.out += data
            else:
                self.err += data

    def until(self, what: str, stream: str = "out", timeout: float = 60) -> None:
        """Wait until ``what`` appears on stdout (``out``) or stderr (``err``)."""
        deadline = time.monotonic() + timeout
        while what.encode() not in (self.out if stream == "out" else self.err):
            if self.proc.poll() is not None:
                self._pump(0.2)
                if what.encode() in (self.out if stream == "out" else self.err):
                    return
                pytest.fail(f"ended ({self.proc.returncode}) before {what!r}: {self.out!r} {self.err!r}")
            assert time.monotonic() < deadline, f"no {what!r} in {self.out!r} {self.err!r}"
            self._pump(0.1)

    def quiet_for(self, seconds: float) -> None:
        """Still running, nothing mounted, after ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(0.1)
        assert self.proc.poll() is None, self.err
        assert b"mounted" not in self.out, self.out

    def files(self) -> Path:
        return (
            self.mnt
            if self.mode == "fuse"
            else Path(f"/proc/{self.proc.pid}/root") / str(self.mnt).lstrip("/")
        )

    def finish(self) -> tuple[int, str, str]:
        """The result of a command that ends by itself (refused, or its wait timed out)."""
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, (self.out + out).decode(), (self.err + err).decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self.out + out).decode(), (self.err + err).decode()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, str, list[Path], list[Mount]]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a\n")
    key = VolumeKey.generate()
    key_file = tmp_path / "key"
    write_key(key_file, key)
    vol = tmp_path / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    mnts = []
    for i in range(4):
        (tmp_path / f"m{i}").mkdir()
        mnts.append(tmp_path / f"m{i}")
    started: list[Mount] = []
    yield vol, key_file, tag, mnts, started
    for m in started:  # after a failure: nothing left mounted or waiting
        if m.proc.poll() is None:
            m.proc.kill()
        m.proc.communicate()


def _one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("mode", _modes())
def test_writer_waits_for_readers_and_goes_before_new_ones(
    setup: tuple[Path, Path, str, list[Path], list[Mount]], mode: str
) -> None:
    vol, key, tag, mnts, started = setup
    first = Mount(vol, mnts[0], key, mode, "--ephemeral", "--tag", tag)
    started.append(first)
    first.until("mounted ephemeral read-write")
    writer = Mount(vol, mnts[1], key, mode, "--writable", "--tag", tag, "--volume-wait", "120")
    started.append(writer)
    writer.until("waiting up to 120 s for it", "err")
    said = writer.err.decode().strip()
    assert said == (
        f"confide: volume {str(vol)!r} is in use: a writer or a mount holds its lock (pid {first.proc.pid}), and "
        "writing needs it alone; waiting up to 120 s for it"
    ), said
    writer.quiet_for(1.0)
    # a new shared mount that may wait waits behind the writer
    late = Mount(vol, mnts[2], key, mode, "--ephemeral", "--volume-wait", "120")  # no --tag: any version
    started.append(late)
    late.until("waits for its lock, and goes first", "err")
    assert f"(pid {writer.proc.pid}) waits for its lock" in late.err.decode(), late.err
    # one that may not is refused at once
    now = Mount(vol, mnts[3], key, mode, "--ephemeral", "--tag", tag)
    rc, out, err = now.finish()
    assert rc == StorageError.exit_code and "mounted" not in out, out + err
    assert "a writer (add, rm, seal or a writable mount)" in _one_error(err) and "goes first" in err, err
    # the first reader, already there, was not disturbed
    assert (first.files() / "a.txt").read_bytes() == b"a\n"
    late.quiet_for(0.5)
    rc, out, err = first.stop()
    assert rc == 0 and f"unmounted; tag: {tag} (unchanged)" in out, out + err
    # the writer goes first; the late reader still waits (for the writer now)
    writer.until("mounted read-write")
    (writer.files() / "b.txt").write_bytes(b"the writer's\n")
    late.quiet_for(1.0)
    rc, out, err = writer.stop()
    assert rc == 0 and "(changed)" in out, out + err
    new_tag = out.split("unmounted; tag: ")[1].split()[0]
    # then the late reader mounts the writer's version
    late.until("mounted ephemeral read-write")
    # its own line, which may come in a later read than the "mounted" line (it did, with tmpfs)
    late.until(f"tag: {new_tag}\n", timeout=10)
    assert (late.files() / "b.txt").read_bytes() == b"the writer's\n"
    rc, out, err = late.stop()
    assert rc == 0, out + err


@pytest.mark.parametrize("mode", _modes())
def test_the_wait_ends_at_its_deadline(
    setup: tuple[Path, Path, str, list[Path], list[Mount]], mode: str
) -> None:
    vol, key, tag, mnts, started = setup
    reader = Mount(vol, mnts[0], key, mode, "--tag", tag)
    started.append(reader)
    reader.until("mounted read-only")
    t0 = time.monotonic()
    rc, out, err = Mount(vol, mnts[1], key, mode, "--writable", "--tag", tag, "--volume-wait", "1.5").finish()
    assert rc == StorageError.exit_code and "mounted" not in out, out + err
    line = _one_error(err)
    assert line == (
        f"error: StorageError: volume {str(vol)!r} is in use: a writer or a mount holds its lock (pid "
        f"{reader.proc.pid}), and writing needs it alone; gave up after waiting 1.5 s"
    ), line
    assert 1.5 <= time.monotonic() - t0 < 60
    # nothing of it is left: a new reader comes in at once, and the first still reads
    other = Mount(vol, mnts[2], key, mode, "--tag", tag)
    started.append(other)
    other.until("mounted read-only")
    assert (reader.files() / "a.txt").read_bytes() == b"a\n"
    for m in (reader, other):
        rc, out, err = m.stop()
        assert rc == 0, out + err


@pytest.mark.parametrize("mode", _modes())
def test_the_environment_sets_the_wait_and_the_default_fails_at_once(
    setup: tuple[Path, Path, str, list[Path], list[Mount]], mode: str
) -> None:
    vol, key, tag, mnts, started = setup
    reader = Mount(vol, mnts[0], key, mode, "--tag", tag)
    started.append(reader)
    reader.until("mounted read-only")
    t0 = time.monotonic()
    rc, out, err = Mount(vol, mnts[1], key, mode, "--writable", "--tag", tag).finish()
    assert rc == StorageError.exit_code and "waiting" not in err, out + err
    assert _one_error(err).endswith("and writing needs it alone"), err  # no wait: no "gave up"
    assert time.monotonic() - t0 < 30
    rc, out, err = Mount(vol, mnts[1], key, mode, "--writable", env={VOLUME_WAIT_ENV: "1"}).finish()
    assert rc == StorageError.exit_code and "waiting up to 1 s for it" in err, out + err
    assert _one_error(err).endswith("gave up after waiting 1 s"), err
    # --volume-wait wins over the environment; a bad value is a usage error before anything
    rc, out, err = Mount(
        vol, mnts[1], key, mode, "--writable", "--volume-wait", "0", env={VOLUME_WAIT_ENV: "60"}
    ).finish()
    assert rc == StorageError.exit_code and "waiting" not in err, out + err
    for bad in (["--volume-wait", "-1"], ["--volume-wait", "1h"]):
        rc, out, err = Mount(vol, mnts[1], key, mode, "--writable", *bad).finish()
        assert rc == UsageError.exit_code and "expected seconds to wait for a volume's lock" in _one_error(
            err
        ), err
    rc, out, err = Mount(vol, mnts[1], key, mode, "--writable", env={VOLUME_WAIT_ENV: "forever"}).finish()
    assert rc == UsageError.exit_code and "$CONFIDE_VOLUME_WAIT: got 'forever'" in _one_error(err), err
    rc, out, err = reader.stop()
    assert rc == 0, out + err


@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_wait(
    setup: tuple[Path, Path, str, list[Path], list[Mount]], mode: str, sig: int
) -> None:
    vol, key, tag, mnts, started = setup
    reader = Mount(vol, mnts[0], key, mode, "--ephemeral", "--tag", tag)
    started.append(reader)
    reader.until("mounted ephemeral")
    writer = Mount(vol, mnts[1], key, mode, "--writable", "--tag", tag, "--volume-wait", "300")
    started.append(writer)
    writer.until("waiting up to 300 s", "err")
    rc, out, err = writer.stop(sig, timeout=30)
    assert rc == -sig, (rc, out, err)  # ended by the signal itself, as without a handler
    assert _one_error(err) == (
        f"error: WaitStoppedError: stopped by {signal.Signals(sig).name} while waiting for the lock of volume "
        f"{str(vol)!r}: nothing was mounted or changed"
    ), err
    assert "mounted" not in out and os.listdir(mnts[1]) == []
    # its place in the queue went with it: a new shared mount comes in at once
    other = Mount(vol, mnts[2], key, mode, "--tag", tag)
    started.append(other)
    other.until("mounted read-only")
    for m in (reader, other):
        rc, out, err = m.stop()
        assert rc == 0 and f"tag: {tag} (unchanged)" in out, out + err


@pytest.mark.parametrize("mode", _modes())
def test_a_sigkilled_waiter_leaves_nothing_that_blocks(
    setup: tuple[Path, Path, str, list[Path], list[Mount]], mode: str
) -> None:
    vol, key, tag, mnts, started = setup
    reader = Mount(vol, mnts[0], key, mode, "--tag", tag)
    started.append(reader)
    reader.until("mounted read-only")
    writer = Mount(vol, mnts[1], key, mode, "--writable", "--tag", tag, "--volume-wait", "300")
    started.append(writer)
    writer.until("waiting up to 300 s", "err")
    shared = Mount(vol, mnts[2], key, mode, "--tag", tag)
    rc, _out, err = shared.finish()
    assert rc == StorageError.exit_code and "goes first" in err, err  # the writer's place is held
    rc, _out, _err = writer.stop(signal.SIGKILL, timeout=30)
    assert rc == -signal.SIGKILL
    assert (vol / INTENT_NAME).is_file()  # the file stays, its lock went with the process
    other = Mount(vol, mnts[2], key, mode, "--tag", tag)  # no wait needed
    started.append(other)
    other.until("mounted read-only")
    for m in (reader, other):
        rc, out, err = m.stop()
        assert rc == 0, out + err
    w = Mount(vol, mnts[3], key, mode, "--writable", "--tag", tag)  # and a writer, once alone
    started.append(w)
    w.until("mounted read-write")
    rc, out, err = w.stop()
    assert rc == 0 and "(unchanged)" in out, out + err

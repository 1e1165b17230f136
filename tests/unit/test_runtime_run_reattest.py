"""``confide run`` after a wait for a volume sealed anew meanwhile (docs/volume-mount.md, "A
version sealed while waiting"): the release it attests again for is the one the program runs on
and the one announced (its command's secrets warned about), and a stop signal that came during
the wait or the new attestation ends the run before anything is injected or mounted."""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confide.errors import WaitStoppedError
from confide.runtime import run as run_module
from confide.runtime.run import Launch, supervise
from confide.runtime.volumes import HeldLock, MountedVolumes, VolumeRelease, lock_released
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


class Volume:
    """A volume sealed twice: the first release names ``old``, the current version is ``new``."""

    def __init__(self, tmp: Path) -> None:
        key = VolumeKey.generate()
        self.dir = tmp / "vol"
        create_volume(self.dir, key)
        src = tmp / "src"
        src.mkdir()
        (src / "a.txt").write_text("first\n")
        add_sources(self.dir, key, [src])
        self.old = seal_volume(self.dir, key)
        (src / "a.txt").write_text("second\n")
        add_sources(self.dir, key, [src])
        self.new = seal_volume(self.dir, key)
        assert self.new != self.old
        self.key = key.raw

    def release(self, tag: str) -> VolumeRelease:
        return VolumeRelease("data", self.dir, self.key, tag)


@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory on a memory file system for the injected files."""
    path = Path("/dev/shm") / f"confide-test-{uuid.uuid4().hex}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _plan(vol: Volume, tag: str, which: str, shm: Path, out: Path) -> Launch:
    return Launch(
        ["/bin/sh", "-c", f'echo "$WHICH $(cat {shm}/{which}.txt)" > {out}'],
        {"PATH": "/usr/bin:/bin", "WHICH": which},
        {f"{shm}/{which}.txt": which.encode()},
        None,
        "pol",
        (vol.release(tag),),
        "session",
        command_secrets=(f"{which}_secret",),
    )


class _Mounts:
    """``mount_released`` stand-in (nothing mounted: the program does not use the volume)."""

    def __init__(self) -> None:
        self.calls: list[list[VolumeRelease]] = []

    def __call__(self, volumes: list[VolumeRelease], locks: list[HeldLock] | None = None) -> MountedVolumes:
        self.calls.append(volumes)
        for lock in locks or []:
            lock.release()
        return MountedVolumes([], {})


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> _Mounts:
    fake = _Mounts()
    monkeypatch.setattr(run_module, "mount_released", fake)
    monkeypatch.setattr(run_module, "seal_and_report", lambda *_a, **_k: None)
    return fake


def test_the_release_attested_again_is_the_one_run_and_announced(
    tmp_path: Path, shm: Path, mounts: _Mounts
) -> None:
    vol = Volume(tmp_path)
    out = tmp_path / "out"
    first, fresh = _plan(vol, vol.old, "first", shm, out), _plan(vol, vol.new, "second", shm, out)
    announced: list[Launch] = []
    code = supervise(first, None, volume_wait=5, reattest=lambda: fresh, announce=announced.append)  # type: ignore[arg-type]
    assert code == 0
    assert out.read_text() == "second second\n"  # its environment and its files
    assert [p.command_secrets for p in announced] == [("second_secret",)]  # not the first release's
    assert mounts.calls == [[vol.release(vol.new)]]
    assert not (shm / "first.txt").exists()


def test_announce_sees_the_first_release_when_nothing_changed(
    tmp_path: Path, shm: Path, mounts: _Mounts
) -> None:
    vol = Volume(tmp_path)
    out = tmp_path / "out"
    current = _plan(vol, vol.new, "first", shm, out)
    announced: list[Launch] = []

    def reattest() -> Launch:
        raise AssertionError("the volume is at the released version: no new attestation")

    assert supervise(current, None, volume_wait=5, reattest=reattest, announce=announced.append) == 0  # type: ignore[arg-type]
    assert announced == [current] and out.read_text() == "first first\n"


def _assert_nothing_done(exc: pytest.ExceptionInfo[WaitStoppedError], sig: int, vol: Volume, shm: Path,
                         out: Path, mounts: _Mounts) -> None:  # fmt: skip
    assert exc.value.signal == sig
    assert "nothing was injected, mounted or changed" in str(exc.value)
    assert repr(str(vol.dir)) in str(exc.value) and signal.Signals(sig).name in str(exc.value)
    assert os.listdir(shm) == [] and not out.exists()  # nothing injected, the program never started
    assert mounts.calls == []
    # the lock was let go
    [lock] = lock_released([vol.release(vol.new)], 0)
    lock.release()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_during_the_new_attestation_ends_the_run_before_injecting(
    tmp_path: Path, shm: Path, mounts: _Mounts, sig: int
) -> None:
    vol = Volume(tmp_path)
    out = tmp_path / "out"
    first, fresh = _plan(vol, vol.old, "first", shm, out), _plan(vol, vol.new, "second", shm, out)
    announced: list[Launch] = []

    def reattest() -> Launch:
        os.kill(os.getpid(), sig)  # noted by confide run's handler, not acted on
        return fresh

    before = signal.getsignal(sig)
    with pytest.raises(WaitStoppedError) as exc:
        supervise(first, None, volume_wait=5, reattest=reattest, announce=announced.append)  # type: ignore[arg-type]
    assert "while attesting again after waiting for the locks of volume" in str(exc.value)
    _assert_nothing_done(exc, sig, vol, shm, out, mounts)
    assert announced == []
    assert signal.getsignal(sig) == before  # the forwarding handlers are put back


def test_a_stop_signal_in_the_waits_last_instant_ends_the_run_without_attesting_again(
    tmp_path: Path, shm: Path, mounts: _Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal came while the lock was being taken, which then succeeded at once (the wait's
    own check, between two tries, did not see it): the run stops as during the wait."""
    vol = Volume(tmp_path)
    out = tmp_path / "out"
    first = _plan(vol, vol.old, "first", shm, out)

    def lock_then_signal(*args: Any, **kwargs: Any) -> list[HeldLock]:
        locks = lock_released(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return locks

    monkeypatch.setattr(run_module, "lock_released", lock_then_signal)

    def reattest() -> Launch:
        raise AssertionError("stopped: no new attestation")

    with pytest.raises(WaitStoppedError) as exc:
        supervise(first, None, volume_wait=5, reattest=reattest)  # type: ignore[arg-type]
    assert "while waiting for the locks of volume" in str(exc.value)
    _assert_nothing_done(exc, signal.SIGTERM, vol, shm, out, mounts)


def test_without_a_wait_a_signal_before_the_program_starts_is_passed_on(
    tmp_path: Path, shm: Path, mounts: _Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No wait (``volume_wait`` 0): nothing waited or attested again; a signal that comes while the
    run prepares is passed on to the program once it runs, as before."""
    vol = Volume(tmp_path)
    out = tmp_path / "out"
    plan = Launch(["/bin/sh", "-c", f"sleep 30; echo late > {out}"], {"PATH": "/usr/bin:/bin"}, {}, None, "pol",
                  (vol.release(vol.new),), "session")  # fmt: skip

    def lock_then_signal(*args: Any, **kwargs: Any) -> list[HeldLock]:
        locks = lock_released(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return locks

    monkeypatch.setattr(run_module, "lock_released", lock_then_signal)
    assert supervise(plan, None, volume_wait=0) == 128 + signal.SIGTERM  # type: ignore[arg-type]
    assert not out.exists()

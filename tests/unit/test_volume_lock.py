"""The volume lock's wait and writer priority (confide.volume.lock), with real flock(2) locks:
each holder below opens the lock file anew, and flock conflicts between open file descriptions
of one process as between processes. Time is injected (a clock the fake sleep advances)."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from confide.errors import StorageError, UsageError, WaitStoppedError
from confide.volume import VolumeKey, add_sources, create_volume
from confide.volume.lock import (
    INTENT_NAME,
    LOCK_NAME,
    POLL,
    VOLUME_WAIT_ENV,
    lock_volume,
    parse_wait,
    volume_wait,
)
from confide.volume.store import seal_volume


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    v = tmp_path / "vol"
    create_volume(v, VolumeKey.generate())
    return v


class Clock:
    """A monotonic clock that only the fake sleep moves; ``then`` runs at the Nth sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.at: dict[int, Callable[[], None]] = {}

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= POLL
        self.sleeps.append(seconds)
        self.now += seconds
        action = self.at.get(len(self.sleeps))
        if action is not None:
            action()


def test_the_volume_is_created_with_both_lock_files(vol: Path) -> None:
    assert (vol / LOCK_NAME).read_bytes() == b"" and (vol / INTENT_NAME).read_bytes() == b""


@pytest.mark.parametrize("text", ["0", "30", "2.5", " 86400 ", "0.000001"])
def test_parse_wait_accepts_seconds(text: str) -> None:
    assert parse_wait(text, "--volume-wait") == float(text)


@pytest.mark.parametrize("text", ["", "-1", "abc", "1e3", "nan", "inf", "86400.5", "30s", "1,5"])
def test_parse_wait_refuses_anything_else(text: str) -> None:
    with pytest.raises(UsageError, match=r"--volume-wait: got .*expected seconds to wait"):
        parse_wait(text, "--volume-wait")


def test_volume_wait_option_then_environment_then_zero() -> None:
    assert volume_wait(None, {}) == 0.0
    assert volume_wait(None, {VOLUME_WAIT_ENV: ""}) == 0.0
    assert volume_wait(None, {VOLUME_WAIT_ENV: "12"}) == 12.0
    assert volume_wait("3", {VOLUME_WAIT_ENV: "12"}) == 3.0
    with pytest.raises(UsageError, match=r"\$CONFIDE_VOLUME_WAIT: got 'soon'"):
        volume_wait(None, {VOLUME_WAIT_ENV: "soon"})


def test_default_fails_at_once(vol: Path) -> None:
    clock = Clock()
    reader = lock_volume(vol, shared=True)
    try:
        with pytest.raises(StorageError, match="is in use: a writer or a mount holds its lock, and writing"):
            lock_volume(vol, shared=False, clock=clock, sleep=clock.sleep)
        assert clock.sleeps == []  # no wait at all
    finally:
        assert reader is not None
        os.close(reader)


def test_a_writer_waits_for_a_reader_and_proceeds_when_it_leaves(
    vol: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    reader = lock_volume(vol, shared=True)
    assert reader is not None
    clock.at[5] = lambda: os.close(reader)
    with caplog.at_level(logging.WARNING, logger="confide.volume"):
        writer = lock_volume(vol, shared=False, wait=30, clock=clock, sleep=clock.sleep)
    assert writer is not None
    try:
        assert len(clock.sleeps) == 5  # it took the lock at the first attempt after the reader left
        [said] = [r.getMessage() for r in caplog.records]  # said once, not at every attempt
        assert said == (
            f"confide: volume {str(vol)!r} is in use: a writer or a mount holds its lock, and writing "
            "needs it alone; waiting up to 30 s for it"
        )
        # it holds the lock alone, and its place in the queue is free again
        with pytest.raises(
            StorageError, match=r"a writer \(add, rm, seal or a writable mount\) holds its lock"
        ):
            lock_volume(vol, shared=True)
        intent = os.open(vol / INTENT_NAME, os.O_RDONLY)
        try:
            fcntl.flock(intent, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it
        finally:
            os.close(intent)
    finally:
        os.close(writer)
    again = lock_volume(vol, shared=True)
    assert again is not None
    os.close(again)


def test_new_readers_wait_behind_a_waiting_writer(vol: Path) -> None:
    """While a writer waits, a shared locker is refused at once (no wait of its own) or waits;
    the reader already there keeps its lock; the writer goes first."""
    clock = Clock()
    first = lock_volume(vol, shared=True)
    assert first is not None
    order: list[str] = []

    def while_the_writer_waits() -> None:
        with pytest.raises(StorageError, match=r"a writer \(add, rm, seal or a writable mount\) waits for its "
                           r"lock, and goes first"):  # fmt: skip
            lock_volume(vol, shared=True)
        # a reader that may wait: it still waits when the writer's wait ends (the writer has it)
        late = Clock()
        late.now = clock.now

        def reader_sleep(seconds: float) -> None:
            late.sleep(seconds)
            if len(late.sleeps) == 3:
                os.close(first)  # the first reader leaves: the writer, not this reader, is next
                order.append("first left")

        with pytest.raises(
            StorageError, match="waits for its lock, and goes first; gave up after waiting 1 s"
        ):
            lock_volume(vol, shared=True, wait=1, clock=late, sleep=reader_sleep)
        order.append("reader gave up")

    clock.at[2] = while_the_writer_waits
    writer = lock_volume(vol, shared=False, wait=30, clock=clock, sleep=clock.sleep)
    assert writer is not None
    order.append("writer has it")
    assert order == ["first left", "reader gave up", "writer has it"]
    os.close(writer)


def test_timeout_leaves_nothing_held(vol: Path) -> None:
    clock = Clock()
    reader = lock_volume(vol, shared=True)
    assert reader is not None
    try:
        with pytest.raises(StorageError) as ei:
            lock_volume(vol, shared=False, wait=1, clock=clock, sleep=clock.sleep)
        assert ei.value.message.endswith("and writing needs it alone; gave up after waiting 1 s")
        assert clock.now - 1000.0 == pytest.approx(1.0)
        # its place in the queue went with it: new readers come in at once
        other = lock_volume(vol, shared=True)
        assert other is not None
        os.close(other)
    finally:
        os.close(reader)
    writer = lock_volume(vol, shared=False)  # and nothing of it holds the lock
    assert writer is not None
    os.close(writer)


def test_a_stop_signal_ends_the_wait(vol: Path) -> None:
    clock = Clock()
    reader = lock_volume(vol, shared=True)
    assert reader is not None
    asked: list[int] = []

    def stop() -> int | None:
        asked.append(1)
        return signal.SIGTERM if len(asked) >= 3 else None

    try:
        with pytest.raises(WaitStoppedError) as ei:
            lock_volume(vol, shared=False, wait=math.inf, stop=stop, clock=clock, sleep=clock.sleep)
        assert (
            ei.value.signal == signal.SIGTERM
            and ei.value.exit_code == 68
            and isinstance(ei.value, StorageError)
        )
        assert ei.value.message == (
            f"stopped by SIGTERM while waiting for the lock of volume {str(vol)!r}: nothing was mounted or changed"
        )
        assert len(clock.sleeps) == 2
        other = lock_volume(vol, shared=True)  # its place in the queue is free again
        assert other is not None
        os.close(other)
    finally:
        os.close(reader)


def test_two_waiting_writers_both_get_it_in_turn(vol: Path) -> None:
    clock = Clock()
    reader = lock_volume(vol, shared=True)
    assert reader is not None

    def another_writer() -> None:
        # a second writer while the first waits: it cannot queue (the place is taken) and the
        # reader still holds the lock, so it gives up; no deadlock either way
        with pytest.raises(StorageError, match=r"gave up after waiting 0\.1 s"):
            other = Clock()
            lock_volume(vol, shared=False, wait=0.1, clock=other, sleep=other.sleep)
        os.close(reader)

    clock.at[1] = another_writer
    first = lock_volume(vol, shared=False, wait=30, clock=clock, sleep=clock.sleep)
    assert first is not None
    other = Clock()
    other.at[2] = lambda: os.close(first)
    fd = lock_volume(vol, shared=False, wait=30, clock=other, sleep=other.sleep)
    assert fd is not None and len(other.sleeps) == 2
    os.close(fd)


def test_a_shared_locker_never_creates_the_intent_file(vol: Path) -> None:
    """In a volume of an older confide (no .lock.intent): read-only and ephemeral mounts write
    nothing into the directory; the first writer that may wait creates it."""
    (vol / INTENT_NAME).unlink()
    fd = lock_volume(vol, shared=True, wait=5)
    assert fd is not None
    os.close(fd)
    assert not (vol / INTENT_NAME).exists()
    fd = lock_volume(vol, shared=False)  # no wait: no place in a queue needed
    assert fd is not None
    os.close(fd)
    assert not (vol / INTENT_NAME).exists()
    fd = lock_volume(vol, shared=False, wait=5)
    assert fd is not None
    os.close(fd)
    assert (vol / INTENT_NAME).read_bytes() == b""


def test_an_intent_symlink_is_not_followed(vol: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (vol / INTENT_NAME).unlink()
    (vol / INTENT_NAME).symlink_to(victim)
    with pytest.raises(StorageError, match="cannot create the lock file"):
        lock_volume(vol, shared=False, wait=1)
    assert not victim.exists()
    fd = lock_volume(vol, shared=True, wait=1)  # a shared locker goes without it
    assert fd is not None
    os.close(fd)


def test_seal_waits_for_a_reader_ahead_of_new_readers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`volume seal` (as add and rm) waits as long as it takes, holding its place in the queue:
    new readers are refused meanwhile; it seals once the reader leaves."""
    key = VolumeKey.generate()
    v = tmp_path / "v"
    tag0 = create_volume(v, key)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    add_sources(v, key, [src])
    reader = lock_volume(v, shared=True)
    assert reader is not None
    result: list[str] = []
    sealer = threading.Thread(target=lambda: result.append(seal_volume(v, key)))
    caplog.set_level(logging.WARNING, logger="confide.volume")
    sealer.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # until the seal holds its place
            try:
                fd = lock_volume(v, shared=True)
            except StorageError as exc:
                assert "waits for its lock, and goes first" in exc.message
                break
            assert fd is not None
            os.close(fd)
            assert time.monotonic() < deadline, "the seal never queued"
            time.sleep(0.01)
        assert result == [] and sealer.is_alive()
    finally:
        os.close(reader)
        sealer.join(30)
    assert len(result) == 1 and result[0] != tag0
    said = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert said == [  # once, without a limit
        f"confide: volume {str(v)!r} is in use: a writer or a mount holds its lock, and writing needs it "
        "alone; waiting for it"
    ]


def test_a_run_takes_all_its_volumes_locks_or_none(tmp_path: Path) -> None:
    """confide run locks every volume before it mounts any (lock_released): when one is in use
    the others it took are let go again, and the messages name the wait asked for."""
    from confide.policy.model import UpdatePolicy
    from confide.runtime.volumes import VolumeRelease, lock_released

    key = VolumeKey.generate()
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        create_volume(d, key)
    releases = [
        VolumeRelease("a", dirs[0], key.raw, "", UpdatePolicy.ROLLBACK_PROTECTED),
        VolumeRelease("b", dirs[1], key.raw, "", UpdatePolicy.EPHEMERAL),
    ]
    writer = lock_volume(dirs[1], shared=False)  # b is being written
    assert writer is not None
    try:
        with pytest.raises(StorageError, match=r"mount\) holds its lock; gave up after waiting 0\.2 s$"):
            lock_released(releases, 0.2)
        free = lock_volume(dirs[0], shared=False)  # a was let go again
        assert free is not None
        os.close(free)
    finally:
        os.close(writer)
    held = lock_released(releases, 0)
    try:
        with pytest.raises(StorageError):  # a held alone, b shared
            lock_volume(dirs[0], shared=True)
        other = lock_volume(dirs[1], shared=True)
        assert other is not None
        os.close(other)
    finally:
        for lock in held:
            lock.release()
    fd = lock_volume(dirs[0], shared=False)
    assert fd is not None
    os.close(fd)


@pytest.mark.parametrize("wait", [0, 1])
def test_a_missing_volume_directory_is_named_as_such(tmp_path: Path, wait: float) -> None:
    """A writer's lock (a writable mount, `confide run` of a rollback-protected volume) of a
    directory that does not exist, or is a file, says why and what makes a volume, as `volume
    add` does; before it said only 'cannot create the lock file'. Nothing is created."""
    missing = tmp_path / "nodir"
    with pytest.raises(StorageError) as refused:
        lock_volume(missing, shared=False, wait=wait)
    message = refused.value.message
    assert "No such file or directory" in message, message
    assert "not a protected volume" in message and "confide volume create DIR" in message, message
    assert not missing.exists()
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    with pytest.raises(StorageError, match="Not a directory: not a protected volume"):
        lock_volume(afile, shared=False, wait=wait)
    assert afile.read_bytes() == b""

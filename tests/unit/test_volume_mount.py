"""Mounting protected volumes with FUSE: real mounts (root + /dev/fuse), real child processes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import platform
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from confide.errors import RollbackError, SignatureError, StorageError, UsageError
from confide.volume import (
    Region,
    RegionRule,
    VolumeKey,
    add_sources,
    create_volume,
    open_volume,
    seal_volume,
    verify_volume,
)
from confide.volume import mount as volume_mount
from confide.volume.format import TAG_SIZE
from confide.volume.mount import fuse_usable, mount_volume
from confide.volume.store import OBJECTS_DIR, load_sealed, object_path

FUSE_WHY = fuse_usable()
pytestmark = pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE unavailable: {FUSE_WHY}")

CS = 4096
SRC = Path(__file__).resolve().parents[2] / "src"


def _mounted(path: Path) -> bool:
    """From the mount table (os.path.ismount misses a dead FUSE server's mount: ENOTCONN)."""
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _pattern(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{n}-{seed}".encode()).digest(n) if n else b""


def _files() -> dict[str, bytes]:
    files = {f"sizes/f{n}": _pattern(n) for n in (0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 1, 40 * CS + 7)}
    files["sparse.img"] = bytes(20 * CS) + b"tail"
    files["unicodé/日本語 ファイル.txt"] = "こんにちは\n".encode()
    files["auth/readme.txt"] = b"authenticated, not encrypted\n" * 300
    files["plain/public.txt"] = b"unprotected\n"
    return files


def _volume(
    tmp: Path, files: dict[str, bytes] | None = None
) -> tuple[Path, VolumeKey, str, dict[str, bytes]]:
    files = _files() if files is None else files
    src = tmp / "src"
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if "sizes/f1" in files:
        (src / "sizes" / "f1").chmod(0o600)
        (src / "unicodé").chmod(0o750)
        os.symlink("sizes/f1", src / "link")
        os.symlink("/nonexistent/target", src / "dangling")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key, chunk_size=CS)
    rules = (RegionRule("auth", Region.AUTHENTICATED), RegionRule("plain", Region.UNPROTECTED))
    add_sources(vol, key, [src], rules=rules)
    return vol, key, seal_volume(vol, key), files


def _mnt(tmp: Path) -> Path:
    m = tmp / "mnt"
    m.mkdir()
    return m


def _tree(root: Path) -> dict[str, object]:
    """path -> bytes (files), ('link', target), ('dir', mode)."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", stat.S_IMODE(p.stat().st_mode))
            else:
                out[rel] = p.read_bytes()
    return out


# --- read-only -------------------------------------------------------------------------------


def test_fuse_serves_every_file_exactly(tmp_path: Path) -> None:
    vol, key, tag, files = _volume(tmp_path)
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as h:
        assert h.mode == "fuse" and h.tag == tag and _mounted(mnt)
        for rel, data in files.items():
            p = mnt / rel
            assert p.read_bytes() == data, rel
            assert p.stat().st_size == len(data)
            # random access across chunk boundaries
            fd = os.open(p, os.O_RDONLY)
            try:
                for off in {0, CS - 1, CS, CS + 1, 2 * CS - 3, len(data) - 1, len(data)}:
                    if off >= 0:
                        assert os.pread(fd, 5, off) == data[off : off + 5], (rel, off)
            finally:
                os.close(fd)
        big = files[f"sizes/f{40 * CS + 7}"]
        with (
            (mnt / "sizes" / f"f{40 * CS + 7}").open("rb") as f,
            mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm,
        ):
            assert mm[CS - 3 : 3 * CS + 3] == big[CS - 3 : 3 * CS + 3] and mm[-7:] == big[-7:]
        assert stat.S_IMODE((mnt / "sizes" / "f1").stat().st_mode) == 0o600
        assert stat.S_IMODE((mnt / "unicodé").stat().st_mode) == 0o750
        assert os.readlink(mnt / "link") == "sizes/f1"
        assert (mnt / "link").read_bytes() == files["sizes/f1"]
        assert os.readlink(mnt / "dangling") == "/nonexistent/target"
        assert sorted(os.listdir(mnt)) == [
            "auth",
            "dangling",
            "link",
            "plain",
            "sizes",
            "sparse.img",
            "unicodé",
        ]
        assert sorted(os.listdir(mnt / "unicodé")) == ["日本語 ファイル.txt"]
        # read-only: every kind of write is refused
        for action in (
            lambda: (mnt / "new").write_bytes(b"x"),
            lambda: (mnt / "sizes" / "f1").write_bytes(b"x"),
            (mnt / "link").unlink,
            (mnt / "d").mkdir,
            lambda: os.rename(mnt / "sparse.img", mnt / "x"),
        ):
            with pytest.raises(OSError) as ei:
                action()
            assert ei.value.errno == errno.EROFS
    assert not _mounted(mnt)
    assert os.listdir(mnt) == []


def test_wrong_tag_or_key_is_refused_before_anything_is_served(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a": b"secret"})
    old = tag
    (tmp_path / "src" / "a").write_bytes(b"newer")
    add_sources(vol, key, [tmp_path / "src"])
    tag = seal_volume(vol, key)
    mnt = _mnt(tmp_path)
    with pytest.raises(RollbackError):
        mount_volume(vol, key, mnt, expected_tag=old, mode="fuse")
    assert not _mounted(mnt)
    with pytest.raises(SignatureError):
        mount_volume(vol, VolumeKey.generate(), mnt, expected_tag=tag, mode="fuse")
    assert not _mounted(mnt)
    # the positive twin: the current tag mounts
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse"):
        assert (mnt / "a").read_bytes() == b"newer"


def test_corrupted_chunk_gives_eio_and_other_files_still_read(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    files = {"bad.bin": _pattern(10 * CS), "good.bin": _pattern(5 * CS, 1)}
    vol, key, tag, _ = _volume(tmp_path, files)
    m, _ = load_sealed(vol, key)
    obj = object_path(vol, m.by_path()["bad.bin"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[7 * (CS + TAG_SIZE) + 100] ^= 0x01  # a ciphertext byte of chunk 7 (tags, root unchanged)
    obj.write_bytes(bytes(raw))
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse"):
        fd = os.open(mnt / "bad.bin", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, CS, 7 * CS)
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)
        with pytest.raises(OSError) as ei:
            (mnt / "bad.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        assert (mnt / "good.bin").read_bytes() == files["good.bin"]
    err = capfd.readouterr().err
    assert "INTEGRITY FAILURE" in err and "bad.bin" in err and "chunk 7" in err


def test_integrity_failure_is_reported_to_the_mounting_process(tmp_path: Path) -> None:
    files = {"dir/bad.bin": _pattern(3 * CS), "good.bin": _pattern(CS, 1)}
    vol, key, tag, _ = _volume(tmp_path, files)
    m, _ = load_sealed(vol, key)
    obj = object_path(vol, m.by_path()["dir/bad.bin"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[10] ^= 0x01  # chunk 0
    obj.write_bytes(bytes(raw))
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        assert (mnt / "good.bin").read_bytes() == files["good.bin"]
        (mnt / "new.txt").write_bytes(b"written before the attack was noticed\n")
        assert h.integrity_failure() is None  # intact reads and writes report nothing
        with pytest.raises(OSError) as ei:
            (mnt / "dir" / "bad.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        # the report is written before EIO goes back to the reader: no waiting needed
        assert h.integrity_failure() == "dir/bad.bin"
        assert h.integrity_failure() == "dir/bad.bin"  # stays reported
    finally:
        h.abort()
    assert not _mounted(mnt) and h.closed
    # abort discards the session: the volume is still at its old tag, without new.txt
    assert load_sealed(vol, key)[0].by_path().get("new.txt") is None
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as again:
        assert not (mnt / "new.txt").exists() and again.tag == tag


def test_abort_of_a_writable_mount_keeps_the_old_tag_and_close_after_abort_is_a_no_op(
    tmp_path: Path,
) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    (mnt / "a.txt").write_bytes(b"changed\n")
    h.abort()
    assert h.close() == tag and h.integrity_failure() is None
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as again:
        assert (mnt / "a.txt").read_bytes() == b"a\n" and again.tag == tag


def test_abort_of_a_writable_mount_is_a_prompt_clean_discard(tmp_path: Path) -> None:
    """abort() signals a server whose loop is running (SERVER_STOP_SIGNAL): it must discard the
    session and exit at once, not take the loop's end for an outside one ('stopped'), wait for
    a decision that never comes and be SIGKILLed 10 s later with the session's new objects
    left behind."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    objects = sorted(p.name for p in (vol / OBJECTS_DIR).rglob("*"))
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    (mnt / "new.bin").write_bytes(_pattern(3 * CS))
    (mnt / "a.txt").write_bytes(b"changed\n")
    start = time.monotonic()
    h.abort()
    assert time.monotonic() - start < 5
    assert h._proc.returncode == 0  # type: ignore[attr-defined]  # exited itself, not SIGKILLed
    assert sorted(p.name for p in (vol / OBJECTS_DIR).rglob("*")) == objects  # discarded
    assert not _mounted(mnt)


def _unmount_from_outside_then_signal(h: volume_mount.MountHandle, mnt: Path) -> None:
    """Unmount the FUSE mount from outside (its loop ends unasked, the server reports 'stopped'
    and waits for the mounting process), then send it the signal that ends that wait."""
    proc: subprocess.Popen[str] = h._proc  # type: ignore[attr-defined]
    subprocess.run(volume_mount._unmount_cmd(mnt, False), check=True, capture_output=True)
    while not h.mount_lost():  # the server's 'stopped' report
        select.select([h.status_fd()], [], [], 10)  # type: ignore[list-item]
    assert proc.poll() is None  # waiting in _await_decision
    proc.send_signal(volume_mount.SERVER_STOP_SIGNAL)
    proc.wait(10)


@pytest.mark.parametrize("on_parent_exit", ["discard", "commit"])
def test_a_signal_to_a_server_whose_mount_was_removed_discards_and_close_says_so(
    tmp_path: Path, on_parent_exit: str
) -> None:
    """SERVER_STOP_SIGNAL while the server waits after its mount was removed from outside
    discards the session, the parent being alive (not sealed as if it had died, with
    on_parent_exit='commit'), and close() then fails with a StorageError, not a BrokenPipeError
    from writing 'commit' to the exited server."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(
        vol, key, mnt, expected_tag=tag, mode="fuse", writable=True, on_parent_exit=on_parent_exit
    )  # type: ignore[arg-type]
    try:
        (mnt / "a.txt").write_bytes(b"changed\n")
        _unmount_from_outside_then_signal(h, mnt)
        with pytest.raises(StorageError, match="discarded"):
            h.close()
    finally:
        h.abort()
    assert load_sealed(vol, key)[0].by_path()["a.txt"].size == 2  # the old a.txt, unsealed
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as again:
        assert (mnt / "a.txt").read_bytes() == b"a\n" and again.tag == tag


def _signal_mask(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1], 16)


@pytest.mark.parametrize("writable", [True, False])
def test_the_server_ignores_outside_signals_until_its_parent_unmounts(tmp_path: Path, writable: bool) -> None:
    """systemd's KillMode=control-group sends SIGTERM to every process of the service, the
    FUSE server too (docs/volume-mount.md, "Signals"): the server ignores it (and SIGINT,
    SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) from 'ready' on, so the mount stays until close()."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=writable)
    try:
        server: subprocess.Popen[str] = h._proc  # type: ignore[attr-defined]
        ignored = _signal_mask(server.pid, "SigIgn")
        for sig in volume_mount.HELD_SIGNALS:
            assert ignored & (1 << (sig - 1)), signal.Signals(sig).name
        # the stop signal is blocked, taken by a thread that sees its sender (_fusefs._StopSignal)
        assert _signal_mask(server.pid, "SigBlk") & (1 << (volume_mount.SERVER_STOP_SIGNAL - 1))
        for sig in volume_mount.HELD_SIGNALS:
            server.send_signal(sig)  # ignored: discarded by the kernel at once, never pending
        if writable:
            (mnt / "after.txt").write_bytes(b"written after the signals\n")
        assert (mnt / "a.txt").read_bytes() == b"a\n"
        assert server.poll() is None and _mounted(mnt) and not h.mount_lost()
        new = h.close()
    finally:
        h.abort()
    assert not _mounted(mnt)
    if writable:
        assert new != tag and load_sealed(vol, key, new)[0].by_path()["after.txt"].size == 26
    else:
        assert new == tag


def _sigqueue(pid: int, sig: int, forged_pid: int) -> None:
    """rt_sigqueueinfo(2): the signal with a siginfo of the sender's making (``si_code``
    ``SI_QUEUE``; the kernel refuses ``SI_USER`` from a process), ``si_pid`` ``forged_pid``."""
    info = (ctypes.c_int * 32)()  # siginfo_t: 128 bytes
    info[0], info[1], info[2] = sig, 0, -1  # si_signo, si_errno, si_code = SI_QUEUE
    info[3], info[4] = forged_pid, os.getuid()  # si_pid, si_uid
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(129, pid, sig, ctypes.byref(info)) == 0, os.strerror(ctypes.get_errno())  # x86_64


_OTHER_PROCESS = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGRTMIN)"


@pytest.mark.parametrize("writable", [True, False])
def test_the_stop_signal_from_another_process_is_ignored(tmp_path: Path, writable: bool) -> None:
    """SERVER_STOP_SIGNAL (SIGRTMIN) is the mounting process's stop and the parent-death signal:
    another process of the same user that sends it (kill, or sigqueue with the parent's pid
    forged into si_pid) must not end the server. Before, libfuse's exit handler, moved there,
    ended the loop: the mount was lost and the session with it."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=writable)
    try:
        server: subprocess.Popen[str] = h._proc  # type: ignore[attr-defined]
        for _ in range(3):
            subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(server.pid)], check=True)
        if platform.machine() == "x86_64":
            _sigqueue(server.pid, volume_mount.SERVER_STOP_SIGNAL, os.getpid())
        time.sleep(0.5)  # a signal that ended the loop would have removed the mount by now
        if writable:
            (mnt / "after.txt").write_bytes(b"written after the signals\n")
        assert (mnt / "a.txt").read_bytes() == b"a\n"
        assert server.poll() is None and _mounted(mnt) and not h.mount_lost()
        new = h.close()
    finally:
        h.abort()
    assert not _mounted(mnt) and server.returncode == 0
    if writable:
        assert new != tag and load_sealed(vol, key, new)[0].by_path()["after.txt"].size == 26
    else:
        assert new == tag


def test_the_stop_signal_from_the_mounting_process_still_ends_the_loop(tmp_path: Path) -> None:
    """The parent's own SERVER_STOP_SIGNAL without a command (abort() says 'discard' first)
    ends the loop: the mount is removed, the session discarded, the server exits by itself
    (before 2026-12-07 it reported 'stopped' and waited for a second signal or a command)."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        (mnt / "a.txt").write_bytes(b"changed\n")
        server: subprocess.Popen[str] = h._proc  # type: ignore[attr-defined]
        server.send_signal(volume_mount.SERVER_STOP_SIGNAL)
        assert server.wait(10) == 0
        assert not _mounted(mnt) and h.mount_lost()
        with pytest.raises(StorageError):
            h.close()
    finally:
        h.abort()
    assert load_sealed(vol, key)[1] == tag


@pytest.mark.parametrize("writable", [True, False])
def test_a_killed_server_is_a_lost_mount_and_nothing_is_sealed(tmp_path: Path, writable: bool) -> None:
    """SIGKILL cannot be held: the server dies, its mount stays in the table but dead (ENOTCONN).
    The handle reports the mount lost as soon as the status pipe ends (read-only mounts too),
    close() fails naming the death, nothing is sealed, and the dead mount is removed."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=writable)
    try:
        if writable:
            (mnt / "a.txt").write_bytes(b"changed\n")
        h._proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        while not h.mount_lost():
            fd = h.status_fd()
            assert fd is not None
            select.select([fd], [], [], 10)
        assert h.stopped_at is not None and _mounted(mnt)
        with pytest.raises(OSError) as ei:
            (mnt / "a.txt").read_bytes()
        assert ei.value.errno == errno.ENOTCONN
        with pytest.raises(
            StorageError, match=r"has died \(killed by SIGKILL\) and cannot acknowledge"
        ) as ei:
            h.close()
        assert ei.value.message.endswith(": this session's changes are lost") == writable
    finally:
        h.abort()
    assert not _mounted(mnt)
    assert load_sealed(vol, key)[1] == tag


def test_a_read_only_mount_removed_from_outside_is_reported_lost(tmp_path: Path) -> None:
    """The server reports 'stopped' for a read-only mount too when its loop ends unasked (before
    2026-12-07 only writable ones did): close() then still ends cleanly (unchanged tag)."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse")
    try:
        assert not h.mount_lost()
        subprocess.run(volume_mount._unmount_cmd(mnt, False), check=True, capture_output=True)
        while not h.mount_lost():
            select.select([h.status_fd()], [], [], 10)  # type: ignore[list-item]
        assert h.close() == tag
    finally:
        h.abort()
    assert not _mounted(mnt)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs below the FUSE mount (root)")
@pytest.mark.parametrize("how", ["close", "abort", "killed", "removed"])
def test_unmounting_leaves_a_mount_below_the_mountpoint_alone(tmp_path: Path, how: str) -> None:
    """A FUSE mount over a directory that is itself a mountpoint (a tmpfs, a bind mount, a
    container's volume): after the server's own unmount the path is still listed in the mount
    table, with the mount below. That one is not ours: the clean-up after the server (which
    lazily unmounts a dead server's mount) must leave it, whether the mount was closed, aborted
    or its server killed. Before, root's `fusermount -u -z` detached it."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    mnt = _mnt(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "below", str(mnt)], check=True)
    try:
        (mnt / "below.txt").write_bytes(b"not the volume's\n")
        h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse")
        try:
            assert (mnt / "a.txt").read_bytes() == b"a\n"
            if how == "close":
                assert h.close() == tag
            elif how == "abort":
                h.abort()
            elif how == "killed":
                h._proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
                while not h.mount_lost():
                    select.select([h.status_fd()], [], [], 10)  # type: ignore[list-item]
                with pytest.raises(StorageError, match="has died"):
                    h.close()
            else:  # removed from outside: close() must not unmount again what is left there
                subprocess.run(volume_mount._unmount_cmd(mnt, False), check=True, capture_output=True)
                while not h.mount_lost():
                    select.select([h.status_fd()], [], [], 10)  # type: ignore[list-item]
                assert h.close() == tag
        finally:
            h.abort()
        assert (mnt / "below.txt").read_bytes() == b"not the volume's\n"  # the tmpfs, still there
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def test_a_dead_mount_reached_through_a_symlink_is_removed(tmp_path: Path) -> None:
    """The mount table lists a mountpoint as the kernel resolved it: a killed server's dead
    mount at a path with a symlink in it (``/var/run`` -> ``/run``) is found there and removed,
    not left behind (ENOTCONN for every later access)."""
    vol, key, tag, _ = _volume(tmp_path, {"a.txt": b"a\n"})
    real = tmp_path / "real"
    (real / "mnt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    h = mount_volume(vol, key, tmp_path / "link" / "mnt", expected_tag=tag, mode="fuse")
    try:
        h._proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        while not h.mount_lost():
            select.select([h.status_fd()], [], [], 10)  # type: ignore[list-item]
        assert _mounted(real / "mnt")
        with pytest.raises(StorageError, match="has died"):
            h.close()
    finally:
        h.abort()
    assert not _mounted(real / "mnt")


def test_swapped_chunk_tag_fails_the_root_check_for_the_whole_file(tmp_path: Path) -> None:
    files = {"f": _pattern(4 * CS)}
    vol, key, tag, _ = _volume(tmp_path, files)
    m, _ = load_sealed(vol, key)
    obj = object_path(vol, m.by_path()["f"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[CS + TAG_SIZE - 1] ^= 0x80  # last byte of chunk 0's tag: the root no longer matches
    obj.write_bytes(bytes(raw))
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse"):
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, 10, 3 * CS)  # chunk 3 itself is intact: the root check refuses it
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)


# --- read-write ------------------------------------------------------------------------------


def test_writable_session_seals_a_new_generation(tmp_path: Path) -> None:
    vol, key, tag, files = _volume(tmp_path)
    old_ids = {e.path: e.file_id for e in load_sealed(vol, key)[0].entries if e.file_id}
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        (mnt / "new dir").mkdir(mode=0o700)
        (mnt / "new dir" / "created.txt").write_bytes(b"created\n")
        (mnt / "sizes" / "f4097").write_bytes(b"overwritten")  # O_TRUNC
        with (mnt / "sizes" / f"f{3 * CS}").open("ab") as f:  # append across a chunk boundary
            f.write(b"appended" * 1000)
        os.truncate(mnt / "sizes" / f"f{40 * CS + 7}", 2 * CS + 5)  # truncate without a handle
        with (mnt / "sparse.img").open("r+b") as f:  # in-place write in the middle
            f.seek(5 * CS - 2)
            f.write(b"MID")
        os.rename(mnt / "sizes" / "f1", mnt / "renamed-f1")
        os.rename(mnt / "auth", mnt / "plain" / "auth-moved")  # directory rename
        (mnt / "sizes" / "f0").unlink()
        (mnt / "link").unlink()
        os.symlink("renamed-f1", mnt / "link2")
        os.chmod(mnt / "renamed-f1", 0o640)
        (mnt / "empty").mkdir()
        (mnt / "empty").rmdir()
        with pytest.raises(OSError) as ei:
            os.link(mnt / "renamed-f1", mnt / "hardlink")
        assert ei.value.errno == errno.EPERM
        expected = _tree(mnt)
        # the page cache and the server agree: re-read everything through the mount
        assert expected[str(Path("sizes") / "f4097")] == b"overwritten"
    finally:
        new = h.close()
    assert not _mounted(mnt)
    assert new != tag and h.tag == new
    report = verify_volume(vol, key, new)
    assert report.ok and report.unreferenced_objects == []
    assert report.generation == 2
    with pytest.raises(RollbackError):
        verify_volume(vol, key, tag)
    out = tmp_path / "out"
    open_volume(vol, key, out, new)
    got = _tree(out)
    assert got == expected
    data = files[f"sizes/f{3 * CS}"] + b"appended" * 1000
    assert got[f"sizes/f{3 * CS}"] == data
    assert got[f"sizes/f{40 * CS + 7}"] == files[f"sizes/f{40 * CS + 7}"][: 2 * CS + 5]
    sparse = bytearray(files["sparse.img"])
    sparse[5 * CS - 2 : 5 * CS + 1] = b"MID"
    assert got["sparse.img"] == bytes(sparse)
    assert stat.S_IMODE((out / "renamed-f1").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "new dir").stat().st_mode) == 0o700
    # rewritten files got new ids (new keys: no nonce reuse); untouched ones kept theirs
    m, _ = load_sealed(vol, key, new)
    by = m.by_path()
    for rewritten in ("sizes/f4097", f"sizes/f{3 * CS}", f"sizes/f{40 * CS + 7}", "sparse.img"):
        assert by[rewritten].file_id != old_ids[rewritten]
    assert by[f"sizes/f{CS}"].file_id == old_ids[f"sizes/f{CS}"]
    # a file moved under another region rule is re-encrypted for that region
    assert "plain/auth-moved/readme.txt" in by, sorted(by)
    assert by["plain/auth-moved/readme.txt"].region is Region.UNPROTECTED
    assert by["renamed-f1"].region is Region.ENCRYPTED


def test_auto_mode_picks_fuse_when_it_works(tmp_path: Path) -> None:
    vol, key, tag, files = _volume(tmp_path, {"a": b"auto"})
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag) as h:
        assert h.mode == "fuse" and _mounted(mnt)
        assert (mnt / "a").read_bytes() == files["a"]
    assert not _mounted(mnt)


def test_overwrite_with_o_trunc_and_truncate_to_zero(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"big": _pattern(9 * CS), "other": _pattern(3 * CS, 2), "e": b""})
    empty_id = load_sealed(vol, key)[0].by_path()["e"].file_id
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        (mnt / "big").write_bytes(b"small now")
        os.truncate(mnt / "other", 0)
        with (mnt / "e").open("wb"):  # O_TRUNC of an empty file changes nothing
            pass
        assert (mnt / "big").read_bytes() == b"small now"
        assert (mnt / "other").stat().st_size == 0
    finally:
        new = h.close()
    out = tmp_path / "out"
    open_volume(vol, key, out, new)
    assert (out / "big").read_bytes() == b"small now" and (out / "other").read_bytes() == b""
    by = load_sealed(vol, key, new)[0].by_path()
    assert by["big"].size == 9 and by["e"].file_id == empty_id  # the empty file was not rewritten
    assert verify_volume(vol, key, new).unreferenced_objects == []


def test_writable_mount_without_changes_keeps_the_tag(tmp_path: Path) -> None:
    vol, key, tag, files = _volume(tmp_path, {"a": b"x" * 5000})
    mnt = _mnt(tmp_path)
    h = mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    assert (mnt / "a").read_bytes() == files["a"]
    with (mnt / "a").open("r+b"):  # opened for writing, nothing written
        pass
    assert h.close() == tag
    assert load_sealed(vol, key, tag)[0].generation == 1


def test_second_writable_mount_is_refused_while_one_is_live(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a": b"x"})
    mnt, mnt2 = _mnt(tmp_path), tmp_path / "mnt2"
    mnt2.mkdir()
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True):
        with pytest.raises(StorageError, match="in use"):
            mount_volume(vol, key, mnt2, expected_tag=tag, mode="fuse", writable=True)
        assert not _mounted(mnt2)
    with mount_volume(vol, key, mnt2, expected_tag=tag, mode="fuse", writable=True):  # free again
        assert (mnt2 / "a").read_bytes() == b"x"


# --- the child dies with its parent ------------------------------------------------------------

_PARENT = """
import sys
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import mount_volume
vol, keyhex, mnt, tag, writable, masked = sys.argv[1:]
if masked == "masked":  # inherited by the server: it must still react to its parent's death
    import signal
    from confide.volume.mount import HELD_SIGNALS, SERVER_STOP_SIGNAL
    signal.pthread_sigmask(signal.SIG_BLOCK, [SERVER_STOP_SIGNAL, *HELD_SIGNALS])
h = mount_volume(Path(vol), VolumeKey.from_hex(keyhex), Path(mnt), expected_tag=tag, mode="fuse",
                 writable=writable == "rw")
print(h._proc.pid, flush=True)
if writable == "rw":
    (Path(mnt) / "written-before-death").write_bytes(b"lost")
print("written", flush=True)
import time
time.sleep(600)
"""


@pytest.mark.parametrize(("writable", "masked"), [("ro", "-"), ("rw", "-"), ("rw", "masked")])
def test_fuse_child_unmounts_and_exits_when_the_parent_is_killed(
    tmp_path: Path, writable: str, masked: str
) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a": b"data"})
    mnt = _mnt(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_PARENT),
            str(vol),
            key.hex(),
            str(mnt),
            tag,
            writable,
            masked,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "written"
        assert _mounted(mnt)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while _mounted(mnt) or os.path.exists(f"/proc/{child}"):
            if time.monotonic() > deadline:
                pytest.fail("the FUSE child outlived its parent")
            stat_file = Path(f"/proc/{child}/stat")
            if stat_file.exists() and stat_file.read_text().split()[2] == "Z":
                break  # a zombie (its parent is gone; init reaps it): it has exited
            time.sleep(0.1)
        assert not _mounted(mnt)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
    # changes of a session whose parent died are discarded: the volume stays at the CAS's tag
    report = verify_volume(vol, key, tag)
    assert report.ok and report.unreferenced_objects == []
    assert sorted(p.name for p in (vol / OBJECTS_DIR).iterdir()) == [
        e.file_id.hex() for e in load_sealed(vol, key)[0].entries if e.file_id
    ]


_LOST_PARENT = """
import select, sys, time
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import mount_volume
vol, keyhex, mnt, tag = sys.argv[1:]
h = mount_volume(Path(vol), VolumeKey.from_hex(keyhex), Path(mnt), expected_tag=tag, mode="fuse",
                 writable=True, on_parent_exit="commit")
(Path(mnt) / "kept").write_bytes(b"sealed by the server alone")
print(h._proc.pid, flush=True)
while not h.mount_lost():  # the test unmounts it from outside; the server waits for us then
    select.select([h.status_fd()], [], [], 10)
print("lost", flush=True)
time.sleep(600)
"""


def test_the_parents_death_after_an_outside_umount_is_its_death_not_a_signal(tmp_path: Path) -> None:
    """A server whose mount was removed from outside waits for its parent's decision; the
    parent's death then ends the wait as ``on_parent_exit`` says (docs/volume-mount.md,
    "Signals"), here ``commit``: sealed. The death arrives as the parent-death signal,
    SERVER_STOP_SIGNAL, the same as another process's stop; before, it was taken for that stop
    and the session discarded whatever ``on_parent_exit`` said."""
    vol, key, tag, _ = _volume(tmp_path, {"a": b"data"})
    mnt = _mnt(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_LOST_PARENT), str(vol), key.hex(), str(mnt), tag],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        subprocess.run(volume_mount._unmount_cmd(mnt, False), check=True, capture_output=True)
        assert parent.stdout.readline().strip() == "lost"  # the server said 'stopped': it waits
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{child}"):
            stat_file = Path(f"/proc/{child}/stat")
            with contextlib.suppress(OSError):
                if stat_file.read_text().split()[2] == "Z":
                    break
            assert time.monotonic() < deadline, "the FUSE server outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
    m, new = load_sealed(vol, key)
    assert new != tag and "kept" in m.by_path()


def test_the_fuse_server_is_not_dumpable_before_it_reads_the_key(tmp_path: Path) -> None:
    """The server holds the volume key and decrypted contents (an ephemeral session: every file
    it wrote, whole): a core dump would put them on disk, and the same user's processes could
    read its memory. ``confide run`` makes itself not dumpable for that reason, but execve(2)
    gives the server a dumpable process again: it must say so itself, before the key arrives."""
    code = textwrap.dedent(
        """
        import ctypes, io, os, sys
        from confide.volume import _fusefs
        sys.stdin = io.StringIO("not a key\\n")  # main() stops at the key: nothing is mounted
        r, w = os.pipe()
        rc = _fusefs.main([sys.argv[1], sys.argv[2], "00" * 32, str(os.getppid()), str(w), "eph"])
        print(rc, ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rc, dumpable = r.stdout.split()
    assert rc != "0" and dumpable == "0"


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.14.0", True),
        ("6.18.44-fc-v1252", True),
        ("7.0", True),
        ("6.13.12-arch1", False),
        ("5.15.0", False),
        ("", False),
        ("unknown", False),
        ("6", False),
    ],
)
def test_kernel_version_check_parses_the_release(
    monkeypatch: pytest.MonkeyPatch, release: str, expected: bool
) -> None:
    monkeypatch.setattr(volume_mount.os, "uname", lambda: SimpleNamespace(release=release))
    assert volume_mount._kernel_at_least(6, 14) is expected


# --- ephemeral mounts: the volume shared ---------------------------------------------------------


def _digest(directory: Path) -> str:
    """Every name, mode, size, mtime and content below ``directory`` (the lock file included)."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(directory)}|{st.st_mode:o}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(p.read_bytes())
    return h.hexdigest()


def test_ephemeral_mounts_share_one_copy_and_keep_their_changes_in_memory(tmp_path: Path) -> None:
    files = {"big.bin": _pattern(40 * CS + 7), "notes.txt": b"first\n", "dir/keep.txt": b"keep\n",
             "plain/public.txt": b"unprotected\n"}  # fmt: skip
    vol, key, tag, _ = _volume(tmp_path, files)
    before = _digest(vol)
    mnts = [tmp_path / f"m{i}" for i in range(3)]
    for m in mnts:
        m.mkdir()
    a = mount_volume(vol, key, mnts[0], expected_tag=tag, mode="fuse", ephemeral=True)
    b = mount_volume(vol, key, mnts[1], expected_tag=tag, mode="fuse", ephemeral=True)
    ro = mount_volume(vol, key, mnts[2], expected_tag=tag, mode="fuse")  # a reader next to them
    try:
        assert a.writable and a.ephemeral and b.ephemeral and not ro.ephemeral
        # each session changes the same files differently: contents, new files, removals, renames
        with (mnts[0] / "big.bin").open("r+b") as f:
            f.seek(5 * CS)
            f.write(b"A" * 100)
        (mnts[0] / "new-a").write_bytes(_pattern(3 * CS, 7))
        (mnts[0] / "notes.txt").write_bytes(b"by a\n")
        (mnts[0] / "plain" / "public.txt").write_bytes(b"changed by a\n")
        os.rename(mnts[0] / "dir" / "keep.txt", mnts[0] / "dir" / "moved.txt")
        os.truncate(mnts[1] / "big.bin", CS + 1)
        with (mnts[1] / "notes.txt").open("ab") as f:
            f.write(b"by b\n")
        (mnts[1] / "dir" / "keep.txt").unlink()
        os.mkdir(mnts[1] / "newdir")
        (mnts[1] / "newdir" / "f").write_bytes(b"b's file")
        # every file closed: a sealing session would have committed objects by now; these did not
        assert _digest(vol) == before
        # each sees its own changes (read back from memory after the files were closed) ...
        want_big_a = bytearray(files["big.bin"])
        want_big_a[5 * CS : 5 * CS + 100] = b"A" * 100
        assert (mnts[0] / "big.bin").read_bytes() == bytes(want_big_a)
        assert (mnts[0] / "new-a").read_bytes() == _pattern(3 * CS, 7)
        assert (mnts[0] / "plain" / "public.txt").read_bytes() == b"changed by a\n"
        assert sorted(os.listdir(mnts[0] / "dir")) == ["moved.txt"]
        assert (mnts[1] / "big.bin").read_bytes() == files["big.bin"][: CS + 1]
        assert (mnts[1] / "notes.txt").read_bytes() == b"first\nby b\n"
        assert (mnts[1] / "newdir" / "f").read_bytes() == b"b's file"
        # ... and none of the other's; the reader sees the sealed version
        assert sorted(os.listdir(mnts[0])) == ["big.bin", "dir", "new-a", "notes.txt", "plain"]
        assert sorted(os.listdir(mnts[1])) == ["big.bin", "dir", "newdir", "notes.txt", "plain"]
        assert (mnts[0] / "notes.txt").read_bytes() == b"by a\n"
        assert _tree(mnts[2]) == {"big.bin": files["big.bin"], "notes.txt": b"first\n", "dir": ("dir", 0o755),
                                  "dir/keep.txt": b"keep\n", "plain": ("dir", 0o755),
                                  "plain/public.txt": b"unprotected\n"}  # fmt: skip
        # a sealing writer is refused while they are mounted, whatever the mode
        mnt3 = tmp_path / "m3"
        mnt3.mkdir()
        for mode in ("fuse", "tmpfs"):
            with pytest.raises(StorageError, match="is in use: a writer or a mount holds its lock"):
                mount_volume(vol, key, mnt3, expected_tag=tag, mode=mode, writable=True)  # type: ignore[arg-type]
        assert not _mounted(mnt3)
    finally:
        tags = [h.close() for h in (a, b, ro)]
    assert tags == [tag, tag, tag]  # nothing sealed
    assert _digest(vol) == before  # the volume directory byte for byte as it was
    assert verify_volume(vol, key, tag).unreferenced_objects == []
    with mount_volume(vol, key, mnts[0], expected_tag=tag, mode="fuse", ephemeral=True) as again:
        assert _tree(mnts[0])["notes.txt"] == b"first\n" and again.tag == tag


def test_an_ephemeral_mount_is_refused_while_a_writable_one_is_live(tmp_path: Path) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a": b"x"})
    mnt, mnt2 = _mnt(tmp_path), tmp_path / "mnt2"
    mnt2.mkdir()
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True) as w:
        (mnt / "a").write_bytes(b"sealed at the end")
        for mode, ephemeral in (("fuse", True), ("fuse", False), ("tmpfs", True), ("tmpfs", False)):
            with pytest.raises(
                StorageError, match=r"is in use: a writer \(add, rm, seal or a writable mount\)"
            ):
                mount_volume(vol, key, mnt2, expected_tag=tag, mode=mode, ephemeral=ephemeral)  # type: ignore[arg-type]
            assert not _mounted(mnt2)
    new = w.close()
    assert new != tag  # the writer's session was not disturbed
    with mount_volume(vol, key, mnt2, expected_tag=new, mode="fuse", ephemeral=True):
        assert (mnt2 / "a").read_bytes() == b"sealed at the end"


def _enospc(fn: object, *args: object) -> None:
    with pytest.raises(OSError) as ei:
        fn(*args)  # type: ignore[operator]
    assert ei.value.errno == errno.ENOSPC


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def test_an_ephemeral_session_holds_its_files_to_a_memory_budget(tmp_path: Path) -> None:
    files = {"big.bin": _pattern(40 * CS + 7), "small.txt": b"small\n", "plain/p.txt": b"public\n"}
    vol, key, tag, _ = _volume(tmp_path, files)
    before = _digest(vol)
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True, memory_limit=8 * CS) as h:
        assert h.memory_limit == 8 * CS
        _write_new(mnt / "a", _pattern(5 * CS, 1))
        sv = os.statvfs(mnt)  # df shows the budget and its rest
        assert sv.f_blocks == 8 * CS // sv.f_frsize and sv.f_bavail == 3 * CS // sv.f_frsize
        # past the budget: ENOSPC, and nothing of the write is in the file (no partial write)
        _enospc(_write_new, mnt / "b", _pattern(4 * CS, 2))
        assert (mnt / "b").stat().st_size == 0
        _write_new(mnt / "b", _pattern(3 * CS, 2))  # exactly up to the budget
        fd = os.open(mnt / "a", os.O_WRONLY)
        try:
            _enospc(os.pwrite, fd, b"x", 5 * CS)  # one byte more
            assert os.pwrite(fd, b"Z" * CS, CS) == CS  # an overwrite inside the file holds nothing new
        finally:
            os.close(fd)
        want_a = bytearray(_pattern(5 * CS, 1))
        want_a[CS : 2 * CS] = b"Z" * CS
        assert (mnt / "a").read_bytes() == bytes(want_a)
        _enospc(os.truncate, mnt / "b", 4 * CS)  # an extension counts as well (a sparse file whole)
        assert (mnt / "b").read_bytes() == _pattern(3 * CS, 2)
        # opening a volume file for writing decrypts all of it into memory: refused whole
        _enospc(open, mnt / "big.bin", "r+b")
        assert (mnt / "big.bin").read_bytes() == files["big.bin"]
        # a removal gives the memory back: the same write now works
        (mnt / "a").unlink()
        _write_new(mnt / "c", _pattern(4 * CS, 3))
        # so does a truncation (b: 3 chunks -> 0)
        os.truncate(mnt / "b", 0)
        _write_new(mnt / "d", _pattern(4 * CS, 4))
        _enospc(_write_new, mnt / "e", b"y")
        # a file removed while open holds its memory until its last handle is closed
        fd = os.open(mnt / "d", os.O_RDONLY)
        (mnt / "d").unlink()
        _enospc(_write_new, mnt / "e", b"y")
        os.close(fd)
        _write_new(mnt / "e", _pattern(4 * CS, 5))
        # O_TRUNC on a volume file holds nothing of its old contents; a rename into another
        # region re-encrypts nothing in an ephemeral session (no memory held, contents kept)
        (mnt / "e").unlink()
        with (mnt / "big.bin").open("wb") as f:
            f.write(_pattern(4 * CS, 6))
        os.rename(mnt / "small.txt", mnt / "plain" / "moved.txt")
        assert (mnt / "plain" / "moved.txt").read_bytes() == b"small\n"
        assert (mnt / "c").read_bytes() == _pattern(4 * CS, 3)
        assert (mnt / "big.bin").read_bytes() == _pattern(4 * CS, 6)
    assert _digest(vol) == before  # nothing of it reached the volume directory


def test_the_ephemeral_memory_budget_defaults_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, key, tag, _ = _volume(tmp_path, {"a": b"x"})
    mnt = _mnt(tmp_path)
    monkeypatch.delenv(volume_mount.EPHEMERAL_MEMORY_ENV, raising=False)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True) as h:
        assert h.memory_limit == volume_mount.EPHEMERAL_MEMORY_FLOOR == 1 << 30
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse") as h:
        assert h.memory_limit is None  # read-only: nothing held in memory
    # the environment variable `confide run` passes on; a value given explicitly wins
    monkeypatch.setenv(volume_mount.EPHEMERAL_MEMORY_ENV, "2K")
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True) as h:
        assert h.memory_limit == 2048
        _enospc(_write_new, mnt / "n", bytes(2049))
        _write_new(mnt / "n", bytes(2048))
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True, memory_limit=0) as h:
        assert h.memory_limit == 0
        _enospc(_write_new, mnt / "n", b"1")
        _write_new(mnt / "empty", b"")  # an empty file holds nothing
    for bad in ("lots", "-1", "1.5G", ""):
        monkeypatch.setenv(volume_mount.EPHEMERAL_MEMORY_ENV, bad)
        with pytest.raises(UsageError, match=r"\$CONFIDE_EPHEMERAL_MEMORY: got"):
            mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True)
        assert not _mounted(mnt)
    # the default: the volume's file bytes when they are more than the floor
    monkeypatch.delenv(volume_mount.EPHEMERAL_MEMORY_ENV)
    monkeypatch.setattr(volume_mount, "EPHEMERAL_MEMORY_FLOOR", 0)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True) as h:
        assert h.memory_limit == 1  # the one byte of "a"
    assert volume_mount.parse_size("512M", "x") == 512 << 20 and volume_mount.parse_size("3", "x") == 3
    assert volume_mount.parse_size("2GiB", "x") == 2 << 30 and volume_mount.parse_size("1t", "x") == 1 << 40


def test_an_ephemeral_mount_still_authenticates_every_chunk(tmp_path: Path) -> None:
    files = {"bad.bin": _pattern(3 * CS), "good.bin": _pattern(CS, 1)}
    vol, key, tag, _ = _volume(tmp_path, files)
    m, _ = load_sealed(vol, key)
    obj = object_path(vol, m.by_path()["bad.bin"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[-5] ^= 0x01  # the last chunk
    obj.write_bytes(bytes(raw))
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True) as h:
        assert (mnt / "good.bin").read_bytes() == files["good.bin"]
        with pytest.raises(OSError) as ei:
            (mnt / "bad.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        # opening it for writing decrypts it into memory: checked as well
        with pytest.raises(OSError) as ei, (mnt / "bad.bin").open("r+b") as f:
            f.write(b"x")
        assert ei.value.errno == errno.EIO
        assert h.integrity_failure() == "bad.bin"
    # and the manifest against the tag, before anything is served
    with pytest.raises(RollbackError):
        mount_volume(vol, key, mnt, expected_tag="00" * 32, mode="fuse", ephemeral=True)
    assert not _mounted(mnt)


_SLOW_INIT_SERVER = """
import sys, time
from confide.volume import _fusefs

init = _fusefs.VolumeFS.init_with_config

def slow_init(self, conn, config):  # the window between libfuse's mount and the first init
    print("in init", file=sys.stderr, flush=True)
    time.sleep(2)
    init(self, conn, config)

_fusefs.VolumeFS.init_with_config = slow_init
sys.exit(_fusefs.main(sys.argv[1:]))
"""

_EARLY_PARENT = """
import os, subprocess, sys, time
from pathlib import Path
vol, keyhex, mnt, tag, server, mode = sys.argv[1:]
r, w = os.pipe()
proc = subprocess.Popen(
    [sys.executable, "-c", server, vol, mnt, tag, str(os.getpid()), str(w), mode],
    stdin=subprocess.PIPE, pass_fds=(w,), text=True, start_new_session=True,
)
proc.stdin.write(keyhex + "\\n")
proc.stdin.flush()
print(proc.pid, flush=True)
while not any(line.split()[4] == mnt for line in Path("/proc/self/mountinfo").read_text().splitlines()):
    time.sleep(0.005)  # the mount table, not a stat: a stat would wait for the init
print("mounted", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["rw", "ro"])  # libfuse's threaded loop, and its single thread
def test_the_parents_death_between_mount_and_init_still_unmounts(tmp_path: Path, mode: str) -> None:
    """The parent dies after libfuse mounted but before the server handled the kernel's first
    request (``init``, where libfuse's exit handler is moved to SERVER_STOP_SIGNAL): the
    parent-death signal used to end the server by its default action, leaving its mount behind
    (ENOTCONN for every access, nobody to remove it). It is noted until ``init``, which then
    ends the loop: the server unmounts and exits, the session discarded."""
    vol, key, tag, _ = _volume(tmp_path, {"a": b"data"})
    mnt = _mnt(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_EARLY_PARENT), str(vol), key.hex(), str(mnt), tag,
         textwrap.dedent(_SLOW_INIT_SERVER), mode],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "mounted"
        parent.send_signal(signal.SIGKILL)  # within the server's 2 s init
        parent.wait()
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{child}"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                    break
            assert time.monotonic() < deadline, "the FUSE server outlived its parent"
            time.sleep(0.1)
        assert not _mounted(mnt), "the server's mount was left behind"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
        if _mounted(mnt):
            subprocess.run(volume_mount._unmount_cmd(mnt, True), capture_output=True, check=False)
    assert verify_volume(vol, key, tag).ok and load_sealed(vol, key)[1] == tag


def test_an_ephemeral_memory_budget_past_the_largest_file_size_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a budget above 2**63 - 1 bytes (what no file can reach) overflowed the 64-bit statfs
    # block counts: 2**80 bytes reported a mount of 0 blocks, 0 free (df; a program checking
    # the free space first refused to write)
    for bad in ("999999999999999T", "9223372036854775808", "8388608T", "5iB", "iB"):
        with pytest.raises(UsageError, match="x: got"):
            volume_mount.parse_size(bad, "x")
    assert volume_mount.parse_size("9223372036854775807", "x") == (1 << 63) - 1
    assert volume_mount.parse_size("8388607T", "x") == 8388607 << 40
    assert volume_mount.parse_size("12B", "x") == 12 and volume_mount.parse_size("3kb", "x") == 3 << 10
    vol, key, tag, _ = _volume(tmp_path, {"a": b"x"})
    mnt = _mnt(tmp_path)
    with pytest.raises(UsageError, match="ephemeral memory: got"):
        mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True, memory_limit=1 << 80)
    assert not _mounted(mnt)
    with mount_volume(
        vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True, memory_limit=(1 << 63) - 1
    ):
        sv = os.statvfs(mnt)
        assert sv.f_blocks * sv.f_frsize > 1 << 62 and sv.f_bavail * sv.f_frsize > 1 << 62


def test_an_ephemeral_session_gives_back_the_memory_of_a_file_it_did_not_change(tmp_path: Path) -> None:
    # a volume file opened for writing is decrypted whole into memory; closed unchanged (GNU
    # touch opens O_WRONLY, a reader opens r+b), or after a truncation refused with ENOSPC, its
    # memory file was kept to the session's end, its bytes held from the budget for nothing
    files = {"f.bin": _pattern(3 * CS), "g.bin": _pattern(2 * CS, 1)}
    vol, key, tag, _ = _volume(tmp_path, files)
    mnt = _mnt(tmp_path)
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", ephemeral=True, memory_limit=4 * CS):
        free = os.statvfs(mnt).f_bavail
        with (mnt / "f.bin").open("r+b") as f:
            assert f.read() == files["f.bin"]
        assert os.statvfs(mnt).f_bavail == free  # nothing changed: nothing held
        _enospc(os.truncate, mnt / "g.bin", 5 * CS)  # decrypted (2 chunks), then refused
        assert os.statvfs(mnt).f_bavail == free
        _write_new(mnt / "new", _pattern(4 * CS, 2))  # the whole budget is there
        assert (mnt / "f.bin").read_bytes() == files["f.bin"] and (mnt / "g.bin").read_bytes() == files[
            "g.bin"
        ]
        # a changed file keeps its memory (its changes are nowhere else)
        (mnt / "new").unlink()
        with (mnt / "f.bin").open("r+b") as f:
            f.write(b"Z")
        assert os.statvfs(mnt).f_bavail == free - 3 * CS // os.statvfs(mnt).f_frsize
        assert (mnt / "f.bin").read_bytes() == b"Z" + files["f.bin"][1:]

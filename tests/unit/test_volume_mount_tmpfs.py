"""The tmpfs fallback without a private namespace (what non-root callers get): /dev/shm + guard.

(The root variant, a tmpfs in a private mount namespace, changes the caller's namespace, so it
is tested through the CLI in a separate process: tests/integration/test_volume_mount_cli.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import confide.volume.mount as volume_mount
from confide.errors import RollbackError, StorageError
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, verify_volume
from confide.volume.mount import _reseal_tree, _TmpfsMount
from confide.volume.store import load_sealed

SRC = Path(__file__).resolve().parents[2] / "src"
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def _volume(tmp: Path) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(os.urandom(50_000))
    (src / "b.txt").write_bytes(b"bee\n")
    (src / "sparse").write_bytes(bytes(1 << 20) + b"end")
    os.symlink("b.txt", src / "lnk")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key, chunk_size=4096)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _shm_mount(vol: Path, key: VolumeKey, mnt: Path, tag: str, writable: bool) -> _TmpfsMount:
    m, tag = load_sealed(vol, key, tag)
    return _TmpfsMount(vol, key, mnt, tag, writable, m, None, private_namespace=False)


def test_shm_mount_serves_files_and_removes_plaintext(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    h = _shm_mount(vol, key, mnt, tag, writable=False)
    shm = h.path
    try:
        assert h.mode == "shm" and mnt.is_symlink() and Path(os.readlink(mnt)) == shm
        assert shm.parent == Path("/dev/shm") and (shm.stat().st_mode & 0o777) == 0o700
        assert (mnt / "d" / "a.bin").read_bytes() == (tmp_path / "src" / "d" / "a.bin").read_bytes()
        assert os.readlink(mnt / "lnk") == "b.txt"
        assert (shm / "sparse").stat().st_blocks * 512 < 1 << 20  # holes stay holes
    finally:
        assert h.close() == tag
    assert not shm.exists() and mnt.is_dir() and not mnt.is_symlink()


def test_shm_writable_reseals_only_changed_files(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    before = load_sealed(vol, key)[0].by_path()
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag, writable=True)
    (mnt / "b.txt").write_bytes(b"changed\n")
    (mnt / "new").mkdir()
    (mnt / "new" / "c").write_bytes(b"c")
    new = h.close()
    assert new != tag
    report = verify_volume(vol, key, new)
    assert report.ok and report.unreferenced_objects == []
    after = load_sealed(vol, key, new)[0].by_path()
    assert after["b.txt"].file_id != before["b.txt"].file_id
    assert after["d/a.bin"].file_id == before["d/a.bin"].file_id  # untouched: not re-encrypted
    assert "new/c" in after
    with pytest.raises(RollbackError):
        verify_volume(vol, key, tag)


def test_reseal_of_an_unchanged_tree_keeps_the_tag(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag, writable=True)
    assert h.close() == tag
    # ... and the helper on its own without a baseline: every file counts as touched, so each
    # is compared with its (authenticated) sealed object: equal contents keep the tag, and
    # one changed byte (same size, same mtime) is found and sealed (negative twin)
    m, _ = load_sealed(vol, key, tag)
    h2 = _shm_mount(vol, key, tmp_path / "out", tag, writable=True)
    try:
        assert _reseal_tree(vol, key, m, tag, h2.path, {}) == tag
        p = h2.path / "d" / "a.bin"
        st = p.stat()
        data = bytearray(p.read_bytes())
        data[-1] ^= 1
        p.write_bytes(bytes(data))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        new = _reseal_tree(vol, key, m, tag, h2.path, {})
        assert new != tag
        after = load_sealed(vol, key, new)[0].by_path()
        assert after["d/a.bin"].chunks is not None and after["b.txt"] == m.by_path()["b.txt"]
    finally:
        h2.abort()
    assert verify_volume(vol, key, new).ok


def _made_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories the mount makes in /dev/shm from now on, in this process: not a listing
    of /dev/shm, where the tests running in other processes at the same time (pytest-xdist)
    make and remove volumes' directories of their own."""
    made: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def recording(*args: Any, **kwargs: Any) -> str:
        path = mkdtemp(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(volume_mount.tempfile, "mkdtemp", recording)
    return made


def test_non_empty_mountpoint_is_refused_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "occupied").write_text("x")
    made = _made_dirs(monkeypatch)
    with pytest.raises(StorageError, match="cannot expose"):
        _shm_mount(vol, key, mnt, tag, writable=False)
    assert len(made) == 1 and made[0].parent == Path("/dev/shm")  # the volume was decrypted there
    assert not made[0].exists()  # and removed
    assert (mnt / "occupied").read_text() == "x"


_PARENT = """
import sys
from pathlib import Path
from confide.volume import VolumeKey
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed
vol, keyhex, mnt, tag = sys.argv[1:]
key = VolumeKey.from_hex(keyhex)
m, tag = load_sealed(Path(vol), key, tag)
h = _TmpfsMount(Path(vol), key, Path(mnt), tag, False, m, None, private_namespace=False)
print(h.path, flush=True)
import time
time.sleep(600)
"""


def test_guard_removes_plaintext_when_the_caller_is_killed(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), str(vol), key.hex(), str(mnt), tag],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    shm = Path(p.stdout.readline().strip())
    p.stdout.close()
    assert (shm / "b.txt").read_bytes() == b"bee\n"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    while shm.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not shm.exists()


def test_a_signal_to_the_callers_process_group_leaves_the_guard_on_duty(tmp_path: Path) -> None:
    """A terminal's ^C (SIGINT to the foreground process group) must reach the caller only, as
    for the FUSE server: a guard in the caller's group died of it (KeyboardInterrupt) without
    removing anything, and plaintext stayed in /dev/shm once the caller died too."""
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), str(vol), key.hex(), str(mnt), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a shell's job
    )
    assert p.stdout is not None
    shm = Path(p.stdout.readline().strip())
    p.stdout.close()
    assert (shm / "b.txt").read_bytes() == b"bee\n"
    os.killpg(p.pid, signal.SIGINT)  # the caller dies of it (no handler): the guard must clean up
    p.wait()
    deadline = time.monotonic() + 30
    while shm.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not shm.exists()


def test_shm_ephemeral_drops_the_changes_and_writes_nothing_to_the_volume(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    before = {str(p): (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in vol.rglob("*")}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m, _ = load_sealed(vol, key, tag)
    h = _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False, ephemeral=True)
    shm = h.path
    assert h.writable and h.ephemeral
    (mnt / "b.txt").write_bytes(b"changed\n")
    (mnt / "new").write_bytes(b"new\n")
    (mnt / "d" / "a.bin").unlink()
    assert h.close() == tag  # nothing sealed
    assert not shm.exists() and not mnt.is_symlink()
    after = {str(p): (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in vol.rglob("*")}
    assert after == before
    assert load_sealed(vol, key, tag)[0].generation == 1


@pytest.mark.parametrize("fork", [False, True])
def test_a_stop_signal_sent_to_the_guard_leaves_the_tree_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    """A service manager's stop signals every process of the service, the guard too: it ignores
    the signals the FUSE server holds (before 2026-12-07 it removed the plaintext tree still in
    use, and the seal then failed: the session discarded). Its own stop (close) still removes it.
    Both guards: the exec'd interpreter and the fork (when the interpreter cannot be run)."""
    if fork:

        def no_exec(*_a: Any, **_k: Any) -> None:
            raise OSError("no interpreter")

        monkeypatch.setattr(volume_mount.subprocess, "Popen", no_exec)
    vol, key, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag, writable=True)
    shm = h.path
    try:
        guard = h._guard
        assert guard is not None and (guard.proc is None) == fork
        status = Path(f"/proc/{guard.pid}/status").read_text().splitlines()
        ignored = int(next(x for x in status if x.startswith("SigIgn:")).split()[1], 16)
        for sig in volume_mount.HELD_SIGNALS:
            assert ignored & (1 << (sig - 1)), signal.Signals(sig).name
            os.kill(guard.pid, sig)  # ignored: dropped by the kernel at once
        # its stop signal from another process than its caller: ignored as well (before, the
        # tree was removed while in use)
        other = os.fork()  # subprocess.Popen is unusable here (the fork case)
        if other == 0:  # pragma: no cover - the child
            os.kill(guard.pid, volume_mount.SERVER_STOP_SIGNAL)
            os._exit(0)
        assert os.waitpid(other, 0)[1] == 0
        time.sleep(0.3)
        (mnt / "after.txt").write_bytes(b"after the signals\n")
        assert os.path.exists(f"/proc/{guard.pid}") and shm.is_dir()
        new = h.close()
    finally:
        h.abort()
    assert new != tag and load_sealed(vol, key, new)[0].by_path()["after.txt"].size == 18
    assert not shm.exists()

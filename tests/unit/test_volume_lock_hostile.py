"""The volume lock against the host that owns the volume directory and against accidents
(xreview19): lock files that are not regular files, a lock file removed or replaced while a
process takes or holds it (flock(2) locks an inode: the classic lock-on-an-unlinked-file race),
one directory named twice in a release, and /proc/locks as input."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from confide.errors import StorageError
from confide.policy.model import UpdatePolicy
from confide.runtime.volumes import VolumeRelease, lock_released
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, verify_volume
from confide.volume import lock as volume_lock
from confide.volume.lock import INTENT_NAME, LOCK_NAME, acquire, holders, lock_volume, open_lock
from confide.volume.mount import fuse_usable, mount_volume
from confide.volume.store import load_sealed, seal_entries

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    v = tmp_path / "vol"
    create_volume(v, VolumeKey.generate())
    return v


def _fifo(path: Path, mode: int = 0o600) -> None:
    path.unlink()
    os.mkfifo(path, mode)


def _replace(path: Path) -> None:
    """What `rm DIR/.lock; touch DIR/.lock`, a restored backup or the host does: a new inode."""
    path.unlink()
    path.touch(mode=0o600)


def test_a_fifo_intent_file_is_refused_not_used(vol: Path) -> None:
    _fifo(vol / INTENT_NAME)
    with pytest.raises(StorageError, match="cannot create the lock file"):
        lock_volume(vol, shared=False, wait=1)
    fd = lock_volume(vol, shared=True, wait=1)  # a shared locker goes without its place
    assert fd is not None
    os.close(fd)


def test_a_fifo_lock_file_is_refused_not_used(vol: Path) -> None:
    _fifo(vol / LOCK_NAME)
    with pytest.raises(StorageError, match="cannot create the lock file"):
        lock_volume(vol, shared=False)
    with pytest.raises(OSError, match="not a regular file"):
        open_lock(vol)


def test_a_read_only_fifo_intent_file_does_not_hang_a_shared_locker(vol: Path) -> None:
    """A shared locker that may not write ``.lock.intent`` (EACCES) opens it read-only: on a
    FIFO (the host's, mode 0444) that open waited for a writer for ever, past every deadline
    and stop signal. In a child (it would hang), whose open for writing of the intent file is
    refused as an unprivileged user's is (root's succeeds, and never blocks)."""
    _fifo(vol / INTENT_NAME, 0o444)
    script = textwrap.dedent(f"""
        import errno, os
        from pathlib import Path
        real = os.open
        def unprivileged(path, flags, *args):
            if str(path).endswith({INTENT_NAME!r}) and flags & os.O_RDWR:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, flags, *args)
        os.open = unprivileged
        from confide.volume.lock import lock_volume
        fd = lock_volume(Path({str(vol)!r}), shared=True, wait=0.2)
        print("locked" if fd is not None else "none")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "locked"


@pytest.mark.parametrize("shared", [False, True])
def test_a_lock_file_replaced_before_the_lock_is_taken_is_refused(vol: Path, shared: bool) -> None:
    """Opened, then replaced, then locked: the lock is on an inode nobody else opens any more
    (a writer that opens .lock now takes the new one): refused, and let go."""
    fd = open_lock(vol)
    try:
        _replace(vol / LOCK_NAME)
        with pytest.raises(StorageError, match=r"lock file \.lock was removed or replaced while"):
            acquire(vol, fd, shared=shared, wait=0)
        new = lock_volume(vol, shared=False)  # the new file: free
        assert new is not None
        os.close(new)
        # and the old inode's lock was let go: another open file description of it gets it
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(again)
    finally:
        os.close(fd)


def test_a_seal_over_a_version_sealed_meanwhile_is_refused(tmp_path: Path) -> None:
    """A mount's seal (seal_entries with the tag it mounted) writes nothing when MANIFEST is no
    longer that version: another writer got in (its lock file was replaced) and sealed."""
    key = VolumeKey.generate()
    v = tmp_path / "v"
    create_volume(v, key)
    manifest, tag = load_sealed(v, key)
    src = tmp_path / "src"
    src.mkdir()
    (src / "theirs.txt").write_bytes(b"the other writer's")
    add_sources(v, key, [src])
    theirs = seal_volume(v, key)
    with pytest.raises(StorageError, match=r"MANIFEST changed while the volume was mounted"):
        seal_entries(v, key, manifest, manifest.entries, base_tag=tag)
    assert load_sealed(v, key)[1] == theirs
    verify_volume(v, key, expected_tag=theirs)


@pytest.mark.skipif(fuse_usable() is not None, reason="FUSE unavailable")
def test_a_writable_mount_does_not_seal_over_a_writer_that_got_in(tmp_path: Path) -> None:
    """The whole race: a writable FUSE mount holds the lock; its lock file is replaced; `volume
    add` + `seal` take the new file's lock and seal; the mount's seal is refused, the other
    writer's version (and its objects) stay."""
    key = VolumeKey.generate()
    v = tmp_path / "v"
    tag = create_volume(v, key)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    h = mount_volume(v, key, mnt, expected_tag=tag, mode="fuse", writable=True)
    try:
        (mnt / "mine.txt").write_bytes(b"the mount's")
        _replace(v / LOCK_NAME)
        src = tmp_path / "src"
        src.mkdir()
        (src / "theirs.txt").write_bytes(b"the other writer's")
        add_sources(v, key, [src])
        theirs = seal_volume(v, key)
    finally:
        with pytest.raises(StorageError, match=r"MANIFEST changed while the volume was mounted"):
            h.close()
    assert load_sealed(v, key)[1] == theirs
    verify_volume(v, key, expected_tag=theirs)


def test_one_directory_twice_in_a_release_is_refused_at_once(tmp_path: Path) -> None:
    """Two volumes of a release in one directory (two paths to it): the second lock would wait
    for the first, this run's own, until the wait ran out."""
    key = VolumeKey.generate()
    d = tmp_path / "d"
    create_volume(d, key)
    (tmp_path / "alias").symlink_to(d)
    releases = [
        VolumeRelease("a", d, key.raw, "", UpdatePolicy.EPHEMERAL),
        VolumeRelease("b", tmp_path / "alias", key.raw, "", UpdatePolicy.ROLLBACK_PROTECTED),
    ]
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"volumes 'a' and 'b' of the release are one directory"):
        lock_released(releases, 30)
    assert time.monotonic() - start < 5
    fd = lock_volume(d, shared=False)  # nothing left held
    assert fd is not None
    os.close(fd)


def test_proc_locks_lines_that_are_not_pids_are_skipped(
    vol: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = open_lock(vol)
    try:
        st = os.fstat(fd)
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        fake = tmp_path / "locks"
        fake.write_text(
            f"1: FLOCK  ADVISORY  WRITE {'9' * 5000} {where} 0 EOF\n"
            f"2: FLOCK  ADVISORY  WRITE \u0661\u0662 {where} 0 EOF\n"
            f"3: FLOCK  ADVISORY  READ  4242 {where} 0 EOF\n",
            encoding="utf-8",
        )
        monkeypatch.setattr(volume_lock, "PROC_LOCKS", str(fake))
        assert holders(fd) == [4242]
    finally:
        os.close(fd)

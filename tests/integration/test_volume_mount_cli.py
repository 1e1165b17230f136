"""`confide volume mount` as a user runs it: a real process, real FUSE/tmpfs mounts, signals."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.errors import RollbackError
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, verify_volume, write_key
from confide.volume.mount import _kernel_at_least, _unmount_cmd, fuse_usable

sys.path.insert(0, str(Path(__file__).parents[1]))
from not_root import User, not_root_user

SRC = Path(__file__).resolve().parents[2] / "src"
FILES = {"data/model.bin": os.urandom(300_000), "data/empty": b"", "readme.txt": b"hello\n"}


def _volume(root: Path) -> tuple[Path, Path, str]:
    src = root / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    os.symlink("readme.txt", src / "link")
    key = VolumeKey.generate()
    key_file = root / "key"
    write_key(key_file, key)
    vol = root / "vol"
    create_volume(vol, key, chunk_size=4096)
    add_sources(vol, key, [src])
    return vol, key_file, seal_volume(vol, key)


def _mounted(path: Path) -> bool:
    """From the mount table (os.path.ismount misses a dead FUSE server's mount: ENOTCONN)."""
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


class _Mount:
    def __init__(self, *args: str, user: User | None = None, extra_env: dict[str, str] | None = None) -> None:
        if user is not None:  # not root: the user's, in its mount namespace (tests/not_root.py)
            self.proc = user.confide("volume", "mount", *args, env=extra_env)
        else:
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("CONFIDE_VOLUME_KEY", "CONFIDE_TMPFS_FOLIOS", "CONFIDE_EPHEMERAL_MEMORY")
            }
            env["PYTHONPATH"] = str(SRC)
            env.update(extra_env or {})
            cmd = [sys.executable, "-m", "confide", "volume", "mount", *args]
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline()
        self.tag_line = self.proc.stdout.readline()

    def root(self) -> Path:
        """The mount as seen from inside the mounting process's mount namespace."""
        return Path(f"/proc/{self.proc.pid}/root")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


@pytest.fixture
def vol(tmp_path: Path) -> Iterator[tuple[Path, Path, str, Path]]:
    v, k, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield v, k, tag, mnt


def _key(key_file: Path) -> VolumeKey:
    return VolumeKey.from_hex(key_file.read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs in a private mount namespace needs root")
def test_tmpfs_read_only_in_a_private_namespace(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "tmpfs")
    try:
        assert "read-only via tmpfs" in m.first, m.first + m.proc.stderr.read() if m.proc.stderr else ""
        inside = m.root() / str(mnt).lstrip("/")
        # the line says where the files are for other processes (MOUNTPOINT is their bare directory)
        assert f"(this process's private mount namespace: elsewhere at {inside}), pid {m.proc.pid}" in m.first
        for rel, data in FILES.items():
            assert (inside / rel).read_bytes() == data
        assert os.readlink(inside / "link") == "readme.txt"
        src = v.parent / "src"  # the recorded modification times, to the nanosecond
        for rel in [*FILES, "data", "link"]:
            assert (inside / rel).lstat().st_mtime_ns == (src / rel).lstat().st_mtime_ns, rel
        # invisible from the host's namespace: nothing mounted, nothing written here
        assert not _mounted(mnt) and os.listdir(mnt) == []
        mounts = Path(f"/proc/{m.proc.pid}/mounts").read_text()
        line = next(ln for ln in mounts.splitlines() if f" {mnt} " in ln)
        assert line.split()[2] == "tmpfs" and "ro," in line
        assert "huge=" not in line  # large folios are opt-in (mount.TMPFS_LARGE_FOLIOS)
        with pytest.raises(OSError) as ei:
            (inside / "new").write_bytes(b"x")
        assert ei.value.errno == errno.EROFS
    finally:
        rc, out, err = m.stop(signal.SIGINT)
    assert rc == 0, err
    assert f"tag: {tag} (unchanged)" in out


_MOUNT_TMPFS = """
import sys
from pathlib import Path
from confide.errors import StorageError
from confide.volume import mount
mount._private_namespace()
mount.TMPFS_LARGE_FOLIOS = (sys.argv[2].encode(), 4096)
try:
    piece = mount._mount_tmpfs(Path(sys.argv[1]))
except StorageError as exc:
    print("error", exc.message)
    raise SystemExit(0)
line = next(ln for ln in open("/proc/self/mounts") if f" {sys.argv[1]} " in ln)
print(piece, line.split()[3])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs in a private mount namespace needs root")
def test_tmpfs_large_folio_options_fall_back_only_when_refused(tmp_path: Path) -> None:
    def run(where: Path, opts: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        r = subprocess.run(
            [sys.executable, "-c", _MOUNT_TMPFS, str(where), opts],
            check=False,
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    # refused option (EINVAL): the plain options, one write per run (no piece)
    if not _kernel_at_least(6, 14):  # never tried: the plain options
        assert run(tmp_path, "mode=0755,huge=within_size").startswith("None ")
        return
    got = run(tmp_path, "mode=0755,huge=bogus")
    assert got.startswith("None rw,nosuid,nodev") and "huge" not in got
    # accepted (Linux >= 6.14 only): the piece comes back and the options are in effect
    if _kernel_at_least(6, 14) and Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled").exists():
        got = run(tmp_path, "mode=0755,huge=within_size")
        assert got.startswith("4096 ") and "huge=within_size" in got
    # any other failure is an error naming the options, not a silent fallback
    got = run(tmp_path / "absent", "mode=0755,huge=within_size")
    assert got.startswith("error mount -t tmpfs at") and "(-o mode=0755,huge=within_size)" in got
    assert os.listdir(tmp_path) == []  # nothing mounted or written in this namespace


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs in a private mount namespace needs root")
def test_tmpfs_writable_reseals_on_exit(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "tmpfs", "--writable")
    try:
        inside = m.root() / str(mnt).lstrip("/")
        (inside / "readme.txt").write_bytes(b"changed\n")
        (inside / "data" / "new.txt").write_bytes(b"new\n")
        (inside / "data" / "empty").unlink()
        os.mkfifo(inside / "fifo")  # special files are not stored (logged)
    finally:
        rc, out, err = m.stop()
    assert rc == 0, err
    assert "fifo" in err and "special file" in err
    new = out.strip().split("tag: ")[-1].split()[0]
    assert new != tag and "(changed)" in out
    key = _key(key_file)
    report = verify_volume(v, key, new)
    assert report.ok and report.files == 3 and report.unreferenced_objects == []
    with pytest.raises(RollbackError):
        verify_volume(v, key, tag)
    # the unchanged big file kept its object: only changed files are re-encrypted
    assert report.generation == 2


def test_wrong_tag_exits_60_and_mounts_nothing(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, _tag, mnt = vol
    for mode in ("tmpfs", "fuse", "auto"):
        m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", "00" * 32, "--mode", mode)
        rc, _out, err = m.stop()
        assert rc == 60, err
        assert "RollbackError" in err and not _mounted(mnt)


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
def test_fuse_writable_via_cli_prints_the_new_tag(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse", "--writable")
    try:
        assert "read-write via fuse" in m.first
        assert _mounted(mnt)  # FUSE mounts are visible (no namespace)
        assert (mnt / "data" / "model.bin").read_bytes() == FILES["data/model.bin"]
        with (mnt / "readme.txt").open("ab") as f:
            f.write(b"more\n")
    finally:
        rc, out, err = m.stop(signal.SIGINT)
    assert rc == 0, err
    assert not _mounted(mnt)
    new = out.strip().split("tag: ")[-1].split()[0]
    assert new != tag
    assert verify_volume(v, _key(key_file), new).ok


@pytest.fixture
def nobody() -> Iterator[User]:
    """``nobody`` (else a throwaway user) in a mount namespace where it can run this checkout's
    ``confide`` (tests/not_root.py, as tests/integration/test_run_not_root_e2e.py)."""
    with not_root_user() as user:
        yield user


def _fuse_for(user: User) -> bool:
    """Whether a mount of ``user``'s may use FUSE (``auto`` then takes it): /dev/fuse (opened as
    that user) and libfuse 3, and the setuid ``fusermount3`` that mounts for a user not root."""
    helper = shutil.which("fusermount3")
    if fuse_usable() is not None or helper is None or not os.stat(helper).st_mode & 0o4000:
        return False
    probe = user.as_user("sh", "-c", "exec 3<>/dev/fuse")
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def test_not_root_falls_back_to_a_private_shm_directory(nobody: User) -> None:
    """Not root, ``auto`` takes FUSE where the user may use it (docs/volume-mount.md, "Modes":
    /dev/fuse, libfuse 3 and the setuid fusermount3), else the ``shm`` fallback: libfuse made
    unloadable (``FUSE_LIBRARY_PATH``) so the fallback is tested wherever FUSE works too."""
    root = nobody.work / "shm-test"
    root.mkdir()
    v, key_file, tag = _volume(root)
    mnt = root / "mnt"
    mnt.mkdir()
    for p in [root, *root.rglob("*")]:
        os.lchown(p, nobody.uid, nobody.uid)
    root.chmod(0o755)
    if _fuse_for(nobody):  # auto: FUSE, not the fallback (read-only: the volume stays at its tag)
        m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, user=nobody)
        try:
            assert "read-only via fuse" in m.first, m.first
            assert not mnt.is_symlink()
            # only its user may enter a FUSE mount without allow_other (root included)
            cat = nobody.as_user("cat", str(mnt / "readme.txt"))
            assert subprocess.run(cat, capture_output=True, check=True).stdout == FILES["readme.txt"]
        finally:
            rc, _out, err = m.stop()
        assert rc == 0, err
    no_fuse = {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so"}
    m = _Mount(
        str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--writable", user=nobody, extra_env=no_fuse
    )
    shm: Path | None = None
    try:
        assert "via shm" in m.first, m.first
        assert mnt.is_symlink()
        shm = Path(os.readlink(mnt))
        assert shm.parent == Path("/dev/shm") and (shm.stat().st_mode & 0o777) == 0o700
        assert shm.stat().st_uid == nobody.uid
        assert (mnt / "readme.txt").read_bytes() == FILES["readme.txt"]
        (mnt / "readme.txt").write_bytes(b"by nobody\n")
    finally:
        rc, out, err = m.stop()
    assert rc == 0, err
    assert shm is not None and not shm.exists()  # plaintext removed
    assert mnt.is_dir() and not mnt.is_symlink()  # the mountpoint is restored
    new = out.strip().split("tag: ")[-1].split()[0]
    assert new != tag and verify_volume(v, _key(key_file), new).ok
    # killed without a chance to clean up: the guard child still removes the plaintext
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", new, user=nobody, extra_env=no_fuse)
    assert "via shm" in m.first, m.first
    shm = Path(os.readlink(mnt))
    assert shm.exists()
    m.stop(signal.SIGKILL)
    for _ in range(100):
        if not shm.exists():
            break
        time.sleep(0.1)
    assert not shm.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs in a private mount namespace needs root")
def test_tmpfs_refuses_a_volume_with_a_corrupted_chunk(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    from confide.volume.store import load_sealed, object_path

    entry = load_sealed(v, _key(key_file))[0].by_path()["data/model.bin"]
    obj = object_path(v, entry.file_id)
    raw = bytearray(obj.read_bytes())
    raw[5000] ^= 0x04
    obj.write_bytes(bytes(raw))
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "tmpfs")
    rc, out, err = m.stop()
    assert rc == 21, out + err
    assert "data/model.bin" in err and "does not authenticate" in err
    assert not _mounted(mnt) and os.listdir(mnt) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs in a private mount namespace needs root")
def test_tmpfs_folios_switch_from_the_environment(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    args = (str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "tmpfs")
    bad = _Mount(*args, extra_env={"CONFIDE_TMPFS_FOLIOS": "huge"})
    rc, _out, err = bad.stop()
    assert rc == 2 and "$CONFIDE_TMPFS_FOLIOS: got 'huge', expected small or large" in err
    m = _Mount(*args, extra_env={"CONFIDE_TMPFS_FOLIOS": "large"})
    try:
        assert "read-only via tmpfs" in m.first, m.first
        inside = m.root() / str(mnt).lstrip("/")
        for rel, data in FILES.items():
            assert (inside / rel).read_bytes() == data
        mounts = Path(f"/proc/{m.proc.pid}/mounts").read_text()
        line = next(ln for ln in mounts.splitlines() if f" {mnt} " in ln)
        thp = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        if _kernel_at_least(6, 14) and thp.exists():
            assert "huge=within_size" in line
        else:  # not tried on older kernels; refused without transparent huge pages
            assert "huge=" not in line
    finally:
        rc, _out, err = m.stop(signal.SIGINT)
    assert rc == 0, err


# --- signals at every point of the mount's life ----------------------------------------------
# The script runs `confide volume mount` with mount_volume wrapped: once the mount is complete
# it writes a file into it (a session's change), then either sends itself SIGNAL at once (the
# window between the mount finishing and the command waiting for its stop signal) or arms the
# handle's close() to send it as the unmount starts (a second signal during the seal).
_SIGNAL_AT = """
import os, signal, sys
import confide.volume.cli as vc
real = vc.mount_volume
where, sig, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def hooked(*a, **k):
    h = real(*a, **k)
    if h.writable:
        (h.path / "late.txt").write_bytes(b"written before the signal\\n")
    if where == "mounted":
        os.kill(os.getpid(), sig)
    else:
        close = h.close
        def closing():
            os.kill(os.getpid(), sig)
            return close()
        h.close = closing
    return h
vc.mount_volume = hooked
sys.argv = ["confide", "volume", "mount", *args]
from confide.cli import main
main()
"""


def _modes() -> list[str]:
    out = []
    if os.geteuid() == 0:
        out.append("tmpfs")
    if fuse_usable() is None:
        out.append("fuse")
    return out


@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("where", ["mounted", "closing"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("writable", [True, False])
def test_a_signal_at_any_point_unmounts_cleanly(
    vol: tuple[Path, Path, str, Path], mode: str, where: str, sig: int, writable: bool
) -> None:
    v, key_file, tag, mnt = vol
    args = [str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", mode]
    args += ["--writable"] if writable else []
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("CONFIDE_VOLUME_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_AT, where, str(int(sig)), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    if where == "closing":
        assert proc.stdout is not None
        assert f"via {mode}" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)  # the stop; close() then gets `sig` as it starts
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.returncode, out, err)
    assert "aborted" not in err
    assert not _mounted(mnt) and os.listdir(mnt) == []
    key = _key(key_file)
    if writable:
        new = out.strip().split("tag: ")[-1].split()[0]
        assert "(changed)" in out and new != tag, out
        report = verify_volume(v, key, new)
        assert report.ok and report.files == len(FILES) + 1  # the session's file was sealed
    else:
        assert f"unmounted; tag: {tag} (unchanged)" in out, out
        assert verify_volume(v, key, tag).ok


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_fuse_writable_survives_a_signal_to_the_whole_process_group(
    vol: tuple[Path, Path, str, Path], sig: int
) -> None:
    """A terminal's ^C and `timeout -s INT` signal the whole process group: the FUSE server,
    in a session of its own, is not stopped by it; the mount's own unmount seals."""
    v, key_file, tag, mnt = vol
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("CONFIDE_VOLUME_KEY", None)
    cmd = [sys.executable, "-m", "confide", "volume", "mount", str(v), str(mnt), "--key", str(key_file)]
    cmd += ["--tag", tag, "--mode", "fuse", "--writable"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        assert "read-write via fuse" in proc.stdout.readline()
        (mnt / "late.txt").write_bytes(b"written before the signal\n")
    finally:
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    assert not _mounted(mnt)
    new = out.strip().split("tag: ")[-1].split()[0]
    assert "(changed)" in out and new != tag, out
    report = verify_volume(v, _key(key_file), new)
    assert report.ok and report.files == len(FILES) + 1


def _server_of(proc: subprocess.Popen[str]) -> int:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1  # the FUSE server
    return int(children[0])


def _ignores(pid: int, sig: int) -> bool:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_fuse_writable_sealed_when_every_process_gets_the_stop_signal(
    vol: tuple[Path, Path, str, Path], sig: int
) -> None:
    """A service manager's stop that signals every process of the service (systemd's
    KillMode=control-group), the FUSE server first: the server ignores it and keeps serving
    (a write after it still lands in the volume); the command's own signal unmounts and seals
    as usual, exit 0 (before 2026-12-07 the mount was lost and the command exited 50)."""
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse", "--writable")
    try:
        assert "read-write via fuse" in m.first, m.first
        (mnt / "late.txt").write_bytes(b"written before the signal\n")
        server = _server_of(m.proc)
        assert _ignores(server, sig)  # ignored: the kernel drops it at once, nothing is pending
        os.kill(server, sig)
        (mnt / "later.txt").write_bytes(b"written after the server's signal\n")
        assert _mounted(mnt) and m.proc.poll() is None
    finally:
        code, out, err = m.stop(sig)  # then the command's own
    assert code == 0, (out, err)
    assert "error" not in err and "lost" not in err, err
    assert not _mounted(mnt)
    new = out.strip().split("tag: ")[-1].split()[0]
    assert "(changed)" in out and new != tag, out
    report = verify_volume(v, _key(key_file), new)
    assert report.ok and report.files == len(FILES) + 2


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
def test_fuse_writable_server_killed_ends_the_command_with_exit_50_and_nothing_sealed(
    vol: tuple[Path, Path, str, Path],
) -> None:
    """SIGKILL cannot be held: the server dies and its mount with it (ENOTCONN). The command
    does not wait for a stop signal of its own that may never come: it ends at once, exit 50,
    naming the death; nothing is sealed and the dead mount is removed."""
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse", "--writable")
    try:
        assert "read-write via fuse" in m.first, m.first
        (mnt / "late.txt").write_bytes(b"written before the kill\n")
        os.kill(_server_of(m.proc), signal.SIGKILL)
        out, err = m.proc.communicate(timeout=60)  # without a signal to the command
    finally:
        if m.proc.poll() is None:
            m.stop()
    assert m.proc.returncode == 50, (out, err)
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    assert re.fullmatch(
        rf"error: StorageError: the FUSE server of '{re.escape(str(mnt))}' has died \(killed by SIGKILL\) and "
        r"cannot acknowledge the commit: this session's changes are lost",
        line,
    ), line
    assert "unmounted" not in out
    assert not _mounted(mnt)
    report = verify_volume(v, _key(key_file), tag)  # still the old version
    assert report.ok and report.files == len(FILES)


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
@pytest.mark.parametrize("writable", [True, False])
def test_fuse_mount_removed_from_outside_ends_the_command_with_exit_50(
    vol: tuple[Path, Path, str, Path], writable: bool
) -> None:
    """The mount removed from outside (`umount` of the mountpoint): the command does not wait
    for a stop signal of its own: a writable one seals what the session held at that moment,
    prints the tag and fails (exit 50), naming the moment and the mountpoint whose later writes
    are not in the volume; a read-only one fails the same (not reported before 2026-12-07)."""
    v, key_file, tag, mnt = vol
    args = [str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse"]
    m = _Mount(*args, *(["--writable"] if writable else []))
    try:
        assert "via fuse" in m.first, m.first
        if writable:
            (mnt / "late.txt").write_bytes(b"written before the unmount\n")
        subprocess.run(_unmount_cmd(mnt, False), check=True, capture_output=True)
        out, err = m.proc.communicate(timeout=60)  # without a signal to the command
    finally:
        if m.proc.poll() is None:
            m.stop()
    assert m.proc.returncode == 50, (out, err)
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    sealed = "sealed what it held; " if writable else ""
    assert re.fullmatch(
        r"error: StorageError: the FUSE mount was removed from outside at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: the "
        rf"mount was lost then; {sealed}anything written to {re.escape(str(mnt))} after that is not in the volume",
        line,
    ), line
    assert not _mounted(mnt)
    new = out.strip().split("tag: ")[-1].split()[0]
    if writable:
        assert "(changed)" in out and new != tag, out
    else:
        assert "(unchanged)" in out and new == tag, out
    report = verify_volume(v, _key(key_file), new)
    assert report.ok and report.files == len(FILES) + writable


def _inside(m: _Mount, mnt: Path, mode: str) -> Path:
    """Where the mount's files are: FUSE mounts are visible to all, tmpfs ones in the command's
    private namespace only."""
    return mnt if mode == "fuse" else m.root() / str(mnt).lstrip("/")


def _digest(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """mode, mtime and contents of everything below ``directory`` (the lock file included)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(directory))] = (
            st.st_mode,
            st.st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
    return out


@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("kind", ["read-only", "ephemeral"])
def test_read_only_and_ephemeral_mounts_share_the_volume_and_exclude_a_writable_one(
    tmp_path: Path, mode: str, kind: str
) -> None:
    v, key_file, tag = _volume(tmp_path)
    before = _digest(v)
    mnts = [tmp_path / f"m{i}" for i in range(3)]
    for p in mnts:
        p.mkdir()
    extra = ["--ephemeral"] if kind == "ephemeral" else []
    common = ["--key", str(key_file), "--tag", tag, "--mode", mode, *extra]
    first = _Mount(str(v), str(mnts[0]), *common)
    second = None
    try:
        assert f"{kind} read-write via" in first.first if extra else "read-only via" in first.first, (
            first.first
        )
        second = _Mount(str(v), str(mnts[1]), *common)  # the same copy, at the same time
        assert f"tag: {tag}" in second.tag_line, second.first + second.tag_line
        views = [_inside(first, mnts[0], mode), _inside(second, mnts[1], mode)]
        for view in views:
            assert (view / "data" / "model.bin").read_bytes() == FILES["data/model.bin"]
        if extra:  # each changes its own view only
            (views[0] / "readme.txt").write_bytes(b"first's\n")
            (views[1] / "data" / "new").write_bytes(b"second's\n")
            assert (views[1] / "readme.txt").read_bytes() == b"hello\n"
            assert not (views[0] / "data" / "new").exists()
        else:
            with pytest.raises(OSError) as ei:
                (views[0] / "readme.txt").write_bytes(b"x")
            assert ei.value.errno == errno.EROFS
        # a writable mount needs the volume alone: refused, one line, exit 50, nothing mounted
        w = _Mount(str(v), str(mnts[2]), "--key", str(key_file), "--tag", tag, "--mode", mode, "--writable")
        rc, _out, err = w.stop()
        assert rc == 50, err
        assert "StorageError" in err and "is in use: a writer or a mount holds its lock" in err, err
        assert not _mounted(mnts[2])
        assert _digest(v) == before  # nothing of either session in the volume directory
    finally:
        results = [m.stop() for m in (first, second) if m is not None]
    for rc, out, err in results:
        assert rc == 0 and f"unmounted; tag: {tag} (unchanged)" in out, out + err
    assert _digest(v) == before
    # free again: a writable mount now succeeds, and excludes them in turn
    w = _Mount(str(v), str(mnts[2]), "--key", str(key_file), "--tag", tag, "--mode", mode, "--writable")
    try:
        assert "read-write via" in w.first, w.first
        r = _Mount(str(v), str(mnts[0]), *common)
        rc, _out, err = r.stop()
        assert rc == 50 and "is in use: a writer (add, rm, seal or a writable mount) holds its lock" in err, (
            err
        )
    finally:
        rc, out, err = w.stop()
    assert rc == 0 and "(unchanged)" in out, out + err


def test_writable_and_ephemeral_together_is_a_usage_error(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--writable", "--ephemeral")
    rc, _out, err = m.stop()
    assert rc == 2 and "--writable and --ephemeral" in err and len(err.strip().splitlines()) == 1, err
    assert not _mounted(mnt)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ephemeral-memory", "1G"], "--ephemeral-memory: applies to --ephemeral mounts only"),
        (["--ephemeral", "--ephemeral-memory", "lots"], "--ephemeral-memory: got 'lots', expected a size"),
    ],
)
def test_ephemeral_memory_usage_errors(
    vol: tuple[Path, Path, str, Path], args: list[str], message: str
) -> None:
    v, key_file, tag, mnt = vol
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, *args)
    rc, _out, err = m.stop()
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not _mounted(mnt)


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
def test_ephemeral_memory_option_fails_writes_past_it_with_enospc(vol: tuple[Path, Path, str, Path]) -> None:
    v, key_file, tag, mnt = vol
    # the option wins over the environment variable
    m = _Mount(str(v), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse", "--ephemeral",
               "--ephemeral-memory", "64K", extra_env={"CONFIDE_EPHEMERAL_MEMORY": "1M"})  # fmt: skip
    try:
        assert "ephemeral read-write via fuse" in m.first, m.first
        (mnt / "a").write_bytes(bytes(60_000))
        with pytest.raises(OSError) as ei:
            (mnt / "b").write_bytes(bytes(10_000))
        assert ei.value.errno == errno.ENOSPC
        (mnt / "a").unlink()
        (mnt / "b").write_bytes(bytes(10_000))
        assert (mnt / "b").stat().st_size == 10_000
    finally:
        rc, out, err = m.stop()
    assert rc == 0 and f"unmounted; tag: {tag} (unchanged)" in out, out + err

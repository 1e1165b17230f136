"""``confide run`` without root (``mount_released``): no private mount namespace, so concurrent
runs of a volume of the same name must not meet at one mount point. Each run mounts its volumes
in a directory of its own (``STAGING/run-XXXXXXXX/NAME``, named by ``CONFIDE_VOLUME_<NAME>``);
where none can be made, the shared ``STAGING/NAME`` is refused while another run uses it.

Not root is faked (``os.geteuid``), so the mounts are made in this process's namespace, over
FUSE (through fusermount, as without root) or the /dev/shm fallback (a symlink)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from confide.errors import StorageError
from confide.policy.model import UpdatePolicy
from confide.runtime import volumes as runtime_volumes
from confide.runtime.volumes import VolumeRelease, mount_released
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume.mount import MountHandle, fuse_usable, mount_volume

FUSE_WHY = fuse_usable()


def _modes() -> list[object]:
    return [
        pytest.param("fuse", marks=pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE: {FUSE_WHY}")),
        pytest.param("shm", marks=pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")),
    ]


@pytest.fixture
def not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """STAGING under tmp_path, geteuid() not 0; the mode's FUSE choice. Returns STAGING."""
    staging = tmp_path / "run" / "confide" / "volumes"
    monkeypatch.setattr(runtime_volumes, "STAGING", staging)
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    if request.node.callspec.params["mode"] == "shm":  # FUSE unusable: auto takes tmpfs, not root: shm
        monkeypatch.setenv("FUSE_LIBRARY_PATH", "/nonexistent/libfuse3.so")
    return staging


def _release(tmp: Path) -> VolumeRelease:
    src = tmp / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes(b"first\n")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    return VolumeRelease("data", vol, key.raw, seal_volume(vol, key), UpdatePolicy.EPHEMERAL)


def _fs(path: Path) -> str:
    want = os.path.realpath(path)
    types = [
        line.split()[2]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1] == want
    ]
    return types[-1] if types else "none"


@pytest.mark.parametrize("mode", _modes())
def test_two_concurrent_runs_without_root_each_get_a_mount_point_of_their_own(
    tmp_path: Path, not_root: Path, mode: str
) -> None:
    release = _release(tmp_path)
    a = mount_released([release])
    try:
        b = mount_released([release])  # the same policy's volume, while the first run is live
        try:
            pa, pb = (Path(m.environment["CONFIDE_VOLUME_DATA"]) for m in (a, b))
            assert pa != pb and pa.name == pb.name == "data"
            assert pa.parent.parent == pb.parent.parent == not_root
            assert pa.parent.name.startswith("run-") and (pa.parent.stat().st_mode & 0o777) == 0o700
            assert a.paths() == {"data": pa} and b.paths() == {"data": pb}
            if mode == "fuse":
                assert _fs(pa) == _fs(pb) == "fuse.confide"  # neither covers the other
            else:
                assert pa.is_symlink() and pb.is_symlink() and os.readlink(pa) != os.readlink(pb)
            # each run sees its own changes only (the volume is ephemeral)
            (pa / "notes.txt").write_bytes(b"by a\n")
            (pb / "mine").write_bytes(b"b\n")
            assert (pb / "notes.txt").read_bytes() == b"first\n"
            assert sorted(os.listdir(pa)) == ["notes.txt"] and sorted(os.listdir(pb)) == ["mine", "notes.txt"]
        finally:
            assert b.close() == {}
        assert (pa / "notes.txt").read_bytes() == b"by a\n"  # the first run's mount is untouched
        assert not pb.parent.exists()  # the second run's directory is gone
    finally:
        assert a.close() == {}
    assert os.listdir(not_root) == []  # no run's directory left behind


@pytest.mark.parametrize("mode", _modes())
def test_without_a_directory_of_its_own_a_second_run_is_refused_naming_the_conflict(
    tmp_path: Path, not_root: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # where no directory of the run's own can be made under STAGING (not writable to the user;
    # root, running this test, would not be refused), the shared path STAGING/NAME is used
    monkeypatch.setattr(runtime_volumes, "_run_directory", lambda staging: None)
    release = _release(tmp_path)
    shared = not_root / "data"
    a = mount_released([release])
    try:
        assert a.environment["CONFIDE_VOLUME_DATA"] == str(shared)
        (shared / "notes.txt").write_bytes(b"by a\n")
        with pytest.raises(StorageError) as ei:
            mount_released([release])
        assert str(shared) in ei.value.message and "is in use" in ei.value.message
        assert "'data'" in ei.value.message and "nothing was mounted" in ei.value.message
        # the first run's mount is untouched
        assert (shared / "notes.txt").read_bytes() == b"by a\n"
        assert mode != "fuse" or _fs(shared) == "fuse.confide"
    finally:
        a.close()
    # free again: the next run mounts there
    c = mount_released([release])
    try:
        assert (shared / "notes.txt").read_bytes() == b"first\n"
    finally:
        c.close()


def _make_unsafe(staging: Path, tmp: Path, how: str) -> None:
    """STAGING (or a directory above it) that another local user could change."""
    if how == "parent writable by others":
        staging.mkdir(parents=True)
        staging.parent.chmod(0o777)  # no sticky bit: anyone may rename STAGING's entries away
    elif how == "owned by another user":
        staging.mkdir(parents=True)
        os.chown(staging, 12345, 12345)
    else:  # "a symlink to another user's directory"
        theirs = tmp / "theirs"
        theirs.mkdir()
        os.chown(theirs, 12345, 12345)
        staging.parent.mkdir(parents=True)
        staging.symlink_to(theirs)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize(
    "how", ["parent writable by others", "owned by another user", "a symlink to another user's directory"]
)
@pytest.mark.parametrize("mode", _modes())
def test_a_staging_directory_another_user_could_change_is_refused(
    tmp_path: Path, not_root: Path, mode: str, how: str
) -> None:
    # another local user who can rename, replace or own /run/confide/volumes (or what is above
    # it) could swap the run's directory for one of theirs after the mount: the program would
    # then write its plaintext where $CONFIDE_VOLUME_<NAME> leads, into their directory
    release = _release(tmp_path)
    _make_unsafe(not_root, tmp_path, how)
    before = sorted(os.listdir(not_root))
    with pytest.raises(StorageError) as ei:
        mount_released([release])
    assert "another user" in ei.value.message and "nothing was mounted" in ei.value.message
    assert sorted(os.listdir(not_root)) == before  # no run directory made there


@pytest.mark.parametrize("mode", _modes())
def test_a_sticky_world_writable_staging_directory_is_used(tmp_path: Path, not_root: Path, mode: str) -> None:
    release = _release(tmp_path)
    not_root.mkdir(parents=True)
    not_root.chmod(0o1777)  # the shared /tmp-like setup: nobody may rename another's entries
    m = mount_released([release])
    try:
        assert Path(m.environment["CONFIDE_VOLUME_DATA"]).parent.parent == not_root
    finally:
        m.close()


# --- run directories left behind by killed runs (_collect_stale) ---------------------------------

SRC = Path(__file__).resolve().parents[2] / "src"

_RUN = """
import os, sys
from pathlib import Path
from confide.runtime import volumes
path, lock = volumes._run_directory(Path(sys.argv[1]))
(path / "data").mkdir(mode=0o700)  # a volume's mount point, unmounted by its FUSE server
os.symlink("/dev/shm/confide-volume-gone", path / "shm")  # a tmpfs mount's link, dangling
print(path, flush=True)
if sys.argv[2] == "live":
    sys.stdin.read()
os.kill(os.getpid(), 9)  # SIGKILL: nothing removed
"""


def _run_dir(staging: Path, live: bool = False) -> tuple[Path, subprocess.Popen[str]]:
    """A run directory as a run without root makes it (its lock held by that process), with a
    mount point and a /dev/shm link in it; the process is killed at once, or when its stdin is
    closed (``live``)."""
    staging.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(staging), "live" if live else "dead"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    if not live:
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
    assert path.parent == staging and sorted(os.listdir(path)) == [".lock", "data", "shm"]
    return path, proc


def test_a_killed_runs_directory_is_collected_and_a_live_ones_is_not(tmp_path: Path) -> None:
    staging = tmp_path / "volumes"
    dead, _ = _run_dir(staging)
    live, proc = _run_dir(staging, live=True)
    try:
        runtime_volumes._collect_stale(staging, os.getuid())
        assert not dead.exists()  # its lock was free: its run is gone
        assert sorted(os.listdir(live)) == [".lock", "data", "shm"]  # held: untouched
    finally:
        proc.communicate()
    runtime_volumes._collect_stale(staging, os.getuid())
    assert os.listdir(staging) == []


def test_a_live_run_of_the_same_process_is_not_collected(tmp_path: Path) -> None:
    # flock conflicts between open file descriptions, not processes: the SDK's blocks of one
    # process are protected from each other
    staging = tmp_path / "volumes"
    staging.mkdir()
    own = runtime_volumes._run_directory(staging)
    assert own is not None
    path, lock = own
    try:
        runtime_volumes._collect_stale(staging, os.getuid())
        assert os.listdir(path) == [".lock"]
    finally:
        runtime_volumes._remove_staging([path], lock)
    assert os.listdir(staging) == []


def test_only_a_provably_dead_run_directory_of_this_user_is_collected(tmp_path: Path) -> None:
    staging = tmp_path / "volumes"
    no_lock, _ = _run_dir(staging)
    (no_lock / ".lock").unlink()  # an older confide's, or killed before its lock: nothing proves it dead
    theirs, _ = _run_dir(staging)
    for p in (theirs, theirs / ".lock"):
        os.chown(p, 12345, 12345, follow_symlinks=False)
    wide, _ = _run_dir(staging)
    wide.chmod(0o755)  # not as a run makes it
    lock_link, _ = _run_dir(staging)
    (lock_link / ".lock").unlink()
    (lock_link / ".lock").symlink_to(tmp_path / "elsewhere")  # never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".lock").touch()
    (outside / "keep").mkdir()
    (staging / "run-symlink1").symlink_to(outside)  # a symlink, not a directory: never entered
    not_empty, _ = _run_dir(staging)
    (not_empty / "data" / "written-after-the-mount-was-lost").write_bytes(b"x")
    runtime_volumes._collect_stale(staging, os.getuid())
    for kept in (no_lock, theirs, wide, lock_link):
        assert sorted(os.listdir(kept))[-2:] == ["data", "shm"], kept
    assert sorted(os.listdir(outside)) == [".lock", "keep"]
    assert not (tmp_path / "elsewhere").exists()
    # what could be removed is; the directory with data stays, its lock file with it (for the
    # next run to try again once it is emptied)
    assert sorted(os.listdir(not_empty)) == [".lock", "data"]
    (not_empty / "data" / "written-after-the-mount-was-lost").unlink()
    runtime_volumes._collect_stale(staging, os.getuid())
    assert not not_empty.exists()


def test_a_lock_file_with_another_link_or_not_a_regular_file_is_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the lock file a run makes has one name; a hard link could make it another lock (a
    # volume's, whose users would wait while the collector holds it); a FIFO or device is not
    # even opened (an open may act)
    staging = tmp_path / "volumes"
    linked, _ = _run_dir(staging)
    other = tmp_path / "a-volume.lock"
    os.link(linked / ".lock", other)
    fifo, _ = _run_dir(staging)
    (fifo / ".lock").unlink()
    os.mkfifo(fifo / ".lock", 0o600)
    opened: list[str] = []
    real_open = os.open

    def spy(path: object, *args: object, **kwargs: object) -> int:
        opened.append(os.fsdecode(path))  # type: ignore[arg-type]
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    runtime_volumes._collect_stale(staging, os.getuid())
    monkeypatch.undo()
    assert sorted(os.listdir(linked)) == [".lock", "data", "shm"] and other.exists()
    assert sorted(os.listdir(fifo)) == [".lock", "data", "shm"]
    assert opened.count(".lock") == 0, opened  # neither was opened


class _Handle(MountHandle):
    def __init__(self, mountpoint: Path, result: str | BaseException) -> None:
        super().__init__(mountpoint, "fuse", True, "t0", mountpoint)
        self.result = result

    def close(self) -> str:
        self.closed = True
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_a_volume_whose_server_does_not_end_in_time_does_not_stop_the_others_seal(tmp_path: Path) -> None:
    # a FUSE server's seal that outlasts STOP_TIMEOUT raises subprocess.TimeoutExpired: the
    # other volumes are still sealed (their new tags reported), the run directory removed and
    # its lock released
    staging = tmp_path / "volumes"
    staging.mkdir()
    own = runtime_volumes._run_directory(staging)
    assert own is not None
    path, lock = own
    first = _Handle(path / "a", "t1")
    late = _Handle(path / "b", subprocess.TimeoutExpired(["server"], 600))
    release = VolumeRelease("a", tmp_path / "vol", bytes(32), "t0", UpdatePolicy.ROLLBACK_PROTECTED)
    mounted = runtime_volumes.MountedVolumes(
        [(release, first), (replace(release, name="b"), late)],
        {}, staging_dirs=[path], staging_lock=lock,
    )  # fmt: skip
    changed, errors = mounted.seal()
    assert first.closed and changed == {"a": ("t0", "t1")}
    assert errors == [
        "b: cannot seal the session's changes: its FUSE server did not end within the time limit"
    ]
    assert not path.exists() and mounted.staging_lock is None
    with pytest.raises(OSError) as ei:
        os.fstat(lock)
    assert ei.value.errno == errno.EBADF


_MOUNTED_RUN = """
import os, subprocess, sys
from pathlib import Path
from confide.runtime import volumes
staging = Path(sys.argv[1])
run = staging / "run-abcdefgh"
run.mkdir(mode=0o700)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "confide-test", str(run)], check=True)
print("mounted", flush=True)
(run / ".lock").touch()  # as a volume mounted at the shared path could hold them
(run / "empty").mkdir()
os.symlink("target", run / "link")
volumes._collect_stale(staging, os.getuid())
print(" ".join(sorted(os.listdir(run))))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_a_mount_point_named_as_a_run_directory_is_not_entered(tmp_path: Path) -> None:
    # e.g. a volume named run-abcdefgh mounted at the shared STAGING/NAME (a run without a
    # directory of its own): its files are the volume's, never the collector's
    staging = tmp_path / "volumes"
    staging.mkdir()
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", _MOUNTED_RUN, str(staging)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60, check=False,
    )  # fmt: skip
    if "mounted" not in r.stdout:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {r.stderr.strip()[-200:]}")
    assert r.stdout.split() == ["mounted", ".lock", "empty", "link"], r.stdout + r.stderr


@pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE: {FUSE_WHY}")
def test_a_mount_in_a_dead_runs_directory_is_left_and_a_dead_fuse_mount_detached(tmp_path: Path) -> None:
    release = _release(tmp_path)
    staging = tmp_path / "volumes"
    dead, _ = _run_dir(staging)
    mp = dead / "data"
    h = mount_volume(release.directory, VolumeKey(release.key), mp, expected_tag=release.tag, mode="fuse")
    try:
        runtime_volumes._collect_stale(staging, os.getuid())
        assert _fs(mp) == "fuse.confide" and (mp / "notes.txt").read_bytes() == b"first\n"  # not crossed
        assert sorted(os.listdir(dead)) == [".lock", "data"]
        # its server killed too (a service manager's final SIGKILL): the mount is dead, detached
        h._proc.kill()  # type: ignore[attr-defined]
        h._proc.wait()  # type: ignore[attr-defined]
        with pytest.raises(OSError) as ei:
            os.statvfs(mp)
        assert ei.value.errno == errno.ENOTCONN
        runtime_volumes._collect_stale(staging, os.getuid())
        assert not dead.exists() and _fs(mp) == "none"
    finally:
        h.abort()


@pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE: {FUSE_WHY}")
def test_a_stopped_fuse_server_in_a_dead_runs_directory_does_not_hold_the_collector(tmp_path: Path) -> None:
    # its run killed, its FUSE server stopped (SIGSTOP) or hung: the statfs that tells a dead
    # mount would wait for it for ever, and with it the start of every later run of the user
    release = _release(tmp_path)
    staging = tmp_path / "volumes"
    dead, _ = _run_dir(staging)
    h = mount_volume(
        release.directory, VolumeKey(release.key), dead / "data", expected_tag=release.tag, mode="fuse"
    )
    server = h._proc  # type: ignore[attr-defined]
    collector = threading.Thread(
        target=runtime_volumes._collect_stale, args=(staging, os.getuid()), daemon=True
    )
    try:
        os.kill(server.pid, signal.SIGSTOP)
        collector.start()
        collector.join(20)
        assert not collector.is_alive(), "the collector waits for a stopped FUSE server"
        assert sorted(os.listdir(dead)) == [".lock", "data"]  # left, for a later run
    finally:
        os.kill(server.pid, signal.SIGCONT)
        if collector.is_alive():
            collector.join(30)
        h.abort()


@pytest.mark.parametrize("mode", _modes())
def test_the_next_run_collects_a_killed_runs_directory(
    tmp_path: Path, not_root: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    dead, _ = _run_dir(not_root)
    release = _release(tmp_path)
    for p in (dead, dead / ".lock", dead / "data", dead / "shm"):
        os.chown(p, 65534, 65534, follow_symlinks=False)  # the fixture's user (geteuid)
    m = mount_released([release])
    try:
        assert not dead.exists()
        assert [p.name for p in not_root.iterdir()] == [
            Path(m.environment["CONFIDE_VOLUME_DATA"]).parent.name
        ]
        mine = Path(m.environment["CONFIDE_VOLUME_DATA"]).parent
        assert sorted(os.listdir(mine)) == [".lock", "data"]
    finally:
        m.close()
    assert os.listdir(not_root) == []

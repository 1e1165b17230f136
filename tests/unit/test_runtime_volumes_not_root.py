"""``confide run`` without root (``mount_released``): no private mount namespace, so concurrent
runs of a volume of the same name must not meet at one mount point. Each run mounts its volumes
in a directory of its own (``STAGING/run-XXXXXXXX/NAME``, named by ``CONFIDE_VOLUME_<NAME>``);
where none can be made, the shared ``STAGING/NAME`` is refused while another run uses it.

Not root is faked (``os.geteuid``), so the mounts are made in this process's namespace, over
FUSE (through fusermount, as without root) or the /dev/shm fallback (a symlink)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confide.errors import StorageError
from confide.policy.model import UpdatePolicy
from confide.runtime import volumes as runtime_volumes
from confide.runtime.volumes import VolumeRelease, mount_released
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume.mount import fuse_usable

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

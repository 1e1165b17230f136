"""``confide run``'s end of volume update policies, on the tmpfs fallback (/dev/shm): what
``MountedVolumes.close`` does with a writable volume's changes for each released mode. (The
FUSE path is exercised end to end by tests/integration/test_cas_e2e.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confide.errors import RollbackError, StorageError
from confide.policy.model import UpdatePolicy
from confide.runtime.volumes import MountedVolumes, VolumeRelease
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def _volume(tmp: Path) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes(b"first\n")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _mount(release: VolumeRelease, key: VolumeKey, mnt: Path) -> MountedVolumes:
    manifest, tag = load_sealed(release.directory, key, release.expected_tag)
    handle = _TmpfsMount(release.directory, key, mnt, tag, True, manifest, None, private_namespace=False)
    return MountedVolumes([(release, handle)], {}, mounted_tags={release.name: tag})


def _write(mnt: Path) -> None:
    with (mnt / "notes.txt").open("ab") as f:
        f.write(b"second\n")


def test_ephemeral_changes_are_discarded_and_nothing_is_reported(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    release = VolumeRelease("data", vol, key.raw, tag, UpdatePolicy.EPHEMERAL)
    mnt = tmp_path / "mnt"
    mounted = _mount(release, key, mnt)
    _write(mnt)
    assert (mnt / "notes.txt").read_bytes() == b"first\nsecond\n"  # writable during the run
    assert mounted.close() == {}
    manifest, now = load_sealed(vol, key)
    assert now == tag and manifest.by_path()["notes.txt"].size == len(b"first\n")


@pytest.mark.parametrize("mode", [UpdatePolicy.ROLLBACK_PROTECTED, UpdatePolicy.NO_ROLLBACK_PROTECTION])
def test_persisting_modes_report_the_new_tag(tmp_path: Path, mode: UpdatePolicy) -> None:
    vol, key, tag0 = _volume(tmp_path)
    # the CAS's recorded tag is another (newer) one than the copy on disk
    cas_tag = "77" * 32
    release = VolumeRelease("data", vol, key.raw, cas_tag, mode)
    if mode is UpdatePolicy.ROLLBACK_PROTECTED:
        with pytest.raises(RollbackError):
            _mount(release, key, tmp_path / "mnt")
        release = VolumeRelease("data", vol, key.raw, tag0, mode)
    mnt = tmp_path / "mnt"
    mounted = _mount(release, key, mnt)
    _write(mnt)
    [(old, new)] = mounted.close().values()
    # rollback_protected reports from the CAS's tag; no_rollback_protection from the version mounted
    assert old == tag0 and new == load_sealed(vol, key)[1] != tag0


class _Client:
    def __init__(self) -> None:
        self.reports: list[tuple[str, ...]] = []

    def report_volume_tag(self, *args: str) -> None:
        self.reports.append(args)


@pytest.mark.parametrize("failing", [0, 1])  # closed in reverse order: the failure after or before
def test_a_volume_that_fails_to_seal_does_not_keep_another_volumes_new_tag_unreported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    from confide.runtime import run as run_module
    from confide.runtime.run import Launch, supervise

    handles = []
    tags = []
    for i in range(2):
        (tmp_path / f"v{i}").mkdir()
        vol, key, tag = _volume(tmp_path / f"v{i}")
        tags.append(tag)
        release = VolumeRelease(f"vol{i}", vol, key.raw, tag)
        manifest, _ = load_sealed(vol, key, tag)
        mnt = tmp_path / f"mnt{i}"
        handles.append(
            (release, _TmpfsMount(vol, key, mnt, tag, True, manifest, None, private_namespace=False))
        )
    mounted = MountedVolumes(
        handles, {}, mounted_tags={r.name: t for (r, _), t in zip(handles, tags, strict=True)}
    )
    monkeypatch.setattr(run_module, "mount_released", lambda _volumes: mounted)
    bad = tmp_path / f"v{failing}" / "vol" / "objects"
    # the program changes both volumes; the host removes one volume's objects directory meanwhile
    script = (
        f"printf more >> {tmp_path}/mnt0/notes.txt; printf more >> {tmp_path}/mnt1/notes.txt; rm -r {bad}"
    )
    plan = Launch(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", None)
    client = _Client()
    with pytest.raises(StorageError, match=f"vol{failing}: "):
        supervise(plan, client)  # type: ignore[arg-type]
    ok = 1 - failing
    ok_dir = tmp_path / f"v{ok}" / "vol"
    key_ok = VolumeKey(handles[ok][0].key)
    new = load_sealed(ok_dir, key_ok)[1]
    assert new != tags[ok]  # sealed: its old version is gone from the volume directory ...
    # ... so its new tag must reach the CAS, else the next run is refused (RollbackError)
    assert client.reports == [("pol", f"vol{ok}", "s", tags[ok], new)]
    assert all(h.closed for _, h in handles)

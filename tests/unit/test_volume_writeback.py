"""Write-back of writable tmpfs/shm mounts at unmount (review of the write-back path): names
the volume format cannot hold, durability order, and random tree edits (fixed seeds) that
must read back as the tree the application left."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from confide.errors import ParseError
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, verify_volume
from confide.volume.format import Entry, EntryKind, Manifest, ManifestState, Region, encode_manifest
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


def _volume(tmp: Path, chunk_size: int = 4096) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(os.urandom(10_000))
    (src / "b.txt").write_bytes(b"bee\n")
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key, chunk_size=chunk_size)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _shm_mount(vol: Path, key: VolumeKey, mnt: Path, tag: str) -> _TmpfsMount:
    m, tag = load_sealed(vol, key, tag)
    return _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False)


@pytest.mark.parametrize(
    "bad",
    [
        b"new\nline",  # a control character: check_path refuses it when the manifest is read
        b"tab\tname",
        b"bad\xff",  # not UTF-8
    ],
)
def test_a_name_the_format_cannot_hold_is_skipped_and_the_volume_stays_readable(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    vol, key, tag = _volume(tmp_path)
    h = _shm_mount(vol, key, tmp_path / "mnt", tag)
    root = os.fsencode(str(h.path))
    (h.path / "good").write_bytes(b"kept")
    with open(root + b"/" + bad, "wb") as f:
        f.write(b"x")
    os.mkdir(root + b"/dir" + bad)  # a directory too, with a file below it
    with open(root + b"/dir" + bad + b"/below", "wb") as f:
        f.write(b"y")
    os.symlink(b"target\xff", root + b"/link")  # a target that is not UTF-8
    with caplog.at_level(logging.WARNING, logger="confide.volume.mount"):
        new = h.close()
    assert new != tag
    m, _ = load_sealed(vol, key, new)  # readable (before: ParseError forever, or a crash at unmount)
    assert sorted(m.by_path()) == ["b.txt", "d", "d/a.bin", "good"]
    assert verify_volume(vol, key, new).ok
    assert caplog.text.count("cannot hold") == 3


def test_the_encoder_refuses_what_the_reader_would_refuse() -> None:
    key = VolumeKey.generate()
    for e in (
        Entry("a\nb", EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("a/../b", EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("x" * 4097, EntryKind.DIR, 0o755, 0, 0, Region.UNPROTECTED),
        Entry("l", EntryKind.SYMLINK, 0o777, 0, 0, Region.UNPROTECTED, target=""),
        Entry("l", EntryKind.SYMLINK, 0o777, 0, 0, Region.UNPROTECTED, target="a\x00b"),
    ):
        m = Manifest(bytes(16), 1, ManifestState.SEALED, 4096, Region.ENCRYPTED, (), (e,))
        with pytest.raises(ParseError):
            encode_manifest(m, key.raw)


def _trace_durability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every rename (its target) and every fsync/syncfs (the path of the descriptor)."""
    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: object, dst: object, *a: object, **k: object) -> None:
        real_replace(src, dst, *a, **k)  # type: ignore[arg-type]
        events.append(("replace", os.path.realpath(os.fsdecode(dst))))  # type: ignore[arg-type]

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def _objects_durable_before_manifest(events: list[tuple[str, str]], vol: Path) -> None:
    objects, manifest = str(vol.resolve() / "objects"), str(vol.resolve() / "MANIFEST")
    last_manifest = max(i for i, (what, p) in enumerate(events) if what == "replace" and p == manifest)
    renames = [i for i, (what, p) in enumerate(events[:last_manifest]) if what == "replace" and
               os.path.dirname(p) == objects]  # fmt: skip
    assert renames, "nothing renamed into objects/ (the test must write an object)"
    synced = [i for i, e in enumerate(events[:last_manifest]) if e == ("fsync", objects)]
    # every rename of an object is made durable (fsync of objects/) before the manifest that
    # references it replaces the old one: else a power loss can keep the new manifest and lose
    # the object's directory entry
    assert synced and max(synced) > max(renames), events


def test_unmount_makes_new_unprotected_objects_durable_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pub.txt").write_bytes(b"public")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=4096, default_region=Region.UNPROTECTED)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    h = _shm_mount(vol, key, tmp_path / "mnt", tag)
    (h.path / "pub.txt").write_bytes(b"changed")
    events = _trace_durability(monkeypatch)
    new = h.close()
    monkeypatch.undo()
    _objects_durable_before_manifest(events, vol)
    assert verify_volume(vol, key, new).ok


def test_seal_makes_added_objects_durable_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"secret")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key, chunk_size=4096)
    events = _trace_durability(monkeypatch)
    add_sources(vol, key, [src])
    seal_volume(vol, key)
    monkeypatch.undo()
    _objects_durable_before_manifest(events, vol)

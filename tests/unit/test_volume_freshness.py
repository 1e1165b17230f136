"""Freshness of the owner's commands (`confide volume add|rm|seal --expect-tag`) and of a
staged MANIFEST.pending (its base record), and writes that never follow a symlinked
``objects/`` (docs/volume-format.md, "Pending base" and "Directory layout")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import mfusepy
import pytest
from click.testing import CliRunner

from confide.errors import ParseError, RollbackError, StorageError, UsageError
from confide.volume import VolumeKey, VolumeReader, add_sources, create_volume, seal_volume, verify_volume
from confide.volume import format as format_module
from confide.volume import store as store_module
from confide.volume._chunked import write_chunks
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.cli import volume
from confide.volume.format import (
    MANIFEST_HEADER_SIZE,
    MAX_MANIFEST_BODY,
    ChunkKeys,
    Region,
    parse_manifest_header,
)
from confide.volume.mount import _TmpfsMount
from confide.volume.store import (
    MANIFEST_NAME,
    OBJECTS_DIR,
    PENDING_BASE_NAME,
    PENDING_NAME,
    load_sealed,
    remove_paths,
)

CS = 4096
KEY = VolumeKey(bytes(range(32)))


def _src(tmp: Path, name: str, data: bytes) -> Path:
    d = tmp / f"src-{name}"
    d.mkdir()
    (d / name).write_bytes(data)
    return d / name


def _snapshot(vol: Path) -> dict[str, bytes]:
    """Every file of the volume directory (the lock file aside) with its bytes."""
    out = {}
    for p in sorted(vol.rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(vol))] = p.read_bytes()
    return out


def _two_versions(tmp: Path) -> tuple[Path, str, bytes, str]:
    """A volume at tag1 (a.txt), with the bytes of its previous MANIFEST (tag0, empty)."""
    vol = tmp / "vol"
    tag0 = create_volume(vol, KEY, chunk_size=CS)
    old = (vol / MANIFEST_NAME).read_bytes()
    add_sources(vol, KEY, [_src(tmp, "a.txt", b"a")])
    tag1 = seal_volume(vol, KEY)
    return vol, tag0, old, tag1


# --- --expect-tag on add, rm, seal --------------------------------------------------------------


def test_add_rm_seal_with_the_current_tag_succeed(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_tag=tag1)
    remove_paths(vol, KEY, ["a.txt"], expected_tag=tag1.upper() + "\n")  # normalised like --tag
    tag2 = seal_volume(vol, KEY, tag1)
    assert sorted(load_sealed(vol, KEY, tag2)[0].by_path()) == ["b.txt"]
    assert seal_volume(vol, KEY, tag2) == tag2  # nothing pending: the checked current tag


@pytest.mark.parametrize("command", ["add", "rm", "seal"])
def test_a_rolled_back_manifest_is_refused_and_nothing_changes(tmp_path: Path, command: str) -> None:
    """The host puts the previous (authentic) MANIFEST back: before, the next seal forked from
    it silently (a new generation of the old contents, a.txt lost)."""
    vol, tag0, old, tag1 = _two_versions(tmp_path)
    if command == "seal":
        add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_tag=tag1)
    (vol / MANIFEST_NAME).write_bytes(old)  # rolled back to tag0
    before = _snapshot(vol)
    src = _src(tmp_path, "c.txt", b"c")
    with pytest.raises(RollbackError, match=f"got {tag0}.*expected {tag1}"):
        if command == "add":
            add_sources(vol, KEY, [src], expected_tag=tag1)
        elif command == "rm":
            remove_paths(vol, KEY, ["a.txt"], expected_tag=tag1)
        else:
            seal_volume(vol, KEY, tag1)
    assert _snapshot(vol) == before


def test_a_malformed_expected_tag_is_a_usage_error(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    before = _snapshot(vol)
    for bad in (tag1[:-1], tag1[:-1] + "g", ""):
        with pytest.raises(UsageError, match="64 hex digits"):
            seal_volume(vol, KEY, bad)
    assert _snapshot(vol) == before


# --- the pending manifest's base ----------------------------------------------------------------


def test_a_pending_manifest_staged_on_a_fork_is_never_sealed_over_another_version(tmp_path: Path) -> None:
    """Two authentic versions of the same generation (a fork the host made earlier by rolling
    back before an unpinned seal): changes staged on one must not be sealed over the other,
    which would drop the other's files without any error. Refused with and without a tag."""
    vol, _tag0, old, tag1 = _two_versions(tmp_path)
    good = (vol / MANIFEST_NAME).read_bytes()
    (vol / MANIFEST_NAME).write_bytes(old)  # rolled back; an unpinned add + seal fork from it
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    fork = seal_volume(vol, KEY)
    assert fork != tag1 and load_sealed(vol, KEY, fork)[0].generation == load_sealed(vol, KEY)[0].generation
    add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")])  # staged on the fork
    (vol / MANIFEST_NAME).write_bytes(good)  # the host shows tag1 again at seal time
    before = _snapshot(vol)
    with pytest.raises(RollbackError, match=f"staged on volume tag {fork}.*now has tag {tag1}"):
        seal_volume(vol, KEY, tag1)
    with pytest.raises(RollbackError, match="staged on volume tag"):
        seal_volume(vol, KEY)
    with pytest.raises(RollbackError, match="staged on volume tag"):
        add_sources(vol, KEY, [_src(tmp_path, "d.txt", b"d")], expected_tag=tag1)
    with pytest.raises(RollbackError, match="staged on volume tag"):
        remove_paths(vol, KEY, ["a.txt"])
    assert _snapshot(vol) == before
    assert load_sealed(vol, KEY, tag1)[0].by_path().keys() == {"a.txt"}


def test_a_pending_manifest_without_a_base_record_is_refused_only_with_an_expected_tag(
    tmp_path: Path,
) -> None:
    """A pending manifest staged by an older confide (no base record): its base cannot be
    shown, so a pinned seal refuses it; an unpinned seal keeps working as before."""
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    (vol / PENDING_BASE_NAME).unlink()
    before = _snapshot(vol)
    with pytest.raises(RollbackError, match="no authentic base tag"):
        seal_volume(vol, KEY, tag1)
    assert _snapshot(vol) == before
    tag2 = seal_volume(vol, KEY)
    assert verify_volume(vol, KEY, tag2).ok
    assert not (vol / PENDING_NAME).exists() and not (vol / PENDING_BASE_NAME).exists()


@pytest.mark.parametrize("edit", ["other-pending", "rewritten-tag", "garbage", "symlink"])
def test_a_base_record_that_does_not_authenticate_is_an_unknown_base(tmp_path: Path, edit: str) -> None:
    """The host cannot vouch for a pending manifest's base: a record copied from another pending
    manifest, one with its tag rewritten, garbage, or a symlink to a real record all count as
    no record (refused by a pinned seal)."""
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    record = (vol / PENDING_BASE_NAME).read_bytes()
    base = vol / PENDING_BASE_NAME
    if edit == "other-pending":
        add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")])  # a new pending, a new record
        base.write_bytes(record)  # the first pending's record
    elif edit == "rewritten-tag":  # the base tag of the staged state's line (docs: "Pending tag")
        head, line = record.split(b"\n")[:2]
        tag, step, mac = line.split(b" ")
        tag = tag[:-1] + (b"0" if tag[-1:] != b"0" else b"1")
        base.write_bytes(head + b"\n" + b" ".join((tag, step, mac)) + b"\n")
    elif edit == "garbage":
        base.write_bytes(b"x" * 130)
    else:
        real = tmp_path / "real-record"
        real.write_bytes(record)
        base.unlink()
        base.symlink_to(real)
    with pytest.raises(RollbackError, match="no authentic base tag"):
        seal_volume(vol, KEY, tag1)


def test_a_seal_interrupted_before_removing_the_base_record_leaves_no_trouble(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")], expected_tag=tag1)
    record = (vol / PENDING_BASE_NAME).read_bytes()
    tag2 = seal_volume(vol, KEY, tag1)
    (vol / PENDING_BASE_NAME).write_bytes(record)  # a crash between the two unlinks
    add_sources(vol, KEY, [_src(tmp_path, "c.txt", b"c")], expected_tag=tag2)
    tag3 = seal_volume(vol, KEY, tag2)
    assert sorted(load_sealed(vol, KEY, tag3)[0].by_path()) == ["a.txt", "b.txt", "c.txt"]


# --- the CLI ------------------------------------------------------------------------------------


def test_the_cli_chains_tags_and_exits_60_on_another_tag(tmp_path: Path) -> None:
    vol, _tag0, old, tag1 = _two_versions(tmp_path)
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY.raw.hex() + "\n")
    os.chmod(keyfile, 0o600)
    src = _src(tmp_path, "b.txt", b"b")
    r = CliRunner().invoke(volume, ["add", str(vol), str(src), "--key", str(keyfile), "--expect-tag", tag1])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(volume, ["rm", str(vol), "a.txt", "--key", str(keyfile), "--expect-tag", tag1])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(volume, ["seal", str(vol), "--key", str(keyfile), "--expect-tag", tag1])
    assert r.exit_code == 0, r.output
    tag2 = r.stdout.strip()
    assert r.stdout == tag2 + "\n" and tag2 == load_sealed(vol, KEY)[1]  # one line: the new tag
    (vol / MANIFEST_NAME).write_bytes(old)
    before = _snapshot(vol)
    for args in (["add", str(vol), str(src)], ["rm", str(vol), "b.txt"], ["seal", str(vol)]):
        r = CliRunner().invoke(volume, [*args, "--key", str(keyfile), "--expect-tag", tag2])
        assert r.exit_code == RollbackError.exit_code, r.output
        assert f"expected {tag2}" in r.stderr
    assert _snapshot(vol) == before
    r = CliRunner().invoke(volume, ["seal", str(vol), "--key", str(keyfile), "--expect-tag", "nope"])
    assert r.exit_code == UsageError.exit_code and "64 hex digits" in r.stderr


# --- writes never follow a symlinked objects/ ---------------------------------------------------


def _symlinked_objects(vol: Path, tmp: Path) -> Path:
    victim = tmp / "victim"
    (vol / OBJECTS_DIR).rename(victim)
    (vol / OBJECTS_DIR).symlink_to(victim)
    return victim


def test_add_never_writes_through_a_symlinked_objects_directory(tmp_path: Path) -> None:
    """Before, the new object (and its temporary file) landed in the symlink's target."""
    vol, _tag0, _old, _tag1 = _two_versions(tmp_path)
    victim = _symlinked_objects(vol, tmp_path)
    before = sorted(os.listdir(victim))
    with pytest.raises(StorageError, match="a symlink or not a directory"):
        add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    assert sorted(os.listdir(victim)) == before
    assert not (vol / PENDING_NAME).exists()


def test_a_seal_refuses_a_symlinked_objects_directory(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    add_sources(vol, KEY, [_src(tmp_path, "b.txt", b"b")])
    victim = _symlinked_objects(vol, tmp_path)
    before = sorted(os.listdir(victim))
    with pytest.raises(StorageError, match="objects"):
        seal_volume(vol, KEY)
    assert load_sealed(vol, KEY)[1] == tag1 and sorted(os.listdir(victim)) == before


def test_an_objects_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    vol, _tag0, _old, _tag1 = _two_versions(tmp_path)
    os.chmod(vol / OBJECTS_DIR, 0o777)
    src = _src(tmp_path, "b.txt", b"b")
    with pytest.raises(StorageError, match="not writable by others"):
        add_sources(vol, KEY, [src])
    os.chmod(vol / OBJECTS_DIR, 0o755)
    add_sources(vol, KEY, [src])


def _restore_objects(vol: Path, victim: Path) -> None:
    (vol / OBJECTS_DIR).unlink()
    victim.rename(vol / OBJECTS_DIR)


def test_write_chunks_never_writes_through_a_symlinked_objects_directory(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    m = load_sealed(vol, KEY, tag1)[0]
    victim = _symlinked_objects(vol, tmp_path)
    before = sorted(os.listdir(victim))
    src = tmp_path / "chunked"
    src.write_bytes(b"c" * (3 * CS + 1))
    fd = os.open(src, os.O_RDONLY)
    try:
        keys = ChunkKeys(KEY.raw, m.volume_id)
        with pytest.raises(StorageError, match="a symlink or not a directory"):
            write_chunks(vol, keys, CS, Region.ENCRYPTED, fd, 3 * CS + 1)
        assert sorted(os.listdir(victim)) == before
        _restore_objects(vol, victim)
        w = write_chunks(vol, keys, CS, Region.ENCRYPTED, fd, 3 * CS + 1)
        assert {c.hex() for c in w.chunks} <= set(os.listdir(vol / OBJECTS_DIR))
    finally:
        os.close(fd)


def test_a_fuse_commit_never_writes_through_a_symlinked_objects_directory(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    reader = VolumeReader(vol, KEY, tag1)
    try:
        fs = VolumeFS(reader, KEY, writable=True)
        fs._owner = lambda: (os.getuid(), os.getgid())  # type: ignore[method-assign]
        fh = fs.create("/n.bin", 0o644)
        assert fs.write("/n.bin", b"n" * (2 * CS + 3), 0, fh) == 2 * CS + 3
        victim = _symlinked_objects(vol, tmp_path)
        before = sorted(os.listdir(victim))
        with pytest.raises(mfusepy.FuseOSError) as ei:
            fs.fsync("/n.bin", 0, fh)
        assert ei.value.errno == errno.EIO
        assert sorted(os.listdir(victim)) == before
        _restore_objects(vol, victim)
        fs.fsync("/n.bin", 0, fh)  # still dirty: committed now, into the real directory
        fs.release("/n.bin", fh)
        tag2 = seal(fs)
    finally:
        reader.close()
    assert verify_volume(vol, KEY, tag2).ok
    with VolumeReader(vol, KEY, tag2) as r:
        assert r.read("n.bin", 0, 1 << 20) == b"n" * (2 * CS + 3)


def test_a_tmpfs_unmount_never_writes_through_a_symlinked_objects_directory(tmp_path: Path) -> None:
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    m = load_sealed(vol, KEY, tag1)[0]
    h = _TmpfsMount(vol, KEY, tmp_path / "mnt", tag1, True, m, None, private_namespace=False)
    (h.path / "n.bin").write_bytes(b"n" * (2 * CS + 3))
    victim = _symlinked_objects(vol, tmp_path)
    before = sorted(os.listdir(victim))
    with pytest.raises(StorageError, match=r"a symlink or not a directory.*changes are discarded"):
        h.close()
    assert sorted(os.listdir(victim)) == before
    _restore_objects(vol, victim)
    assert load_sealed(vol, KEY)[1] == tag1


# --- a bound on the manifest's size -------------------------------------------------------------


def test_a_manifest_body_longer_than_the_bound_is_refused_before_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header claiming a body of MAX_MANIFEST_BODY + 1 bytes (a sparse file that long): before,
    read whole (up to 4 GiB) before it could fail to authenticate; now a ParseError after the
    header only."""
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    data = bytearray((vol / MANIFEST_NAME).read_bytes()[:MANIFEST_HEADER_SIZE])
    data[MANIFEST_HEADER_SIZE - 4 :] = (MAX_MANIFEST_BODY + 1).to_bytes(4, "little")
    with (vol / MANIFEST_NAME).open("wb") as f:
        f.write(data)
        f.truncate(MANIFEST_HEADER_SIZE + MAX_MANIFEST_BODY + 1 + 16)  # sparse
    real_pread = os.pread

    def bounded(fd: int, n: int, offset: int) -> bytes:
        if offset >= 1 << 20:
            raise AssertionError(f"read at offset {offset}: the body should not be read")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", bounded)
    with pytest.raises(ParseError, match=f"body_length.*expected at most {MAX_MANIFEST_BODY}"):
        load_sealed(vol, KEY, tag1)
    monkeypatch.undo()
    with pytest.raises(ParseError, match=f"expected at most {MAX_MANIFEST_BODY}"):
        parse_manifest_header(bytes(data))


def test_no_writer_seals_a_manifest_longer_than_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the readers refuse is never written (the bound lowered so that a test can reach it)."""
    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    body = len((vol / MANIFEST_NAME).read_bytes()) - MANIFEST_HEADER_SIZE - 16
    monkeypatch.setattr(format_module, "MAX_MANIFEST_BODY", body + 10)
    monkeypatch.setattr(store_module, "MAX_MANIFEST_BODY", body + 10)
    assert load_sealed(vol, KEY, tag1)[1] == tag1  # within the bound: read
    before = _snapshot(vol)
    with pytest.raises(ParseError, match=r"field body_length: got .* expected at most"):
        add_sources(vol, KEY, [_src(tmp_path, "a-longer-name.txt", b"b")])
    assert {k for k in _snapshot(vol) if not k.startswith("objects/")} == {
        k for k in before if not k.startswith("objects/")
    }


def test_a_failed_removal_of_superseded_objects_is_not_retried_by_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Objects a later commit supersedes are removed once no read is in flight. When that
    removal fails (the host swapped the objects directory), the next commit (or the seal)
    tries again; each read did, with a warning per read: a host could flood the log."""
    from confide.volume import _fusefs

    vol, _tag0, _old, tag1 = _two_versions(tmp_path)
    attempts: list[int] = []

    def failing_remove(directory: Path, ids: object) -> None:
        attempts.append(1)
        raise StorageError("the objects directory is a symlink (test)")

    reader = VolumeReader(vol, KEY, tag1)
    try:
        fs = VolumeFS(reader, KEY, writable=True)
        fs._owner = lambda: (os.getuid(), os.getgid())  # type: ignore[method-assign]
        fh = fs.create("/n.bin", 0o644)
        fs.write("/n.bin", b"1" * (2 * CS), 0, fh)
        fs.fsync("/n.bin", 0, fh)
        monkeypatch.setattr(_fusefs, "remove_objects", failing_remove)
        fs.write("/n.bin", b"2" * (2 * CS), 0, fh)
        fs.fsync("/n.bin", 0, fh)  # supersedes the first commit's chunks: the removal fails
        assert len(attempts) == 1
        caplog.clear()
        for _ in range(5):
            assert fs.read("/a.txt", 1, 0, 0) == b"a"
        assert len(attempts) == 1, "every read tried the removal again"
        assert "superseded objects not removed" not in caplog.text
        monkeypatch.undo()
        fs.write("/n.bin", b"3", 0, fh)
        fs.fsync("/n.bin", 0, fh)  # the next commit removes them
        fs.release("/n.bin", fh)
        tag2 = seal(fs)
    finally:
        reader.close()
    assert verify_volume(vol, KEY, tag2).ok
    assert verify_volume(vol, KEY, tag2).unreferenced_objects == []

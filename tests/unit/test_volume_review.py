"""Adversarial review of protected volumes (the host controls the volume directory but not the
key): hostile files in place of the manifest and objects, a symlinked objects directory,
deterministic ids across regions, interrupted seals, and a FUSE read racing a commit."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import mfusepy
import pytest

from cli import run_confide
from confide.errors import ParseError, SignatureError, StorageError
from confide.volume import (
    Region,
    RegionRule,
    VolumeKey,
    VolumeReader,
    add_sources,
    create_volume,
    open_volume,
    seal_volume,
    store,
    verify_volume,
    write_key,
)
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.mount import _TmpfsMount
from confide.volume.store import (
    LOCK_NAME,
    MANIFEST_NAME,
    OBJECTS_DIR,
    PENDING_NAME,
    load_sealed,
    object_path,
    pending_changes,
)

CS = 4096


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILES = {
    "a.bin": _data(3 * CS + 5, 1),
    "auth/b.bin": _data(2 * CS, 2),
    "plain/u.bin": _data(CS + 9, 3),
}


def _volume(tmp: Path, files: dict[str, bytes] = FILES, **kw: bool) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    key = VolumeKey(bytes(range(32)))
    vol = tmp / "vol"
    rules = (RegionRule("auth", Region.AUTHENTICATED), RegionRule("plain", Region.UNPROTECTED))
    create_volume(vol, key, chunk_size=CS, rules=rules)
    add_sources(vol, key, [src], **kw)
    return vol, key, seal_volume(vol, key)


def _bounded(fn: Callable[[], object], fifo: Path) -> object:
    """Run ``fn`` in a thread; if it is still blocked (on the FIFO) after 20 s, release it by
    opening the FIFO for writing and fail. The fixed code never waits on the FIFO."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader is blocked in open(): succeeds
        os.close(fd)
        t.join(20)
        pytest.fail(f"blocked on the FIFO {fifo.name} for 20 s")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


def _fifo_in_place_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# --- the manifest file -----------------------------------------------------------------------


def test_a_fifo_in_place_of_the_manifest_is_an_error_not_a_hang(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    _fifo_in_place_of(vol / MANIFEST_NAME)
    with pytest.raises(StorageError, match="not a regular file"):
        _bounded(lambda: load_sealed(vol, key, tag), vol / MANIFEST_NAME)


def test_a_manifest_is_read_only_as_far_as_its_header_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink to /dev/zero (or a huge file) in place of MANIFEST: before, read whole into
    memory (for ever, for /dev/zero); now a StorageError, or a ParseError after reading no more
    than the header's body length + 1."""
    vol, key, tag = _volume(tmp_path)
    data = (vol / MANIFEST_NAME).read_bytes()
    (vol / MANIFEST_NAME).unlink()
    (vol / MANIFEST_NAME).symlink_to("/dev/zero")
    with pytest.raises(StorageError, match="not a regular file"):
        load_sealed(vol, key, tag)
    (vol / MANIFEST_NAME).unlink()
    with (vol / MANIFEST_NAME).open("wb") as f:
        f.write(data)
        f.truncate(1 << 40)  # sparse: 1 TiB
    read: list[int] = []
    real_pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        got = real_pread(fd, n, offset)
        read.append(len(got))
        return got

    monkeypatch.setattr(os, "pread", counting)
    with pytest.raises(ParseError, match="body_length"):
        load_sealed(vol, key, tag)
    monkeypatch.undo()
    assert sum(read) == len(data) + 1


# --- objects that are not regular files, unprotected objects of another size -----------------


@pytest.mark.parametrize("path", ["a.bin", "auth/b.bin", "plain/u.bin"])
def test_a_fifo_in_place_of_a_one_object_file_is_an_integrity_failure(tmp_path: Path, path: str) -> None:
    vol, key, tag = _volume(tmp_path)
    e = load_sealed(vol, key, tag)[0].by_path()[path]
    obj = object_path(vol, e.file_id)
    _fifo_in_place_of(obj)
    report = _bounded(lambda: verify_volume(vol, key, tag), obj)
    assert [p.path for p in report.problems] == [path]  # type: ignore[attr-defined]
    with pytest.raises(SignatureError):
        _bounded(lambda: open_volume(vol, key, tmp_path / "out", tag), obj)
    assert not any((tmp_path / "out").iterdir())
    with VolumeReader(vol, key, tag) as r, pytest.raises(SignatureError):
        _bounded(lambda: r.read(path, 0, 10), obj)


def test_a_fifo_in_place_of_a_chunk_object_is_an_integrity_failure(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    s = _session(vol, key, tag)
    s.write("a.bin", 0, b"chunked now")
    tag = s.seal()
    e = load_sealed(vol, key, tag)[0].by_path()["a.bin"]
    assert e.chunks is not None
    obj = object_path(vol, e.chunks[1])
    _fifo_in_place_of(obj)
    report = _bounded(lambda: verify_volume(vol, key, tag), obj)
    assert [p.path for p in report.problems] == ["a.bin"]  # type: ignore[attr-defined]
    with VolumeReader(vol, key, tag) as r, pytest.raises(SignatureError, match="chunk 1"):
        _bounded(lambda: r.read("a.bin", CS, 10), obj)


@pytest.mark.parametrize("delta", [1, -1])
def test_an_unprotected_object_of_another_size_than_recorded_is_refused(tmp_path: Path, delta: int) -> None:
    """Unprotected content is not authenticated, but its size is (in the manifest): an object
    grown (e.g. a huge sparse file, before copied whole into the tmpfs) or shrunk is refused."""
    vol, key, tag = _volume(tmp_path)
    e = load_sealed(vol, key, tag)[0].by_path()["plain/u.bin"]
    obj = object_path(vol, e.file_id)
    os.truncate(obj, e.size + delta)
    assert [p.path for p in verify_volume(vol, key, tag).problems] == ["plain/u.bin"]
    with pytest.raises(SignatureError, match="unprotected object has"):
        open_volume(vol, key, tmp_path / "out", tag)
    with VolumeReader(vol, key, tag) as r, pytest.raises(SignatureError, match="unprotected object has"):
        r.read("plain/u.bin", 0, 10)


def test_an_unprotected_object_shrunk_after_the_first_read_is_refused_not_served_short(
    tmp_path: Path,
) -> None:
    """The reader keeps the object's descriptor from its first read (the size check): the host
    truncating that file afterwards made the next read return fewer bytes than the authenticated
    size, before the end of the file (a FUSE read then served a short file, no integrity error)."""
    vol, key, tag = _volume(tmp_path)
    e = load_sealed(vol, key, tag)[0].by_path()["plain/u.bin"]
    with VolumeReader(vol, key, tag) as r:
        assert r.read("plain/u.bin", 0, 10) == FILES["plain/u.bin"][:10]
        os.truncate(object_path(vol, e.file_id), 100)
        assert r.read("plain/u.bin", 0, 100) == FILES["plain/u.bin"][:100]  # what is still there
        with pytest.raises(SignatureError, match="unprotected object shrank to 100 bytes"):
            r.read("plain/u.bin", 50, 200)
        with pytest.raises(SignatureError, match="shrank"):
            r.read("plain/u.bin", 200, 10)


# --- the objects directory, the lock file, temporary names ----------------------------------


def test_a_seal_never_deletes_through_a_symlinked_objects_directory(tmp_path: Path) -> None:
    """The host replaces objects/ with a symlink to a directory of ours holding copies of the
    objects and other files: the seal's removal of unreferenced objects must not delete them."""
    vol, key, tag = _volume(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])  # the next seal would remove the old objects it replaces
    victim = tmp_path / "victim"
    (vol / OBJECTS_DIR).rename(victim)
    (victim / "precious.txt").write_bytes(b"not an object")
    (vol / OBJECTS_DIR).symlink_to(victim)
    with pytest.raises(StorageError, match="a symlink or not a directory"):
        seal_volume(vol, key)  # since objects/ is opened O_NOFOLLOW by every writer, refused
    assert (victim / "precious.txt").read_bytes() == b"not an object"
    assert load_sealed(vol, key)[1] == tag


def test_the_collection_of_unreferenced_objects_goes_past_one_it_cannot_remove(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    (vol / OBJECTS_DIR / "a-directory").mkdir()
    (vol / OBJECTS_DIR / "junk").write_bytes(b"j")
    (vol / OBJECTS_DIR / "zz-junk").write_bytes(b"j")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])
    tag = seal_volume(vol, key)
    assert sorted(verify_volume(vol, key, tag).unreferenced_objects) == ["a-directory"]


def test_a_seal_refuses_a_group_writable_objects_directory_and_collects_nothing_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The seal's collection of unreferenced objects opens objects/ as the writers do
    (open_objects_dir): a group-writable objects/ is refused before anything changes, and one
    that becomes group-writable after the new MANIFEST is in place has nothing deleted from it
    (the seal still succeeds; the next seal collects)."""
    vol, key, tag = _volume(tmp_path)
    (vol / OBJECTS_DIR / "junk").write_bytes(b"j")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra / "x"])
    os.chmod(vol / OBJECTS_DIR, 0o770)
    with pytest.raises(StorageError, match="not writable by others"):
        seal_volume(vol, key)
    assert load_sealed(vol, key)[1] == tag
    assert (vol / PENDING_NAME).exists() and (vol / OBJECTS_DIR / "junk").exists()
    os.chmod(vol / OBJECTS_DIR, 0o755)

    real_write_atomic = store.write_atomic

    def then_group_writable(path: Path, data: bytes, mode: int = 0o644) -> None:
        real_write_atomic(path, data, mode)
        if path.name == MANIFEST_NAME:  # between the new MANIFEST and the collection
            os.chmod(vol / OBJECTS_DIR, 0o770)

    monkeypatch.setattr(store, "write_atomic", then_group_writable)
    with caplog.at_level("WARNING", logger=store.log.name):
        tag1 = seal_volume(vol, key)
    monkeypatch.undo()
    assert tag1 != tag and load_sealed(vol, key)[1] == tag1
    assert (vol / OBJECTS_DIR / "junk").read_bytes() == b"j"  # nothing deleted there
    assert "not writable by others" in caplog.text
    os.chmod(vol / OBJECTS_DIR, 0o755)
    (extra / "y").write_bytes(b"y")
    add_sources(vol, key, [extra / "y"])
    tag2 = seal_volume(vol, key)
    assert not (vol / OBJECTS_DIR / "junk").exists()
    assert verify_volume(vol, key, tag2).unreferenced_objects == []


def test_the_lock_file_is_never_created_through_a_symlink(tmp_path: Path) -> None:
    vol, key, _ = _volume(tmp_path)
    (vol / LOCK_NAME).unlink()
    victim = tmp_path / "created-by-the-lock"
    (vol / LOCK_NAME).symlink_to(victim)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    with pytest.raises(StorageError, match="cannot lock"):
        add_sources(vol, key, [extra])
    assert not os.path.lexists(victim)


def test_an_object_is_never_written_through_a_planted_temporary_name(tmp_path: Path) -> None:
    """A deterministic file id is known before the file is added again (it names the sealed
    object): a symlink planted at its temporary name must not be written through."""
    vol, key, tag = _volume(tmp_path, deterministic=True)
    e = load_sealed(vol, key, tag)[0].by_path()["a.bin"]
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (vol / OBJECTS_DIR / f".tmp-{e.file_id.hex()}").symlink_to(victim)
    add_sources(vol, key, [tmp_path / "src" / "a.bin"], deterministic=True)
    assert victim.read_bytes() == b"keep me"
    assert verify_volume(vol, key, seal_volume(vol, key)).ok


def test_a_deterministic_re_add_under_another_region_keeps_the_sealed_version(tmp_path: Path) -> None:
    """The same (path, content) added again under another region got the same deterministic
    file id, so its new object replaced the sealed version's object before the seal: the sealed
    version failed verification (for good, if the pending change was then dropped)."""
    vol, key, tag = _volume(tmp_path, deterministic=True)
    m0 = load_sealed(vol, key, tag)[0].by_path()
    add_sources(vol, key, [tmp_path / "src" / "a.bin"], rules=[RegionRule("a.bin", Region.AUTHENTICATED)],
                deterministic=True)  # fmt: skip
    assert verify_volume(vol, key, tag).ok  # the sealed version is untouched until the seal
    tag1 = seal_volume(vol, key)
    m1 = load_sealed(vol, key, tag1)[0].by_path()
    assert m1["a.bin"].region is Region.AUTHENTICATED and m1["a.bin"].file_id != m0["a.bin"].file_id
    assert verify_volume(vol, key, tag1).ok
    with VolumeReader(vol, key, tag1) as r:
        assert r.read("a.bin", 0, 1 << 20) == FILES["a.bin"]


# --- an interrupted seal ----------------------------------------------------------------------


def test_a_seal_interrupted_before_removing_the_pending_manifest_recovers(tmp_path: Path) -> None:
    """`seal` replaces MANIFEST, then removes MANIFEST.pending: a crash in between left a
    pending manifest of the previous generation, and every later add/seal (and a writable
    mount) refused the volume until someone removed it by hand."""
    vol, key, _tag = _volume(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])
    leftover = (vol / PENDING_NAME).read_bytes()
    tag1 = seal_volume(vol, key)
    (vol / PENDING_NAME).write_bytes(leftover)  # the state after a crash between the renames
    assert seal_volume(vol, key) == tag1  # nothing new to seal
    assert not (vol / PENDING_NAME).exists()
    (vol / PENDING_NAME).write_bytes(leftover)
    assert not pending_changes(vol, key)  # what a writable mount asks
    (vol / PENDING_NAME).write_bytes(leftover)
    (extra / "y").write_bytes(b"y")
    add_sources(vol, key, [extra / "y"])
    tag2 = seal_volume(vol, key)
    assert sorted(load_sealed(vol, key, tag2)[0].by_path()) == [
        "a.bin", "auth", "auth/b.bin", "plain", "plain/u.bin", "x", "y",
    ]  # fmt: skip


def test_a_pending_manifest_that_was_not_sealed_still_conflicts(tmp_path: Path) -> None:
    """Negative twin: a pending manifest of the previous generation whose changes are *not*
    the sealed ones is kept and reported, as before."""
    vol, key, _ = _volume(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])
    other = (vol / PENDING_NAME).read_bytes()
    (vol / PENDING_NAME).unlink()
    (extra / "y").write_bytes(b"y")
    add_sources(vol, key, [extra / "y"])
    seal_volume(vol, key)
    (vol / PENDING_NAME).write_bytes(other)  # gen N, lists x but not y: never sealed
    with pytest.raises(StorageError, match="base generation"):
        seal_volume(vol, key)
    assert (vol / PENDING_NAME).read_bytes() == other
    with pytest.raises(StorageError, match="base generation"):
        pending_changes(vol, key)


def test_verify_reports_no_pending_change_for_an_already_sealed_leftover(tmp_path: Path) -> None:
    """`verify` agrees with add/rm/seal/mount: a MANIFEST.pending that MANIFEST already seals (a
    seal interrupted between its renames) is not a pending change. verify is read-only: the
    leftover stays where it is, byte for byte."""
    vol, key, _ = _volume(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])
    leftover = (vol / PENDING_NAME).read_bytes()
    report = verify_volume(vol, key)
    assert (report.pending_changes, report.sealed_leftover) == (True, False)  # really pending
    tag1 = seal_volume(vol, key)
    (vol / PENDING_NAME).write_bytes(leftover)  # the state after a crash between the renames
    report = verify_volume(vol, key, tag1)
    assert report.ok
    assert (report.pending_changes, report.sealed_leftover) == (False, True)
    assert (vol / PENDING_NAME).read_bytes() == leftover
    key_file = tmp_path / "key"
    write_key(key_file, key)
    as_json = run_confide("volume", "verify", vol, "--key", key_file, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["pending_changes"] is False
    text = run_confide("volume", "verify", vol, "--key", key_file)
    assert text.returncode == 0, text.stderr
    assert "unsealed changes are pending" not in text.stderr
    assert "already sealed" in text.stderr
    assert (vol / PENDING_NAME).read_bytes() == leftover


def test_verify_still_reports_a_pending_manifest_that_was_not_sealed(tmp_path: Path) -> None:
    """Negative twin: a pending manifest of the previous generation whose changes are not the
    sealed ones, and one that does not authenticate, are still pending changes for verify."""
    vol, key, _ = _volume(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x").write_bytes(b"x")
    add_sources(vol, key, [extra])
    other = (vol / PENDING_NAME).read_bytes()
    (vol / PENDING_NAME).unlink()
    (extra / "y").write_bytes(b"y")
    add_sources(vol, key, [extra / "y"])
    seal_volume(vol, key)
    (vol / PENDING_NAME).write_bytes(other)  # gen N, lists x but not y: never sealed
    report = verify_volume(vol, key)
    assert (report.pending_changes, report.sealed_leftover) == (True, False)
    (vol / PENDING_NAME).write_bytes(other[:-1] + bytes([other[-1] ^ 1]))  # does not authenticate
    report = verify_volume(vol, key)
    assert (report.pending_changes, report.sealed_leftover) == (True, False)


# --- durability of the key file ----------------------------------------------------------------


def test_the_key_files_directory_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[int, int]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / "k", VolumeKey(bytes(32)))
    st = keys.stat()
    assert (st.st_dev, st.st_ino) in synced


# --- FUSE operations (driven in-process) -------------------------------------------------------


class _S:
    def __init__(self, vol: Path, key: VolumeKey, tag: str) -> None:
        self.reader = VolumeReader(vol, key, tag)
        self.fs = VolumeFS(self.reader, key, writable=True)
        self.fs._owner = lambda: (os.getuid(), os.getgid())  # type: ignore[method-assign]

    def write(self, path: str, offset: int, data: bytes) -> None:
        fh = self.fs.open("/" + path, os.O_RDWR)
        assert self.fs.write("/" + path, data, offset, fh) == len(data)
        self.fs.fsync("/" + path, 0, fh)
        self.fs.release("/" + path, fh)

    def seal(self) -> str:
        try:
            return seal(self.fs)
        finally:
            self.reader.close()


def _session(vol: Path, key: VolumeKey, tag: str) -> _S:
    return _S(vol, key, tag)


@pytest.mark.parametrize("path", ["a.bin", "plain/u.bin"])
def test_a_fuse_read_racing_a_commit_gets_its_version_not_an_integrity_failure(
    tmp_path: Path, path: str
) -> None:
    """A read of a file committed earlier in the session takes its entry under the lock and
    reads the objects after releasing it; a commit by another handle in between superseded
    (and deleted) those objects: the read failed with EIO and reported an integrity failure
    (`confide run` then stops the service and discards the session). The interleaving is
    forced: the other handle's write + fsync runs where the read has released the lock."""
    vol, key, tag = _volume(tmp_path)
    s = _session(vol, key, tag)
    first = _data(3 * CS, 7)
    s.write(path, 0, first)  # committed in this session: objects the session owns
    before = {p.name for p in (vol / OBJECTS_DIR).iterdir()}
    reports: list[str] = []
    s.fs.on_integrity = reports.append
    fh = s.fs.open("/" + path, os.O_RDONLY)
    real = s.fs.reader.read_into
    raced: list[bool] = []

    def racing(entry, offset, out):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)
            s.write(path, 0, _data(3 * CS, 8))  # another handle: write, fsync, release
        return real(entry, offset, out)

    s.fs.reader.read_into = racing  # type: ignore[method-assign]
    out = bytearray(len(first))
    n = s.fs.read_into("/" + path, memoryview(out), 0, fh)
    assert raced and not reports and s.fs.integrity_failures == 0
    assert bytes(out[:n]) == first[:n] and n > 0  # the version the read started on
    superseded = before - {p.name for p in (vol / OBJECTS_DIR).iterdir()}
    assert superseded  # deleted once the read was done, not left behind
    s.fs.release("/" + path, fh)
    tag1 = s.seal()
    assert not verify_volume(vol, key, tag1).unreferenced_objects


def test_a_fuse_symlink_the_manifest_cannot_hold_is_einval_and_the_session_seals(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    s = _session(vol, key, tag)
    with pytest.raises(mfusepy.FuseOSError) as ei:
        s.fs.symlink("/link", "target\udcff")  # mfusepy's surrogate escape of a byte 0xff
    assert ei.value.errno == errno.EINVAL
    s.fs.symlink("/good", "target")
    tag1 = s.seal()  # before: ParseError at the seal, the whole session lost
    assert load_sealed(vol, key, tag1)[0].by_path()["good"].target == "target"


def test_a_missing_object_when_opening_for_write_is_an_integrity_failure(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path)
    e = load_sealed(vol, key, tag)[0].by_path()["a.bin"]
    object_path(vol, e.file_id).unlink()
    s = _session(vol, key, tag)
    reports: list[str] = []
    s.fs.on_integrity = reports.append
    with pytest.raises(mfusepy.FuseOSError) as ei:
        s.fs.open("/a.bin", os.O_RDWR)
    assert ei.value.errno == errno.EIO and reports == ["a.bin"]
    s.reader.close()


def test_a_fuse_rename_that_would_push_a_path_below_past_4096_bytes_is_refused(tmp_path: Path) -> None:
    """Each path is checked when it is made, but a renamed directory moves every path below it:
    one longer than the format's 4096 bytes was accepted and the seal at unmount then failed
    (ParseError), losing the session's changes."""
    vol, key, tag = _volume(tmp_path)
    s = _session(vol, key, tag)
    deep = "a"
    s.fs.mkdir("/a", 0o755)
    for i in range(16):  # 16 components of 250 bytes below "a": 4017 bytes
        deep += "/" + chr(ord("b") + i) * 250
        s.fs.mkdir("/" + deep, 0o755)
    fh = s.fs.create("/" + deep + "/f", 0o644)
    s.fs.write("/" + deep + "/f", b"deep", 0, fh)
    s.fs.release("/" + deep + "/f", fh)
    assert len((deep + "/f").encode()) <= 4096
    with pytest.raises(mfusepy.FuseOSError) as ei:
        s.fs.rename("/a", "/" + "z" * 255)  # the file would be at 4273 bytes
    assert ei.value.errno == errno.ENAMETOOLONG
    s.fs.rename("/a", "/" + "z" * 70)  # 4088 bytes, within 4096: moved
    tag1 = s.seal()
    moved = "z" * 70 + deep[1:] + "/f"
    with VolumeReader(vol, key, tag1) as r:
        assert r.read(moved, 0, 10) == b"deep"


def test_implicit_directories_are_0755_whatever_the_umask(tmp_path: Path) -> None:
    """`open` (hence the tmpfs mounts) created implicit directories with mkdir(0o755), i.e.
    minus the umask: 0700 under umask 077, so a writable mount's unmount sealed them as listed
    directories of mode 0700 (a new tag, and other users locked out) though nothing changed."""
    vol, key, _ = _volume(tmp_path)
    (tmp_path / "n.txt").write_bytes(b"n")
    add_sources(vol, key, [tmp_path / "n.txt"], dest="x/y")  # x and x/y are implicit
    tag = seal_volume(vol, key)
    old = os.umask(0o077)
    try:
        open_volume(vol, key, tmp_path / "out", tag)
        m, _ = load_sealed(vol, key, tag)
        h = _TmpfsMount(vol, key, tmp_path / "mnt", tag, True, m, None, private_namespace=False)
        assert stat.S_IMODE((h.path / "x").stat().st_mode) == 0o755
        assert h.close() == tag  # nothing changed: the same tag
    finally:
        os.umask(old)
    for d in ("x", "x/y"):
        assert stat.S_IMODE((tmp_path / "out" / d).stat().st_mode) == 0o755


def test_verify_names_unreferenced_objects(tmp_path: Path) -> None:
    """`volume verify` (text) notes the objects no file of the version uses, as the JSON lists
    them: a killed writable FUSE session leaves its new objects so (docs/volume-mount.md
    "Signals"); they change nothing in the verdict, and the next seal removes them."""
    vol, key, tag = _volume(tmp_path)
    key_file = tmp_path / "key"
    write_key(key_file, key)
    clean = run_confide("volume", "verify", vol, "--key", key_file)
    assert clean.returncode == 0 and "unreferenced" not in clean.stderr, clean.stderr
    objects = vol / "objects"
    some = next(objects.iterdir())
    (objects / ("0" * 32)).write_bytes(some.read_bytes())  # an object of a session that was lost
    text = run_confide("volume", "verify", vol, "--key", key_file, "--tag", tag)
    assert text.returncode == 0, text.stderr
    assert f"note: 1 unreferenced object(s) in objects/ ({'0' * 32}): " in text.stderr
    assert text.stdout.startswith("verified: ")
    as_json = run_confide("volume", "verify", vol, "--key", key_file, "--json")
    assert json.loads(as_json.stdout)["unreferenced_objects"] == ["0" * 32]

"""Volume operations on real files: round trips, boundaries, tampering, rollback, reader."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from confide import cli
from confide.errors import ParseError, RollbackError, SignatureError, StorageError, UsageError
from confide.volume import (
    Region,
    RegionRule,
    VolumeKey,
    VolumeReader,
    add_sources,
    create_volume,
    load_key,
    open_volume,
    seal_volume,
    verify_volume,
    write_key,
)
from confide.volume._io import BATCH_BYTES, LARGE_FOLIO_PIECE, batch_chunks
from confide.volume.format import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, TAG_SIZE
from confide.volume.store import MANIFEST_NAME, OBJECTS_DIR, load_sealed, object_path

CS = 65536
SIZES = [0, 1, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, 3 * CS, 3 * CS + 1]


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _volume(
    tmp: Path,
    files: dict[str, bytes],
    *,
    chunk_size: int = CS,
    rules: tuple[RegionRule, ...] = (),
    key: VolumeKey | None = None,
    name: str = "vol",
) -> tuple[Path, VolumeKey, str]:
    key = key or VolumeKey.generate()
    src = _tree(tmp / f"src-{name}", files)
    vol = tmp / name
    create_volume(vol, key, chunk_size=chunk_size)
    add_sources(vol, key, [src], rules=rules)
    return vol, key, seal_volume(vol, key)


def _obj(vol: Path, key: VolumeKey, path: str) -> Path:
    m, _ = load_sealed(vol, key)
    return object_path(vol, m.by_path()[path].file_id)


def _pattern(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{n}-{seed}".encode()).digest(n) if n else b""


@pytest.mark.parametrize("region", [Region.ENCRYPTED, Region.AUTHENTICATED, Region.UNPROTECTED])
def test_every_chunk_boundary_round_trips(tmp_path: Path, region: Region) -> None:
    files = {f"f{n}": _pattern(n) for n in SIZES}
    rules = tuple(RegionRule(f"f{n}", region) for n in SIZES)
    vol, key, tag = _volume(tmp_path, files, rules=rules)
    report = verify_volume(vol, key, tag)
    assert report.ok and report.files == len(SIZES)
    out = tmp_path / "out"
    open_volume(vol, key, out, tag)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    m, _ = load_sealed(vol, key)
    for e in m.entries:
        assert e.region is region
        stored = object_path(vol, e.file_id).stat().st_size
        if region is Region.UNPROTECTED:
            assert stored == e.size
        else:
            assert stored == e.size + TAG_SIZE * max(1, -(-e.size // CS))


def test_reader_random_access_at_boundaries(tmp_path: Path) -> None:
    data = _pattern(3 * CS + 17)
    vol, key, tag = _volume(tmp_path, {"d/x": data, "d/e": b""})
    with VolumeReader(vol, key, tag) as r:
        for off in [0, 1, CS - 1, CS, CS + 1, 2 * CS - 5, 3 * CS, 3 * CS + 16, 3 * CS + 17, 10**9]:
            for size in [0, 1, 5, CS, 2 * CS + 3, 10**9]:
                assert r.read("d/x", off, size) == data[off : off + size]
        assert r.read("d/e", 0, 10) == b""
        assert r.listdir("") == ["d"] and r.listdir("d") == ["e", "x"]
        with pytest.raises(UsageError):
            r.read("nope", 0, 1)
        with pytest.raises(UsageError):
            r.read("d", 0, 1)


def test_reader_refuses_tampered_chunks_and_roots(tmp_path: Path) -> None:
    data = _pattern(3 * CS)
    vol, key, tag = _volume(tmp_path, {"x": data})
    obj = _obj(vol, key, "x")
    raw = bytearray(obj.read_bytes())
    raw[CS + TAG_SIZE + 10] ^= 1  # payload of chunk 1: root still matches, chunk 1 fails
    obj.write_bytes(raw)
    with VolumeReader(vol, key, tag) as r:
        assert r.read("x", 0, 100) == data[:100]  # chunk 0 is intact
        with pytest.raises(SignatureError, match="chunk 1"):
            r.read("x", CS, 10)
    raw[CS + TAG_SIZE + 10] ^= 1
    raw[-1] ^= 1  # a tag: the root no longer matches, nothing is served
    obj.write_bytes(raw)
    with VolumeReader(vol, key, tag) as r, pytest.raises(SignatureError, match="root"):
        r.read("x", 0, 1)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm (tmpfs)")
@pytest.mark.parametrize("piece", [LARGE_FOLIO_PIECE, 3 * CS + 4096, 4096])
def test_write_piece_splits_writes_and_keeps_content_and_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # Islands of data between zero chunks, runs that cross batch and piece boundaries, a
    # partial last chunk: the same bytes and the same allocated blocks as with whole writes.
    n = 2 * batch_chunks(CS) + 7
    data = bytearray(n * CS - 123)
    for a, b in ((0, 3), (5, 6), (9, batch_chunks(CS) + 9), (n - 4, n)):
        data[a * CS : b * CS] = os.urandom((b - a) * CS)
    src = _tree(tmp_path / "src", {"f": bytes(data)})
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    writes: list[tuple[int, int]] = []
    real = os.pwrite

    def spy(fd: int, buf: memoryview, offset: int) -> int:
        writes.append((offset, len(buf)))
        return real(fd, buf, offset)

    try:
        open_volume(vol, key, shm / "whole", tag, workers=2)
        monkeypatch.setattr(os, "pwrite", spy)
        open_volume(vol, key, shm / "pieces", tag, workers=2, write_piece=piece)
        monkeypatch.undo()
        assert (shm / "pieces" / "f").read_bytes() == bytes(data)
        assert (shm / "pieces" / "f").stat().st_blocks == (shm / "whole" / "f").stat().st_blocks
        assert (shm / "pieces" / "f").stat().st_blocks * 512 < len(data) - 20 * CS  # holes kept
        assert writes
        for off, length in writes:  # no write crosses a multiple of the piece
            assert off // piece == (off + length - 1) // piece
        assert sum(length for _, length in writes) == len(data) - sum(
            CS for i in range(n - 1) if not any(data[i * CS : (i + 1) * CS])
        )
    finally:
        shutil.rmtree(shm)
    with pytest.raises(ValueError, match="write_piece"):
        open_volume(vol, key, tmp_path / "bad", tag, write_piece=0)


def test_empty_sparse_and_unicode_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "sparse"
    with sparse.open("wb") as f:
        f.truncate(64 * CS)
        f.seek(20 * CS + 3)
        f.write(b"island")
    (src / "empty").write_bytes(b"")
    names = ["données", "日本語 ✓.txt", "e\u0301", "\u00e9"]  # NFD and NFC stay distinct
    for i, n in enumerate(names):
        (src / n).write_bytes(n.encode() * (i + 1))
    (src / "emptydir").mkdir()
    os.symlink("日本語 ✓.txt", src / "link")
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    assert verify_volume(vol, key, tag).ok
    out = tmp_path / "out"
    open_volume(vol, key, out, tag)
    assert (out / "sparse").read_bytes() == sparse.read_bytes()
    assert (out / "sparse").stat().st_blocks * 512 < 8 * CS  # holes kept
    assert (out / "empty").read_bytes() == b""
    for i, n in enumerate(names):
        assert (out / n).read_bytes() == n.encode() * (i + 1)
    assert (out / "emptydir").is_dir()
    assert os.readlink(out / "link") == "日本語 ✓.txt"
    assert not [p for p in out.iterdir() if p.name.startswith(".confide")]


def test_modes_are_restored(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"ro/x": b"1", "exe": b"#!/bin/sh\n"})
    (src / "exe").chmod(0o750)
    (src / "ro").chmod(0o555)
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    out = tmp_path / "out"
    open_volume(vol, key, out, tag)
    assert (out / "exe").stat().st_mode & 0o7777 == 0o750
    assert (out / "ro").stat().st_mode & 0o7777 == 0o555
    (src / "ro").chmod(0o755)


def test_large_file_streams_in_constant_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with big.open("wb") as f:
        for i in range(128):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            h.update(chunk)
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    tracemalloc.start()
    try:
        add_sources(vol, key, [src])
        tag = seal_volume(vol, key)
        out = tmp_path / "out"
        open_volume(vol, key, out, tag, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # two batch buffers (ciphertext, plaintext) per worker, plus slack: far below the 128 MiB
    assert peak < 2 * 2 * BATCH_BYTES + (4 << 20), f"peak {peak} bytes: not streaming"
    h2 = hashlib.sha256()
    with (out / "big").open("rb") as f:
        while b := f.read(1 << 20):
            h2.update(b)
    assert h2.digest() == h.digest()


def _flip_all(vol: Path, key: VolumeKey, tag: str, positions: dict[Path, range]) -> int:
    checked = 0
    for path, rng in positions.items():
        original = path.read_bytes()
        for i in rng:
            bad = bytearray(original)
            bad[i] ^= 0x40
            path.write_bytes(bad)
            try:
                report = verify_volume(vol, key)
            except (SignatureError, ParseError):
                pass
            else:
                assert not report.ok, f"flip of byte {i} in {path.name} not detected"
            checked += 1
        path.write_bytes(original)
    assert verify_volume(vol, key, tag).ok
    return checked


def test_every_single_byte_flip_is_detected_small_volume(tmp_path: Path) -> None:
    files = {"a": b"", "b": b"x", "c/d": _pattern(300), "c/e": _pattern(600, 1), "auth/f": _pattern(513)}
    rules = (RegionRule("auth", Region.AUTHENTICATED),)
    vol, key, tag = _volume(tmp_path, files, chunk_size=256, rules=rules)
    targets = [vol / MANIFEST_NAME, *sorted((vol / OBJECTS_DIR).iterdir())]
    n = _flip_all(vol, key, tag, {p: range(p.stat().st_size) for p in targets})
    assert n == sum(p.stat().st_size for p in targets)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_dense_sample_of_byte_flips_is_detected_larger_volume(tmp_path: Path) -> None:
    files = {f"d{i}/f": _pattern(CS * i + 7 * i, i) for i in range(1, 6)}
    vol, key, tag = _volume(tmp_path, files)
    targets = [vol / MANIFEST_NAME, *sorted((vol / OBJECTS_DIR).iterdir())]
    _flip_all(vol, key, tag, {p: range(0, p.stat().st_size, 997) for p in targets})


def test_verify_reports_every_bad_file_with_a_reason(tmp_path: Path) -> None:
    files = {"good": b"g" * 10, "flip": _pattern(CS + 5), "gone": b"x", "cut": _pattern(2 * CS), "long": b"y"}
    vol, key, tag = _volume(tmp_path, files)
    flip = _obj(vol, key, "flip")
    raw = bytearray(flip.read_bytes())
    raw[3] ^= 1
    flip.write_bytes(raw)
    _obj(vol, key, "gone").unlink()
    cut = _obj(vol, key, "cut")
    cut.write_bytes(cut.read_bytes()[: CS + TAG_SIZE])  # drop the last chunk
    with _obj(vol, key, "long").open("ab") as f:
        f.write(b"extra")
    report = verify_volume(vol, key, tag)
    bad = {p.path: p.reason for p in report.problems}
    assert set(bad) == {"flip", "gone", "cut", "long"}
    assert "chunk 0" in bad["flip"] and "missing" in bad["gone"]
    assert "truncated" in bad["cut"] and "extended" in bad["long"]
    with pytest.raises(SignatureError, match="4 file"):
        report.raise_if_bad()


def test_open_leaves_nothing_behind_on_integrity_failure(tmp_path: Path) -> None:
    files = {"a/first": b"fine", "b/second": _pattern(3 * CS)}
    vol, key, tag = _volume(tmp_path, files)
    obj = _obj(vol, key, "b/second")
    raw = bytearray(obj.read_bytes())
    raw[-TAG_SIZE - 1] ^= 1  # last chunk: most of the file decrypts before the failure
    obj.write_bytes(raw)
    out = tmp_path / "out"
    with pytest.raises(SignatureError, match="b/second"):
        open_volume(vol, key, out, tag)
    assert list(out.iterdir()) == []


def test_chunk_reordering_truncation_and_extension_are_detected(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path, {"x": _pattern(3 * CS)})
    obj = _obj(vol, key, "x")
    orig = obj.read_bytes()
    rec = CS + TAG_SIZE
    c = [orig[i * rec : (i + 1) * rec] for i in range(3)]
    for bad in [
        c[1] + c[0] + c[2],  # swap
        c[0] + c[1],  # truncated at a chunk boundary
        c[0] + c[1] + c[2] + c[2],  # extended by a valid-looking chunk
        c[0] + c[0] + c[2],  # duplicated chunk
    ]:
        obj.write_bytes(bad)
        assert not verify_volume(vol, key).ok
    obj.write_bytes(orig)
    assert verify_volume(vol, key, tag).ok


def test_splicing_between_files_and_volumes_is_detected(tmp_path: Path) -> None:
    key = VolumeKey.generate()  # worst case: both volumes share the key
    same = {"a": _pattern(CS + 9), "b": _pattern(CS + 9, 1)}
    v1, _, t1 = _volume(tmp_path, same, key=key, name="v1")
    v2, _, t2 = _volume(tmp_path, same, key=key, name="v2")
    a1, b1, a2 = _obj(v1, key, "a"), _obj(v1, key, "b"), _obj(v2, key, "a")
    orig_a1 = a1.read_bytes()
    a1.write_bytes(b1.read_bytes())  # file b's chunks presented as file a
    assert [p.path for p in verify_volume(v1, key).problems] == ["a"]
    a1.write_bytes(a2.read_bytes())  # the same file from another volume
    assert [p.path for p in verify_volume(v1, key).problems] == ["a"]
    a1.write_bytes(orig_a1[: CS + TAG_SIZE] + a2.read_bytes()[CS + TAG_SIZE :])  # mixed chunks
    assert [p.path for p in verify_volume(v1, key).problems] == ["a"]
    a1.write_bytes(orig_a1)
    # a whole manifest from the other volume: refused by the tag, broken without it
    shutil.copy(v2 / MANIFEST_NAME, v1 / MANIFEST_NAME)
    with pytest.raises(RollbackError):
        verify_volume(v1, key, t1)
    assert not verify_volume(v1, key).ok
    assert verify_volume(v2, key, t2).ok


def test_old_volume_version_is_refused_by_tag(tmp_path: Path) -> None:
    vol, key, t1 = _volume(tmp_path, {"balance": b"100"})
    old = tmp_path / "old-copy"
    shutil.copytree(vol, old)
    src = _tree(tmp_path / "new", {"balance": b"5"})
    add_sources(vol, key, [src])
    t2 = seal_volume(vol, key)
    assert t2 != t1
    assert verify_volume(old, key).ok  # authentic on its own...
    with pytest.raises(RollbackError):
        verify_volume(old, key, t2)  # ...but not the current version
    with pytest.raises(RollbackError):
        open_volume(old, key, tmp_path / "out", t2)
    with pytest.raises(RollbackError):
        VolumeReader(old, key, t2)
    open_volume(vol, key, tmp_path / "out2", t2)
    assert (tmp_path / "out2" / "balance").read_bytes() == b"5"
    assert load_sealed(vol, key)[0].generation == 2


def test_pending_changes_are_invisible_until_sealed(tmp_path: Path) -> None:
    vol, key, t1 = _volume(tmp_path, {"a": b"1"})
    add_sources(vol, key, [_tree(tmp_path / "more", {"b": b"2"})])
    report = verify_volume(vol, key, t1)
    assert report.ok and report.files == 1 and report.pending_changes
    t2 = seal_volume(vol, key)
    assert verify_volume(vol, key, t2).files == 2
    assert seal_volume(vol, key) == t2  # nothing pending: same tag
    assert verify_volume(vol, key, t2).unreferenced_objects == []


def test_replaced_file_gets_a_new_id_and_old_object_is_collected(tmp_path: Path) -> None:
    vol, key, _ = _volume(tmp_path, {"a": b"1"})
    old_obj = _obj(vol, key, "a")
    add_sources(vol, key, [_tree(tmp_path / "v2", {"a": b"2"})])
    seal_volume(vol, key)
    assert not old_obj.exists() and _obj(vol, key, "a") != old_obj


def test_deterministic_mode_is_reproducible(tmp_path: Path) -> None:
    key = VolumeKey.generate()
    tags = []
    src = _tree(tmp_path / "src", {"x": b"data", "y/z": b"more"})  # once: the times are input too
    for name in ["r1", "r2"]:
        vol = tmp_path / name
        create_volume(vol, key, volume_id=b"I" * 16)
        add_sources(vol, key, [src], deterministic=True)
        tags.append(seal_volume(vol, key))
    assert tags[0] == tags[1]
    vol = tmp_path / "r3"
    create_volume(vol, key, volume_id=b"I" * 16)
    add_sources(vol, key, [_tree(tmp_path / "src3", {"x": b"datA", "y/z": b"more"})], deterministic=True)
    assert seal_volume(vol, key) != tags[0]


def test_wrong_key_and_pending_as_manifest_are_refused(tmp_path: Path) -> None:
    vol, key, _ = _volume(tmp_path, {"a": b"1"})
    with pytest.raises(SignatureError):
        verify_volume(vol, VolumeKey.generate())
    add_sources(vol, key, [_tree(tmp_path / "more", {"b": b"2"})])
    shutil.copy(vol / "MANIFEST.pending", vol / MANIFEST_NAME)
    with pytest.raises(SignatureError, match="pending"):
        verify_volume(vol, key)


def test_hostile_sources_are_refused(tmp_path: Path) -> None:
    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    with pytest.raises(UsageError, match="special file"):
        add_sources(vol, key, [src])
    os.unlink(src / "fifo")
    (src / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")
    with pytest.raises(UsageError, match="UTF-8"):
        add_sources(vol, key, [src])
    with pytest.raises(UsageError):
        add_sources(vol, key, [tmp_path], dest="../escape")
    with pytest.raises(UsageError):
        add_sources(vol, key, [tmp_path], rules=(RegionRule("/abs", Region.ENCRYPTED),))
    with pytest.raises(UsageError, match="non-empty"):
        create_volume(vol, key)


def test_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = VolumeKey.generate()
    kf = tmp_path / "k"
    write_key(kf, key)
    assert kf.stat().st_mode & 0o777 == 0o600
    assert load_key(kf) == key
    assert key.hex() not in repr(key) and key.hex() not in str(key)
    with pytest.raises(UsageError, match="exists"):
        write_key(kf, key)
    kf.chmod(0o644)
    with pytest.raises(UsageError, match="0644"):
        load_key(kf)
    assert load_key(None, env={"CONFIDE_VOLUME_KEY": key.hex()}) == key
    with pytest.raises(UsageError, match="64 hex"):
        load_key(None, env={"CONFIDE_VOLUME_KEY": "abcd"})
    with pytest.raises(UsageError, match="no volume key"):
        load_key(None, env={})


def test_batches_are_bytes_not_chunks() -> None:
    assert batch_chunks(CS) == BATCH_BYTES // CS
    assert batch_chunks(MIN_CHUNK_SIZE) == BATCH_BYTES // MIN_CHUNK_SIZE
    assert batch_chunks(MAX_CHUNK_SIZE) == 1  # a 16 MiB chunk is a batch of its own


def test_tampered_chunk_in_a_middle_batch_fails_and_leaves_no_plaintext(tmp_path: Path) -> None:
    per = batch_chunks(CS)
    n = 3 * per + 5  # four batches: decrypted in parallel, the bad one in the middle
    files = {"big": _pattern(n * CS - 7), "small": b"ok"}
    vol, key, tag = _volume(tmp_path, files)
    obj = _obj(vol, key, "big")
    raw = bytearray(obj.read_bytes())
    bad = per + per // 2  # a chunk in the middle of batch 1
    raw[bad * (CS + TAG_SIZE) + 100] ^= 1
    obj.write_bytes(raw)
    report = verify_volume(vol, key, tag, workers=2)
    assert [(p.path, p.reason) for p in report.problems] == [("big", f"chunk {bad} does not authenticate")]
    out = tmp_path / "out"
    with pytest.raises(SignatureError, match=f"'big': chunk {bad} does not authenticate"):
        open_volume(vol, key, out, tag, workers=2)
    assert list(out.iterdir()) == []  # no staging directory, no part file, not even "small"


def test_sparse_file_across_batch_boundaries_round_trips_with_holes(tmp_path: Path) -> None:
    per = batch_chunks(CS)
    n = 2 * per + 3
    data = bytearray(n * CS + 11)
    for chunk in (0, per - 1, per, 2 * per + 2):  # islands on both sides of batch boundaries
        data[chunk * CS + 5 : chunk * CS + 9] = b"land"
    vol, key, tag = _volume(tmp_path, {"sparse": bytes(data)})
    out = tmp_path / "out"
    open_volume(vol, key, out, tag, workers=2)
    assert (out / "sparse").read_bytes() == bytes(data)
    assert (out / "sparse").stat().st_blocks * 512 <= 8 * CS  # 4 non-zero chunks and the tail


def test_chunks_larger_than_a_batch_round_trip(tmp_path: Path) -> None:
    chunk_size = 2 * BATCH_BYTES  # one chunk per batch
    files = {"f": _pattern(2 * chunk_size + 3)}
    vol, key, tag = _volume(tmp_path, files, chunk_size=chunk_size)
    out = tmp_path / "out"
    open_volume(vol, key, out, tag, workers=2)
    assert (out / "f").read_bytes() == files["f"]


def test_remove_files_and_directories_then_seal(tmp_path: Path) -> None:
    from confide.volume.store import PENDING_NAME, remove_paths

    files = {"a/x": b"x" * 10, "a/b/y": b"y" * 70_000, "keep": b"k", "z": b"z"}
    vol, key, tag = _volume(tmp_path, files)
    pending = vol / PENDING_NAME
    objects_before = {p.name for p in (vol / OBJECTS_DIR).iterdir()}

    # All or nothing: one bad path leaves the pending manifest untouched.
    with pytest.raises(UsageError, match="'nope' is not in the volume"):
        remove_paths(vol, key, ["z", "nope"])
    with pytest.raises(UsageError, match="'a' is a directory with 3 entries below it"):
        remove_paths(vol, key, ["a"])
    with pytest.raises(UsageError):
        remove_paths(vol, key, ["../etc"])
    with pytest.raises(UsageError):
        remove_paths(vol, key, ["/"])
    assert not pending.exists()

    removed = remove_paths(vol, key, ["/a/", "z"], recursive=True)
    assert [e.path for e in removed] == ["a", "a/b", "a/b/y", "a/x", "z"]
    # Pending removals are invisible and the removed objects stay until the seal.
    assert verify_volume(vol, key, tag).files == 4
    assert {p.name for p in (vol / OBJECTS_DIR).iterdir()} == objects_before
    new_tag = seal_volume(vol, key)
    assert new_tag != tag
    m, _ = load_sealed(vol, key, new_tag)
    assert [e.path for e in m.entries] == ["keep"]
    assert [p.name for p in (vol / OBJECTS_DIR).iterdir()] == [m.by_path()["keep"].file_id.hex()]
    out = tmp_path / "out"
    open_volume(vol, key, out, expected_tag=new_tag)
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    # The old version is now a rollback.
    with pytest.raises(RollbackError):
        verify_volume(vol, key, tag)


def test_remove_an_implicit_directory_and_a_symlink(tmp_path: Path) -> None:
    from confide.volume.store import remove_paths

    key = VolumeKey.generate()
    vol = tmp_path / "vol"
    create_volume(vol, key)
    src = _tree(tmp_path / "src", {"d/e/f": b"1", "g": b"2"})
    (src / "link").symlink_to("g")
    add_sources(vol, key, [src / "d" / "e" / "f"], dest="d/e")  # "d" and "d/e" are implicit
    add_sources(vol, key, [src / "g", src / "link"])
    seal_volume(vol, key)
    with pytest.raises(UsageError, match="use --recursive"):
        remove_paths(vol, key, ["d"])
    assert [e.path for e in remove_paths(vol, key, ["d", "link"], recursive=True)] == ["d/e/f", "link"]
    m, _ = load_sealed(vol, key, seal_volume(vol, key))
    assert [e.path for e in m.entries] == ["g"]


def test_a_failed_key_write_leaves_no_file_and_is_a_confide_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the key is written is a one-line error, not an OSError traceback, and
    leaves no key file at the path (which would block the retry) nor a stray copy of the key."""
    kf = tmp_path / "k"
    key = VolumeKey.generate()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StorageError, match="No space left on device") as info:
        write_key(kf, key)
    monkeypatch.undo()
    assert key.hex() not in str(info.value)
    assert sorted(tmp_path.iterdir()) == []
    write_key(kf, key)  # the retry succeeds
    assert load_key(kf) == key
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS])
def test_volume_create_exits_50_when_the_key_write_fails_on_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], err: int
) -> None:
    """``confide volume create --key-out`` run in this process (so that os.write can fail): a
    storage failure is a StorageError (exit 50), not a UsageError, and leaves no key file nor a
    temporary copy of the key."""
    keys = tmp_path / "keys"
    keys.mkdir()
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        if fd > 2:  # the key's temporary file, not this process's stdout/stderr
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    argv = ["confide", "volume", "create", str(tmp_path / "vol"), "--key-out", str(keys / "k")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        cli.main()
    monkeypatch.undo()
    assert info.value.code == StorageError.exit_code
    assert os.strerror(err) in capsys.readouterr().err
    assert sorted(keys.iterdir()) == []


def test_a_key_file_in_a_missing_directory_stays_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file or directory"):
        write_key(tmp_path / "nowhere" / "k", VolumeKey.generate())
    assert sorted(tmp_path.iterdir()) == []

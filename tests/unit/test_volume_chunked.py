"""Chunked files (format version 3): copy-on-write of chunks in writable sessions.

Most tests drive the writable FUSE operations (``VolumeFS``) in-process, without a mount, so
that they run everywhere; one test goes through a real FUSE mount where /dev/fuse works.
Byte counts are those of the objects that appear in the volume directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import secrets
import shutil
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confide.errors import ParseError, SignatureError, StorageError
from confide.volume import (
    Region,
    RegionRule,
    VolumeKey,
    _chunked,
    add_sources,
    create_volume,
    open_volume,
    seal_volume,
    verify_volume,
)
from confide.volume import format as volume_format
from confide.volume import store as volume_store
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.format import (
    TAG_SIZE,
    ChunkKeys,
    Entry,
    EntryKind,
    Manifest,
    ManifestState,
    decode_manifest,
    encode_manifest,
    encode_manifest_body,
    parse_manifest_body,
)
from confide.volume.mount import _TmpfsMount, fuse_usable, mount_volume
from confide.volume.reader import VolumeReader
from confide.volume.store import MANIFEST_NAME, OBJECTS_DIR, load_sealed

CS = 4096
VID = bytes(range(16))
ASSETS_V1 = Path(__file__).resolve().parents[1] / "assets" / "volume-v1"
V1_KEY = VolumeKey(b"\x11" * 32)
V1_TAG = "e46c55d1697397bc2b6ee161480ba075bd737f6e0d9b45b16efcc9560728048d"


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _volume(tmp: Path, files: dict[str, bytes]) -> tuple[Path, VolumeKey, str]:
    src = tmp / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    key = VolumeKey.generate()
    vol = tmp / "vol"
    rules = (RegionRule("auth", Region.AUTHENTICATED), RegionRule("plain", Region.UNPROTECTED))
    create_volume(vol, key, chunk_size=CS, rules=rules)
    add_sources(vol, key, [src])
    return vol, key, seal_volume(vol, key)


def _objects(vol: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (vol / OBJECTS_DIR).iterdir()}


def _new_bytes(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(size for name, size in after.items() if name not in before)


def _version(vol: Path) -> int:
    return int(struct.unpack_from("<H", (vol / MANIFEST_NAME).read_bytes(), 8)[0])


class _Session:
    """A writable VolumeFS over the sealed version ``tag``, driven like the kernel would."""

    def __init__(self, vol: Path, key: VolumeKey, tag: str) -> None:
        self.reader = VolumeReader(vol, key, tag)
        self.fs = VolumeFS(self.reader, key, writable=True)
        self.fs._owner = lambda: (os.getuid(), os.getgid())  # type: ignore[method-assign]

    def write(self, path: str, offset: int, data: bytes) -> None:
        fh = self.fs.open("/" + path, os.O_RDWR)
        assert self.fs.write("/" + path, data, offset, fh) == len(data)
        self.fs.fsync("/" + path, 0, fh)
        self.fs.release("/" + path, fh)

    def truncate(self, path: str, length: int) -> None:
        self.fs.truncate("/" + path, length)

    def create(self, path: str, data: bytes) -> None:
        fh = self.fs.create("/" + path, 0o644)
        self.fs.write("/" + path, data, 0, fh)
        self.fs.release("/" + path, fh)

    def seal(self) -> str:
        try:
            return seal(self.fs)
        finally:
            self.reader.close()


def _contents(vol: Path, key: VolumeKey, tag: str, tmp: Path) -> dict[str, bytes]:
    assert verify_volume(vol, key, tag).ok
    out = tmp / f"open-{secrets.token_hex(6)}"
    open_volume(vol, key, out, tag)
    got = {
        str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.is_symlink()
    }
    with VolumeReader(vol, key, tag) as r:  # random access agrees with the extraction
        for path, data in got.items():
            for off, n in ((0, len(data)), (CS - 3, 10), (len(data) // 2, CS + 5), (len(data), 4)):
                assert r.read(path, off, n) == data[off : off + n]
    return got


# --- format ----------------------------------------------------------------------------------


def test_chunk_keys_are_rfc5869_hkdf_and_unique_per_chunk_id() -> None:
    vk = bytes(range(32))
    keys = ChunkKeys(vk, VID)
    cid = b"\x05" * 16
    info = b"confide-volume-v3 chunk key" + bytes([Region.ENCRYPTED]) + VID + cid
    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(vk)
    assert keys.key(cid, Region.ENCRYPTED) == want
    assert keys.key(cid, Region.AUTHENTICATED) != want != keys.key(b"\x06" * 16, Region.ENCRYPTED)
    rec = keys.seal(b"hello", cid, Region.ENCRYPTED)
    assert len(rec) == 5 + TAG_SIZE and b"hello" not in rec
    out = bytearray(5)
    assert keys.open_into(rec, cid, Region.ENCRYPTED, out) == 5 and out == b"hello"
    for other in ((b"\x06" * 16, Region.ENCRYPTED), (cid, Region.AUTHENTICATED)):
        with pytest.raises(SignatureError):
            keys.open_into(rec, *other, out)
    with pytest.raises(SignatureError):
        ChunkKeys(vk, bytes(16)).open_into(rec, cid, Region.ENCRYPTED, out)  # another volume
    auth = keys.seal(b"hello", cid, Region.AUTHENTICATED)
    assert auth.startswith(b"hello")
    with pytest.raises(SignatureError):
        keys.open_into(b"jello" + auth[5:], cid, Region.AUTHENTICATED, out)


@given(
    vk=st.binary(min_size=32, max_size=32),
    vid=st.binary(min_size=16, max_size=16),
    cid=st.binary(min_size=16, max_size=16),
    region=st.sampled_from([Region.ENCRYPTED, Region.AUTHENTICATED]),
    cache=st.integers(0, 2),
)
@settings(max_examples=200)
def test_chunk_keys_and_openers_match_hkdf_for_any_input(
    vk: bytes, vid: bytes, cid: bytes, region: Region, cache: int
) -> None:
    """The precomputed HMAC states (RFC 2104) give RFC 5869's HKDF, and an opener (with or
    without its context cache) opens exactly what ChunkKeys seals under the same id."""
    keys = ChunkKeys(vk, vid)
    info = b"confide-volume-v3 chunk key" + bytes([region]) + vid + cid
    assert keys.key(cid, region) == HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        vk
    )
    rec = keys.seal(b"plaintext", cid, region)
    opener = keys.opener(region, cache)
    for _ in range(2):  # the second time from the cache when there is one
        out = bytearray(9)
        assert opener(rec, cid, out) == 9 and out == b"plaintext"
        with pytest.raises(SignatureError):
            opener(rec, bytes(b ^ 1 for b in cid), bytearray(9))
        with pytest.raises(SignatureError):
            opener(rec[:-1] + bytes([rec[-1] ^ 1]), cid, bytearray(9))
    with pytest.raises(SignatureError):
        ChunkKeys(vk, vid).opener(Region.AUTHENTICATED if region is Region.ENCRYPTED else Region.ENCRYPTED)(
            rec, cid, bytearray(9)
        )
    with pytest.raises(ValueError):
        keys.opener(Region.UNPROTECTED)
    with pytest.raises(ValueError):
        keys.opener(region, -1)


def _chunked_entry(path: str, size: int, seed: int, region: Region = Region.ENCRYPTED) -> Entry:
    n = -(-size // CS)
    ids = tuple(random.Random(seed + i).randbytes(16) for i in range(n))
    return Entry(path, EntryKind.FILE, 0o644, region=region, size=size, root=bytes(32), chunks=ids)


def test_version_3_only_when_a_file_is_chunked_and_round_trips() -> None:
    key = b"\x07" * 32
    whole = Entry("a", EntryKind.FILE, 0o644, 0, 0, Region.ENCRYPTED, b"\x01" * 16, 3, b"\x02" * 32)
    m2 = Manifest(VID, 1, ManifestState.SEALED, CS, entries=(whole,))
    assert struct.unpack_from("<H", encode_manifest(m2, key), 8)[0] == 2
    empty = _chunked_entry("c", 0, 9)
    assert empty.chunks == ()
    m3 = Manifest(
        VID, 1, ManifestState.SEALED, CS, entries=(whole, _chunked_entry("b", 3 * CS + 1, 5), empty)
    )
    data = encode_manifest(m3, key)
    assert struct.unpack_from("<H", data, 8)[0] == 3
    assert decode_manifest(data, key) == m3
    mismatched = Entry("b", EntryKind.FILE, 0o644, size=CS + 1, chunks=(b"\x01" * 16,))  # needs 2 ids
    with pytest.raises(ValueError):
        encode_manifest(Manifest(VID, 1, ManifestState.SEALED, CS, entries=(mismatched,)), key)


def _body3(*entries: Entry) -> bytes:
    return encode_manifest_body(Manifest(VID, 1, ManifestState.SEALED, CS, entries=entries))


def test_hostile_version_3_bodies_are_parse_errors() -> None:
    def parse(body: bytes) -> Manifest:
        return parse_manifest_body(body, VID, 1, ManifestState.SEALED, version=3)

    good = _body3(_chunked_entry("b", 2 * CS, 3))
    assert parse(good).entries[0].chunks is not None
    layout_at = len(good) - 1 - 8 - 32  # layout byte, size, 2 ids
    assert good[layout_at] == 1
    for bad_layout in (2, 255):
        with pytest.raises(ParseError, match="layout"):
            parse(good[:layout_at] + bytes([bad_layout]) + good[layout_at + 1 :])
    huge = good[: layout_at + 1] + struct.pack("<Q", 2**40) + good[layout_at + 9 :]
    with pytest.raises(ParseError, match="chunk ids"):
        parse(huge)  # the size asks for more ids than the body holds: refused before reading
    with pytest.raises(ParseError):
        parse(good[:-1])
    with pytest.raises(ParseError):
        parse(good + b"\x00")
    # an unprotected file cannot be chunked
    unprot = _body3(_chunked_entry("b", CS, 3))
    region_at = unprot.index(bytes([EntryKind.FILE, Region.ENCRYPTED]))
    with pytest.raises(ParseError, match="unprotected"):
        parse(unprot[: region_at + 1] + bytes([Region.UNPROTECTED]) + unprot[region_at + 2 :])
    # object ids are unique across files (chunk ids and file ids share the objects directory)
    a = _chunked_entry("a", CS, 3)
    with pytest.raises(ParseError, match="used twice"):
        parse(_body3(a, _chunked_entry("b", CS, 3)))
    assert a.chunks is not None
    whole = Entry("c", EntryKind.FILE, 0o644, 0, 0, Region.ENCRYPTED, a.chunks[0], 1, b"\x00" * 32)
    with pytest.raises(ParseError, match="used twice"):
        parse(_body3(a, whole))


@given(st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_version_3_bodies_raise_only_parse_error(data: st.DataObject) -> None:
    """Bodies that authenticate (a key holder wrote them) are still parsed defensively."""
    whole = Entry("w", EntryKind.FILE, 0o644, 0, 0, Region.AUTHENTICATED, b"\x09" * 16, 7, b"\x01" * 32)
    body = bytearray(_body3(_chunked_entry("a", 2 * CS + 3, 40), whole, _chunked_entry("z", 0, 50)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif body:
            del body[pos : pos + data.draw(st.integers(1, 8))]
    with contextlib.suppress(ParseError):
        m = parse_manifest_body(bytes(body), VID, 1, ManifestState.SEALED, version=3)
        for e in m.entries:  # whatever parsed is consistent
            if e.chunks is not None:
                assert len(e.chunks) == -(-e.size // m.chunk_size) and e.region is not Region.UNPROTECTED


# --- writable sessions -----------------------------------------------------------------------


def test_small_change_to_a_large_file_writes_only_the_changed_chunks(tmp_path: Path) -> None:
    big = _data(64 * CS + 100)
    vol, key, tag0 = _volume(tmp_path, {"big.bin": big, "other.txt": b"untouched\n"})
    m0, _ = load_sealed(vol, key, tag0)
    other0 = m0.by_path()["other.txt"]
    assert _version(vol) == 2

    # first write through a session: the version-2 object is converted to chunks (all of them)
    s = _Session(vol, key, tag0)
    before = _objects(vol)
    s.write("big.bin", 10, b"0123456789")
    assert _new_bytes(before, _objects(vol)) == len(big) + 65 * TAG_SIZE == s.fs.bytes_written
    tag1 = s.seal()
    assert _version(vol) == 3  # upgraded; the untouched file keeps its version-2 object
    m1, _ = load_sealed(vol, key, tag1)
    assert m1.by_path()["other.txt"].file_id == other0.file_id
    assert m1.by_path()["other.txt"].chunks is None
    expect = bytearray(big)
    expect[10:20] = b"0123456789"
    assert _contents(vol, key, tag1, tmp_path) == {"big.bin": bytes(expect), "other.txt": b"untouched\n"}

    # later commits: only the chunks written (one, then two across a boundary)
    s = _Session(vol, key, tag1)
    before = _objects(vol)
    s.write("big.bin", 5 * CS + 7, b"x" * 10)
    assert _new_bytes(before, _objects(vol)) == CS + TAG_SIZE
    mid = _objects(vol)
    s.write("big.bin", 9 * CS - 4, b"y" * 8)
    assert _new_bytes(mid, _objects(vol)) == 2 * (CS + TAG_SIZE)
    assert s.fs.bytes_written == 3 * (CS + TAG_SIZE)
    tag2 = s.seal()
    expect[5 * CS + 7 : 5 * CS + 17] = b"x" * 10
    expect[9 * CS - 4 : 9 * CS + 4] = b"y" * 8
    assert _contents(vol, key, tag2, tmp_path)["big.bin"] == bytes(expect)
    m2, _ = load_sealed(vol, key, tag2)
    c1, c2 = m1.by_path()["big.bin"].chunks, m2.by_path()["big.bin"].chunks
    assert c1 is not None and c2 is not None
    assert [i for i in range(len(c1)) if c1[i] != c2[i]] == [5, 8, 9]
    # the seal deleted the replaced chunk objects; nothing unreferenced is left
    assert not verify_volume(vol, key, tag2).unreferenced_objects
    assert len(_objects(vol)) == len(c2) + 1


def test_random_writes_truncations_and_extensions_match_a_model(tmp_path: Path) -> None:
    rng = random.Random(7)
    model = {"enc.bin": bytearray(_data(20 * CS + 5, 2)), "auth/a.bin": bytearray(_data(3 * CS, 3)),
             "plain/p.bin": bytearray(b"plain")}  # fmt: skip
    vol, key, tag = _volume(tmp_path, {k: bytes(v) for k, v in model.items()})
    for session in range(4):
        s = _Session(vol, key, tag)
        if session == 1:
            s.create("new.bin", b"fresh" * 1000)
            model["new.bin"] = bytearray(b"fresh" * 1000)
        for _ in range(12):
            path = rng.choice(sorted(model))
            cur = model[path]
            op = rng.randrange(3)
            if op == 0:  # write, possibly past the end (a hole in between)
                off = rng.randrange(len(cur) + 2 * CS)
                data = rng.randbytes(rng.randrange(1, 2 * CS))
                s.write(path, off, data)
                if off > len(cur):
                    cur.extend(bytes(off - len(cur)))
                cur[off : off + len(data)] = data
            else:  # truncate shorter or longer (the extension reads as zeros)
                length = rng.randrange(len(cur) + 3 * CS)
                s.truncate(path, length)
                del cur[length:]
                cur.extend(bytes(length - len(cur)))
        tag = s.seal()
        assert _contents(vol, key, tag, tmp_path) == {k: bytes(v) for k, v in model.items()}
        assert not verify_volume(vol, key, tag).unreferenced_objects


def test_shrink_then_grow_in_one_commit_does_not_resurrect_old_bytes(tmp_path: Path) -> None:
    data = _data(4 * CS, 4)
    vol, key, tag = _volume(tmp_path, {"f": data})
    s = _Session(vol, key, tag)
    s.write("f", 0, b"a")  # now chunked
    tag = s.seal()
    s = _Session(vol, key, tag)
    fh = s.fs.open("/f", os.O_RDWR)
    s.fs.truncate("/f", CS + 10, fh)
    s.fs.truncate("/f", 4 * CS, fh)  # same size as before, same chunk lengths
    s.fs.release("/f", fh)
    tag = s.seal()
    want = b"a" + data[1 : CS + 10] + bytes(3 * CS - 10)
    assert _contents(vol, key, tag, tmp_path)["f"] == want


def test_o_trunc_and_rewrite_in_another_region_rewrite_all_chunks(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path, {"f": _data(3 * CS, 5)})
    s = _Session(vol, key, tag)
    s.write("f", 0, b"b")
    tag = s.seal()
    s = _Session(vol, key, tag)
    fh = s.fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    s.fs.write("/f", b"short", 0, fh)
    s.fs.release("/f", fh)
    s.fs.mkdir("/auth", 0o755)
    s.fs.rename("/f", "/auth/f")  # another region: re-sealed under its keys
    tag = s.seal()
    m, _ = load_sealed(vol, key, tag)
    e = m.by_path()["auth/f"]
    assert e.region is Region.AUTHENTICATED and e.chunks is not None and len(e.chunks) == 1
    assert _contents(vol, key, tag, tmp_path) == {"auth/f": b"short"}
    assert len(_objects(vol)) == 1


# --- integrity -------------------------------------------------------------------------------


def _chunked_volume(tmp: Path) -> tuple[Path, VolumeKey, str, dict[str, bytes]]:
    files = {"a.bin": _data(5 * CS, 11), "b.bin": _data(5 * CS, 12)}
    vol, key, tag = _volume(tmp, files)
    s = _Session(vol, key, tag)
    for p in files:
        s.write(p, 0, files[p][:1])  # converts both to chunks
    return vol, key, s.seal(), files


def _chunk_path(vol: Path, key: VolumeKey, tag: str, path: str, i: int) -> Path:
    m, _ = load_sealed(vol, key, tag)
    chunks = m.by_path()[path].chunks
    assert chunks is not None
    return vol / OBJECTS_DIR / chunks[i].hex()


def _assert_detected(vol: Path, key: VolumeKey, tag: str, path: str) -> None:
    report = verify_volume(vol, key, tag)
    assert [p.path for p in report.problems] == [path]
    with VolumeReader(vol, key, tag) as r, pytest.raises(SignatureError):
        r.read(path, 0, 5 * CS)
    with pytest.raises(SignatureError):
        open_volume(vol, key, vol.parent / "out-bad", tag)


def test_a_modified_truncated_or_missing_chunk_object_is_detected(tmp_path: Path) -> None:
    vol, key, tag, _ = _chunked_volume(tmp_path)
    p = _chunk_path(vol, key, tag, "a.bin", 2)
    good = p.read_bytes()
    for bad in (
        bytes([good[0] ^ 1]) + good[1:],
        good[:-1],
        good + b"\x00",
        good[:-TAG_SIZE] + bytes(TAG_SIZE),
    ):
        p.write_bytes(bad)
        _assert_detected(vol, key, tag, "a.bin")
    p.unlink()
    _assert_detected(vol, key, tag, "a.bin")


@pytest.mark.parametrize("other", [("a.bin", 3), ("b.bin", 2)])
def test_swapped_chunk_objects_are_detected(tmp_path: Path, other: tuple[str, int]) -> None:
    """Chunk objects exchanged inside a file or between files: the id is in the key and the
    associated data, and the manifest fixes each id's place."""
    vol, key, tag, _ = _chunked_volume(tmp_path)
    p = _chunk_path(vol, key, tag, "a.bin", 2)
    q = _chunk_path(vol, key, tag, *other)
    a, b = p.read_bytes(), q.read_bytes()
    p.write_bytes(b)
    q.write_bytes(a)
    report = verify_volume(vol, key, tag)
    assert sorted({pr.path for pr in report.problems}) == sorted({"a.bin", other[0]})


def test_an_older_version_of_a_chunk_is_detected(tmp_path: Path) -> None:
    vol, key, tag, _ = _chunked_volume(tmp_path)
    old = _chunk_path(vol, key, tag, "a.bin", 1).read_bytes()
    s = _Session(vol, key, tag)
    s.write("a.bin", CS, b"new")
    tag2 = s.seal()
    _chunk_path(vol, key, tag2, "a.bin", 1).write_bytes(old)  # same length, authentic elsewhere
    _assert_detected(vol, key, tag2, "a.bin")


def test_a_reader_with_cached_chunk_keys_still_refuses_every_tampering(tmp_path: Path) -> None:
    """The reader keeps the AES-GCM contexts of the chunks it read, never their plaintext: after
    a full read, each tampering of a chunk object is refused on the next read through the
    same reader (whole-chunk and partial reads), and the file reads again once restored."""
    vol, key, tag, files = _chunked_volume(tmp_path)
    s = _Session(vol, key, tag)
    s.write("a.bin", 2 * CS + 5, b"v2")
    old2 = _chunk_path(vol, key, tag, "a.bin", 2).read_bytes()  # the previous version of chunk 2
    tag = s.seal()
    want = bytearray(files["a.bin"])
    want[2 * CS + 5 : 2 * CS + 7] = b"v2"
    p = _chunk_path(vol, key, tag, "a.bin", 2)
    good = p.read_bytes()
    others = {
        "same file": _chunk_path(vol, key, tag, "a.bin", 3).read_bytes(),
        "other file": _chunk_path(vol, key, tag, "b.bin", 2).read_bytes(),
    }
    with VolumeReader(vol, key, tag) as r:
        assert r.read("a.bin", 0, 5 * CS) == want  # every chunk's context now cached
        assert r.read("a.bin", 0, 5 * CS) == want
        for name, bad in {
            "flipped": bytes([good[0] ^ 1]) + good[1:],
            "flipped tag": good[:-1] + bytes([good[-1] ^ 1]),
            "truncated": good[:-1],
            "extended": good + b"\x00",
            "empty": b"",
            "older version": old2,
            **others,
        }.items():
            p.write_bytes(bad)
            for off, n in ((0, 5 * CS), (2 * CS, CS), (2 * CS + 3, 10), (CS + 1, 2 * CS)):
                with pytest.raises(SignatureError, match="chunk 2"):
                    r.read("a.bin", off, n)
                    pytest.fail(f"{name}: read {off}+{n} served")
            assert r.read("a.bin", 0, 2 * CS) == want[: 2 * CS]  # the chunks before are fine
        p.unlink()
        with pytest.raises(SignatureError, match=r"chunk 2: object \w+ unreadable"):
            r.read("a.bin", 2 * CS, 1)
        p.write_bytes(good)
        assert r.read("a.bin", 0, 5 * CS) == want


def test_chunk_reader_key_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vol, key, tag, files = _chunked_volume(tmp_path)
    m, _ = load_sealed(vol, key, tag)
    e = m.by_path()["a.bin"]
    setups: list[bytes] = []
    real = volume_format.AESGCM

    def counting(k: bytes) -> object:
        setups.append(k)
        return real(k)

    monkeypatch.setattr(volume_format, "AESGCM", counting)
    reader = _chunked.ChunkReader(vol, ChunkKeys(key.raw, m.volume_id), CS, key_cache=2)
    try:
        out = memoryview(bytearray(2 * CS))
        # cache of 2: {0, 1}; hits; 2 fills it: cleared, {2}; {2, 3}; hits; 0 clears it: {0, 1}
        for offset, derived in ((0, 2), (0, 0), (CS, 1), (2 * CS, 1), (2 * CS, 0), (0, 2)):
            before = len(setups)
            assert reader.read_into(e, offset, out) == 2 * CS
            assert bytes(out) == files["a.bin"][offset : offset + 2 * CS]
            assert len(setups) - before == derived, offset
    finally:
        reader.close()


@pytest.mark.parametrize("batch", [1, 3, 1024])
def test_chunked_files_extract_with_holes_for_zero_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """open_volume writes runs of non-zero chunks in batches (any batch size gives the same
    bytes) and leaves full zero chunks as holes."""
    monkeypatch.setattr(_chunked, "batch_chunks", lambda chunk_size: batch)
    data = _data(2 * CS, 30) + bytes(3 * CS) + _data(4 * CS, 31) + bytes(CS) + b"tail"
    vol, key, tag = _volume(tmp_path, {"sparse.bin": data})
    s = _Session(vol, key, tag)
    s.write("sparse.bin", 0, data[:1])
    tag = s.seal()
    assert load_sealed(vol, key, tag)[0].by_path()["sparse.bin"].chunks is not None
    out = tmp_path / "out"
    open_volume(vol, key, out, tag)
    assert (out / "sparse.bin").read_bytes() == data
    fd = os.open(out / "sparse.bin", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * CS  # the first zero chunks were not written
        assert os.lseek(fd, 2 * CS, os.SEEK_DATA) == 5 * CS
    finally:
        os.close(fd)


def _many_chunks_volume(tmp: Path) -> tuple[Path, VolumeKey, str, bytes]:
    """One chunked file of 23 chunks (zero runs in the middle, a short last chunk)."""
    data = _data(6 * CS, 50) + bytes(4 * CS) + _data(12 * CS, 51) + b"short tail"
    vol, key, tag = _volume(tmp, {"big.bin": data})
    s = _Session(vol, key, tag)
    s.write("big.bin", 0, data[:1])
    tag = s.seal()
    assert load_sealed(vol, key, tag)[0].by_path()["big.bin"].chunks is not None
    return vol, key, tag, data


@pytest.mark.parametrize(
    ("workers", "batch", "piece"), [(1, 2, None), (2, 3, None), (4, 1, None), (2, 4, 3 * CS)]
)
def test_open_volume_decrypts_chunked_files_in_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, batch: int, piece: int | None
) -> None:
    """Batches of chunks run in the pool's threads (never in the caller's), out of order, and
    give the same bytes and holes as one thread; write_piece splits the writes the same way."""
    monkeypatch.setattr(_chunked, "batch_chunks", lambda chunk_size: batch)
    vol, key, tag, data = _many_chunks_volume(tmp_path)
    caller = threading.get_ident()
    threads: set[int] = set()
    real = _chunked._open_chunk

    def recording(*args: object, **kwargs: object) -> None:
        threads.add(threading.get_ident())
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_chunked, "_open_chunk", recording)
    out = tmp_path / "out"
    open_volume(vol, key, out, tag, workers=workers, write_piece=piece)
    assert (out / "big.bin").read_bytes() == data
    assert threads and caller not in threads
    fd = os.open(out / "big.bin", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 6 * CS  # the zero chunks were not written
        assert os.lseek(fd, 6 * CS, os.SEEK_DATA) == 10 * CS
    finally:
        os.close(fd)
    assert verify_volume(vol, key, tag, workers=workers).ok


def test_chunk_batches_overlap_and_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches are decrypted at the same time (batch 0 waits until a later batch has
    started: it would time out in one thread), and at most 2 x workers batches are in flight."""
    monkeypatch.setattr(_chunked, "batch_chunks", lambda chunk_size: 2)
    vol, key, tag, data = _many_chunks_volume(tmp_path)
    m, _ = load_sealed(vol, key, tag)
    e = m.by_path()["big.bin"]
    later = threading.Event()
    real = _chunked._open_chunk

    def gated(dfd: int, opener: object, cid: bytes, i: int, *rest: object) -> None:
        if i >= 2:
            later.set()
        elif i == 0:
            assert later.wait(10), "no later batch ran while batch 0 was running"
        real(dfd, opener, cid, i, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(_chunked, "_open_chunk", gated)
    in_flight, peak = 0, 0
    lock = threading.Lock()

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            fut = super().submit(fn, *args, **kwargs)

            def done(_: object) -> None:
                nonlocal in_flight
                with lock:
                    in_flight -= 1

            fut.add_done_callback(done)
            return fut

    out = tmp_path / "big.out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with (
            Counting(2) as pool,
            _chunked.ChunkReader(vol, ChunkKeys(key.raw, m.volume_id), CS, key_cache=0) as reader,
        ):
            reader.decrypt(e, fd, executor=pool)
    finally:
        os.close(fd)
    assert out.read_bytes() == data
    assert 2 <= peak <= 4


@pytest.mark.parametrize("bad", [[17], [5, 17], [0, 22]])
def test_a_bad_chunk_in_any_batch_fails_the_open_and_names_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: list[int]
) -> None:
    """With the pool, the error is that of the first bad chunk in file order (whichever batch
    finished first), and nothing of the volume is left in the target."""
    monkeypatch.setattr(_chunked, "batch_chunks", lambda chunk_size: 2)
    vol, key, tag, _ = _many_chunks_volume(tmp_path)
    for i in bad:
        p = _chunk_path(vol, key, tag, "big.bin", i)
        good = p.read_bytes()
        p.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    out = tmp_path / "out"
    with pytest.raises(
        SignatureError, match=rf"'big.bin': chunk {bad[0]}: chunk object \w+ does not authenticate"
    ):
        open_volume(vol, key, out, tag, workers=2)
    assert list(out.iterdir()) == []
    report = verify_volume(vol, key, tag, workers=2)
    assert [(p.path, p.reason.split(":")[0]) for p in report.problems] == [("big.bin", f"chunk {bad[0]}")]


@given(st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_chunked_reads_of_any_range_match(tmp_path: Path, data: st.DataObject) -> None:
    vol = tmp_path / "vol"
    if not vol.exists():
        files = {"f.bin": _data(7 * CS + 11, 40), "auth/g.bin": _data(3 * CS, 41)}
        v, key, tag = _volume(tmp_path, files)
        s = _Session(v, key, tag)
        for p in files:
            s.write(p, 0, files[p][:1])
        tag = s.seal()
        (tmp_path / "state").write_text(f"{key.raw.hex()} {tag}")
    khex, tag = (tmp_path / "state").read_text().split()
    expect = {"f.bin": _data(7 * CS + 11, 40), "auth/g.bin": _data(3 * CS, 41)}
    path = data.draw(st.sampled_from(sorted(expect)))
    off = data.draw(st.integers(0, len(expect[path]) + CS))
    n = data.draw(st.integers(0, 4 * CS))
    with VolumeReader(vol, VolumeKey(bytes.fromhex(khex)), tag) as r:
        assert r.read_entry(r.entry(path), off, n) == expect[path][off : off + n]


# --- crashes ---------------------------------------------------------------------------------


def test_failure_in_the_middle_of_a_commit_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, key, tag, files = _chunked_volume(tmp_path)
    before = _objects(vol)
    s = _Session(vol, key, tag)
    real = _chunked._write_all
    calls = {"n": 0}

    def failing(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(_chunked, "_write_all", failing)
    fh = s.fs.open("/a.bin", os.O_RDWR)
    s.fs.write("/a.bin", b"z" * (4 * CS), 0, fh)
    with pytest.raises(OSError):
        s.fs.fsync("/a.bin", 0, fh)
    assert _objects(vol) == before  # the two objects written before the failure were removed
    assert _contents(vol, key, tag, tmp_path) == files
    monkeypatch.setattr(_chunked, "_write_all", real)
    # a commit that completed but whose seal never happened (the process died): unsealed
    # objects are ignored by readers of the previous tag and removed by the next seal
    s.fs.fsync("/a.bin", 0, fh)
    assert len(_objects(vol)) == len(before) + 4
    assert _contents(vol, key, tag, tmp_path) == files
    monkeypatch.setattr(
        volume_store, "write_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "EIO"))
    )
    with pytest.raises(OSError):
        s.seal()  # the new MANIFEST was never written
    assert load_sealed(vol, key)[1] == tag
    assert _contents(vol, key, tag, tmp_path) == files


# --- older versions --------------------------------------------------------------------------


def test_a_version_1_volume_written_through_a_session_becomes_version_3(tmp_path: Path) -> None:
    vol = tmp_path / "v1"
    shutil.copytree(ASSETS_V1, vol, ignore=shutil.ignore_patterns("README.md"))
    assert _version(vol) == 1
    s = _Session(vol, V1_KEY, V1_TAG)
    s.write("docs/a.txt", 6, b"V3")
    tag = s.seal()
    assert _version(vol) == 3
    got = _contents(vol, V1_KEY, tag, tmp_path)
    assert got["docs/a.txt"] == b"hello V3\n" and got["auth/b.txt"] == b"authenticated\n"
    m, _ = load_sealed(vol, V1_KEY, tag)
    assert m.by_path()["docs/a.txt"].chunks is not None and m.by_path()["auth/b.txt"].chunks is None


def test_a_session_that_changes_only_metadata_keeps_version_2(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path, {"f": b"data", "plain/p": b"unprotected"})
    s = _Session(vol, key, tag)
    s.fs.chmod("/f", 0o600)
    s.write("plain/p", 0, b"U")  # unprotected files stay single objects
    tag = s.seal()
    assert _version(vol) == 2
    assert _contents(vol, key, tag, tmp_path) == {"f": b"data", "plain/p": b"Unprotected"}


# --- writable tmpfs (/dev/shm) mounts ---------------------------------------------------------


def _shm_mount(vol: Path, key: VolumeKey, mnt: Path, tag: str) -> _TmpfsMount:
    m, tag = load_sealed(vol, key, tag)
    return _TmpfsMount(vol, key, mnt, tag, True, m, None, private_namespace=False)


def _ids(vol: Path, key: VolumeKey, tag: str, path: str) -> tuple[bytes, ...]:
    chunks = load_sealed(vol, key, tag)[0].by_path()[path].chunks
    assert chunks is not None
    return chunks


def _kept(old: tuple[bytes, ...], new: tuple[bytes, ...]) -> list[int]:
    return [i for i in range(min(len(old), len(new))) if old[i] == new[i]]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_unmount_reseals_only_the_changed_chunks_of_chunked_files(tmp_path: Path) -> None:
    vol, key, tag, files = _chunked_volume(tmp_path)  # a.bin, b.bin: 5 chunks each, chunked
    a0, b0 = _ids(vol, key, tag, "a.bin"), _ids(vol, key, tag, "b.bin")
    before = _objects(vol)
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    fd = os.open(mnt / "a.bin", os.O_RDWR)
    os.pwrite(fd, b"new", 2 * CS + 5)  # in place: chunk 2
    os.close(fd)
    with (mnt / "b.bin").open("ab") as f:  # appended: chunks 5 and 6 (10 bytes)
        f.write(_data(CS + 10, 13))
    (mnt / "c.bin").write_bytes(b"new file")  # new files: one object, as before
    tag1 = h.close()
    a1, b1 = _ids(vol, key, tag1, "a.bin"), _ids(vol, key, tag1, "b.bin")
    assert _kept(a0, a1) == [0, 1, 3, 4] and len(a1) == 5
    assert _kept(b0, b1) == [0, 1, 2, 3, 4] and len(b1) == 7 and not set(b1[5:]) & set(b0)
    written = _new_bytes(before, _objects(vol))
    c_obj = 8 + TAG_SIZE
    assert written == (CS + TAG_SIZE) + (CS + TAG_SIZE) + (10 + TAG_SIZE) + c_obj
    want_a = bytearray(files["a.bin"])
    want_a[2 * CS + 5 : 2 * CS + 8] = b"new"
    want = {"a.bin": bytes(want_a), "b.bin": files["b.bin"] + _data(CS + 10, 13), "c.bin": b"new file"}
    assert _contents(vol, key, tag1, tmp_path) == want
    assert not verify_volume(vol, key, tag1).unreferenced_objects  # replaced chunk 2 deleted

    # rewritten with the same bytes (a new inode, a new mtime): no chunk sealed anew; a
    # truncation inside chunk 2: chunks 0 and 1 kept, chunk 2 (shorter) sealed anew
    before = _objects(vol)
    h = _shm_mount(vol, key, mnt, tag1)
    (mnt / "b.bin").write_bytes(want["b.bin"])
    os.truncate(mnt / "a.bin", 2 * CS + 7)
    tag2 = h.close()
    assert _ids(vol, key, tag2, "b.bin") == b1
    a2 = _ids(vol, key, tag2, "a.bin")
    assert _kept(a1, a2) == [0, 1] and len(a2) == 3
    assert _new_bytes(before, _objects(vol)) == 7 + TAG_SIZE
    want["a.bin"] = want["a.bin"][: 2 * CS + 7]
    assert _contents(vol, key, tag2, tmp_path) == want


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_unmount_never_keeps_a_sealed_chunk_that_no_longer_authenticates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk object changed in storage during the session is never kept as "unchanged": the
    comparison authenticates it first, and the mounted (authentic) bytes are sealed anew."""
    vol, key, tag, files = _chunked_volume(tmp_path)
    a0 = _ids(vol, key, tag, "a.bin")
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    p = _chunk_path(vol, key, tag, "a.bin", 3)
    good = p.read_bytes()
    p.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # after the decryption into /dev/shm
    fd = os.open(mnt / "a.bin", os.O_RDWR)
    os.pwrite(fd, b"x", CS)  # chunk 1 changed in the mounted copy
    os.close(fd)
    with caplog.at_level(logging.WARNING, logger="confide.volume.mount"):
        tag1 = h.close()
    assert "1 sealed chunk(s) of 'a.bin' failed authentication" in caplog.text
    assert _kept(a0, _ids(vol, key, tag1, "a.bin")) == [0, 2, 4]
    want = bytearray(files["a.bin"])
    want[CS] = ord("x")
    assert _contents(vol, key, tag1, tmp_path)["a.bin"] == bytes(want)


# --- a real FUSE mount -----------------------------------------------------------------------

FUSE_WHY = fuse_usable()


@pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE unavailable: {FUSE_WHY}")
def test_fuse_fsync_of_a_small_change_writes_one_chunk(tmp_path: Path) -> None:
    big = _data(100 * CS, 21)
    vol, key, tag = _volume(tmp_path, {"db.sqlite": big})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    expect = bytearray(big)
    for session in range(2):
        with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True) as h:
            before = _objects(vol)
            fd = os.open(mnt / "db.sqlite", os.O_RDWR)
            try:
                os.pwrite(fd, b"txn", 50 * CS + 1)
                os.fsync(fd)
                written = _new_bytes(before, _objects(vol))
            finally:
                os.close(fd)
            tag = h.close()
        expect[50 * CS + 1 : 50 * CS + 4] = b"txn"
        # session 0 converts the version-2 object into chunks; session 1 writes one chunk
        assert written == (len(big) + 100 * TAG_SIZE if session == 0 else CS + TAG_SIZE)
    assert _contents(vol, key, tag, tmp_path) == {"db.sqlite": bytes(expect)}


@pytest.mark.skipif(FUSE_WHY is not None, reason=f"FUSE unavailable: {FUSE_WHY}")
def test_fuse_reads_of_chunked_files_are_authenticated(tmp_path: Path) -> None:
    """The FUSE read path (VolumeReader's ChunkReader, decrypting into libfuse's buffer): a
    chunked file reads back whole and across chunk boundaries; in a file whose chunks 3 and 4
    were swapped, the reads that need them are EIO, never data."""
    vol, key, tag, files = _chunked_volume(tmp_path)
    p, q = _chunk_path(vol, key, tag, "b.bin", 3), _chunk_path(vol, key, tag, "b.bin", 4)
    a, b = p.read_bytes(), q.read_bytes()
    p.write_bytes(b)
    q.write_bytes(a)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse"):
        fd = os.open(mnt / "a.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, CS + 7, 2 * CS - 3) == files["a.bin"][2 * CS - 3 : 3 * CS + 4]
        finally:
            os.close(fd)
        assert (mnt / "a.bin").read_bytes() == files["a.bin"]
        fd = os.open(mnt / "b.bin", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, CS, 3 * CS)
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)
        with pytest.raises(OSError) as ei:
            (mnt / "b.bin").read_bytes()
        assert ei.value.errno == errno.EIO


# --- writable tmpfs (/dev/shm) mounts: one-object files, unchanged contents ------------------

ONE = {
    "big.bin": _data(5 * CS + 100, 60),
    "auth/a.bin": _data(3 * CS, 61),
    "small.txt": b"small\n",
    "keep.bin": _data(2 * CS, 62),
    "plain/u.bin": _data(3 * CS, 63),
}


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_unmount_converts_changed_one_object_files_to_chunks_as_fuse_does(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path, ONE)
    assert _version(vol) == 2
    m0 = load_sealed(vol, key, tag)[0].by_path()
    assert all(m0[p].chunks is None for p in ONE)
    twin = tmp_path / "twin"  # the same changes through the FUSE operations, for comparison
    shutil.copytree(vol, twin)
    changes: list[tuple[str, int, bytes]] = [
        ("big.bin", 2 * CS + 1, b"X"),
        ("auth/a.bin", 0, b"A"),
        ("small.txt", 6, b"+"),
    ]
    new_files = {"new.bin": _data(2 * CS + 3, 64), "plain/new.txt": b"clear"}
    before = _objects(vol)
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    for path, off, data in changes:
        _pwrite(mnt / path, off, data)
    for path, data in new_files.items():
        (mnt / path).write_bytes(data)
    tag1 = h.close()
    assert _version(vol) == 3
    m1 = load_sealed(vol, key, tag1)[0].by_path()
    s = _Session(twin, key, tag)
    for path, off, data in changes:
        s.write(path, off, data)
    for path, data in new_files.items():
        s.create(path, data)
    f1 = load_sealed(twin, key, s.seal())[0].by_path()
    layout = {p: (e.region, None if e.chunks is None else len(e.chunks)) for p, e in m1.items()}
    assert layout == {p: (e.region, None if e.chunks is None else len(e.chunks)) for p, e in f1.items()}
    assert layout["big.bin"] == (Region.ENCRYPTED, 6) and layout["auth/a.bin"] == (Region.AUTHENTICATED, 3)
    assert layout["small.txt"] == (Region.ENCRYPTED, 1) and layout["new.bin"] == (Region.ENCRYPTED, 3)
    assert m1["plain/new.txt"].chunks is None and m1["plain/new.txt"].region is Region.UNPROTECTED
    assert m1["keep.bin"] == m0["keep.bin"] and m1["plain/u.bin"] == m0["plain/u.bin"]  # untouched
    # every chunk of a converted file written once (one object per chunk); nothing else
    converted = (5 * CS + 100 + 6 * TAG_SIZE) + (3 * CS + 3 * TAG_SIZE) + (7 + TAG_SIZE)
    assert _new_bytes(before, _objects(vol)) == converted + (2 * CS + 3 + 3 * TAG_SIZE) + len(b"clear")
    want = dict(ONE, **new_files)
    for path, off, data in changes:
        b = bytearray(want[path])
        b[off : off + len(data)] = data
        want[path] = bytes(b)
    assert _contents(vol, key, tag1, tmp_path) == want
    assert not verify_volume(vol, key, tag1).unreferenced_objects  # the one objects were deleted

    # the second unmount after a small change re-seals only the changed chunk
    before = _objects(vol)
    h = _shm_mount(vol, key, mnt, tag1)
    _pwrite(mnt / "big.bin", 4 * CS + 7, b"Y")
    tag2 = h.close()
    assert _kept(m1["big.bin"].chunks or (), _ids(vol, key, tag2, "big.bin")) == [0, 1, 2, 3, 5]
    assert _new_bytes(before, _objects(vol)) == CS + TAG_SIZE
    b = bytearray(want["big.bin"])
    b[4 * CS + 7] = ord("Y")
    want["big.bin"] = bytes(b)
    assert _contents(vol, key, tag2, tmp_path) == want


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_unmount_keeps_the_objects_of_files_whose_contents_did_not_change(tmp_path: Path) -> None:
    """touch, chmod or a rewrite with the same bytes: the file is compared with its sealed
    object (protected: authenticated first), which is kept; the volume stays version 2."""
    vol, key, tag = _volume(tmp_path, ONE)
    m0 = load_sealed(vol, key, tag)[0].by_path()
    before = _objects(vol)
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    os.utime(mnt / "big.bin")  # now
    os.utime(mnt / "plain/u.bin")
    os.chmod(mnt / "small.txt", 0o600)
    (mnt / "keep.bin").unlink()
    (mnt / "keep.bin").write_bytes(ONE["keep.bin"])  # a new inode, the same bytes
    tag1 = h.close()
    assert tag1 != tag and _version(vol) == 2  # the times and the mode changed
    m1 = load_sealed(vol, key, tag1)[0].by_path()
    assert _objects(vol) == before  # nothing written, nothing deleted
    for p in ONE:
        assert (m1[p].file_id, m1[p].chunks) == (m0[p].file_id, None), p
    assert m1["small.txt"].mode == 0o600
    assert _contents(vol, key, tag1, tmp_path) == ONE

    # negative twin: one byte changed, size and mtime restored: found by the comparison
    h = _shm_mount(vol, key, mnt, tag1)
    for p in ("big.bin", "plain/u.bin"):
        st = (mnt / p).stat()
        _pwrite(mnt / p, len(ONE[p]) - 1, bytes([ONE[p][-1] ^ 1]))
        os.utime(mnt / p, ns=(st.st_atime_ns, st.st_mtime_ns))
    tag2 = h.close()
    m2 = load_sealed(vol, key, tag2)[0].by_path()
    assert m2["big.bin"].chunks is not None and m2["plain/u.bin"].file_id != m1["plain/u.bin"].file_id
    assert m2["keep.bin"] == m1["keep.bin"]
    got = _contents(vol, key, tag2, tmp_path)
    assert (
        got["big.bin"][-1] == ONE["big.bin"][-1] ^ 1 and got["plain/u.bin"][-1] == ONE["plain/u.bin"][-1] ^ 1
    )


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_unmount_compares_with_the_objects_as_they_are_at_the_seal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Objects changed in storage during the session are never kept as "unchanged": the
    unprotected object differs from the mounted copy, the protected one no longer
    authenticates (logged); both files are sealed anew from the mounted copies."""
    vol, key, tag = _volume(tmp_path, ONE)
    m0 = load_sealed(vol, key, tag)[0].by_path()
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    for p in ("plain/u.bin", "big.bin"):
        obj = vol / OBJECTS_DIR / m0[p].file_id.hex()
        raw = bytearray(obj.read_bytes())
        raw[CS + 3] ^= 0x20
        obj.write_bytes(bytes(raw))
        os.utime(mnt / p)  # touched by the application, same bytes
    with caplog.at_level(logging.WARNING, logger="confide.volume.mount"):
        tag1 = h.close()
    assert "sealed object of 'big.bin' failed authentication" in caplog.text
    m1 = load_sealed(vol, key, tag1)[0].by_path()
    assert m1["plain/u.bin"].file_id != m0["plain/u.bin"].file_id and m1["big.bin"].chunks is not None
    assert _contents(vol, key, tag1, tmp_path) == ONE


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shm_a_file_in_place_of_a_symlink_gets_its_rule_region(tmp_path: Path) -> None:
    """A path that was a symlink (entries of symlinks and directories carry the unprotected
    region byte) and is now a file gets the region of its rule, not the symlink's."""
    vol, key, tag = _volume(tmp_path, {"f": b"f"})
    s = _Session(vol, key, tag)
    s.fs.symlink("/lnk", "f")
    tag = s.seal()
    mnt = tmp_path / "mnt"
    h = _shm_mount(vol, key, mnt, tag)
    (mnt / "lnk").unlink()
    (mnt / "lnk").write_bytes(b"secret")
    tag1 = h.close()
    e = load_sealed(vol, key, tag1)[0].by_path()["lnk"]
    assert e.region is Region.ENCRYPTED and e.chunks is not None
    assert all(b"secret" not in (vol / OBJECTS_DIR / c.hex()).read_bytes() for c in e.chunks)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_interrupted_shm_unmount_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the converted chunks are written (their objects removed) or while the
    manifest is written (the new objects stay unreferenced until the next seal): the previous
    version stays current and readable."""
    vol, key, tag = _volume(tmp_path, ONE)
    before = _objects(vol)
    mnt = tmp_path / "mnt"
    real = _chunked._write_all
    calls = {"n": 0}

    def failing(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(_chunked, "_write_all", failing)
    h = _shm_mount(vol, key, mnt, tag)
    _pwrite(mnt / "big.bin", 0, b"Z")
    with pytest.raises(StorageError, match="No space"):  # an OSError, reported as StorageError
        h.close()
    monkeypatch.setattr(_chunked, "_write_all", real)
    assert _objects(vol) == before and load_sealed(vol, key)[1] == tag
    assert _contents(vol, key, tag, tmp_path) == ONE

    def no_manifest(*a: object, **k: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(volume_store, "write_atomic", no_manifest)
    h = _shm_mount(vol, key, mnt, tag)
    _pwrite(mnt / "big.bin", 0, b"Z")
    with pytest.raises(StorageError, match="Input/output"):
        h.close()
    monkeypatch.undo()
    assert load_sealed(vol, key)[1] == tag and len(_objects(vol)) == len(before) + 6
    assert _contents(vol, key, tag, tmp_path) == ONE
    h = _shm_mount(vol, key, mnt, tag)
    _pwrite(mnt / "small.txt", 0, b"S")
    tag1 = h.close()
    report = verify_volume(vol, key, tag1)
    assert report.ok and report.unreferenced_objects == []  # removed by the next seal


def test_fuse_commit_keeps_an_unprotected_object_with_the_same_bytes(tmp_path: Path) -> None:
    vol, key, tag = _volume(tmp_path, ONE)
    m0 = load_sealed(vol, key, tag)[0].by_path()
    before = _objects(vol)
    s = _Session(vol, key, tag)
    s.write("plain/u.bin", CS, ONE["plain/u.bin"][CS : CS + 10])  # the same bytes
    assert _objects(vol) == before
    s.write("plain/u.bin", CS, b"different!")  # negative twin
    assert _new_bytes(before, _objects(vol)) == len(ONE["plain/u.bin"])
    s.write("plain/u.bin", CS, ONE["plain/u.bin"][CS : CS + 10])  # the sealed bytes again: compared with the
    # session's object, which differs: rewritten once more (the superseded one deleted)
    tag1 = s.seal()
    m1 = load_sealed(vol, key, tag1)[0].by_path()
    assert m1["plain/u.bin"].file_id != m0["plain/u.bin"].file_id and m1["plain/u.bin"].chunks is None
    assert _contents(vol, key, tag1, tmp_path) == ONE
    assert not verify_volume(vol, key, tag1).unreferenced_objects

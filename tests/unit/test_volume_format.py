"""The pure volume format: chunk sealing, manifest encoding, hostile manifests and paths."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confide.errors import ParseError, SignatureError
from confide.volume.format import (
    MANIFEST_HEADER_SIZE,
    TAG_SIZE,
    ChunkCodec,
    Entry,
    EntryKind,
    Manifest,
    ManifestState,
    Region,
    RegionRule,
    check_path,
    decode_manifest,
    encode_manifest,
    encode_manifest_body,
    parse_manifest_body,
    region_for,
    volume_tag,
)

KEY = bytes(range(32))
VID = b"V" * 16


def _manifest(entries: tuple[Entry, ...] = (), rules: tuple[RegionRule, ...] = ()) -> Manifest:
    return Manifest(VID, 3, ManifestState.SEALED, 1024, Region.ENCRYPTED, rules, entries)


ENTRIES = (
    Entry("a", EntryKind.DIR, 0o755, 1, 2),
    Entry("a/f", EntryKind.FILE, 0o644, 0, 0, Region.ENCRYPTED, b"\x01" * 16, 5, b"\x02" * 32),
    Entry("a/l", EntryKind.SYMLINK, 0o777, target="../x"),
    Entry("é/ü", EntryKind.FILE, 0o600, 0, 0, Region.AUTHENTICATED, b"\x03" * 16, 0, b"\x04" * 32),
)


@pytest.mark.parametrize("region", [Region.ENCRYPTED, Region.AUTHENTICATED])
def test_chunk_round_trip_and_binding(region: Region) -> None:
    codec = ChunkCodec(KEY, VID, b"F" * 16, region)
    rec = codec.seal(b"hello world", 7, False)
    assert len(rec) == 11 + TAG_SIZE
    assert codec.open(rec, 7, False) == b"hello world"
    # negative twins: other index, other last flag, other file, other volume, other key
    with pytest.raises(SignatureError):
        codec.open(rec, 8, False)
    with pytest.raises(SignatureError):
        codec.open(rec, 7, True)
    with pytest.raises(SignatureError):
        ChunkCodec(KEY, VID, b"G" * 16, region).open(rec, 7, False)
    with pytest.raises(SignatureError):
        ChunkCodec(KEY, b"W" * 16, b"F" * 16, region).open(rec, 7, False)
    with pytest.raises(SignatureError):
        ChunkCodec(bytes(32), VID, b"F" * 16, region).open(rec, 7, False)


def test_encrypted_chunks_hide_plaintext_and_authenticated_ones_do_not() -> None:
    enc = ChunkCodec(KEY, VID, b"F" * 16, Region.ENCRYPTED).seal(b"secret-bytes", 0, True)
    auth = ChunkCodec(KEY, VID, b"F" * 16, Region.AUTHENTICATED).seal(b"secret-bytes", 0, True)
    assert b"secret" not in enc
    assert auth.startswith(b"secret-bytes")
    # the region is bound too: an authenticated record does not open as encrypted
    with pytest.raises(SignatureError):
        ChunkCodec(KEY, VID, b"F" * 16, Region.ENCRYPTED).open(auth, 0, True)


def test_manifest_round_trip_is_deterministic() -> None:
    m = _manifest(ENTRIES, rules=(RegionRule("a", Region.AUTHENTICATED),))
    data = encode_manifest(m, KEY)
    assert encode_manifest(m, KEY) == data
    assert decode_manifest(data, KEY) == m
    assert volume_tag(data) != volume_tag(encode_manifest(_manifest(ENTRIES[:1]), KEY))
    assert b"a/f" not in data  # the body is encrypted


def test_manifest_wrong_key_or_any_flip_is_rejected() -> None:
    data = encode_manifest(_manifest(ENTRIES), KEY)
    with pytest.raises(SignatureError):
        decode_manifest(data, bytes(32))
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises((ParseError, SignatureError)):
            decode_manifest(bytes(bad), KEY)


_VALID = encode_manifest(_manifest(ENTRIES), KEY)


@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: _VALID[:12] + b),  # past magic/version/state
        st.binary(max_size=400).map(lambda b: _VALID[:MANIFEST_HEADER_SIZE] + b),
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)).map(
            lambda t: _VALID[: t[0]] + bytes([_VALID[t[0]] ^ t[1]]) + _VALID[t[0] + 1 :]
        ),
    )
)
@settings(max_examples=400)
def test_arbitrary_manifest_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises((ParseError, SignatureError)):
        decode_manifest(data, KEY)


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_arbitrary_manifest_body_raises_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_manifest_body(data, VID, 1, ManifestState.SEALED)


@given(st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_authenticated_body_raises_only_parse_error(data: st.DataObject) -> None:
    """Even bytes that authenticate (a key holder wrote them) are parsed defensively."""
    body = bytearray(encode_manifest_body(_manifest(ENTRIES)))
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
        parse_manifest_body(bytes(body), VID, 1, ManifestState.SEALED)


def _body_with(entries: tuple[Entry, ...]) -> bytes:
    return encode_manifest_body(_manifest(entries))


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", ".", "", "a\x00b", "a/", "x" * 256, "a\nb"],
)
def test_hostile_paths_are_rejected(path: str) -> None:
    with pytest.raises(ParseError):
        check_path(path)
    body = _body_with((Entry(path, EntryKind.DIR, 0o755),))
    with pytest.raises(ParseError):
        parse_manifest_body(body, VID, 1, ManifestState.SEALED)


@pytest.mark.parametrize("path", ["a", "a/b", "données/日本語 ✓.txt", ".hidden", "a..b", "x" * 255])
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert check_path(path) == path
    m = parse_manifest_body(_body_with((Entry(path, EntryKind.DIR, 0o755),)), VID, 1, ManifestState.SEALED)
    assert m.entries[0].path == path


def test_duplicate_unsorted_and_symlink_parent_manifests_are_rejected() -> None:
    d = Entry("a", EntryKind.DIR, 0o755)
    for entries in [
        (d, d),  # duplicate
        (Entry("b", EntryKind.DIR, 0o755), d),  # unsorted
        (Entry("a", EntryKind.SYMLINK, 0o777, target="/etc"), Entry("a/passwd", EntryKind.DIR, 0o755)),
        (ENTRIES[1], Entry("a/f/g", EntryKind.DIR, 0o755)),  # below a file
    ]:
        with pytest.raises(ParseError):
            parse_manifest_body(_body_with(entries), VID, 1, ManifestState.SEALED)
    # positive twin
    parse_manifest_body(_body_with((d, Entry("a/b", EntryKind.DIR, 0o755))), VID, 1, ManifestState.SEALED)


def test_body_limits() -> None:
    body = bytearray(_body_with(()))
    struct.pack_into("<I", body, 0, 1)  # chunk size 1
    with pytest.raises(ParseError, match="chunk_size"):
        parse_manifest_body(bytes(body), VID, 1, ManifestState.SEALED)
    huge = _body_with(())[:-4] + struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(ParseError, match="entries"):
        parse_manifest_body(huge, VID, 1, ManifestState.SEALED)
    bad_mode = Entry("a", EntryKind.DIR, 0o170755)
    with pytest.raises(ParseError, match="mode"):
        parse_manifest_body(_body_with((bad_mode,)), VID, 1, ManifestState.SEALED)


def test_header_errors_name_the_field() -> None:
    data = bytearray(encode_manifest(_manifest(), KEY))
    data[8] = 9  # version
    with pytest.raises(ParseError, match="version"):
        decode_manifest(bytes(data), KEY)
    with pytest.raises(ParseError, match="magic"):
        decode_manifest(b"X" * MANIFEST_HEADER_SIZE, KEY)
    with pytest.raises(ParseError):
        decode_manifest(encode_manifest(_manifest(), KEY) + b"\x00", KEY)


def test_region_rules_longest_component_prefix_wins() -> None:
    rules = [RegionRule("data", Region.AUTHENTICATED), RegionRule("data/secret", Region.ENCRYPTED)]
    assert region_for("data/x", rules, Region.UNPROTECTED) is Region.AUTHENTICATED
    assert region_for("data/secret/k", rules, Region.UNPROTECTED) is Region.ENCRYPTED
    assert region_for("data", rules, Region.UNPROTECTED) is Region.AUTHENTICATED
    assert region_for("database", rules, Region.UNPROTECTED) is Region.UNPROTECTED


def test_nonces_differ_per_chunk_and_keys_per_file() -> None:
    a = ChunkCodec(KEY, VID, os.urandom(16), Region.ENCRYPTED)
    b = ChunkCodec(KEY, VID, os.urandom(16), Region.ENCRYPTED)
    zero = bytes(64)
    assert a.seal(zero, 0, False) != a.seal(zero, 1, False)
    assert a.seal(zero, 0, False) != b.seal(zero, 0, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uid": 2**32}, "got uid 4294967296"),
        ({"gid": -1}, "got gid -1"),
        ({"mode": 0o10000}, "got mode 4096, expected 0..4095"),
    ],
)
def test_encoding_an_owner_or_mode_out_of_range_is_a_parse_error(
    change: dict[str, int], message: str
) -> None:
    """The encoder checks the u32 fields (and mode <= 0o7777, which the parser requires) before
    packing them: a ParseError naming the entry, not struct.error (fuzz2 campaign)."""
    entry = Entry("a", EntryKind.DIR, 0o755, 1, 2)
    with pytest.raises(ParseError, match=f"entries\\[0\\]\\.{next(iter(change))}: 'a': {message}"):
        encode_manifest(_manifest((dataclasses.replace(entry, **change),)), KEY)
    assert decode_manifest(encode_manifest(_manifest((entry,)), KEY), KEY).entries == (entry,)


def test_the_control_character_class_is_unicode_category_cc() -> None:
    import unicodedata

    from confide.volume.format import _CONTROL

    for cp in range(0x110000):
        c = chr(cp)
        assert (_CONTROL.search(c) is not None) == (unicodedata.category(c) == "Cc"), hex(cp)

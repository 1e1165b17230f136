"""C2SP tlog-tiles paths, geometry and the serving function."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.ledger.auditor import parse_bundle
from confide.ledger.merkle import HASH_SIZE, hash_leaf, mth
from confide.ledger.note import NoteSigner
from confide.ledger.serve import encode_bundle, serve
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.tiles import TileId, format_tile_path, parse_tile_path, tile_width
from confide.ledger.witness import parse_add_checkpoint


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (TileId(0, 1234067), "tile/0/x001/x234/067"),
        (TileId(0, 0), "tile/0/000"),
        (TileId(2, 5, 17), "tile/2/005.p/17"),
        (TileId(-1, 1000, 1), "tile/entries/x001/000.p/1"),
        (TileId(63, 999), "tile/63/999"),
    ],
)
def test_tile_paths_round_trip(tile: TileId, path: str) -> None:
    assert format_tile_path(tile) == path
    assert parse_tile_path(path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",
        "tile/0/x000/001",  # superfluous leading element
        "tile/00/001",
        "tile/64/001",
        "tile/0/001.p/256",
        "tile/0/001.p/0",
        "tile/0/001.p/012",
        "tile/0/001/",
        "tile/entries/001.p/",
        "tile/0/x001",
        "/tile/0/001",
        "checkpoint/x",
    ],
)
def test_bad_tile_paths(path: str) -> None:
    with pytest.raises(ParseError):
        parse_tile_path(path)


def test_spec_example_geometry_for_70000() -> None:
    # tlog-tiles: 273 full level-0 tiles, a partial of 112, one full level-1 tile, a partial
    # of 17, and a level-2 partial of 1.
    size = 70_000
    assert [tile_width(0, i, size) for i in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [tile_width(1, i, size) for i in (0, 1, 2)] == [256, 17, 0]
    assert [tile_width(2, 0, size), tile_width(3, 0, size)] == [1, 0]
    assert tile_width(1, 0, 256) == 1


def test_bundles_round_trip_and_reject_truncation() -> None:
    entries = [b"", b"a", b"x" * 300]
    data = encode_bundle(entries)
    assert data[:2] == b"\x00\x00"
    assert parse_bundle(data) == entries
    for cut in (1, len(data) - 1):
        with pytest.raises(ParseError):
            parse_bundle(data[:cut])


def test_serve_publishes_exactly_the_checkpointed_tree(tmp_path: Path) -> None:
    conn = connect(tmp_path / "l.db")
    Ledger.init_schema(conn)
    entries = [f"e{i}".encode() for i in range(600)]
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[:300])
    assert serve(conn, "checkpoint") is None  # nothing signed yet, nothing published
    signer = NoteSigner.generate("example.com/log")
    note = Ledger().sign_checkpoint(conn, signer)
    with write_transaction(conn):
        Ledger().append_batch(conn, entries[300:])  # appended, not yet checkpointed
    cp = serve(conn, "checkpoint")
    assert cp is not None and cp.body == note and not cp.immutable
    assert cp.content_type == "text/plain; charset=utf-8"
    full = serve(conn, "tile/0/000")
    assert full is not None and full.immutable
    assert full.body == b"".join(hash_leaf(e) for e in entries[:256])
    partial = serve(conn, "tile/0/001.p/44")
    assert partial is not None and partial.body == b"".join(hash_leaf(e) for e in entries[256:300])
    shorter = serve(conn, "tile/0/001.p/10")  # partial tile of an earlier size
    assert shorter is not None and len(shorter.body) == 10 * HASH_SIZE
    assert serve(conn, "tile/0/001") is None  # full tile 1 exists in the DB, not in the checkpoint
    assert serve(conn, "tile/0/001.p/45") is None
    level1 = serve(conn, "tile/1/000.p/1")  # one hash per 256 leaves: size 300 -> width 1
    assert level1 is not None and level1.body == mth(entries[:256])
    assert serve(conn, "tile/1/000.p/2") is None
    bundle = serve(conn, "tile/entries/001.p/44")
    assert bundle is not None and parse_bundle(bundle.body) == entries[256:300]
    assert serve(conn, "tile/0/../../etc") is None
    Ledger().sign_checkpoint(conn, signer)
    l1 = serve(conn, "tile/1/000.p/2")
    assert l1 is not None and l1.body[:HASH_SIZE] == mth(entries[:256])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="tile/entrisx0123456789.p", max_size=40) | st.text(max_size=40))
def test_tile_path_parser_only_raises_parse_error(path: str) -> None:
    try:
        tile = parse_tile_path(path)
    except ParseError:
        return
    assert format_tile_path(tile) == path  # whatever parses is the one canonical spelling


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_bundle_and_witness_request_parsers_only_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_bundle(data)
    with contextlib.suppress(ParseError):
        parse_add_checkpoint(b"old 1\n" + data)
    with contextlib.suppress(ParseError):
        parse_add_checkpoint(data)

"""C2SP tlog-tiles resources served from the ledger store, as a pure function of the database.

``serve(conn, path)`` answers ``checkpoint``, ``tile/<L>/<N>[.p/<W>]`` and
``tile/entries/<N>[.p/<W>]`` for the tree of the latest signed checkpoint (nothing beyond it
is published), or ``None`` (HTTP 404). The HTTP layer adds the headers the spec asks for:
``text/plain; charset=utf-8`` and no caching for the checkpoint, long-lived caching for
tiles (``Resource.immutable``).

Entry bundles reveal entry contents: the CAS must gate ``tile/entries/...`` by who may read
which entries (issue #5, "who sees what"); tiles and checkpoints are public.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from confide.errors import ParseError
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn
from confide.ledger.note import parse_note
from confide.ledger.store import Ledger
from confide.ledger.tiles import TILE_WIDTH, TileId, parse_tile_path, tile_width

__all__ = ["CHECKPOINT_PATH", "Resource", "encode_bundle", "serve"]

CHECKPOINT_PATH = "checkpoint"


@dataclass(frozen=True)
class Resource:
    content_type: str
    body: bytes
    immutable: bool


def encode_bundle(entries: list[bytes]) -> bytes:
    """tlog-tiles entry bundle: each entry prefixed with its big-endian uint16 length."""
    return b"".join(struct.pack(">H", len(e)) + e for e in entries)


def _published_size(conn: Conn) -> tuple[bytes, int] | None:
    note = Ledger.latest_checkpoint(conn)
    if note is None:
        return None
    return note, Checkpoint.from_text(parse_note(note).text).size


def serve(conn: Conn, path: str) -> Resource | None:
    published = _published_size(conn)
    if published is None:
        return None
    note, size = published
    if path == CHECKPOINT_PATH:
        return Resource("text/plain; charset=utf-8", note, immutable=False)
    try:
        tile: TileId = parse_tile_path(path)
    except ParseError:
        return None
    level = 0 if tile.is_entries else tile.level
    available = tile_width(level, tile.index, size)
    # A full tile is served once complete; a partial one for any width the tree covers.
    if available == 0 or (tile.width == TILE_WIDTH and available != TILE_WIDTH) or tile.width > available:
        return None
    if not tile.is_entries:
        return Resource(
            "application/octet-stream", Ledger.read_tile(conn, level, tile.index, tile.width), True
        )
    start = tile.index * TILE_WIDTH
    rows = Ledger.entries(conn, start, start + tile.width)
    # A hole (deleted row) is served as it is: the auditor names the missing entry.
    return Resource("application/octet-stream", encode_bundle([data for _, data in rows]), True)

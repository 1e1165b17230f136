"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): tile geometry, paths and a node source.

A tile at level ``L``, index ``N`` holds up to 256 consecutive hashes of the tree "row"
at height ``8 * L``: entry ``i`` is ``MTH(D[(N*256 + i) * 256**L : (N*256 + i + 1) * 256**L])``.
For a tree of size ``s`` the row at level ``L`` has ``s >> (8 * L)`` hashes; the last tile
of a row is partial (``.p/<W>``) unless the row length is a multiple of 256.

Any complete subtree of height ``h`` is computed from ``2**(h % 8)`` consecutive hashes of
one tile at level ``h // 8``, so a proof needs O(log n) tile reads and at most 255 hash
operations per tile level.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from confide.errors import ParseError, StorageError
from confide.ledger.merkle import HASH_SIZE, hash_children

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileId",
    "TileReader",
    "TiledNodes",
    "format_tile_path",
    "parse_tile_path",
    "tile_width",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes, 8,192 bytes
MAX_LEVEL = 63


@dataclass(frozen=True)
class TileId:
    """``level`` is a tree level (0..63) or ``-1`` for an entry bundle; ``width`` 1..256."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def is_entries(self) -> bool:
        return self.level == -1

    @property
    def path(self) -> str:
        return format_tile_path(self)


def tile_width(level: int, index: int, size: int) -> int:
    """Width of tile ``(level, index)`` in a tree of ``size`` leaves (0 if it does not exist)."""
    row = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, row - index * TILE_WIDTH))


def _format_index(index: int) -> str:
    # Zero-padded 3-digit elements; all but the last prefixed with "x".
    parts = [f"{index % 1000:03d}"]
    index //= 1000
    while index > 0:
        parts.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(parts))


def format_tile_path(tile: TileId) -> str:
    level = "entries" if tile.is_entries else str(tile.level)
    suffix = "" if tile.width == TILE_WIDTH else f".p/{tile.width}"
    return f"tile/{level}/{_format_index(tile.index)}{suffix}"


_PATH = re.compile(r"tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?")


def parse_tile_path(path: str) -> TileId:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` strictly."""
    m = _PATH.fullmatch(path)
    if m is None:
        raise ParseError(f"got {path[:80]!r}, expected tile/<L>/<N>[.p/<W>]", structure="tile path")
    level_text, index_text, width_text = m.groups()
    level = -1 if level_text == "entries" else int(level_text)
    if level > MAX_LEVEL:
        raise ParseError(f"level {level}, expected 0..{MAX_LEVEL}", structure="tile path")
    elements = index_text.split("/")
    index = 0
    for element in elements:
        index = index * 1000 + int(element.lstrip("x"))
    width = TILE_WIDTH if width_text is None else int(width_text)
    if width_text is not None and not 1 <= width < TILE_WIDTH:
        raise ParseError(f"partial width {width}, expected 1..255", structure="tile path")
    tile = TileId(level, index, width)
    if format_tile_path(tile) != path:  # e.g. a superfluous x000/ element
        raise ParseError(f"got {path[:80]!r}, expected {format_tile_path(tile)!r}", structure="tile path")
    return tile


class TileReader(Protocol):
    """Returns the first ``width`` hashes (``32 * width`` bytes) of tile ``(level, index)``."""

    def read_tile(self, level: int, index: int, width: int) -> bytes: ...


class TiledNodes:
    """:class:`~confide.ledger.merkle.NodeSource` for a tree of ``size`` leaves over tiles.

    Keeps at most ``cache_tiles`` tiles (bounded memory, independent of the log size).
    """

    def __init__(self, reader: TileReader, size: int, *, cache_tiles: int = 64) -> None:
        self.reader = reader
        self.size = size
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_tiles = cache_tiles

    def tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        width = tile_width(level, index, self.size)
        if width == 0:
            raise StorageError(f"tile {level}/{index} does not exist in a tree of size {self.size}")
        data = self.reader.read_tile(level, index, width)
        if len(data) != width * HASH_SIZE:
            raise StorageError(f"tile {level}/{index}: got {len(data)} bytes, expected {width * HASH_SIZE}")
        self._cache[key] = data
        if len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)
        return data

    def node(self, height: int, index: int) -> bytes:
        level, rel = divmod(height, TILE_HEIGHT)
        count = 1 << rel
        first = index << rel
        if (first + count) << (TILE_HEIGHT * level) > self.size:
            raise StorageError(f"node {height}/{index} is not complete in a tree of size {self.size}")
        tile_index, offset = divmod(first, TILE_WIDTH)
        data = self.tile(level, tile_index)
        hashes = [data[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(offset, offset + count)]
        while len(hashes) > 1:
            hashes = [hash_children(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

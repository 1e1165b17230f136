"""A bounds-checked reader for fixed-layout binary structures.

Every parser in ``confide.evidence`` reads through :class:`Reader` (or, for a fixed-size
structure whose exact length it checked first, one ``struct.Struct`` that then cannot fail), so
malformed input always raises :class:`~confide.errors.ParseError` naming the structure, the
field and the offset, never ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

from confide.errors import ParseError

__all__ = ["BigEndianReader", "Reader", "decode_evidence_text"]


class Reader:
    """Sequential little-endian reader over ``data`` (offsets are relative to ``base``)."""

    __slots__ = ("base", "data", "pos", "structure")

    def __init__(self, data: bytes, structure: str, *, base: int = 0) -> None:
        self.data = data
        self.structure = structure
        self.pos = 0
        self.base = base

    def error(self, message: str, field: str | None = None, offset: int | None = None) -> ParseError:
        return ParseError(
            message,
            structure=self.structure,
            field=field,
            offset=self.base + (self.pos if offset is None else offset),
        )

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0:
            raise self.error(f"negative length {n}", field)
        if self.pos + n > len(self.data):
            raise self.error(f"needs {n} bytes, got {len(self.data) - self.pos} (input truncated)", field)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def rest(self, field: str) -> bytes:
        return self.take(self.remaining, field)

    def expect_end(self, field: str = "trailing data") -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} unexpected trailing bytes", field)


class BigEndianReader(Reader):
    """:class:`Reader` for big-endian (network byte order) structures, such as TPM 2.0's
    (TPM 2.0 Library Part 1 §18.4)."""

    __slots__ = ()

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")


_HEX = frozenset(b"0123456789abcdefABCDEF")


def decode_evidence_text(raw: bytes) -> bytes:
    """Return ``raw`` unchanged if binary, or the decoded bytes if it is hex text.

    Hex text may carry a ``0x`` prefix and surrounding white space (as vendor tools write it).
    """
    stripped = raw.strip()
    if stripped[:2] in (b"0x", b"0X"):
        stripped = stripped[2:]
    if stripped and len(stripped) % 2 == 0 and all(c in _HEX for c in stripped):
        return bytes.fromhex(stripped.decode("ascii"))
    return raw

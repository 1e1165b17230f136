"""Protocol Buffers wire encoding for tests that build or extend protobuf evidence by hand
(https://protobuf.dev/programming-guides/encoding/: varints, tag = field << 3 | wire type)."""

from __future__ import annotations

from confide.evidence._protobuf import WIRE_LEN, WIRE_VARINT

__all__ = ["pb_field", "pb_varint"]


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb_field(number: int, value: bytes | int) -> bytes:
    """One field: a varint for an ``int``, length-delimited for ``bytes``."""
    if isinstance(value, int):
        return pb_varint(number << 3 | WIRE_VARINT) + pb_varint(value)
    return pb_varint(number << 3 | WIRE_LEN) + pb_varint(len(value)) + value

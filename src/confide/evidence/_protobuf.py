"""A small, strict reader of the protobuf binary wire format (protobuf.dev "Encoding").

Enough for evidence formats defined in ``.proto`` files (go-tpm-tools' ``attest.Attestation``)
without a protobuf dependency. A message is a sequence of records ``tag = (field << 3) | wire
type`` followed by the value; supported here:

* wire type 0 VARINT (at most 10 bytes, value < 2^64) and 2 LEN (varint length + bytes), the
  two types the schemas we read use;
* wire types 1 I64 and 5 I32 are *skipped* when the field is unknown, as protobuf requires;
  groups (3, 4) are refused (deprecated, never produced by proto3).

Stricter than protobuf, because the input is hostile and two readers must not disagree: a
field the schema knows with another wire type is refused (protobuf would treat it as unknown),
a singular field that occurs twice is refused (protobuf would keep the last or merge), field
number 0 and numbers above 2^29 - 1 are refused, and nesting is bounded by ``MAX_DEPTH``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from confide.errors import ParseError

__all__ = [
    "MAX_DEPTH",
    "WIRE_LEN",
    "WIRE_VARINT",
    "Field",
    "Message",
    "encode_field",
    "encode_varint",
    "parse_message",
]

WIRE_VARINT = 0
WIRE_I64 = 1
WIRE_LEN = 2
WIRE_I32 = 5
MAX_VARINT_BYTES = 10
MAX_FIELD_NUMBER = (1 << 29) - 1
MAX_DEPTH = 8
MAX_FIELDS = 4096


def encode_varint(n: int) -> bytes:
    """``n`` (0 <= n < 2^64) as a protobuf varint: 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def encode_field(number: int, value: bytes | int) -> bytes:
    """One record: a VARINT for an ``int``, a LEN for ``bytes`` (the writer of what
    :func:`parse_message` reads: the runtime's evidence, and tests)."""
    if isinstance(value, int):
        return encode_varint(number << 3 | WIRE_VARINT) + encode_varint(value)
    return encode_varint(number << 3 | WIRE_LEN) + encode_varint(len(value)) + value


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    wire_type: int
    value: int | bytes
    offset: int


def _varint(data: bytes, pos: int, structure: str) -> tuple[int, int]:
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise ParseError("varint runs past the end (input truncated)", structure=structure, offset=pos)
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ParseError("varint exceeds 64 bits", structure=structure, offset=pos)
            return value, pos + i + 1
    raise ParseError(f"varint longer than {MAX_VARINT_BYTES} bytes", structure=structure, offset=pos)


def _records(data: bytes, structure: str, base: int) -> Iterator[Field]:
    pos = 0
    count = 0
    while pos < len(data):
        count += 1
        if count > MAX_FIELDS:
            raise ParseError(f"more than {MAX_FIELDS} fields", structure=structure, offset=base + pos)
        start = pos
        tag, pos = _varint(data, pos, structure)
        number, wire = tag >> 3, tag & 7
        if not 1 <= number <= MAX_FIELD_NUMBER:
            raise ParseError(
                f"got field number {number}, expected 1..{MAX_FIELD_NUMBER}",
                structure=structure,
                offset=base + start,
            )
        if wire == WIRE_VARINT:
            value, pos = _varint(data, pos, structure)
            yield Field(number, wire, value, base + start)
        elif wire == WIRE_LEN:
            length, pos = _varint(data, pos, structure)
            if length > len(data) - pos:
                raise ParseError(
                    f"field {number}: length {length} exceeds the {len(data) - pos} bytes left (truncated?)",
                    structure=structure,
                    offset=base + start,
                )
            yield Field(number, wire, data[pos : pos + length], base + pos)
            pos += length
        elif wire in (WIRE_I64, WIRE_I32):
            size = 8 if wire == WIRE_I64 else 4
            if size > len(data) - pos:
                raise ParseError(
                    f"field {number}: fixed value truncated", structure=structure, offset=base + start
                )
            yield Field(number, wire, data[pos : pos + size], base + pos)
            pos += size
        else:
            raise ParseError(
                f"field {number}: wire type {wire} is not supported", structure=structure, offset=base + start
            )


@dataclass(frozen=True, slots=True)
class Message:
    """The known fields of one message, checked against a schema of ``{field: (wire, repeated)}``."""

    structure: str
    fields: Mapping[int, tuple[Field, ...]]
    depth: int
    strict: bool = False
    """Whether unknown fields were refused; nested messages are read the same way."""

    def _get(self, number: int) -> Field | None:
        found = self.fields.get(number, ())
        return found[0] if found else None

    def field(self, number: int) -> Field | None:
        """The record of singular field ``number`` (``None``: absent)."""
        return self._get(number)

    def bytes_(self, number: int, default: bytes = b"") -> bytes:
        f = self._get(number)
        if f is None:
            return default
        assert isinstance(f.value, bytes)
        return f.value

    def uint(self, number: int, bits: int = 64) -> int:
        f = self._get(number)
        if f is None:
            return 0
        assert isinstance(f.value, int)
        if f.value >= 1 << bits:
            raise ParseError(
                f"field {number}: got {f.value}, expected a uint{bits}",
                structure=self.structure,
                offset=f.offset,
            )
        return f.value

    def string(self, number: int) -> str:
        raw = self.bytes_(number)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"field {number}: not UTF-8", structure=self.structure) from None

    def repeated_bytes(self, number: int) -> tuple[bytes, ...]:
        return tuple(f.value for f in self.fields.get(number, ()) if isinstance(f.value, bytes))

    def message(self, number: int, schema: Mapping[int, tuple[int, bool]], structure: str) -> Message | None:
        f = self._get(number)
        if f is None:
            return None
        assert isinstance(f.value, bytes)
        return parse_message(
            f.value, schema, structure, depth=self.depth + 1, base=f.offset, strict=self.strict
        )

    def messages(
        self, number: int, schema: Mapping[int, tuple[int, bool]], structure: str
    ) -> tuple[Message, ...]:
        out = []
        for f in self.fields.get(number, ()):
            assert isinstance(f.value, bytes)
            out.append(
                parse_message(
                    f.value, schema, structure, depth=self.depth + 1, base=f.offset, strict=self.strict
                )
            )
        return tuple(out)


def parse_message(
    data: bytes,
    schema: Mapping[int, tuple[int, bool]],
    structure: str,
    *,
    depth: int = 0,
    base: int = 0,
    strict: bool = False,
) -> Message:
    """Parse one message; ``schema`` maps each known field number to (wire type, repeated).

    Unknown fields are skipped (``strict``: refused); known fields must have their wire type,
    singular ones at most once. Offsets in errors are relative to the outermost buffer (``base``).
    """
    if depth > MAX_DEPTH:
        raise ParseError(f"nested deeper than {MAX_DEPTH} messages", structure=structure, offset=base)
    found: dict[int, list[Field]] = {}
    for f in _records(data, structure, base):
        known = schema.get(f.number)
        if known is None:
            if strict:
                raise ParseError(f"unknown field {f.number}", structure=structure, offset=f.offset)
            continue
        wire, repeated = known
        if f.wire_type != wire:
            raise ParseError(
                f"field {f.number}: got wire type {f.wire_type}, expected {wire}",
                structure=structure,
                offset=f.offset,
            )
        seen = found.setdefault(f.number, [])
        if seen and not repeated:
            raise ParseError(f"field {f.number} occurs more than once", structure=structure, offset=f.offset)
        seen.append(f)
    return Message(structure, {k: tuple(v) for k, v in found.items()}, depth, strict)

"""A small strict DER reader (ITU-T X.690 §8 and §10) for the certificate extensions that
``cryptography`` returns as ``UnrecognizedExtension``: the Intel SGX PCK extension and Google's
Compute Engine instance extension.

Only definite, minimal lengths (X.690 §10.1) of at most three length octets and low tag
numbers (§8.1.2.2, one identifier octet) are accepted. Every element must lie inside its
parent. Hostile input raises :class:`~confide.errors.ParseError` naming ``structure`` and the
offset.
"""

from __future__ import annotations

from confide.errors import ParseError

__all__ = [
    "TAG_BOOLEAN",
    "TAG_ENUMERATED",
    "TAG_INTEGER",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "TAG_UTF8_STRING",
    "children",
    "context_tag",
    "der_boolean",
    "der_unsigned",
    "der_utf8",
    "tlv",
]

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_UTF8_STRING = 0x0C
TAG_SEQUENCE = 0x30
_CONTEXT_CONSTRUCTED = 0xA0


def context_tag(number: int) -> int:
    """The identifier octet of ``[number] EXPLICIT`` (context-specific, constructed)."""
    return _CONTEXT_CONSTRUCTED | number


def _err(message: str, structure: str, offset: int, field: str | None) -> ParseError:
    return ParseError(message, structure=structure, field=field, offset=offset)


def tlv(data: bytes, pos: int, structure: str) -> tuple[int, int, int]:
    """(tag, value_start, value_end) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise _err("truncated DER element", structure, pos, None)
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _err("high-tag-number form is not used here", structure, pos, None)
    first = data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 3 or start + n > len(data):
            raise _err("bad DER length", structure, pos + 1, None)
        length = int.from_bytes(data[start : start + n], "big")
        if length < 0x80 or data[start] == 0:
            raise _err("non-minimal DER length", structure, pos + 1, None)
        start += n
    end = start + length
    if end > len(data):
        raise _err(f"DER element runs past the end (needs {length} bytes)", structure, pos, None)
    return tag, start, end


def children(data: bytes, start: int, end: int, structure: str) -> list[tuple[int, int, int]]:
    """The elements inside ``data[start:end]``, each as (tag, value_start, value_end)."""
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = tlv(data, pos, structure)
        if ve > end:
            raise _err("DER element runs past its parent", structure, pos, None)
        out.append((tag, vs, ve))
        pos = ve
    return out


def der_unsigned(
    data: bytes, tag: int, start: int, end: int, structure: str, field: str, max_bytes: int
) -> int:
    """A non-negative INTEGER in minimal two's-complement form (X.690 §8.3.2), at most
    ``max_bytes`` content octets."""
    if tag != TAG_INTEGER:
        raise _err(f"got tag {tag:#x}, expected INTEGER", structure, start, field)
    if start == end or end - start > max_bytes:
        raise _err(f"got a {end - start}-byte INTEGER, expected 1..{max_bytes}", structure, start, field)
    if data[start] & 0x80:
        raise _err("negative INTEGER, expected a non-negative one", structure, start, field)
    if end - start > 1 and data[start] == 0 and not data[start + 1] & 0x80:
        raise _err("non-minimal INTEGER", structure, start, field)
    return int.from_bytes(data[start:end], "big")


def der_boolean(data: bytes, tag: int, start: int, end: int, structure: str, field: str) -> bool:
    """A DER BOOLEAN: one octet, 0x00 or 0xFF (X.690 §11.1)."""
    if tag != TAG_BOOLEAN or end - start != 1 or data[start] not in (0x00, 0xFF):
        raise _err("expected a DER BOOLEAN", structure, start, field)
    return data[start] == 0xFF


def der_utf8(data: bytes, tag: int, start: int, end: int, structure: str, field: str, max_bytes: int) -> str:
    """A UTF8String of at most ``max_bytes`` octets."""
    if tag != TAG_UTF8_STRING:
        raise _err(f"got tag {tag:#x}, expected UTF8String", structure, start, field)
    if end - start > max_bytes:
        raise _err(f"got {end - start} bytes, expected at most {max_bytes}", structure, start, field)
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(f"invalid UTF-8 at byte {exc.start}", structure, start + exc.start, field) from None

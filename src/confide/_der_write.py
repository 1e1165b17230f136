"""DER writing (ITU-T X.690 §8 and §10) for the structures confide encodes by hand: the CAS's
OCSP responses (:mod:`confide.cas.ocsp_der`) and its PKCS#12 archives
(:mod:`confide.cas.pkcs12`). The one place that writes a length: definite and minimal (§10.1),
the short form below 128 octets, else the fewest length octets. Low tag numbers only (one
identifier octet, §8.1.2.2), as the reader :mod:`confide.evidence._der` accepts.

Arguments are the program's own values, not input: a value these functions cannot encode is a
:class:`ValueError` (a bug), never a wrong encoding.
"""

from __future__ import annotations

__all__ = ["NULL", "explicit", "integer", "octet_string", "oid", "sequence", "set_of", "tlv"]

NULL = b"\x05\x00"
"""The NULL element (tag 5, no content)."""


def tlv(tag: int, content: bytes) -> bytes:
    """The element of identifier octet ``tag`` holding ``content``."""
    if not 0 <= tag <= 0xFF or tag & 0x1F == 0x1F:
        raise ValueError(f"identifier octet {tag:#x} is not a low-tag-number form")
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def sequence(*items: bytes) -> bytes:
    """``SEQUENCE`` of the encoded ``items``, in their order."""
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """``SET OF`` the encoded ``items``, in ascending order of their encodings (DER, §11.6)."""
    return tlv(0x31, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    """``INTEGER`` ``value`` (non-negative), in the fewest octets with a clear top bit."""
    if value < 0:
        raise ValueError(f"got {value}, expected a non-negative INTEGER")
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def octet_string(value: bytes) -> bytes:
    """``OCTET STRING`` ``value``."""
    return tlv(0x04, value)


def explicit(number: int, content: bytes) -> bytes:
    """``[number] EXPLICIT`` around the encoded ``content`` (context-specific, constructed)."""
    if not 0 <= number < 0x1F:
        raise ValueError(f"got tag number {number}, expected 0 to 30")
    return tlv(0xA0 | number, content)


def oid(dotted: str) -> bytes:
    """``OBJECT IDENTIFIER`` written as dotted decimal (``"1.2.840.113549.1.7.1"``)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or not 0 <= arcs[0] <= 2 or (arcs[0] < 2 and not 0 <= arcs[1] < 40) or min(arcs) < 0:
        raise ValueError(f"got {dotted!r}, expected an OBJECT IDENTIFIER in dotted decimal")
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:  # base 128, high bit on all but the last
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))

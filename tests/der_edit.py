"""Edits of DER structures that ``cryptography``'s builders refuse to produce (test data only)."""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def _der_tlv(tag: int, body: bytes) -> bytes:
    """One DER TLV (X.690 §8.1: definite length, short form below 128)."""
    n = len(body)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def _der_split(der: bytes) -> tuple[bytes, bytes]:
    """The first TLV of ``der`` and what follows it (single-byte tags only, as in X.509)."""
    first = der[1]
    if first < 0x80:
        start, n = 2, first
    else:
        k = first & 0x7F
        start, n = 2 + k, int.from_bytes(der[2 : 2 + k], "big")
    return der[: start + n], der[start + n :]


def _der_body(tlv: bytes) -> bytes:
    """The contents of one TLV."""
    whole, _ = _der_split(tlv)
    first = whole[1]
    return whole[2 + (first & 0x7F if first >= 0x80 else 0) :]


def _der_items(body: bytes) -> list[bytes]:
    """The TLVs of a SEQUENCE's contents, in order."""
    out = []
    while body:
        item, body = _der_split(body)
        out.append(item)
    return out


def without_next_update(crl_der: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """``crl_der`` with its TBSCertList's ``nextUpdate`` cut out (RFC 5280 §5.1.2.5 makes it
    mandatory for conforming issuers; ``cryptography``'s builder refuses to omit it), signed again
    with ``sign`` (the bytes of the new TBSCertList → signature value) under the same algorithm."""
    crl = x509.load_der_x509_crl(crl_der)
    items = _der_items(_der_body(crl.tbs_certlist_bytes))
    # TBSCertList: version, signature, issuer, thisUpdate, nextUpdate (UTCTime/GeneralizedTime)...
    assert items[4][0] in (0x17, 0x18), "nextUpdate expected after thisUpdate"
    tbs = _der_tlv(0x30, b"".join(item for i, item in enumerate(items) if i != 4))
    algorithm = _der_items(_der_body(crl.public_bytes(Encoding.DER)))[1]
    return _der_tlv(0x30, tbs + algorithm + _der_tlv(0x03, b"\x00" + sign(tbs)))

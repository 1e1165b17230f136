"""Byte-level edits of real DER certificates and CRLs that ``cryptography`` still loads but
fails to read later (it parses lazily), and a public key it cannot load with a ValueError: the
regression inputs of the hostile-input tests."""

from __future__ import annotations

CN_OID = bytes.fromhex("0603550403")  # OBJECT IDENTIFIER 2.5.4.3 (commonName)
VERSION_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3), RFC 5280 §4.1

# A SubjectPublicKeyInfo whose algorithm OID cryptography does not know (the last arc of
# id-ecPublicKey changed): UnsupportedAlgorithm, not a ValueError.
UNKNOWN_ALGORITHM_SPKI = bytes.fromhex(
    "3059301306072a8648ce3d027f06082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277037d812d"
    "eb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)  # the P-256 generator point under OID 1.2.840.10045.2.127


def bad_version(der: bytes) -> bytes:
    """``der`` claiming X.509 version 4 (INTEGER 3): ``cryptography`` raises InvalidVersion,
    which is not a ValueError, at load time."""
    assert der.count(VERSION_V3) >= 1
    return der.replace(VERSION_V3, bytes.fromhex("a003020103"), 1)


def bitstring_cn(der: bytes, occurrence: int = 0) -> bytes:
    """``der`` with the value of its ``occurrence``-th commonName re-tagged as a BIT STRING (no
    unused bits): it loads, and reading that name raises TypeError ("oid must be
    X500_UNIQUE_IDENTIFIER for BitString type")."""
    at = -1
    for _ in range(occurrence + 1):
        at = der.index(CN_OID, at + 1)
    value = at + len(CN_OID)
    out = bytearray(der)
    out[value] = 0x03  # BIT STRING
    out[value + 2] = 0x00  # the first content byte: the number of unused bits
    return bytes(out)


def bad_name_tag(der: bytes, occurrence: int = 0) -> bytes:
    """``der`` with the string tag of its ``occurrence``-th commonName value set to 0x00 (not a
    valid tag): reading that name raises ValueError."""
    at = -1
    for _ in range(occurrence + 1):
        at = der.index(CN_OID, at + 1)
    out = bytearray(der)
    out[at + len(CN_OID)] = 0x00
    return bytes(out)

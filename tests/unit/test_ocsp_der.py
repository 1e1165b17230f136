"""The strict OCSPRequest reader of the CAS's responder (confide.cas.ocsp_der, RFC 6960 §4.1.1):
what it accepts agrees with ``cryptography``'s loader on every single-entry request; hostile
input (truncation, trailing bytes, bad and non-minimal lengths, huge counts, seeded mutations)
raises only ParseError; the DER rules a laxer reader lets through are refused."""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parent))
from test_cas_ocsp import NONCE_OID, _der, _extension, _int

from confide.cas.ocsp_der import MAX_ENTRIES, MAX_SERIAL_OCTETS, ParsedRequest, parse_ocsp_request
from confide.errors import ParseError

SHA1 = bytes.fromhex("06052b0e03021a")
SIG = _der(0x30, _der(0x30, bytes.fromhex("06082a8648ce3d040302")) + _der(0x03, b"\x00" + b"\x01" * 64))


def _ca() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Fuzz CA")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(datetime(2030, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2031, 1, 1, tzinfo=UTC)).sign(key, hashes.SHA256())
    )  # fmt: skip


CA = _ca()


def cert_id(serial: int, oid: bytes = SHA1, params: bytes = b"\x05\x00", hashed: bytes = b"h" * 20) -> bytes:
    return _der(0x30, _der(0x30, oid + params) + _der(0x04, hashed) + _der(0x04, b"k" * 20) + _int(serial))


def ocsp_request(
    entries: list[bytes],
    *,
    extensions: list[bytes] | None = None,
    prefix: bytes = b"",
    signature: bytes | None = None,
    single_extensions: list[bytes] | None = None,
) -> bytes:
    requests = b"".join(
        _der(
            0x30,
            e + (b"" if single_extensions is None else _der(0xA0, _der(0x30, b"".join(single_extensions)))),
        )
        for e in entries
    )
    tbs = prefix + _der(0x30, requests)
    if extensions is not None:
        tbs += _der(0xA2, _der(0x30, b"".join(extensions)))
    return _der(0x30, _der(0x30, tbs) + (b"" if signature is None else _der(0xA0, signature)))


def _built(nonce: bytes | None = None, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(CA, CA, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _agree(der: bytes, mine: ParsedRequest) -> None:
    """``cryptography`` reads a single-entry request ``mine`` accepted the same way."""
    theirs = ocsp.load_der_ocsp_request(der)
    [entry] = mine.entries
    assert theirs.serial_number == entry.serial
    assert theirs.issuer_name_hash == entry.name_hash and theirs.issuer_key_hash == entry.key_hash
    nonces = [e.value.nonce for e in theirs.extensions if isinstance(e.value, x509.OCSPNonce)]
    assert nonces == ([] if mine.nonce is None else [mine.nonce])


def test_what_cryptography_builds_is_read_the_same() -> None:
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512(), hashes.SHA224()):
        for nonce in (None, b"\x00", b"n" * 32):
            der = _built(nonce, algorithm)
            parsed = parse_ocsp_request(der)
            _agree(der, parsed)
            assert (
                parsed.entries[0].algorithm is not None and parsed.entries[0].algorithm.name == algorithm.name
            )
            assert parsed.entries[0].der in der and parsed.preferred == ()


def test_truncation_and_trailing_bytes() -> None:
    for der in (_built(b"n" * 16), ocsp_request([cert_id(5)] * 3, signature=SIG)):
        parse_ocsp_request(der)
        for cut in range(len(der)):
            with pytest.raises(ParseError):
                parse_ocsp_request(der[:cut])
        for tail in (b"\x00", b"\x30\x00", der):
            with pytest.raises(ParseError):
                parse_ocsp_request(der + tail)


def test_bad_lengths() -> None:
    good = ocsp_request([cert_id(5)])
    body = good[2:] if good[1] < 0x80 else good[2 + (good[1] & 0x7F) :]
    for header in (
        b"\x30\x80",  # indefinite (BER only)
        b"\x30\x81" + bytes([len(body)]),  # long form for a short length: not minimal (if < 128)
        b"\x30\x82\x00" + bytes([len(body)]),  # a leading zero octet
        b"\x30\x84\x00\x00\x00" + bytes([len(body)]),  # more length octets than accepted
        b"\x30\x83\xff\xff\xff",  # 16 MiB claimed
        b"\x30\x8f" + b"\xff" * 15,
        b"\x30" + bytes([len(body) + 1]),  # one past the end
        b"\x30" + bytes([len(body) - 1]),  # one short: a trailing byte
    ):
        with pytest.raises(ParseError):
            parse_ocsp_request(header + body)
    # High tag numbers, and a length inside that runs past its parent.
    with pytest.raises(ParseError):
        parse_ocsp_request(b"\x1f\x81\x00")
    inner = bytearray(good)
    inner[4] += 1  # the tbsRequest claims one byte more than the OCSPRequest holds
    with pytest.raises(ParseError):
        parse_ocsp_request(bytes(inner))


def test_counts_are_bounded() -> None:
    assert (
        len(parse_ocsp_request(ocsp_request([cert_id(i + 1) for i in range(MAX_ENTRIES)])).entries)
        == MAX_ENTRIES
    )
    for count in (0, MAX_ENTRIES + 1, 2000):
        tiny = (
            ocsp_request([cert_id(1)] * count)
            if count < 100
            else _der(0x30, _der(0x30, _der(0x30, b"\x30\x00" * count)))
        )
        with pytest.raises(ParseError):
            parse_ocsp_request(tiny)
    many_extensions = [_extension(bytes([0x06, 0x03, 0x2A, 0x03, i]), b"\x05\x00") for i in range(17)]
    with pytest.raises(ParseError):
        parse_ocsp_request(ocsp_request([cert_id(1)], extensions=many_extensions))
    assert parse_ocsp_request(ocsp_request([cert_id(1)], extensions=many_extensions[:16])).nonce is None


def test_der_rules_and_fields() -> None:
    ok = [cert_id(7)]
    refused = {
        "version v1 encoded": ocsp_request(ok, prefix=_der(0xA0, _int(0))),
        "version v2": ocsp_request(ok, prefix=_der(0xA0, _int(1))),
        "serial 0": ocsp_request([cert_id(0)]),
        "serial negative": ocsp_request([cert_id(-3)]),
        "serial non-minimal": ocsp_request(
            [
                _der(
                    0x30,
                    _der(0x30, SHA1 + b"\x05\x00")
                    + _der(0x04, b"h" * 20)
                    + _der(0x04, b"k" * 20)
                    + _der(0x02, b"\x00\x05"),
                )
            ]
        ),
        "serial too long": ocsp_request([cert_id(2 ** (8 * MAX_SERIAL_OCTETS))]),
        "parameters not NULL": ocsp_request([cert_id(7, params=_der(0x04, b""))]),
        "no OID": ocsp_request(
            [_der(0x30, _der(0x30, b"\x05\x00") + _der(0x04, b"h") + _der(0x04, b"k") + _int(1))]
        ),
        "hash not an OCTET STRING": ocsp_request(
            [_der(0x30, _der(0x30, SHA1) + _der(0x0C, b"h") + _der(0x04, b"k") + _int(1))]
        ),
        "hash over 64 octets": ocsp_request([cert_id(7, hashed=b"h" * 65)]),
        "critical FALSE encoded": ocsp_request(
            ok,
            extensions=[_der(0x30, bytes.fromhex("06032a0304") + b"\x01\x01\x00" + _der(0x04, b"\x05\x00"))],
        ),
        "BOOLEAN not 0xFF": ocsp_request(
            ok,
            extensions=[_der(0x30, bytes.fromhex("06032a0304") + b"\x01\x01\x01" + _der(0x04, b"\x05\x00"))],
        ),
        "critical unknown": ocsp_request(
            ok, extensions=[_extension(bytes.fromhex("06032a0304"), b"\x05\x00", critical=True)]
        ),
        "duplicate": ocsp_request(ok, extensions=[_extension(bytes.fromhex("06032a0304"), b"\x05\x00")] * 2),
        "nonce empty": ocsp_request(ok, extensions=[_extension(NONCE_OID, _der(0x04, b""))]),
        "nonce 129": ocsp_request(ok, extensions=[_extension(NONCE_OID, _der(0x04, b"x" * 129))]),
        "nonce unwrapped, 129": ocsp_request(ok, extensions=[_extension(NONCE_OID, b"x" * 129)]),
        "nonce per entry": ocsp_request(ok, single_extensions=[_extension(NONCE_OID, _der(0x04, b"a"))]),
        "critical per entry": ocsp_request(
            ok, single_extensions=[_extension(bytes.fromhex("06032a0304"), b"", critical=True)]
        ),
        "requestorName with two names": ocsp_request(
            ok, prefix=_der(0xA1, _der(0x82, b"a") + _der(0x82, b"b"))
        ),
        "signature not a Signature": ocsp_request(ok, signature=_der(0x30, _der(0x04, b""))),
        "signature unknown tag": _der(0x30, _der(0x30, _der(0x30, _der(0x30, cert_id(1)))) + _der(0xA1, SIG)),
        "a Request with three parts": ocsp_request([cert_id(7) + _der(0xA0, b"") + _der(0x05, b"")]),
        "OID last octet continued": ocsp_request([cert_id(7, oid=bytes.fromhex("06052b0e03029a"))]),
        "OID subidentifier 0x80-led": ocsp_request([cert_id(7, oid=bytes.fromhex("0606802b0e03021a"))]),
        "OID empty": ocsp_request([cert_id(7, oid=b"\x06\x00")]),
        "extension OID non-minimal": ocsp_request(
            ok, extensions=[_extension(bytes.fromhex("06042a800304"), b"")]
        ),
        "not a SEQUENCE": b"\x31" + ocsp_request(ok)[1:],
    }
    for what, der in refused.items():
        with pytest.raises(ParseError):
            parse_ocsp_request(der)
            print(what)  # reached only when accepted: names the case in the failure
    accepted = {
        "requestorName": ocsp_request(ok, prefix=_der(0xA1, _der(0x82, b"a.example"))),
        "signed": ocsp_request(ok, signature=SIG),
        "signed with certs": ocsp_request(ok, signature=_der(0x30, SIG[2:] + _der(0xA0, _der(0x30, b"")))),
        "unknown non-critical per entry": ocsp_request(
            ok, single_extensions=[_extension(bytes.fromhex("06032a0304"), b"")]
        ),
        "parameters absent": ocsp_request([cert_id(7, params=b"")]),
        "no extensions in [2] (as cryptography)": ocsp_request(ok, extensions=[]),
        "another algorithm's parameters": ocsp_request(
            [cert_id(7, oid=bytes.fromhex("06032a0304"), params=_der(0x04, b"x"))]
        ),
        "MD5 (not computed)": ocsp_request(
            [cert_id(7, oid=bytes.fromhex("06082a864886f70d0205"), hashed=b"h" * 16)]
        ),
        "SHA-1 of a wrong length (never matched)": ocsp_request([cert_id(7, hashed=b"h" * 19)]),
        "a 21-octet serial": ocsp_request([cert_id(2**160 + 1)]),
    }
    for what, der in accepted.items():
        parsed = parse_ocsp_request(der)
        assert len(parsed.entries) == 1, what
    assert parse_ocsp_request(accepted["MD5 (not computed)"]).entries[0].algorithm is None
    assert (
        parse_ocsp_request(accepted["SHA-1 of a wrong length (never matched)"]).entries[0].algorithm is None
    )
    assert parse_ocsp_request(accepted["a 21-octet serial"]).entries[0].serial == 2**160 + 1
    # A nonce not wrapped in an OCTET STRING is the extnValue itself, as cryptography reads it.
    for value, nonce in (
        (b"abc", b"abc"),
        (_der(0x04, b"a") + b"\x00", b"\x04\x01a\x00"),
        (b"\xfa", b"\xfa"),
    ):
        der = ocsp_request(ok, extensions=[_extension(NONCE_OID, value)])
        parsed = parse_ocsp_request(der)
        assert parsed.nonce == nonce and parsed.nonce_value == value
        _agree(der, parsed)


def test_seeded_mutations_raise_only_parse_errors_and_agree_with_cryptography() -> None:
    """Bit flips, byte overwrites, insertions and deletions of valid requests: the reader returns
    a request or raises ParseError, nothing else; what it accepts with one entry, ``cryptography``
    reads the same (it is never laxer than the reference about the fields it answers on)."""
    rng = random.Random(6960)
    seeds = [
        _built(), _built(b"n" * 16), _built(algorithm=hashes.SHA256()),
        ocsp_request([cert_id(5)], signature=SIG), ocsp_request([cert_id(i + 1) for i in range(4)]),
        ocsp_request([cert_id(9)], prefix=_der(0xA1, _der(0x82, b"x")), extensions=[_extension(NONCE_OID, _der(0x04, b"q"))]),
    ]  # fmt: skip
    accepted = refused = agreed = 0
    for _ in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            op, pos = rng.randrange(4), rng.randrange(len(data))
            if op == 0:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[pos] = rng.choice((0x00, 0x01, 0x30, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xA0, 0xFF))
            elif op == 2:
                data.insert(pos, rng.randrange(256))
            elif len(data) > 1:
                del data[pos]
        der = bytes(data)
        try:
            parsed = parse_ocsp_request(der)
        except ParseError:
            refused += 1
            continue
        accepted += 1
        assert 1 <= len(parsed.entries) <= MAX_ENTRIES
        if len(parsed.entries) == 1:
            try:
                _agree(der, parsed)
            except ValueError:
                # cryptography refuses what this reader accepts only for an encoding it does not
                # read (requestorName forms, parameter forms), never for a field answered on
                continue
            agreed += 1
    assert refused > 4000 and accepted > 100 and agreed > 50

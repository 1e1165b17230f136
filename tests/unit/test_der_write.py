"""The one DER writer (confide._der_write) of the CAS's hand-written structures: lengths in their
minimal forms, INTEGERs, OIDs and SET OF as X.690 wants them, read back by the strict reader;
PKCS#12 archives and OCSP responses written through it byte for byte as before it existed."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from confide import _der_write as w
from confide.cas import ocsp_der, pkcs12
from confide.evidence import _der as reader


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "0400"),
        (1, "0401"),
        (127, "047f"),
        (128, "048180"),
        (255, "0481ff"),
        (256, "04820100"),
        (65535, "0482ffff"),
        (65536, "0483010000"),
    ],
)
def test_lengths_are_definite_and_minimal(size: int, header: str) -> None:
    content = bytes(size)
    out = w.tlv(0x04, content)
    assert out == bytes.fromhex(header) + content
    assert w.octet_string(content) == out
    assert reader.tlv(out, 0, "test") == (0x04, len(header) // 2, len(out))  # the strict reader agrees


def test_random_elements_read_back() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tag = rng.choice((0x02, 0x04, 0x06, 0x0A, 0x30, 0x31, 0x80, 0xA0, 0xA2))
        content = rng.randbytes(rng.choice((rng.randrange(130), rng.randrange(70000))))
        out = w.tlv(tag, content)
        _, start, end = reader.tlv(out, 0, "test")
        assert end == len(out) and out[start:end] == content


@pytest.mark.parametrize("tag", [0x1F, 0x3F, 0xBF, 0x100, -1])
def test_a_tag_that_is_not_one_low_tag_octet_is_refused(tag: int) -> None:
    with pytest.raises(ValueError, match="low-tag-number"):
        w.tlv(tag, b"")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "020100"), (1, "020101"), (127, "02017f"), (128, "02020080"), (255, "020200ff"), (256, "02020100"),
     (2048, "02020800"), (2**63, "0209008000000000000000")],
)  # fmt: skip
def test_integers_take_the_fewest_octets_with_a_clear_top_bit(value: int, encoded: str) -> None:
    assert w.integer(value) == bytes.fromhex(encoded)


def test_a_negative_integer_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        w.integer(-1)


@pytest.mark.parametrize(
    ("dotted", "encoded"),
    [
        ("1.2.840.113549.1.7.1", "06092a864886f70d010701"),  # id-data (RFC 7292)
        ("2.16.840.1.101.3.4.2.1", "0609608648016503040201"),  # id-sha256
        ("1.2.840.113549.1.12.10.1.2", "060b2a864886f70d010c0a0102"),  # pkcs8ShroudedKeyBag
        ("2.999.3", "0603883703"),  # X.690 §8.19.5's example: the first subidentifier is 1079
        ("0.0", "060100"),
    ],
)
def test_object_identifiers(dotted: str, encoded: str) -> None:
    assert w.oid(dotted) == bytes.fromhex(encoded)


@pytest.mark.parametrize("dotted", ["1", "3.1", "1.40", "0.-1", "1.2.-3", "1..2", ""])
def test_a_malformed_object_identifier_is_refused(dotted: str) -> None:
    with pytest.raises(ValueError):
        w.oid(dotted)


def test_constructed_forms() -> None:
    a, b = w.octet_string(b"a"), w.octet_string(b"b")
    assert w.sequence(b, a) == bytes.fromhex("3006") + b + a  # in the given order
    assert w.set_of(b, a) == w.set_of(a, b) == bytes.fromhex("3106") + a + b  # DER: ascending
    assert w.explicit(0, a) == bytes.fromhex("a003") + a
    assert w.explicit(2, a) == bytes.fromhex("a203") + a
    assert w.NULL == b"\x05\x00"
    with pytest.raises(ValueError):
        w.explicit(31, a)


def test_pkcs12_and_ocsp_have_no_writer_of_their_own() -> None:
    """Both write through the shared module: no second copy of the length encoding to drift."""
    for module in (pkcs12, ocsp_der):
        assert "_tlv" not in vars(module) and module.tlv is w.tlv
    assert pkcs12.sequence is ocsp_der.sequence is w.sequence


def _counter_urandom() -> object:
    count = 0

    def urandom(n: int) -> bytes:
        nonlocal count
        count += 1
        return hashlib.sha256(b"urandom %d" % count).digest()[:n]

    return urandom


# SHA-256 and size of what the writers produced before they shared the module (commit 96fb5d6),
# on the inputs below: every length form (short, one, two and three length octets).
PKCS12_BEFORE = ("6f7518a510ecc8a87b688300c567836684774265599c10287d186c5e23c52d59", 72917)
OCSP_BEFORE = ("ca64fe9515a9aed1160127891e669ec153601d67307b90afbf99ef8ac6b1d20e", 70743)
OCSP_SMALL_BEFORE = ("6b21066cb4a3afcbf587767e11a6b0193496f771a8c2ba61d52ac57f058341d5", 193)


def test_pkcs12_bytes_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pkcs12.os, "urandom", _counter_urandom())  # salts and IVs fixed
    key = bytes(range(256)) * 5
    chain = (b"c" * 70000, b"d" * 127, b"e" * 128, b"f" * 255, b"g" * 256)
    out = pkcs12.pkcs12_with_private_key(key, b"\x30" + bytes(100), chain)
    assert (hashlib.sha256(out).hexdigest(), len(out)) == PKCS12_BEFORE


def test_ocsp_response_bytes_are_unchanged() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # deterministic signatures
    answers = [
        ocsp_der.SingleAnswer(b"\x30\x03\x02\x01\x01", "good", 1_900_000_000, 1_900_003_600),
        ocsp_der.SingleAnswer(
            b"\x30\x03\x02\x01\x02", "revoked", 1_900_000_000, 1_900_003_600, 1_899_000_000, 1
        ),
        ocsp_der.SingleAnswer(
            b"\x30\x03\x02\x01\x03", "revoked", 1_900_000_000, 1_900_003_600, 1_899_000_000
        ),
        ocsp_der.SingleAnswer(b"\x30\x03\x02\x01\x04", "unknown", 1_900_000_000, 1_900_003_600),
    ]
    algorithm = ocsp_der.choose_algorithm(key, ())
    out = ocsp_der.basic_response(
        answers, produced_at=1_900_000_000, responder_key_hash=bytes(20), key=key, algorithm=algorithm,
        certificates=[b"x" * 300, b"y" * 70000], nonce_value=b"\x04\x20" + bytes(32),
    )  # fmt: skip
    assert (hashlib.sha256(out).hexdigest(), len(out)) == OCSP_BEFORE
    out = ocsp_der.basic_response(
        answers[:1], produced_at=1_900_000_000, responder_key_hash=bytes(20), key=key, algorithm=algorithm,
        certificates=[], nonce_value=None,
    )  # fmt: skip
    assert (hashlib.sha256(out).hexdigest(), len(out)) == OCSP_SMALL_BEFORE

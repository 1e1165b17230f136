"""Verifying AWS Nitro attestation documents: real vectors, then tampered and forged twins."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from confide.errors import BindingError, CertificateChainError, ParseError, SignatureError
from confide.evidence.nitro import NitroDocument, decode_document_text
from confide.verify.nitro import AWS_NITRO_ROOT_SHA256, aws_nitro_root, document_time, verify_nitro_document
from confide.verify.result import Platform
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn
from nitro_forge import Issuer, forge_document, make_ca, make_pki
from pki import issue, key_usage

ASSETS = Path(__file__).parent.parent / "assets" / "nitro"
EXAMPLE = base64.b64decode((ASSETS / "example_attestation.b64").read_bytes())
INVALID = base64.b64decode((ASSETS / "invalid_attestation.b64").read_bytes())
REAL = (ASSETS / "realAttestation_repaired.cose").read_bytes()
EXAMPLE_AT = datetime(2024, 9, 9, 19, 49, 12, 400000, tzinfo=UTC)
REAL_AT = datetime(2026, 1, 3, 20, 41, 7, 402000, tzinfo=UTC)


def test_example_document_verifies_at_its_timestamp() -> None:
    result = verify_nitro_document(EXAMPLE, at=EXAMPLE_AT, expected_nonce=bytes(19) + b"\x01")
    assert result.platform is Platform.AWS_NITRO
    c = result.claims
    assert c["module_id"] == "i-0bbf1bfe232b8c2ce-enc0191ba35c9d1b77a"
    assert c["timestamp"] == 1725911352400
    assert c["timestamp_iso"] == "2024-09-09T19:49:12.400Z"
    assert c["digest"] == "SHA384"
    assert c["pcr0"] == "00" * 48
    assert c["pcr15"] == "00" * 48
    assert c["public_key"] == b"dummy".hex()
    assert isinstance(c["user_data"], str) and c["user_data"].startswith("1220c682")
    assert c["nonce"] == "00" * 19 + "01"
    assert c["nonce_checked"] is True
    assert c["debug"] is True  # PCR0..2 all zero: a debug-mode enclave
    assert result.details["root_sha256"] == AWS_NITRO_ROOT_SHA256


def test_real_production_document_verifies() -> None:
    result = verify_nitro_document(REAL, at=REAL_AT)
    c = result.claims
    assert c["module_id"] == "i-0368fa67e156d6d23-enc019b8596b1a9dad6"
    assert isinstance(c["pcr0"], str) and c["pcr0"].startswith("4b8d4cf2")
    assert c["debug"] is False
    assert c["nonce"] is None
    assert c["public_key"] is None
    assert c["user_data"] == "69553adc61d6e9fcdecbe1ea49bb2b52a60238e0"


def test_invalid_document_fails_its_signature() -> None:
    at = document_time(NitroDocument.from_bytes(INVALID).document.timestamp)
    with pytest.raises(SignatureError, match="COSE_Sign1 signature"):
        verify_nitro_document(INVALID, at=at)


def test_committed_truncated_document_is_a_parse_error() -> None:
    raw = decode_document_text((ASSETS / "realAttestation_as_committed_truncated.b64").read_bytes())
    with pytest.raises(ParseError):
        verify_nitro_document(raw, at=REAL_AT)


def test_truncated_cose_is_a_parse_error() -> None:
    for cut in (1, 2, 50, 97, 1000, len(EXAMPLE) - 1):
        with pytest.raises(ParseError):
            verify_nitro_document(EXAMPLE[:cut], at=EXAMPLE_AT)


def test_wrong_or_missing_nonce_is_a_binding_error() -> None:
    with pytest.raises(BindingError, match="nonce: got"):
        verify_nitro_document(EXAMPLE, at=EXAMPLE_AT, expected_nonce=bytes(20))
    with pytest.raises(BindingError, match="has none"):
        verify_nitro_document(REAL, at=REAL_AT, expected_nonce=b"\x01")


def test_expired_leaf_is_refused() -> None:
    with pytest.raises(CertificateChainError, match="expired"):
        verify_nitro_document(EXAMPLE, at=EXAMPLE_AT + timedelta(hours=3, minutes=1))
    with pytest.raises(CertificateChainError, match="not yet valid"):
        verify_nitro_document(EXAMPLE, at=EXAMPLE_AT - timedelta(minutes=1))


def test_embedded_root_is_the_published_g1_root() -> None:
    root = aws_nitro_root()
    assert root.public_bytes(Encoding.DER) == (ASSETS / "aws_nitro_root_from_eternis.der").read_bytes()
    assert NitroDocument.from_bytes(EXAMPLE).document.cabundle[0] == root.public_bytes(Encoding.DER)


def _rebuild(doc_bytes: bytes, **changes: Any) -> bytes:
    """The document with payload fields changed (the signature then no longer matches)."""
    cose = cbor2.loads(doc_bytes)
    payload = dict(cbor2.loads(cose[2]))
    payload.update(changes)
    return cbor2.dumps([cose[0], cose[1], cbor2.dumps(payload), cose[3]])


def test_broken_and_reordered_bundles_are_refused() -> None:
    bundle = NitroDocument.from_bytes(EXAMPLE).document.cabundle
    with pytest.raises(CertificateChainError, match="path length"):
        verify_nitro_document(
            _rebuild(EXAMPLE, cabundle=[bundle[0], bundle[2], bundle[1], bundle[3]]), at=EXAMPLE_AT
        )
    with pytest.raises(CertificateChainError, match="signature of"):
        verify_nitro_document(_rebuild(EXAMPLE, cabundle=[bundle[0], bundle[1], bundle[3]]), at=EXAMPLE_AT)
    with pytest.raises(CertificateChainError, match="pinned AWS Nitro root"):
        verify_nitro_document(_rebuild(EXAMPLE, cabundle=list(reversed(bundle))), at=EXAMPLE_AT)
    with pytest.raises(CertificateChainError, match="not a DER certificate"):
        verify_nitro_document(_rebuild(EXAMPLE, cabundle=[bundle[0], b"\x30\x00"]), at=EXAMPLE_AT)


def test_changed_payload_fails_the_signature() -> None:
    with pytest.raises(SignatureError):
        verify_nitro_document(_rebuild(EXAMPLE, user_data=b"evil"), at=EXAMPLE_AT)
    # Re-encoding the same payload canonically also changes the signed bytes.
    with pytest.raises(SignatureError):
        verify_nitro_document(_rebuild(REAL), at=REAL_AT)


def test_wrong_root_is_refused() -> None:
    other, _ = _ca("Other Root")
    with pytest.raises(CertificateChainError, match="pinned AWS Nitro root"):
        verify_nitro_document(EXAMPLE, at=EXAMPLE_AT, root=other)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_every_flipped_byte_is_rejected() -> None:
    doc = NitroDocument.from_bytes(EXAMPLE).document
    cert_spans = []
    for der in (*doc.cabundle, doc.certificate):
        start = EXAMPLE.find(der)
        cert_spans.append(range(start, start + len(der)))
    # Every byte outside the embedded certificates; inside them every 9th byte.
    positions = [i for i in range(len(EXAMPLE)) if not any(i in span for span in cert_spans)]
    positions += [i for span in cert_spans for i in span[::9]]
    assert len(positions) > 1000
    for pos in positions:
        data = bytearray(EXAMPLE)
        data[pos] ^= 0x01
        with pytest.raises((ParseError, SignatureError, CertificateChainError)):
            verify_nitro_document(bytes(data), at=EXAMPLE_AT)


# --- forged documents under a test PKI (root override) ----------------------------------------

NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)


def _ca(cn: str, issuer: Issuer | None = None, ca: bool = True) -> Issuer:
    return make_ca(cn, NOW, issuer, ca=ca)


def _forge(alg: int = -35, tagged: bool = False, **changes: Any) -> tuple[bytes, x509.Certificate]:
    pki = make_pki(NOW)
    return forge_document(pki, alg=alg, tagged=tagged, **changes), pki.root_cert


def test_forged_tagged_document_verifies_only_under_its_root() -> None:
    doc, root = _forge(tagged=True)
    result = verify_nitro_document(doc, at=NOW, root=root, expected_nonce=b"n" * 16)
    assert result.details["cose_tagged"] is True
    assert result.claims["debug"] is False
    assert result.claims["user_data"] == b"hello".hex()
    with pytest.raises(CertificateChainError, match="pinned AWS Nitro root"):
        verify_nitro_document(doc, at=NOW)


def test_other_algorithms_are_refused() -> None:
    doc, root = _forge(alg=-7)
    with pytest.raises(SignatureError, match="ES384"):
        verify_nitro_document(doc, at=NOW, root=root)


def test_timestamp_outside_leaf_validity_is_refused() -> None:
    doc, root = _forge(timestamp=int((NOW + timedelta(hours=4)).timestamp() * 1000))
    with pytest.raises(CertificateChainError, match="outside the leaf's validity"):
        verify_nitro_document(doc, at=NOW, root=root)


def test_end_entity_cannot_issue_the_leaf() -> None:
    root = _ca("R")
    middle = _ca("EE", root, ca=False)
    leaf = _ca("leaf", middle, ca=False)
    der = [c.public_bytes(Encoding.DER) for c in (root[0], middle[0], leaf[0])]
    doc, _ = _forge(certificate=der[2], cabundle=der[:2])
    with pytest.raises(CertificateChainError, match="not a CA"):
        verify_nitro_document(doc, at=NOW, root=root[0])


@pytest.mark.parametrize(
    "edit", [bad_version, bitstring_cn, bad_name_tag], ids=["version 4", "BIT STRING CN", "tag 0 CN"]
)
def test_malformed_bundle_certificate_is_a_chain_error(edit: Callable[[bytes], bytes]) -> None:
    # cryptography raises InvalidVersion (not a ValueError) at load, TypeError or ValueError
    # when a name is read: each is the certificate's chain error, not a crash.
    bundle = NitroDocument.from_bytes(EXAMPLE).document.cabundle
    with pytest.raises(CertificateChainError, match=r"cabundle\[1\]: not a DER certificate"):
        verify_nitro_document(
            _rebuild(EXAMPLE, cabundle=[bundle[0], edit(bundle[1]), *bundle[2:]]), at=EXAMPLE_AT
        )


@pytest.mark.parametrize(
    ("ca", "usage", "match"),
    [
        (True, None, "is a CA certificate"),
        (None, key_usage(cert_sign=True, digital_signature=False), "digitalSignature"),
    ],
    ids=["ca-leaf", "no-digital-signature"],
)
def test_leaf_must_be_a_signing_end_entity(ca: bool | None, usage: x509.KeyUsage | None, match: str) -> None:
    # attestation_process.md §3.2.3.3: the target certificate has the digitalSignature key usage
    # and no pathLenConstraint (an end entity, RFC 5280 §4.2.1.9), whatever its issuer signed.
    now = datetime(2025, 6, 1, tzinfo=UTC)
    pki = make_pki(now)
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = issue(
        "Test enclave", key.public_key(), issuer=pki.ica[0].subject, signing_key=pki.ica[1],
        not_before=now - timedelta(hours=1), not_after=now + timedelta(hours=3), ca=ca, usage=usage,
    )  # fmt: skip
    bad = dataclasses.replace(pki, leaf=(leaf, key))
    doc = forge_document(bad, certificate=leaf.public_bytes(Encoding.DER))
    with pytest.raises(CertificateChainError, match=match):
        verify_nitro_document(doc, at=now, root=pki.root_cert)
    # the same PKI with the usual leaf verifies
    verify_nitro_document(forge_document(pki), at=now, root=pki.root_cert)

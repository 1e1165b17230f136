"""confide.evidence.gce_instance: Google's instance extension of vTPM AK certificates, and
its use by the GCE vTPM verifier (claims, and the unsigned protobuf ``instance_info``)."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import BindingError, CertificateChainError, ParseError
from confide.evidence.gce_instance import (
    GCE_INSTANCE_EXTENSION_OID,
    GceSecurityProperties,
    parse_gce_instance_extension,
)
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.verify import gce_tpm
from confide.verify.gce_tpm import verify_gce_attestation
from pb_wire import pb_field
from pki import issue

ASSETS = Path(__file__).parent.parent / "assets" / "tpm" / "google-go-tpm-tools"
NONCE9009 = (ASSETS / "gce-cos-85-nonce9009.pb").read_bytes()
AT = datetime(2024, 1, 1, tzinfo=UTC)


def _real_extension() -> bytes:
    cert = parse_gce_attestation(NONCE9009).ak_cert
    assert cert is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ext = x509.load_der_x509_certificate(cert).extensions.get_extension_for_oid(
            x509.ObjectIdentifier(GCE_INSTANCE_EXTENSION_OID)
        )
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return ext.value.value


REAL = _real_extension()


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def _int(n: int) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _utf8(s: str) -> bytes:
    return _tlv(0x0C, s.encode())


def _bool(b: bool) -> bytes:
    return _tlv(0x01, b"\xff" if b else b"\x00")


def _ext(*, security: bytes | None = None, head: bytes | None = None, tail: bytes = b"") -> bytes:
    body = (
        head
        if head is not None
        else (_utf8("europe-west4-a") + _int(42) + _utf8("p") + _int(2**64 - 1) + _utf8("vm"))
    )
    if security is not None:
        body += _tlv(0xA0, _tlv(0x30, security))
    return _tlv(0x30, body + tail)


# --- the parser ---------------------------------------------------------------------------


def test_the_real_extension_decodes() -> None:
    got = parse_gce_instance_extension(REAL)
    assert (got.zone, got.project_id, got.instance_name) == (
        "us-central1-a",
        "google.com:wuale-gcp-testing",
        "cos-test",
    )
    assert got.project_number == 117478743145
    assert got.instance_id == 6797026933021542085
    assert got.security == GceSecurityProperties(security_version=0, is_production=True)
    assert got.trailing_elements == 0


def test_absent_optional_fields_take_go_attestation_defaults() -> None:
    got = parse_gce_instance_extension(_ext(security=_tlv(0xA2, _bool(True))))
    assert got.instance_id == 2**64 - 1
    assert got.security == GceSecurityProperties(security_version=None, tpm_data_always_encrypted=True)
    assert parse_gce_instance_extension(_ext()).security is None


def test_later_google_fields_are_reported_not_refused() -> None:
    sec = _tlv(0xA1, _bool(True)) + _tlv(0xA7, _int(3)) + _tlv(0xA9, _utf8("x"))
    got = parse_gce_instance_extension(_ext(security=sec, tail=_utf8("future") + _int(1)))
    assert got.security is not None and got.security.is_production
    assert got.security.unknown_security_fields == (7, 9)
    assert got.trailing_elements == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated DER element"),
        (REAL[:-1], "runs past the end"),
        (REAL + b"\x00", "expected one top-level SEQUENCE"),
        (_tlv(0x31, REAL[2:]), "expected one top-level SEQUENCE"),
        (_tlv(0x30, _utf8("z") + _int(1)), "got 2 elements, expected at least 5"),
        (_ext(head=_utf8("z") + _tlv(0x02, b"\xff") + _utf8("p") + _int(1) + _utf8("n")), "negative INTEGER"),
        (
            _ext(head=_utf8("z") + _tlv(0x02, b"\x00\x01") + _utf8("p") + _int(1) + _utf8("n")),
            "non-minimal INTEGER",
        ),
        (
            _ext(head=_utf8("z") + _int(1) + _utf8("p") + _tlv(0x02, bytes(10)) + _utf8("n")),
            "10-byte INTEGER",
        ),
        (_ext(head=_utf8("z") + _int(1) + _utf8("p") + _int(1) + _tlv(0x0C, b"\xff")), "invalid UTF-8"),
        (_ext(head=_tlv(0x13, b"z") + _int(1) + _utf8("p") + _int(1) + _utf8("n")), "expected UTF8String"),
        (_ext(head=_utf8("z" * 1025) + _int(1) + _utf8("p") + _int(1) + _utf8("n")), "at most 1024"),
        (_ext(security=_tlv(0xA1, b"\x01\x01\x01")), "expected a DER BOOLEAN"),
        (_ext(security=_tlv(0xA0, _bool(True))), "expected INTEGER"),
        (_ext(security=_tlv(0xA1, _bool(True)) + _tlv(0xA0, _int(1))), "out of order"),
        (_ext(security=_tlv(0xA1, _bool(True)) + _tlv(0xA1, _bool(True))), "out of order or repeated"),
        (_ext(security=_tlv(0xA1, _bool(True) + _bool(True))), "exactly one element"),
        (_ext(security=_tlv(0x81, b"\xff")), "expected a context-specific"),
        (
            _tlv(0x30, _utf8("z") + _int(1) + _utf8("p") + _int(1) + _utf8("n") + _tlv(0xA0, _int(1))),
            "EXPLICIT SEQUENCE",
        ),
        (b"\x30\x81\x05" + bytes(5), "non-minimal DER length"),
        (b"\x30\x84\x00\x00\x00\x05", "bad DER length"),
        (b"\x1f\x01\x00", "high-tag-number"),
        (_tlv(0x30, b"\x0c\x05ab"), "runs past"),
        (bytes(5000), "at most 4096"),
    ],
)
def test_malformed_extensions_are_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_gce_instance_extension(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_extensions_raise_only_parse_errors(edits: list[tuple[int, int]]) -> None:
    data = bytearray(REAL)
    for pos, value in edits:
        data[pos] = value
    try:
        parse_gce_instance_extension(bytes(data))
    except ParseError:
        pass


# --- the verifier -------------------------------------------------------------------------


def test_the_verified_instance_is_claimed() -> None:
    result = verify_gce_attestation(NONCE9009, at=AT, expected_nonce=bytes.fromhex("9009"))
    instance = result.claims["instance"]
    assert isinstance(instance, dict)
    assert instance["instance_name"] == "cos-test" and instance["zone"] == "us-central1-a"
    assert instance["instance_id"] == 6797026933021542085 and instance["is_production"] is True
    assert result.details["ak_cert_instance"] == instance
    assert result.details["unverified_instance_info"] is None


def _with_instance_info(zone: str) -> bytes:
    info = (
        pb_field(1, zone.encode())
        + pb_field(2, b"google.com:wuale-gcp-testing")
        + pb_field(3, 117478743145)
        + pb_field(4, b"cos-test")
        + pb_field(5, 6797026933021542085)
    )
    return NONCE9009 + pb_field(4, info)


def test_agreeing_instance_info_verifies_and_contradicting_is_refused() -> None:
    ok = verify_gce_attestation(_with_instance_info("us-central1-a"), at=AT)
    unverified = ok.details["unverified_instance_info"]
    assert isinstance(unverified, dict) and unverified["zone"] == "us-central1-a"
    with pytest.raises(
        BindingError, match=r"instance_info: got .*'us-east1-b'.*expected the AK certificate's"
    ):
        verify_gce_attestation(_with_instance_info("us-east1-b"), at=AT)


def _self_signed_with(value: bytes) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(GCE_INSTANCE_EXTENSION_OID), value)
    return issue(
        "test", key.public_key(), issuer="test", signing_key=key, not_before=AT,
        not_after=AT + timedelta(days=1), ca=None, extensions=[extension],
    )  # fmt: skip


def test_a_malformed_extension_in_a_signed_certificate_is_a_chain_error() -> None:
    with pytest.raises(CertificateChainError, match=r"malformed instance extension: .*negative INTEGER"):
        gce_tpm._cert_instance(
            _self_signed_with(_ext(head=_utf8("z") + _tlv(0x02, b"\xff") + _utf8("p") + _int(1) + _utf8("n")))
        )


def test_only_a_production_instance_is_claimed() -> None:
    test_vm = gce_tpm._cert_instance(_self_signed_with(_ext(security=_tlv(0xA1, _bool(False)))))
    assert test_vm is not None and test_vm.instance_name == "vm"
    assert gce_tpm._production(test_vm) is None
    assert gce_tpm._production(gce_tpm._cert_instance(_self_signed_with(_ext()))) is None
    prod = gce_tpm._cert_instance(_self_signed_with(_ext(security=_tlv(0xA1, _bool(True)))))
    assert prod is not None and gce_tpm._production(prod) is prod

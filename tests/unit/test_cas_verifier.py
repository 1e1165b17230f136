"""The CAS's evidence verifier: simulated, DCAP and SEV-SNP (VCEK from the certificate table)."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import errors
from confide.cas.verifier import PlatformVerifier
from confide.evidence.snp_certs import ARK_GUID, VCEK_GUID, parse_cert_table
from confide.verify.result import Platform

ASSETS = Path(__file__).parents[1] / "assets"
REPORT = (ASSETS / "sev-snp/google-go-sev-guest/attestation.bin").read_bytes()
VCEK = (ASSETS / "sev-snp/google-go-sev-guest/vcek.testcer").read_bytes()
AT = datetime(2024, 1, 1, tzinfo=UTC)


def table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    head = b""
    body = b""
    offset = 24 * (len(entries) + 1)
    for guid, der in entries:
        head += guid.bytes_le + struct.pack("<II", offset + len(body), len(der))
        body += der
    return head + bytes(24) + body


def test_snp_with_vcek_from_the_certificate_table() -> None:
    v = PlatformVerifier().verify(
        Platform.SEV_SNP, REPORT, {"auxblob": table([(ARK_GUID, b"x" * 10), (VCEK_GUID, VCEK)])}, at=AT
    )
    assert v.platform is Platform.SEV_SNP and v.claims["report_data"]
    v2 = PlatformVerifier().verify(Platform.SEV_SNP, REPORT, {"vcek": VCEK}, at=AT)
    assert v2.claims == v.claims


def test_snp_without_vcek_and_tampered() -> None:
    with pytest.raises(errors.CollateralMissingError):
        PlatformVerifier().verify(Platform.SEV_SNP, REPORT, {}, at=AT)
    bad = bytearray(REPORT)
    bad[0x50] ^= 1
    with pytest.raises(errors.VerificationError):
        PlatformVerifier().verify(Platform.SEV_SNP, bytes(bad), {"vcek": VCEK}, at=AT)


def test_sim_needs_dev_and_unknown_platforms() -> None:
    with pytest.raises(errors.UsageError, match="--dev"):
        PlatformVerifier().verify(Platform.SIMULATED, b"", {}, at=AT)
    with pytest.raises(errors.UsageError):
        PlatformVerifier().verify(Platform.AWS_NITRO, b"", {}, at=AT)


def test_cert_table_errors() -> None:
    assert parse_cert_table(bytes(24)) == {}
    with pytest.raises(errors.ParseError, match="outside"):
        parse_cert_table(VCEK_GUID.bytes_le + struct.pack("<II", 48, 10_000) + bytes(24))
    with pytest.raises(errors.ParseError):
        parse_cert_table(VCEK_GUID.bytes_le)  # no terminator


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_cert_table_only_raises_parse_error(data: bytes) -> None:
    try:
        parse_cert_table(data)
    except errors.ParseError:
        pass

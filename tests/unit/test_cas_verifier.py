"""The CAS's evidence verifier: simulated, DCAP, SEV-SNP (VCEK from the certificate table), NVIDIA
(chain and RIMs from ``aux``) and Nitro. End-to-end attestations: test_cas_attest_gpu_nitro.py."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from snp_fakes import cert_table

from confide import errors
from confide.cas.verifier import PlatformVerifier
from confide.evidence.snp_certs import ARK_GUID, VCEK_GUID, parse_cert_table
from confide.verify.result import Platform
from confide.verify.x509util import load_certificate_chain

ASSETS = Path(__file__).parents[1] / "assets"
REPORT = (ASSETS / "sev-snp/google-go-sev-guest/attestation.bin").read_bytes()
VCEK = (ASSETS / "sev-snp/google-go-sev-guest/vcek.testcer").read_bytes()
AT = datetime(2024, 1, 1, tzinfo=UTC)


def test_snp_with_vcek_from_the_certificate_table() -> None:
    v = PlatformVerifier().verify(
        Platform.SEV_SNP, REPORT, {"auxblob": cert_table([(ARK_GUID, b"x" * 10), (VCEK_GUID, VCEK)])}, at=AT
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


def test_sim_needs_dev() -> None:
    with pytest.raises(errors.UsageError, match="--dev"):
        PlatformVerifier().verify(Platform.SIMULATED, b"", {}, at=AT)


NV = ASSETS / "nvidia"
NV_REPORT = bytes.fromhex((NV / "hopperAttestationReport.txt").read_text().strip())
NV_CHAIN_PEM = (NV / "hopperCertChain.txt").read_bytes()
NV_AT = datetime(2025, 6, 1, tzinfo=UTC)


def test_nvidia_chain_as_pem_or_der_and_nitro_dispatch() -> None:
    der = b"".join(c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(NV_CHAIN_PEM))
    a = PlatformVerifier().verify(Platform.NVIDIA_GPU, NV_REPORT, {"certs": NV_CHAIN_PEM}, at=NV_AT)
    b = PlatformVerifier().verify(Platform.NVIDIA_GPU, NV_REPORT, {"certs": der}, at=NV_AT)
    assert a.platform is Platform.NVIDIA_GPU and a.claims == b.claims
    assert a.claims["nonce_checked"] is False  # the CAS checks the nonce against its binding
    with pytest.raises(errors.ParseError):
        PlatformVerifier().verify(Platform.AWS_NITRO, b"", {}, at=AT)


@pytest.mark.parametrize(
    ("aux", "error", "match"),
    [
        ({}, errors.CollateralMissingError, "certificate chain"),
        ({"certs": NV_CHAIN_PEM, "rims:x": b"<a/>"}, errors.ParseError, "'rims:x'"),
        ({"certs": b""}, errors.ParseError, "got no bytes"),
        ({"certs": b"\x30\x82\xff\xff" + bytes(8)}, errors.ParseError, "expected at most"),
        ({"certs": NV_CHAIN_PEM[:-40]}, errors.ParseError, "aux 'certs'"),
        ({"certs": NV_CHAIN_PEM, "rim:a": b"<not xml"}, errors.ParseError, "RIM|XML"),
        ({"certs": NV_CHAIN_PEM, **{f"rim:{i}": b"" for i in range(17)}}, errors.ParseError, "17 RIMs"),
    ],
)
def test_nvidia_aux_is_hostile_input(aux: dict[str, bytes], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PlatformVerifier().verify(Platform.NVIDIA_GPU, NV_REPORT, aux, at=NV_AT)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"\x30\x82\x01\x00" + b))
def test_certificate_chain_parser_only_raises_parse_error(data: bytes) -> None:
    try:
        load_certificate_chain(data, "aux 'certs'")
    except errors.ParseError:
        pass


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

"""confide.verify._pinned_chain.load_chain_certificate: a certificate carried in evidence whose
fields do not parse is a CertificateChainError when loaded, not a ValueError later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from confide.errors import CertificateChainError
from confide.verify._pinned_chain import load_chain_certificate


def _cert(extension: x509.ExtensionType | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_well_formed_certificate_loads() -> None:
    assert load_chain_certificate(_cert(), "ak_cert").serial_number == 7


def test_a_malformed_extension_is_refused_at_load() -> None:
    # A BasicConstraints extension whose value is not a BasicConstraints: the DER wrapper parses,
    # the extension only when read.
    bad = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x04\x01\xff")
    with pytest.raises(CertificateChainError, match="ak_cert: not a DER certificate"):
        load_chain_certificate(_cert(bad), "ak_cert")


def test_not_der_is_refused() -> None:
    with pytest.raises(CertificateChainError, match="cabundle\\[0\\]: not a DER certificate"):
        load_chain_certificate(b"\x30\x03\x02\x01\x00", "cabundle[0]")

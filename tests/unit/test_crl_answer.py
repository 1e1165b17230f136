"""confide.verify.crl_answer: the checks of a CAS's CRL answer that a real CAS never sends
(tests/integration/test_cas_crl_checked.py has the ones it does, altered on the way): a delta
CRL, an unprocessed critical extension, a CA certificate given that is not one certificate; a
CA without keyUsage. Time is given, never read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide import errors
from confide.verify.crl_answer import check_crl_answer, crl_pem, load_ca_certificate

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unit CA")])
KEY = ec.generate_private_key(ec.SECP256R1())


def ca_certificate(*, key_usage: x509.KeyUsage | None = None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
        .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )  # fmt: skip
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(KEY, hashes.SHA256())


def crl_der(*, next_update: datetime | None = NOW + timedelta(days=7), extension: x509.ExtensionType | None = None,
            critical: bool = False) -> bytes:  # fmt: skip
    builder = x509.CertificateRevocationListBuilder().issuer_name(NAME).last_update(NOW - timedelta(hours=1))
    if next_update is not None:
        builder = builder.next_update(next_update)
    if extension is not None:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def usage(*, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def test_a_current_crl_of_the_ca_is_checked_and_reported() -> None:
    der = crl_der(extension=x509.CRLNumber(7))
    for data, pem in ((der, False), (crl_pem(der), True)):
        checked = check_crl_answer(data, pem=pem, ca=ca_certificate(), now=NOW)
        assert (checked.data, checked.number, checked.entries, checked.issuer) == (data, 7, 0, "CN=Unit CA")
        assert checked.verified and not checked.expired
        assert checked.next_update == NOW + timedelta(days=7) and checked.this_update == NOW - timedelta(
            hours=1
        )
    # keyUsage with cRLSign, and none at all (a CA without keyUsage may sign CRLs: §4.2.1.3)
    assert check_crl_answer(der, pem=False, ca=ca_certificate(key_usage=usage(crl_sign=True)), now=NOW)
    with pytest.raises(errors.CertificateChainError, match="without cRLSign"):
        check_crl_answer(der, pem=False, ca=ca_certificate(key_usage=usage(crl_sign=False)), now=NOW)


def test_expiry_is_judged_at_the_time_given() -> None:
    der = crl_der()
    assert not check_crl_answer(der, pem=False, ca=None, now=NOW + timedelta(days=7)).expired
    with pytest.raises(errors.CollateralExpiredError):
        check_crl_answer(der, pem=False, ca=None, now=NOW + timedelta(days=7, seconds=1))


@pytest.mark.parametrize(
    ("extension", "critical", "message"),
    [
        (x509.DeltaCRLIndicator(6), True, "a delta CRL"),
        (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True,
         "critical extension 1.3.6.1.4.1.99999.1"),
    ],
    ids=["delta", "critical-unknown"],
)  # fmt: skip
def test_a_crl_that_is_not_the_complete_crl_is_refused(
    extension: x509.ExtensionType, critical: bool, message: str
) -> None:
    with pytest.raises(errors.CollateralError, match=message):
        check_crl_answer(
            crl_der(extension=extension, critical=critical), pem=False, ca=ca_certificate(), now=NOW
        )


def test_the_ca_certificate_given_is_one_certificate() -> None:
    pem = ca_certificate().public_bytes(serialization.Encoding.PEM)
    assert load_ca_certificate(pem, "ca").subject == NAME
    with pytest.raises(errors.ParseError, match="got 2 certificates"):
        load_ca_certificate(pem + pem, "ca")
    with pytest.raises(errors.ParseError):
        load_ca_certificate(b"not a certificate", "ca")

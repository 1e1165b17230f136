"""The one issuer check shared by every chain checker (RFC 5280 §6.1.4), and the eager parsing of
certificates and CRLs given as input, on generated certificates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from confide.errors import CertificateChainError, ParseError
from confide.verify._pinned_chain import load_chain_certificate
from confide.verify.x509util import (
    check_certificate_fields,
    check_issuer_is_ca,
    load_certificate_chain,
    load_der_certificate,
    load_der_crl,
    name_of,
    verify_chain_signatures,
    verify_issued_by,
)
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn
from pki import issue, key_usage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool | None = True,
    path_length: int | None = None,
    cert_sign: bool | None = True,
) -> x509.Certificate:
    issuer_cn, issuer_key = issuer or (cn, key)
    return issue(
        cn, key.public_key(), issuer=issuer_cn, signing_key=issuer_key,
        not_before=T0, not_after=T0 + timedelta(days=30), ca=ca, path_length=path_length,
        usage=None if cert_sign is None else key_usage(cert_sign=cert_sign, digital_signature=True),
        hash_algorithm=hashes.SHA256(),
    )  # fmt: skip


KEYS = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]


def test_a_good_three_level_chain_passes() -> None:
    root = _cert("root", KEYS[0], path_length=1)
    inter = _cert("inter", KEYS[1], ("root", KEYS[0]), path_length=0)
    leaf = _cert("leaf", KEYS[2], ("inter", KEYS[1]), ca=False, cert_sign=False)
    verify_chain_signatures([leaf, inter], root, b"", "test chain")


@pytest.mark.parametrize(
    ("kwargs", "below", "message"),
    [
        ({"ca": None}, 0, "no BasicConstraints extension: not a CA"),
        ({"ca": False}, 0, "is not a CA"),
        ({"path_length": 0}, 1, "path length allows 0"),
        ({"cert_sign": False}, 0, "KeyUsage lacks keyCertSign"),
    ],
)
def test_issuers_that_may_not_sign_are_refused(kwargs: dict[str, object], below: int, message: str) -> None:
    issuer = _cert("issuer", KEYS[0], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CertificateChainError, match=message):
        check_issuer_is_ca(issuer, below=below, what="test chain")


def test_keyusage_is_optional_when_basicconstraints_says_ca() -> None:
    check_issuer_is_ca(_cert("issuer", KEYS[0], cert_sign=None), below=5, what="test chain")


def test_a_link_signed_by_another_key_is_refused() -> None:
    root = _cert("root", KEYS[0])
    forged = _cert("leaf", KEYS[2], ("root", KEYS[3]), ca=False, cert_sign=False)  # same name, other key
    with pytest.raises(
        CertificateChainError, match="signature of CN=leaf by CN=root: signature does not verify"
    ):
        verify_issued_by(forged, root, "test chain")
    with pytest.raises(CertificateChainError, match="test chain: signature of CN=leaf"):
        verify_chain_signatures([forged], root, b"", "test chain")
    bad_root = _cert("root", KEYS[0], ("root", KEYS[3]))
    with pytest.raises(CertificateChainError, match="self-signature of CN=root"):
        verify_issued_by(bad_root, bad_root, "test chain")


# --- malformed certificates and CRLs that cryptography loads but cannot read later ----------

_GOOD = _cert("leaf", KEYS[0], ("issuer", KEYS[1]), ca=False)
_GOOD_DER = _GOOD.public_bytes(Encoding.DER)
_MALFORMED = {
    "version 4": bad_version(_GOOD_DER),
    "issuer CN as BIT STRING": bitstring_cn(_GOOD_DER, 0),
    "subject CN as BIT STRING": bitstring_cn(_GOOD_DER, 1),
    "issuer CN with tag 0": bad_name_tag(_GOOD_DER, 0),
    "subject CN with tag 0": bad_name_tag(_GOOD_DER, 1),
}


def _with_directory_name_san() -> bytes:
    """A certificate whose SubjectAlternativeName holds a directoryName (CN=dir): the third CN."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "leaf")])
    san = x509.SubjectAlternativeName(
        [x509.DirectoryName(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dir")]))]
    )
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(KEYS[2].public_key())
        .serial_number(5).not_valid_before(T0).not_valid_after(T0 + timedelta(days=1))
        .add_extension(san, critical=False).sign(KEYS[2], hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(Encoding.DER)


# A name inside an extension is parsed when the extensions are: TypeError escaped from there.
_MALFORMED["SAN directoryName CN as BIT STRING"] = bitstring_cn(_with_directory_name_san(), 2)
_MALFORMED["SAN directoryName CN with tag 0"] = bad_name_tag(_with_directory_name_san(), 2)


@pytest.mark.parametrize("der", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_malformed_certificates_are_typed_errors_at_load(der: bytes) -> None:
    # InvalidVersion (not a ValueError) at load; ValueError or TypeError when a name is read.
    with pytest.raises(ParseError, match=r"not a valid DER X\.509 certificate"):
        load_der_certificate(der, "cert")
    with pytest.raises(ParseError):
        load_certificate_chain(der + _GOOD_DER, "chain")
    with pytest.raises(CertificateChainError, match="not a DER certificate"):
        load_chain_certificate(der, "certificate")


def test_well_formed_certificate_loads_and_names_stay_readable() -> None:
    cert = load_der_certificate(_GOOD_DER, "cert")
    assert name_of(cert) == "CN=leaf" and check_certificate_fields(cert) is cert


def _crl_der() -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "issuer")]))
        .last_update(T0)
        .next_update(T0 + timedelta(days=1))
        .sign(KEYS[1], hashes.SHA256())
    )
    return crl.public_bytes(Encoding.DER)


@pytest.mark.parametrize("edit", [bitstring_cn, bad_name_tag], ids=["BIT STRING CN", "tag 0 CN"])
def test_crl_with_malformed_issuer_is_a_parse_error(edit: Callable[[bytes], bytes]) -> None:
    assert load_der_crl(_crl_der(), "crl").issuer == _GOOD.issuer
    with pytest.raises(ParseError, match=r"not a valid DER X\.509 CRL"):
        load_der_crl(edit(_crl_der()), "crl")

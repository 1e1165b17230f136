"""The one issuer check shared by every chain checker (RFC 5280 §6.1.4), on generated certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.errors import CertificateChainError
from confide.verify.x509util import check_issuer_is_ca, verify_chain_signatures, verify_issued_by

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
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=30))
    )
    if ca is not None:
        b = b.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if cert_sign is not None:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                crl_sign=cert_sign, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    return b.sign(issuer_key, hashes.SHA256())


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

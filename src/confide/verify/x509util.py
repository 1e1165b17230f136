"""Certificate-chain and CRL checks shared by the verifiers.

Chains are checked link by link (issuer name, signature, CA constraints, key usage) rather than
with a Web-PKI path builder: vendor attestation PKIs (Intel PCK, AMD KDS, NVIDIA) do not follow
Web-PKI profiles. The root is pinned by the SHA-256 of its DER encoding. Validity dates are a
separate step (``check_validity``) so that a verified chain can be cached and only its dates
re-checked at each verification time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ParseError,
    SignatureError,
)

__all__ = [
    "check_crl",
    "check_validity",
    "load_der_certificate",
    "load_der_crl",
    "verify_chain_signatures",
]


def load_der_certificate(der: bytes, what: str) -> x509.Certificate:
    """Load a certificate and parse every field now: ``cryptography`` parses lazily, and a
    malformed field must be a ParseError here, not a ValueError later."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number
        cert.public_key()
        _ = cert.signature_hash_algorithm
    except (
        ValueError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise ParseError(f"not a valid DER X.509 certificate ({exc})", structure=what) from None
    return cert


def load_der_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(der)
        crl.issuer.rfc4514_string()
        _ = crl.last_update_utc, crl.next_update_utc, crl.extensions, len(crl)
        for revoked in crl:
            _ = revoked.serial_number
    except (
        ValueError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise ParseError(f"not a valid DER X.509 CRL ({exc})", structure=what) from None
    return crl


def _is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return bc.ca, bc.path_length


def _may_sign_certs(cert: x509.Certificate) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # KeyUsage is optional; BasicConstraints decides
    return ku.key_cert_sign


def verify_chain_signatures(
    chain: Sequence[x509.Certificate], root_sha256: bytes, what: str, root_der: bytes | None = None
) -> None:
    """Check that ``chain`` (leaf first, root last) links up to the pinned root.

    Raises CertificateChainError naming the failing link. Dates are not checked here.
    """
    if len(chain) < 2:
        raise CertificateChainError(
            f"{what}: got {len(chain)} certificate(s), expected a leaf and a root at least"
        )
    root = chain[-1]
    root_bytes = root.public_bytes(Encoding.DER)
    got = hashlib.sha256(root_bytes).digest()
    if got != root_sha256 or (root_der is not None and root_bytes != root_der):
        raise CertificateChainError(
            f"{what}: root certificate {root.subject.rfc4514_string()} with SHA-256 {got.hex()} "
            f"is not the pinned root {root_sha256.hex()}"
        )
    for depth in range(len(chain) - 1):
        child, issuer = chain[depth], chain[depth + 1]
        is_ca, path_len = _is_ca(issuer)
        if not is_ca or not _may_sign_certs(issuer):
            raise CertificateChainError(
                f"{what}: issuer {issuer.subject.rfc4514_string()} is not a CA allowed to sign certificates"
            )
        if path_len is not None and path_len < depth:
            raise CertificateChainError(
                f"{what}: path length constraint of {issuer.subject.rfc4514_string()} exceeded"
            )
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateChainError(
                f"{what}: {child.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()}"
                f" ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
            ) from None
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateChainError(f"{what}: pinned root's self-signature does not verify") from None


def check_validity(
    chain: Sequence[x509.Certificate], at: datetime, what: str, *, collateral: bool = False
) -> None:
    """Every certificate of ``chain`` must be valid at ``at``."""
    error = CollateralExpiredError if collateral else CertificateChainError
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise error(
                f"{what}: {cert.subject.rfc4514_string()} is valid from "
                f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}, "
                f"not at {at.isoformat()}"
            )


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, what: str) -> None:
    """The CRL must be issued and signed by ``issuer`` (its dates are checked by the caller)."""
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"{what}: issued by {crl.issuer.rfc4514_string()}, expected {issuer.subject.rfc4514_string()}"
        )
    try:
        ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SignatureError(f"{what}: signature does not verify with {issuer.subject.rfc4514_string()}")

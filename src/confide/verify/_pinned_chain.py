"""Certificate chains that end at a pinned root, checked link by link (the per-link checks
are those of :mod:`confide.verify.x509util`; this module adds dates and the root's
self-signature for chains that carry their root).

Used where ``cryptography``'s Web-PKI path builder does not fit (device identity chains with
no SAN/EKU conventions, short-lived AWS Nitro leaves). RFC 5280 §6.1 in the small: for each
link the issuer's name and signature, every certificate's validity period at ``at``, that
every issuer is a CA (BasicConstraints cA, §4.2.1.9) allowed to sign certificates (KeyUsage
keyCertSign when present, §4.2.1.3) within its path length, and that the last certificate is
byte-for-byte the pinned root.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from confide.errors import CertificateChainError
from confide.verify.x509util import (
    CERTIFICATE_ERRORS,
    check_cert_dates,
    check_issuer_is_ca,
    parse_certificate_fields,
    verify_issued_by,
)

__all__ = [
    "check_signing_end_entity",
    "extensions",
    "fingerprint",
    "load_chain_certificate",
    "load_pinned_root",
    "subject_cn",
    "verify_pinned_chain",
]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def subject_cn(cert: x509.Certificate) -> str:
    try:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        value = names[0].value if names else cert.subject.rfc4514_string()
    except (ValueError, TypeError):  # a malformed name (parsed lazily, when read)
        return "<malformed subject>"
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def extensions(cert: x509.Certificate) -> x509.Extensions:
    """The certificate's extensions; a malformed one is a chain error (parsed lazily)."""
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateChainError(f"certificate {subject_cn(cert)!r}: malformed extension: {exc}") from None


def check_signing_end_entity(cert: x509.Certificate, what: str) -> None:
    """``cert`` signs data, not certificates: not a CA (BasicConstraints cA false or absent, RFC
    5280 §4.2.1.9) and, with a KeyUsage extension, ``digitalSignature`` (§4.2.1.3).
    :class:`CertificateChainError` naming ``what`` otherwise."""
    ext = extensions(cert)
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CertificateChainError(
                f"{what} {subject_cn(cert)!r} is a CA certificate, expected an end entity"
            )
    except x509.ExtensionNotFound:
        pass
    try:
        if not ext.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise CertificateChainError(f"{what} {subject_cn(cert)!r}: KeyUsage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass


def load_chain_certificate(der: bytes, what: str) -> x509.Certificate:
    """A DER certificate of a chain carried in evidence (a Nitro document's ``certificate`` and
    ``cabundle``, a GCE AK certificate and its intermediates). One that does not parse breaks
    the chain: :class:`~confide.errors.CertificateChainError` ``"<what>: not a DER certificate:
    <reason>"``. The fields verification reads later are parsed here (``cryptography`` parses
    lazily), so that a malformed extension, date or key is this error too, not a ``ValueError``
    in the middle of verification."""
    try:
        return parse_certificate_fields(der)
    except CERTIFICATE_ERRORS as exc:
        raise CertificateChainError(f"{what}: not a DER certificate: {exc}") from None


def load_pinned_root(filename: str, expected_sha256: str) -> x509.Certificate:
    """Load a root shipped in ``confide/roots/`` and check its pinned SHA-256 fingerprint."""
    data = (resources.files("confide") / "roots" / filename).read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    got = fingerprint(cert)
    if got != expected_sha256:
        raise CertificateChainError(
            f"embedded root {filename}: got fingerprint {got}, expected {expected_sha256} (package tampered?)"
        )
    return cert


def verify_pinned_chain(chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime) -> None:
    """Check ``chain`` (leaf first, root last) against the pinned ``root`` at time ``at``.

    Raises :class:`CertificateChainError` naming the failing certificate.
    """
    if len(chain) < 2:
        raise CertificateChainError(f"got {len(chain)} certificate(s), expected at least a leaf and the root")
    if chain[-1] != root:
        raise CertificateChainError(
            f"chain ends at {subject_cn(chain[-1])!r} (SHA-256 {fingerprint(chain[-1])}),"
            f" expected the pinned root {subject_cn(root)!r} (SHA-256 {fingerprint(root)})"
        )
    for position, cert in enumerate(chain):
        what = "leaf" if position == 0 else ("root" if position == len(chain) - 1 else "intermediate")
        check_cert_dates(cert, at, functools.partial(_label, what, cert))
        if position == 0:
            continue
        check_issuer_is_ca(cert, below=position - 1, what="certificate chain")
    for position in range(len(chain)):
        subject = chain[position]
        issuer = chain[min(position + 1, len(chain) - 1)]
        verify_issued_by(subject, issuer, "certificate chain")


def _label(what: str, cert: x509.Certificate) -> str:
    """How a refusal names a certificate of the chain (formatted only for a refusal)."""
    return f"{what} {subject_cn(cert)!r}"

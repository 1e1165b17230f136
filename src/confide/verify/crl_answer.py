"""A CAS's answer to a CRL request (``confide policy crl``, ``Cas.crl``, ``AsyncCas.crl``):
hostile input, read in three separate steps that the command and the SDK both use.

1. :func:`parse_crl_answer`: the answer is exactly one CRL in the form asked for, as the CAS
   encodes it (DER, or :func:`crl_pem`: RFC 7468 §5), every field parsed; else
   :class:`~confide.errors.ParseError`, so that no other bytes (a terminal's escape
   sequences, a second CRL) are written where the user asked for one CRL.
2. :func:`verify_crl_by_ca`: issued and signed by the CA certificate the caller trusts for that
   CA (RFC 5280 §6.3.3 (f), (g), (j)): the CRL's issuer is the CA's subject, its
   authorityKeyIdentifier (when both carry one) is the CA's subjectKeyIdentifier, the CA's key
   may sign CRLs (keyUsage cRLSign when keyUsage is present, §4.2.1.3), the signature verifies,
   and it is the CA's complete CRL (no delta or restricted-scope CRL, no unprocessed critical
   extension: :func:`~confide.verify.x509util.check_crl`).
3. :func:`appraise_crl_dates`: current at ``now`` (a time the caller gives: nothing here reads
   the clock): its nextUpdate (§5.1.2.5) is not past, unless the caller allows it explicitly.

:func:`check_crl_answer` runs them and returns a :class:`CheckedCrl` that says what was checked
(thisUpdate, nextUpdate, number, the CA certificate's SHA-256, or none when unverified).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.errors import CertificateChainError, CollateralError, CollateralExpiredError, ParseError
from confide.verify.x509util import (
    CERTIFICATE_ERRORS,
    check_crl,
    check_crl_fields,
    load_certificate_chain,
    name_of,
)

__all__ = [
    "CheckedCrl",
    "appraise_crl_dates",
    "check_crl_answer",
    "crl_pem",
    "load_ca_certificate",
    "parse_crl_answer",
    "verify_crl_by_ca",
]

WHAT = "the CAS's CRL answer"


def crl_pem(der: bytes) -> bytes:
    """RFC 7468 §5: a CRL as PEM (``X509 CRL``), as the CAS encodes it (64-character lines)."""
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN X509 CRL-----\n" + lines + b"\n-----END X509 CRL-----\n"


def parse_crl_answer(data: bytes, *, pem: bool) -> x509.CertificateRevocationList:
    """``data`` as one CRL and nothing else, exactly as the CAS encodes it (DER, or
    :func:`crl_pem` with ``pem``), its fields parsed (issuer, dates, extensions); else
    :class:`ParseError`. Nothing about its issuer, signature or dates is judged here."""
    form = "PEM" if pem else "DER"
    try:
        if pem:
            crl = x509.load_pem_x509_crl(data)
            exact = crl_pem(crl.public_bytes(serialization.Encoding.DER)) == data
        else:
            crl = x509.load_der_x509_crl(data)
            exact = crl.public_bytes(serialization.Encoding.DER) == data
    except CERTIFICATE_ERRORS:
        exact = False
    if not exact:
        raise ParseError(f"expected one CRL in {form} and nothing else", structure=WHAT)
    try:
        check_crl_fields(crl)
        for entry in crl:  # every entry's serial, date and extensions, before any is used
            _ = entry.serial_number, entry.revocation_date_utc, entry.extensions
    except (*CERTIFICATE_ERRORS, TypeError) as exc:
        raise ParseError(f"got a malformed CRL ({exc})", structure=WHAT) from None
    return crl


def load_ca_certificate(data: bytes, what: str) -> x509.Certificate:
    """One CA certificate, PEM or DER, every field parsed (a chain or anything else:
    :class:`ParseError`)."""
    certs = load_certificate_chain(data, what)
    if len(certs) != 1:
        raise ParseError(
            f"got {len(certs)} certificates, expected the CA's certificate alone", structure=what
        )
    return certs[0]


def verify_crl_by_ca(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> None:
    """RFC 5280 §6.3.3: ``crl`` is the complete CRL issued and signed by ``ca``.

    (f) the CA's key may sign CRLs: keyUsage, when present, has cRLSign
    (:class:`CertificateChainError`); the CRL's issuer is the CA's subject, and its
    authorityKeyIdentifier, when both carry one, is the CA's subjectKeyIdentifier (§5.2.1)
    (:class:`CollateralError`); (g) the signature verifies with the CA's key
    (:class:`~confide.errors.SignatureError`); (b)(2) no delta CRL, no CRL of restricted scope,
    no unprocessed critical extension (:class:`CollateralError`)."""
    ca_name = name_of(ca)
    try:
        usage: x509.KeyUsage | None = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        raise CertificateChainError(f"{WHAT}: the CA certificate {ca_name} has keyUsage without cRLSign")
    # The issuer is compared here before the key identifiers (check_crl compares it again, for
    # its other callers): another CA's CRL is named as such, with the issuer it carries.
    try:
        same = crl.issuer == ca.subject
    except ValueError:
        raise ParseError("malformed issuer name", structure=WHAT) from None
    if not same:
        raise CollateralError(f"{WHAT}: not issued by {ca_name} (its issuer: {crl.issuer.rfc4514_string()})")
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    try:
        ski: bytes | None = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = None
    if aki is not None and ski is not None and aki != ski:
        raise CollateralError(
            f"{WHAT}: got authorityKeyIdentifier {aki.hex()}, expected {ski.hex()} (the key of {ca_name})"
        )
    check_crl(crl, ca, WHAT)


def appraise_crl_dates(crl: x509.CertificateRevocationList, now: datetime, *, allow_expired: bool) -> None:
    """RFC 5280 §5.1.2.5, §6.3.3 (a)(2): the CRL has a nextUpdate (the CAS always sets one) and,
    unless ``allow_expired``, ``now`` is not past it (:class:`CollateralExpiredError`)."""
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralError(f"{WHAT} has no nextUpdate, expected one (RFC 5280 §5.1.2.5)")
    if now > next_update and not allow_expired:
        this_update = crl.last_update_utc.isoformat()
        raise CollateralExpiredError(
            f"{WHAT} expired: got nextUpdate {next_update.isoformat()} (thisUpdate {this_update}), "
            f"expected a time not before {now.isoformat()} (the CAS issues the next CRL before it)"
        )


@dataclass(frozen=True)
class CheckedCrl:
    """A CRL answer that :func:`check_crl_answer` read: ``data`` as the CAS sent it (DER, or PEM),
    its issuer (RFC 4514), number, thisUpdate, nextUpdate and number of entries, and the SHA-256
    of the CA certificate (DER) whose signature it carries, or ``None`` when it was read
    ``unverified`` (the form and the dates only)."""

    data: bytes = field(repr=False)
    issuer: str
    number: int | None
    this_update: datetime
    next_update: datetime
    entries: int
    ca_sha256: str | None
    expired: bool

    @property
    def verified(self) -> bool:
        """Whether its signature was checked against a CA certificate."""
        return self.ca_sha256 is not None

    def summary(self) -> str:
        """One line for a person: what was checked (the issuer is a hostile string: the
        caller escapes the line before it reaches a terminal)."""
        number = "no number" if self.number is None else f"number {self.number}"
        checked = (
            f"signature verified with the CA certificate (SHA-256 {self.ca_sha256})"
            if self.ca_sha256 is not None
            else "UNVERIFIED: no CA certificate checked its signature"
        )
        expired = " (EXPIRED, allowed)" if self.expired else ""
        return (
            f"CRL of {self.issuer}: {number}, {self.entries} entries, thisUpdate "
            f"{self.this_update.isoformat()}, nextUpdate {self.next_update.isoformat()}{expired}; {checked}"
        )


def check_crl_answer(
    data: bytes,
    *,
    pem: bool,
    ca: x509.Certificate | None,
    now: datetime,
    allow_expired: bool = False,
) -> CheckedCrl:
    """:func:`parse_crl_answer`, :func:`verify_crl_by_ca` (unless ``ca`` is ``None``: the caller
    asked for an unverified CRL, and says so), :func:`appraise_crl_dates` at ``now``."""
    crl = parse_crl_answer(data, pem=pem)
    if ca is not None:
        verify_crl_by_ca(crl, ca)
    appraise_crl_dates(crl, now, allow_expired=allow_expired)
    next_update = crl.next_update_utc
    assert next_update is not None  # appraise_crl_dates refused a CRL without one
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    ca_sha256 = None
    if ca is not None:
        ca_sha256 = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    issuer = crl.issuer.rfc4514_string()
    return CheckedCrl(
        data, issuer, number, crl.last_update_utc, next_update, len(crl), ca_sha256, now > next_update
    )

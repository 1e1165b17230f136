"""Revocation of a GCE AK certificate and its intermediates by Google's CRLs (RFC 5280 §6.3, in
the small), for :func:`confide.verify.gce_tpm.verify_gce_attestation` when it is given CRLs.

Google names a CRL Distribution Point (``pki.goog``, or a Private CA bucket) in its AK
certificates and intermediates. Where the CRLs come from (a file, or the CAS's fetches of those
points) is the caller's business: nothing here reads the clock or opens a socket. For each
certificate of the verified chain below the root (leaf first), with ``issuer`` the next one:

1. The CRLs that cover it: issuer name = its issuer name, not a delta CRL (RFC 5280 §5.2.4), and
   an Issuing Distribution Point, if any, not limited to the other kind of certificate
   (``onlyContainsUserCerts`` for a CA, ``onlyContainsCACerts`` for the AK certificate) nor to a
   distribution point the certificate does not name (RFC 5280 §6.3.3 (b)(2)(i): its
   ``distributionPoint`` full name must be one of the certificate's CRL Distribution Points'
   full names; one relative to the issuer's name is not read, so such a CRL covers nothing). None:
   :class:`CollateralMissingError` (revocation checking is on: fail closed). A covering CRL that
   is indirect, limited to some reasons or to attribute certificates: :class:`CollateralError`
   (partitioned CRLs are not supported, so such a CRL cannot say the certificate is not revoked).
2. Every covering CRL must be signed by ``issuer`` (:func:`confide.verify.x509util.check_crl`:
   :class:`SignatureError` otherwise): a CRL of that name made by anyone else is refused, not
   skipped.
3. The newest of them (latest thisUpdate) must be current at ``at``: thisUpdate ≤ ``at`` ≤
   nextUpdate (:class:`CollateralExpiredError`); one without nextUpdate cannot tell
   (:class:`CollateralError`).
4. The certificate's serial listed by any of them: :class:`RevocationError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from confide.errors import (
    CollateralError,
    CollateralExpiredError,
    CollateralMissingError,
    ParseError,
    RevocationError,
)
from confide.verify._pinned_chain import subject_cn
from confide.verify.result import ClaimValue
from confide.verify.x509util import CERTIFICATE_ERRORS, check_crl, load_der_crl, name_of, split_der

__all__ = ["MAX_CRLS", "check_chain_revocation", "crl_dp_urls", "crl_is_current", "load_crls"]

MAX_CRLS = 64
"""At most this many CRLs in one input (Google's vTPM chains need two or three)."""
_PEM = re.compile(rb"-----BEGIN X509 CRL-----(.*?)-----END X509 CRL-----", re.DOTALL)


def load_crls(data: bytes, what: str) -> tuple[x509.CertificateRevocationList, ...]:
    """CRLs from PEM (``X509 CRL`` blocks; nothing else but whitespace around them) or
    concatenated DER; each parsed eagerly. Malformed, or none: :class:`ParseError`."""
    ders: list[bytes] = []
    if b"-----BEGIN" in data:
        blocks = list(_PEM.finditer(data))
        rest = _PEM.sub(b"", data)
        if not blocks or rest.strip():
            raise ParseError("expected only PEM X509 CRL blocks", structure=what)
        for i, block in enumerate(blocks):
            try:
                ders.append(base64.b64decode(b"".join(block.group(1).split()), validate=True))
            except ValueError:
                raise ParseError(f"PEM block {i}: not base64", structure=what) from None
    else:
        ders = split_der(data, what, noun="CRL", max_count=MAX_CRLS, max_size=None, length_bytes=4)
    if not ders:
        raise ParseError("got no CRL", structure=what)
    if len(ders) > MAX_CRLS:
        raise ParseError(f"got {len(ders)} CRLs, expected at most {MAX_CRLS}", structure=what)
    return tuple(load_der_crl(der, f"{what}[{i}]") for i, der in enumerate(ders))


def crl_dp_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) URIs of the certificate's CRL Distribution Points (full names of points
    without reasons or a CRL issuer of their own, RFC 5280 §4.2.1.13), in order; a malformed
    extension: :class:`ParseError`."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"malformed extension: {exc}", structure=f"certificate {name_of(cert)}") from None
    return [
        name.value
        for point in points
        if point.full_name and point.reasons is None and point.crl_issuer is None
        for name in point.full_name
        if isinstance(name, x509.UniformResourceIdentifier)
        and name.value.isascii()
        and name.value.lower().startswith(("http://", "https://"))
    ]


def crl_is_current(crl: x509.CertificateRevocationList, at: datetime) -> bool:
    """thisUpdate ≤ ``at`` ≤ nextUpdate (a CRL without nextUpdate never is)."""
    next_update = crl.next_update_utc
    return next_update is not None and crl.last_update_utc <= at <= next_update


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _covers(crl: x509.CertificateRevocationList, cert: x509.Certificate, what: str) -> bool:
    """Whether ``crl`` (issued under ``cert``'s issuer name) is a full CRL for ``cert``'s kind."""
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return False
    except x509.ExtensionNotFound:
        pass
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return True
    if idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs:
        raise CollateralError(
            f"{what}: an indirect CRL, or one for some reasons or attribute certificates only"
            " (Issuing Distribution Point): partitioned CRLs are not supported"
        )
    if idp.relative_name is not None:
        return False  # scoped to a distribution point named relative to the issuer: not read
    if idp.full_name is not None and not set(idp.full_name) & _dp_names(cert):
        # RFC 5280 §6.3.3 (b)(2)(i): a CRL scoped to a distribution point covers only the
        # certificates naming that point. Another partition of the same issuer (genuine,
        # current, signed) need not list this certificate's serial: served for its URL, it
        # would hide a revocation.
        return False
    ca = _is_ca(cert)
    return not (idp.only_contains_user_certs and ca) and not (idp.only_contains_ca_certs and not ca)


def _dp_names(cert: x509.Certificate) -> set[x509.GeneralName]:
    """The full names of every CRL Distribution Point of ``cert``."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return set()
    return {name for point in points if point.full_name for name in point.full_name}


def check_chain_revocation(
    chain: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
) -> list[ClaimValue]:
    """Check every certificate of ``chain`` (leaf first, pinned root last; already verified)
    below the root against ``crls`` at ``at`` (module docstring). Returns, for each, what was
    checked: ``{"certificate", "crl_issuer", "crl_number", "this_update", "next_update"}``."""
    checked: list[ClaimValue] = []
    for position in range(len(chain) - 1):
        cert, issuer = chain[position], chain[position + 1]
        what = "AK certificate" if position == 0 else f"intermediate {subject_cn(cert)!r}"
        try:
            named = [crl for crl in crls if crl.issuer == cert.issuer]
            covering = [crl for crl in named if _covers(crl, cert, f"CRL of {name_of(issuer)}")]
        except CERTIFICATE_ERRORS as exc:
            raise ParseError(f"malformed CRL: {exc}", structure=f"CRL of {name_of(issuer)}") from None
        if not covering:
            raise CollateralMissingError(
                f"{what}: no CRL of its issuer {name_of(issuer)} was given: with revocation checking on,"
                " a certificate whose CRL is missing is refused"
            )
        for crl in covering:
            check_crl(crl, issuer, f"CRL of {name_of(issuer)} for the {what}", scope_checked=True)
        newest = max(covering, key=lambda c: c.last_update_utc)
        this_update, next_update = newest.last_update_utc, newest.next_update_utc
        if at < this_update:
            raise CollateralExpiredError(
                f"CRL of {name_of(issuer)}: not yet valid at {iso_z(at)} (thisUpdate {iso_z(this_update)})"
            )
        if next_update is None:
            raise CollateralError(
                f"CRL of {name_of(issuer)} has no nextUpdate (RFC 5280 §5.1.2.5):"
                " cannot tell whether it is current"
            )
        if at > next_update:
            raise CollateralExpiredError(
                f"CRL of {name_of(issuer)}: expired (nextUpdate {iso_z(next_update)}, at {iso_z(at)})"
            )
        for crl in covering:
            try:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                revoked_at = None if entry is None else entry.revocation_date_utc
            except ValueError as exc:
                where = f"CRL of {name_of(issuer)}"
                raise ParseError(f"revokedCertificates: {exc}", structure=where) from None
            if revoked_at is not None:
                raise RevocationError(
                    f"{what} (serial {cert.serial_number:#x}) is revoked by the CRL of {name_of(issuer)}"
                    f" since {iso_z(revoked_at)}"
                )
        checked.append(
            {
                "certificate": name_of(cert),
                "crl_issuer": name_of(issuer),
                "crl_number": _crl_number(newest),
                "this_update": iso_z(this_update),
                "next_update": iso_z(next_update),
            }
        )
    return checked


def iso_z(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _crl_number(crl: x509.CertificateRevocationList) -> str | None:
    try:
        return format(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, "x")
    except x509.ExtensionNotFound:
        return None

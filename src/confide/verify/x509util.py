"""Certificate-chain and CRL checks shared by the verifiers.

Chains are checked link by link (issuer name, signature, CA constraints, key usage) rather than
with a Web-PKI path builder: vendor attestation PKIs (Intel PCK, AMD KDS, NVIDIA) do not follow
Web-PKI profiles. The root is pinned by the SHA-256 of its DER encoding. Validity dates are a
separate step (``check_validity``) so that a verified chain can be cached and only its dates
re-checked at each verification time.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    ConfideError,
    ParseError,
    SignatureError,
)
from confide.evidence.pem import MAX_CHAIN_LENGTH, normalise_pem, parse_pem_chain
from confide.lru import Lru

__all__ = [
    "CERTIFICATE_ERRORS",
    "check_cert_dates",
    "check_certificate_fields",
    "check_crl",
    "check_crl_fields",
    "check_issuer_is_ca",
    "check_names",
    "check_pinned_root",
    "check_validity",
    "load_certificate_chain",
    "load_der_certificate",
    "load_der_crl",
    "name_of",
    "parse_certificate_fields",
    "refused_at_its_time",
    "split_der",
    "verify_chain_signatures",
    "verify_issued_by",
]


CERTIFICATE_ERRORS = (
    ValueError,
    x509.InvalidVersion,  # not a ValueError: a version other than v1/v3 (RFC 5280 §4.1.2.1)
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
"""What :func:`parse_certificate_fields` raises for a malformed certificate."""


def parse_certificate_fields(der: bytes) -> x509.Certificate:
    """Load a certificate and parse the fields verification uses now (``cryptography`` parses
    lazily): a malformed extension, date, key or signature algorithm raises one of
    :data:`CERTIFICATE_ERRORS` here, not in the middle of verification. Callers turn it into
    the error their input deserves."""
    return check_certificate_fields(x509.load_der_x509_certificate(der))


# The DER of certificates whose fields parsed cleanly: parsing is deterministic, so the same
# bytes need the check once (the intermediates and roots of every chain repeat; reading every
# field costs ~40 µs per certificate).
_CHECKED: Lru[bytes, bool] = Lru(1024)


def forget_checked(der: bytes | None = None) -> None:
    """Drop one certificate (its DER), or all (``None``), from the memory of certificates whose
    fields were checked: for benchmarks that measure a process that has seen none of them."""
    if der is None:
        _CHECKED.clear()
    else:
        _CHECKED.pop(der)


def check_certificate_fields(cert: x509.Certificate) -> x509.Certificate:
    """Parse the fields of a loaded certificate that verification uses (see
    :func:`parse_certificate_fields`); raises one of :data:`CERTIFICATE_ERRORS`."""
    der = cert.public_bytes(serialization.Encoding.DER)
    if _CHECKED.get(der):
        return cert
    with _lazily_parsed("field"):
        _ = cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number
        cert.public_key()
        _ = cert.signature_hash_algorithm
    check_names(lambda: (cert.subject, cert.issuer))
    _CHECKED.put(der, True)
    return cert


@contextmanager
def _lazily_parsed(what: str) -> Iterator[None]:
    """Around the first read of lazily parsed fields. A malformed name (also inside an
    extension, e.g. GeneralNames) raises ValueError, or TypeError (a BIT STRING value under an
    OID other than x500UniqueIdentifier), when first read: both become ValueError "malformed
    <what>: ...". Over-long attribute values only warn in ``cryptography`` (Google's genuine
    intermediates have a 79-character CN); X.520 upper bounds are not enforced here, so that
    warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
        try:
            yield
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed {what}: {exc}") from None


def check_names(names: Callable[[], tuple[x509.Name, ...]]) -> None:
    """Read every attribute of ``names()``; a malformed name raises ValueError."""
    with _lazily_parsed("name"):
        for name in names():
            for attribute in name:
                _ = attribute.value


def check_crl_fields(crl: x509.CertificateRevocationList) -> x509.CertificateRevocationList:
    """Parse the fields of a loaded CRL that verification reads before its signature is checked
    (issuer name, dates, extensions; ``cryptography`` parses lazily); raises one of
    :data:`CERTIFICATE_ERRORS`."""
    check_names(lambda: (crl.issuer,))
    with _lazily_parsed("field"):
        _ = crl.last_update_utc, crl.next_update_utc, crl.extensions
        _ = crl.signature_hash_algorithm
    return crl


def load_der_certificate(der: bytes, what: str) -> x509.Certificate:
    """A certificate given as input: malformed → :class:`~confide.errors.ParseError`."""
    try:
        return parse_certificate_fields(der)
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"not a valid DER X.509 certificate ({exc})", structure=what) from None


MAX_CERT_DER_SIZE = 16 * 1024


def split_der(
    data: bytes,
    what: str,
    *,
    noun: str = "certificate",
    max_count: int = MAX_CHAIN_LENGTH,
    max_size: int | None = MAX_CERT_DER_SIZE,
    length_bytes: int = 3,
) -> list[bytes]:
    """Split concatenated DER values (certificates, CRLs: ``noun``) by their outer SEQUENCE
    headers (X.690 §8.1.2-8.1.3: tag 0x30, definite length in short or long form of at most
    ``length_bytes`` bytes); every byte must belong to one of them, at most ``max_count`` of
    them, each at most ``max_size`` bytes (``None``: no bound beyond the input's)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(out) == max_count:
            raise ParseError(
                f"got more than {max_count} {noun}s, expected at most {max_count}", structure=what
            )
        if len(data) - pos < 2:
            raise ParseError(
                f"got {len(data) - pos} trailing byte(s), expected a DER SEQUENCE (0x30) starting a {noun}",
                structure=what,
                offset=pos,
            )
        if data[pos] != 0x30:
            raise ParseError(
                f"got byte {data[pos]:#04x}, expected a DER SEQUENCE (0x30) starting a {noun}",
                structure=what,
                offset=pos,
            )
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if not 1 <= n <= length_bytes or len(data) - pos < 2 + n:
                raise ParseError(
                    f"{noun} length is not a 1-{length_bytes} byte DER length", structure=what, offset=pos
                )
            header, length = 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
        if max_size is not None and header + length > max_size:
            raise ParseError(
                f"got a {header + length}-byte {noun}, expected at most {max_size}",
                structure=what,
                offset=pos,
            )
        end = pos + header + length
        if end > len(data):
            raise ParseError(
                f"{noun} needs {header + length} bytes, {len(data) - pos} remain",
                structure=what,
                offset=pos,
            )
        out.append(data[pos:end])
        pos = end
    return out


def load_certificate_chain(data: bytes, what: str) -> list[x509.Certificate]:
    """Certificates in the order given (for chains: leaf first), from PEM (re-flowed, then
    parsed strictly: :mod:`confide.evidence.pem`) or concatenated DER; at most
    ``MAX_CHAIN_LENGTH``, each parsed eagerly (:func:`load_der_certificate`). Order and trust
    are the chain checker's business."""
    if b"-----BEGIN" in data:
        ders = parse_pem_chain(normalise_pem(data, structure=what), structure=what)
        if data.count(b"-----BEGIN") != len(ders):
            raise ParseError(
                f"got {data.count(b'-----BEGIN')} PEM blocks, {len(ders)} of them complete certificates",
                structure=what,
            )
    elif data:
        ders = split_der(data, what)
    else:
        raise ParseError("got no bytes, expected a PEM bundle or concatenated DER", structure=what)
    return [load_der_certificate(der, f"{what}[{i}]") for i, der in enumerate(ders)]


def name_of(cert: x509.Certificate) -> str:
    """The subject for messages; never raises (a malformed name is reported as such)."""
    try:
        return cert.subject.rfc4514_string()
    except (ValueError, TypeError):  # a malformed name (parsed lazily, when read)
        return "<malformed subject>"


def load_der_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        return check_crl_fields(x509.load_der_x509_crl(der))
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"not a valid DER X.509 CRL ({exc})", structure=what) from None


def check_issuer_is_ca(issuer: x509.Certificate, below: int, what: str) -> None:
    """RFC 5280 §6.1.4 (k), (l), (n): ``issuer`` must be a CA (BasicConstraints cA, §4.2.1.9)
    allowed to sign certificates (KeyUsage keyCertSign when present, §4.2.1.3) whose path
    length allows ``below`` CA certificates between it and the leaf. The one issuer check of
    every chain checker (DCAP, SEV-SNP, NVIDIA, Nitro)."""
    try:
        exts = issuer.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateChainError(f"{what}: issuer {name_of(issuer)}: malformed extension: {exc}") from None
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateChainError(
            f"{what}: issuer {name_of(issuer)} has no BasicConstraints extension: not a CA"
        ) from None
    if not bc.ca:
        raise CertificateChainError(
            f"{what}: issuer {name_of(issuer)} is not a CA (BasicConstraints cA false)"
        )
    if bc.path_length is not None and below > bc.path_length:
        raise CertificateChainError(
            f"{what}: issuer {name_of(issuer)}: got {below} CA certificates below it, path length"
            f" allows {bc.path_length}"
        )
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # KeyUsage is optional; BasicConstraints decides
    if not ku.key_cert_sign:
        raise CertificateChainError(f"{what}: issuer {name_of(issuer)}: KeyUsage lacks keyCertSign")


def verify_chain_signatures(
    chain: Sequence[x509.Certificate], root: x509.Certificate, root_der: bytes, what: str
) -> None:
    """Check that ``chain`` (leaf first, *without* the root) links up to the pinned ``root``.

    The caller has compared the chain's root bytes with the pinned root (``root_der``) or
    supplies none; the root's self-signature is not re-checked: it is pinned by value. Raises
    CertificateChainError naming the failing link. Dates are not checked here.
    """
    if not chain:
        raise CertificateChainError(f"{what}: no certificate below the root")
    full = [*chain, root]
    for depth in range(len(chain)):
        child, issuer = full[depth], full[depth + 1]
        check_issuer_is_ca(issuer, below=depth, what=what)
        verify_issued_by(child, issuer, what)


def verify_issued_by(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Issuer name and signature of one link (RFC 5280 §6.1.3 (a)(1), (a)(4))."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        reason = "signature does not verify" if isinstance(exc, InvalidSignature) else str(exc)
        if child is issuer:
            raise CertificateChainError(f"{what}: self-signature of {name_of(child)}: {reason}") from None
        raise CertificateChainError(
            f"{what}: signature of {name_of(child)} by {name_of(issuer)}: {reason}"
        ) from None


def check_pinned_root(root_der_in_chain: bytes, root_der: bytes, root_sha256: bytes, what: str) -> None:
    """The root certificate carried in evidence must be the pinned one, byte for byte."""
    if root_der_in_chain != root_der:
        got = hashlib.sha256(root_der_in_chain).hexdigest()
        raise CertificateChainError(
            f"{what}: root certificate with SHA-256 {got} is not the pinned root {root_sha256.hex()}"
        )


def check_cert_dates(
    cert: x509.Certificate,
    at: datetime,
    what: str | Callable[[], str],
    *,
    error: type[ConfideError] = CertificateChainError,
) -> None:
    """RFC 5280 §6.1.3 (a)(2): ``cert`` (named ``what`` in the message, or by what ``what()``
    returns: names are formatted only for a refusal) must be valid at ``at``. The one date
    check of every chain checker."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if start <= at <= end:
        return
    state = "is not yet valid" if at < start else "expired"
    label = what() if callable(what) else what
    raise error(
        f"{label} {state} (valid from {start.isoformat()} to {end.isoformat()}{_NOT_AT}{at.isoformat()})"
    )


_NOT_AT = ", not at "


def refused_at_its_time(exc: ConfideError) -> bool:
    """Whether ``exc`` is :func:`check_cert_dates`'s refusal: a certificate not valid at the
    verification time (which another time, ``evidence verify --at``, may verify)."""
    return " (valid from " in exc.message and _NOT_AT in exc.message and exc.message.endswith(")")


def check_validity(
    chain: Sequence[x509.Certificate], at: datetime, what: str, *, collateral: bool = False
) -> None:
    """Every certificate of ``chain`` must be valid at ``at``."""
    error = CollateralExpiredError if collateral else CertificateChainError
    for cert in chain:
        # The subject is formatted only for a refusal (RFC 4514 formatting costs ~25 µs).
        check_cert_dates(cert, at, functools.partial(_named, what, cert), error=error)


def _named(what: str, cert: x509.Certificate) -> str:
    return f"{what}: {name_of(cert)}"


_CRL_SCOPE_EXTENSIONS = {
    ExtensionOID.DELTA_CRL_INDICATOR: "a delta CRL (deltaCRLIndicator)",
    ExtensionOID.ISSUING_DISTRIBUTION_POINT: "a CRL of restricted scope (issuingDistributionPoint)",
}
"""CRL extensions that make a CRL other than the complete CRL of its issuer (RFC 5280 §5.2.4
delta CRL, §5.2.5 partitioned or indirect CRL): refused whether or not they are marked critical
(RFC 5280 requires both to be critical)."""


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    what: str,
    *,
    scope_checked: bool = False,
) -> None:
    """The CRL must be issued and signed by ``issuer`` (its dates are checked by the caller), and
    be the complete CRL of that issuer: no delta CRL, no CRL of restricted scope, no critical
    extension (of the CRL or of an entry) that is not processed here. RFC 5280 §5.2 and §5.3: a
    CRL with an unprocessed critical extension must not be used to determine revocation status;
    a delta or partitioned CRL taken as complete would miss revocations it does not cover.
    Intel's CRLs carry only the non-critical cRLNumber and authorityKeyIdentifier, and entries
    with non-critical reason codes.

    ``scope_checked``: the caller matches the Issuing Distribution Point against the certificate
    itself (:mod:`confide.verify.gce_crl`, RFC 5280 §6.3.3 (b)), so a CRL of restricted scope is
    not refused here; a delta CRL and other critical extensions still are."""
    try:
        same = crl.issuer == issuer.subject
    except ValueError:
        raise ParseError("malformed issuer name", structure=what) from None
    if not same:
        raise CollateralError(f"{what}: not issued by {name_of(issuer)}")
    try:
        ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SignatureError(f"{what}: signature does not verify with {name_of(issuer)}")
    try:
        _check_crl_scope(crl, what, scope_checked=scope_checked)
    except ValueError as exc:
        raise ParseError(str(exc), structure=what) from None


def _check_crl_scope(crl: x509.CertificateRevocationList, what: str, *, scope_checked: bool) -> None:
    with _lazily_parsed("extension"):
        for ext in crl.extensions:
            if scope_checked and ext.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
                continue
            kind = _CRL_SCOPE_EXTENSIONS.get(ext.oid)
            if kind is not None:
                raise CollateralError(f"{what} is {kind}, expected the issuer's complete CRL")
            if ext.critical:
                raise CollateralError(
                    f"{what} has the critical extension {ext.oid.dotted_string}, which is not processed "
                    "(RFC 5280 §5.2: such a CRL must not be used)"
                )
        for entry in crl:
            for ext in entry.extensions:
                if ext.critical:
                    raise CollateralError(
                        f"{what}: the entry of serial {entry.serial_number:x} has the critical extension "
                        f"{ext.oid.dotted_string}, which is not processed (RFC 5280 §5.3)"
                    )

"""Revocation of the certificates the CAS generated under its own CAs, and their CRLs
(docs/cas.md "Revocation"; RFC 5280 §5).

Scope: a certificate is *under a generated CA* when its declaration (``x509``, or an
intermediate ``x509-ca``) is one the CAS renews (:func:`confide.cas.secrets.renewable`) and its
``issuer`` is an ``x509-ca`` of the same policy that the CAS generated as well. Such a
certificate is recorded as revoked (``revoked_certificates``), in the write transaction of the
policy update that supersedes it, together with its earlier versions still valid:

- a new version because its declaration (or one it derives from) changed, or it became an
  import or ``issue_to_runtime``: reason ``superseded`` (RFC 5280 §5.3.1);
- the secret gone from the policy's new version: ``cessationOfOperation``.

A certificate issued at a release to the runtime's own key (``issue_to_runtime``) is recorded
(``runtime_certificates``: serial, issuing CA and version, notAfter, policy, secret, service,
session; dropped past notAfter) in the release's transaction. When it was signed by a generated
CA of the same policy, it is revoked like the above when a policy update changes its declaration
(or regenerates its issuer) or removes it. An owner may also revoke one certificate, or all valid
ones of a secret, with a reason of their choosing (:mod:`confide.cas.owner_revocation`).

A renewal (:mod:`confide.cas.renewal`) revokes nothing: the previous version stays valid until
its notAfter, so services still running with it keep working until they attest again.

An entry is keyed by the policy, the issuer's key identifier (the revoked certificate's
authorityKeyIdentifier, RFC 5280 §4.2.1.1) and the serial, so a CRL lists exactly what was
signed by its issuer's key. Each generated CA has one current CRL (``crls``), v2, signed by the
CA's current version (:func:`issue_crls`): issuer = the CA's subject, authorityKeyIdentifier
(§5.2.1), cRLNumber (§5.2.3, one more than the previous CRL of the CA, never reused),
thisUpdate = issue time, nextUpdate = thisUpdate + the CAS's ``crl_validity`` (§5.1.2.4-5), one
entry per revoked serial with its revocation date and reasonCode (§5.3.1), until the entry has
appeared on one CRL issued after the certificate's notAfter (§3.3). A new CRL is issued
in the same transaction whenever the revoked set or the CA version changes, and by the renewal
sweep once half of the current one's validity has passed (:func:`crl_due`).

A generated CA declared ``crl_distribution`` has its CRL served to anyone at
``/v1/crl/<id>.crl`` (``crls.distribution_id``, :func:`confide.cas.secrets.crl_distribution_id`),
and with ``cas serve --public-url`` (:func:`parse_public_url`) the certificates issued under it
name that URL in a CRLDistributionPoints extension (RFC 5280 §4.2.1.13; docs/cas.md "CRL
distribution points").

Ledger entries (``certificates-revoked``, ``crl-issued``) name secrets, versions, serials, key
identifiers and SHA-256 digests only. The CA's sealed value is unsealed in memory to sign, as for
a release (``Cas._unseal``, whose in-memory cache it shares); its key is never logged, stored
elsewhere or put in an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from sqlalchemy import Connection

from confide.cas.db import raw_execute, raw_executemany
from confide.cas.revocation_auth import (
    EVENT_ALTERED,
    RevocationRow,
    RevocationsAltered,
    add_revocation,
    verified_rows,
)
from confide.cas.secrets import Sealer, SecretValue, crl_distribution_id, renewable
from confide.errors import PolicyError, UsageError
from confide.policy import Policy
from confide.policy._types import option_duration
from confide.policy.secret import Secret, SecretKind
from confide.verify.crl_answer import crl_pem

if TYPE_CHECKING:
    from confide.cas.core import Cas

log = logging.getLogger("confide.cas")

__all__ = [
    "CA_COMPROMISE",
    "CESSATION",
    "COMPROMISE",
    "DEFAULT_CRL_VALIDITY",
    "KEY_COMPROMISE",
    "MAX_CRL_VALIDITY",
    "MIN_CRL_VALIDITY",
    "REASONS",
    "SUPERSEDED",
    "UNSPECIFIED",
    "CrlRow",
    "RuntimeCertificate",
    "build_crl",
    "crl_due",
    "crl_pem",
    "current_crl",
    "generated_ca",
    "issue_crls",
    "issued_by_generated_ca",
    "parse_crl_validity",
    "parse_public_url",
    "record_runtime_certificates",
    "revoke",
    "revoke_runtime_certificates",
    "revoke_serial",
    "runtime_certificate",
]

DEFAULT_CRL_VALIDITY = 7 * 86400.0
"""Seconds from a CRL's thisUpdate to its nextUpdate (``cas serve --crl-validity``)."""
MIN_CRL_VALIDITY = 60
MAX_CRL_VALIDITY = 366 * 86400
UNSPECIFIED = "unspecified"
KEY_COMPROMISE = "keyCompromise"
CA_COMPROMISE = "cACompromise"
SUPERSEDED = "superseded"
CESSATION = "cessationOfOperation"
REASONS: dict[str, x509.ReasonFlags] = {
    # RFC 5280 §5.3.1 CRLReason. unspecified (0) is listed without a reasonCode extension (the
    # RFC: "the reason code unspecified (0) SHOULD NOT be used ... absent reasonCode"). Left out:
    # certificateHold (6) and removeFromCRL (8), since a revocation here is final and there are
    # no delta CRLs; aACompromise (10), which concerns attribute certificates.
    UNSPECIFIED: x509.ReasonFlags.unspecified,
    KEY_COMPROMISE: x509.ReasonFlags.key_compromise,  # (1)
    CA_COMPROMISE: x509.ReasonFlags.ca_compromise,  # (2)
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,  # (3)
    SUPERSEDED: x509.ReasonFlags.superseded,  # (4)
    CESSATION: x509.ReasonFlags.cessation_of_operation,  # (5)
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,  # (9)
}
COMPROMISE = frozenset({KEY_COMPROMISE, CA_COMPROMISE})
"""Reasons that say the certificate's key is compromised: the CAS replaces the key too."""


class CrlRow(NamedTuple):
    """The current CRL of a CA (``crls`` table)."""

    number: int
    ca_version: int
    entries_sha256: str
    this_update: float
    next_update: float
    der: bytes


class _Entry(NamedTuple):
    serial: str
    revoked_at: float
    reason: str
    not_after: float


def parse_crl_validity(text: str) -> float:
    """``cas serve --crl-validity``: a duration as in policies (``7 days``, ``12h``, ``90s``)
    from :data:`MIN_CRL_VALIDITY` to :data:`MAX_CRL_VALIDITY` seconds."""
    return float(option_duration(text, "--crl-validity", MIN_CRL_VALIDITY, MAX_CRL_VALIDITY, "'7 days'"))


MAX_PUBLIC_URL = 200
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")  # RFC 3986 §2: unreserved, reserved, %


def parse_public_url(text: str) -> str:
    """``cas serve --public-url``: the base URL relying parties reach the CAS (or a proxy in
    front of it) under, for CRL distribution points. ``http://`` or ``https://``, a host, an
    optional port and path prefix; no user info, query or fragment; only the characters of RFC
    3986 §2 (a GeneralName URI is an IA5String, RFC 5280 §4.2.1.6: an IDN host in its A-label
    form).
    Returned without a trailing slash."""
    expected = "expected an http:// or https:// URL with a host and no user info, query or fragment"
    shown = text[:80]
    if not _URI_CHARS.fullmatch(text) or len(text) > MAX_PUBLIC_URL:
        limit = f"RFC 3986 characters only, {MAX_PUBLIC_URL} at most"
        raise UsageError(f"--public-url: got {shown!r}, {expected} ({limit})")
    try:
        url = urlsplit(text)
        port = url.port  # ValueError when not a number in range
    except ValueError:
        raise UsageError(f"--public-url: got {shown!r}, {expected}") from None
    if (
        url.scheme not in ("http", "https")
        or not url.hostname
        or "@" in url.netloc
        or url.query
        or url.fragment
        or "?" in text
        or "#" in text
        or port == 0
    ):
        raise UsageError(f"--public-url: got {shown!r}, {expected}")
    return text.rstrip("/")


def generated_ca(spec: Secret | None) -> bool:
    """Whether ``spec`` is an ``x509-ca`` the CAS generated and holds the key of (it has a CRL)."""
    return spec is not None and renewable(spec) and spec.kind == SecretKind.X509_CA


def issued_by_generated_ca(policy: Policy, spec: Secret) -> bool:
    """Whether ``spec``'s certificates are CAS-generated and signed by a generated CA of
    ``policy`` (the scope of revocation, module docstring)."""
    if not renewable(spec) or spec.issuer is None:
        return False
    try:
        return generated_ca(policy.secret(spec.issuer))
    except KeyError:
        return False


def _certificate(public: str) -> x509.Certificate | None:
    try:
        pem = json.loads(public)["certificate"]
        return x509.load_pem_x509_certificate(pem.encode())
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def not_after(public: str) -> float:
    """The notAfter (Unix time) of the certificate in a secret row's ``public`` metadata;
    ``-inf`` when it holds none."""
    cert = _certificate(public)
    return -math.inf if cert is None else cert.not_valid_after_utc.timestamp()


def _key_id(cert: x509.Certificate, *, authority: bool) -> str | None:
    """The certificate's authorityKeyIdentifier (``authority``) or subjectKeyIdentifier, hex."""
    try:
        if authority:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            return aki.key_identifier.hex() if aki.key_identifier else None
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except (x509.ExtensionNotFound, ValueError):
        return None


def revoke_serial(
    conn: Connection,
    sealer: Sealer,
    policy: str,
    issuer: str,
    serial: str,
    *,
    name: str,
    version: int,
    reason: str,
    now: float,
    not_after: float,
    certificate_sha256: str,
) -> dict[str, Any] | None:
    """Record the certificate with ``serial`` (hex) signed by the key ``issuer`` (its key
    identifier, hex) as revoked for ``reason`` at ``now``: secret ``name``, stored ``version``
    (0: issued to a runtime). Returns what the ``certificates-revoked`` event lists, or ``None``
    when it was revoked before (the first revocation stands). The row is MAC'd and added to its
    CA's authenticated set (:func:`confide.cas.revocation_auth.add_revocation`; ``sealer`` holds
    the master key)."""
    if reason not in REASONS:
        raise ValueError(f"got reason {reason!r}, expected one of {sorted(REASONS)}")
    exists = raw_execute(
        conn,
        "SELECT 1 FROM revoked_certificates WHERE policy = ? AND issuer_key_id = ? AND serial = ?",
        (policy, issuer, serial),
    ).fetchone()
    if exists is not None:
        # Revoked before (a revocation is never changed), if that row is genuine: a forged one
        # must not make the real revocation a no-op (RevocationsAltered).
        verified_rows(conn, sealer, policy, issuer, now)
        return None
    row = RevocationRow(serial, name, version, reason, float(now), float(not_after), None)
    mac = add_revocation(conn, sealer, policy, issuer, row)
    raw_execute(
        conn,
        "INSERT INTO revoked_certificates (policy, issuer_key_id, serial, name, version, reason, revoked_at, "
        "not_after, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (policy, issuer, serial, name, version, reason, row.revoked_at, row.not_after, mac),
    )
    return {
        "name": name, "version": version, "serial": serial, "reason": reason, "issuer_key_id": issuer,
        "revoked_at": datetime.fromtimestamp(int(now), UTC).isoformat(),
        "certificate_sha256": certificate_sha256,
    }  # fmt: skip


def revoke(
    conn: Connection,
    sealer: Sealer,
    policy: str,
    name: str,
    version: int,
    public: str,
    reason: str,
    now: float,
) -> dict[str, Any] | None:
    """Record the certificate of stored version ``version`` of ``policy``/``name`` (its
    ``public`` metadata) as revoked (:func:`revoke_serial`). ``None`` also when the row has no
    certificate with an authority key identifier."""
    cert = _certificate(public)
    issuer = None if cert is None else _key_id(cert, authority=True)
    if cert is None or issuer is None:
        return None
    return revoke_serial(
        conn, sealer, policy, issuer, format(cert.serial_number, "x"), name=name, version=version,
        reason=reason, now=now, not_after=cert.not_valid_after_utc.timestamp(),
        certificate_sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )  # fmt: skip


class RuntimeCertificate(NamedTuple):
    """A certificate issued at a release to the runtime's own key (``runtime_certificates``)."""

    policy: str
    issuer_key_id: str
    serial: str
    name: str
    service: str
    ca_policy: str
    ca_name: str
    ca_version: int
    issued_at: float
    not_after: float
    certificate_sha256: str
    der: bytes  # the certificate (the OCSP responder's ``good`` rests on its signature)


def runtime_certificate(
    policy: str, name: str, service: str, ca: dict[str, Any], der: bytes, issued_at: float
) -> RuntimeCertificate | None:
    """What is recorded of certificate ``der`` issued for secret ``name`` to a runtime of
    ``service`` by the CA ``ca`` (``policy``, ``name``, ``version`` of its value); ``None``
    when it carries no authority key identifier (never for the CAS's own)."""
    cert = x509.load_der_x509_certificate(der)
    issuer = _key_id(cert, authority=True)
    if issuer is None:
        return None
    return RuntimeCertificate(
        policy, issuer, format(cert.serial_number, "x"), name, service, str(ca["policy"]), str(ca["name"]),
        int(ca["version"]), issued_at, cert.not_valid_after_utc.timestamp(), hashlib.sha256(der).hexdigest(),
        der,
    )  # fmt: skip


def record_runtime_certificates(
    conn: Connection, session_sha256: str, issued: Sequence[RuntimeCertificate]
) -> None:
    """Record ``issued`` (certificates of one release, whose session token hashes to
    ``session_sha256``), in the release's write transaction."""
    raw_executemany(
        conn,
        "INSERT INTO runtime_certificates (policy, issuer_key_id, serial, name, service, session_sha256, "
        "ca_policy, ca_name, ca_version, issued_at, not_after, certificate_sha256, der) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(c.policy, c.issuer_key_id, c.serial, c.name, c.service, session_sha256, c.ca_policy, c.ca_name,
          c.ca_version, c.issued_at, c.not_after, c.certificate_sha256, c.der) for c in issued],
    )  # fmt: skip


def revoke_runtime_certificates(
    conn: Connection,
    sealer: Sealer,
    policy: str,
    name: str,
    reason: str,
    now: float,
    *,
    serial: str | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Revoke the still-valid certificates issued to runtimes for secret ``name`` of ``policy``
    by a CA of ``policy`` itself (the scope of revocation: its CRL), or only the one with
    ``serial``. Returns how many were found and what the ``certificates-revoked`` event lists
    (those not revoked before)."""
    query = (
        "SELECT issuer_key_id, serial, service, ca_name, ca_version, not_after, certificate_sha256 "
        "FROM runtime_certificates WHERE policy = ? AND name = ? AND ca_policy = ? AND not_after > ?"
    )
    params: tuple[object, ...] = (policy, name, policy, now)
    if serial is not None:
        query, params = query + " AND serial = ?", (*params, serial)
    rows = raw_execute(conn, query + " ORDER BY issued_at, serial", params).fetchall()
    out = []
    for issuer, found, service, ca_name, ca_version, expiry, digest in rows:
        entry = revoke_serial(
            conn, sealer, policy, issuer, found, name=name, version=0, reason=reason, now=now,
            not_after=float(expiry), certificate_sha256=digest,
        )  # fmt: skip
        if entry is not None:
            out.append({**entry, "issued_to_runtime": True, "service": service, "ca": ca_name,
                        "ca_version": int(ca_version)})  # fmt: skip
    return len(rows), out


def current_crl(conn: Connection, policy: str, ca: str) -> CrlRow | None:
    row = raw_execute(
        conn,
        "SELECT number, ca_version, entries_sha256, this_update, next_update, der FROM crls "
        "WHERE policy = ? AND ca = ?",
        (policy, ca),
    ).fetchone()
    return None if row is None else CrlRow(int(row[0]), int(row[1]), row[2], row[3], row[4], bytes(row[5]))


def crl_due(this_update: float, next_update: float, now: float) -> bool:
    """Whether a CRL is to be re-issued: half of its validity has passed (so relying parties
    that fetch at its nextUpdate find a newer one), or the clock went back before it."""
    return now >= this_update + (next_update - this_update) / 2 or now < this_update


def _entries(conn: Connection, sealer: Sealer, policy: str, key_id: str, now: float) -> list[_Entry]:
    """What the next CRL of the CA with key ``key_id`` lists: every certificate it signed that
    was revoked, until a CRL issued after the certificate's notAfter listed it (RFC 5280 §3.3:
    an entry stays until it has appeared on one regularly scheduled CRL beyond the certificate's
    validity period; so a CRL does not grow without bound). The rows and their set are
    authenticated first (:func:`confide.cas.revocation_auth.verified_rows`; RevocationsAltered
    otherwise)."""
    rows = verified_rows(conn, sealer, policy, key_id, now)
    return [_Entry(r.serial, r.revoked_at, r.reason, r.not_after) for r in rows if r.expiry_listed_at is None]


def _entries_sha256(entries: Sequence[_Entry]) -> str:
    flat = [[e.serial, int(e.revoked_at), e.reason] for e in entries]
    return hashlib.sha256(json.dumps(flat, separators=(",", ":")).encode()).hexdigest()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)  # UTCTime/GeneralizedTime: whole seconds


def build_crl(
    ca: SecretValue, entries: Sequence[_Entry], *, number: int, this_update: float, next_update: float
) -> bytes:
    """A v2 CRL (RFC 5280 §5.1) of ``ca`` (a generated CA's value: certificate and key), DER."""
    if ca.certificate is None or not ca.data:
        raise PolicyError("a CRL is signed by a CA whose certificate and key the CAS holds")
    cert = x509.load_der_x509_certificate(ca.certificate)
    key: Any = serialization.load_der_private_key(ca.data, None)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)  # §5.1.2.3: the CA's subject
        .last_update(_utc(this_update))  # §5.1.2.4 thisUpdate
        .next_update(_utc(next_update))  # §5.1.2.5 nextUpdate
        # §5.2.1: the key that signed, as in the certificates the CA issued (SHA-1 of the key).
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)  # §5.2.3
    )
    for e in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(e.serial, 16))
            .revocation_date(_utc(e.revoked_at))
        )
        if e.reason != UNSPECIFIED:  # §5.3.1: unspecified is listed without a reasonCode
            revoked = revoked.add_extension(x509.CRLReason(REASONS[e.reason]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    algorithm = (
        None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def _verified_entries(
    cas: Cas,
    conn: Connection,
    policy: str,
    ca: str,
    key_id: str,
    now: float,
    strict: bool,
    altered: list[dict[str, str]],
) -> list[_Entry] | None:
    """:func:`_entries` of the CA ``ca``; when its revocation records do not authenticate, the
    error is logged and raised (``strict``) or added to ``altered`` and ``None`` returned (the
    CA gets no new CRL: the current one stays served)."""
    try:
        return _entries(conn, cas.sealer, policy, key_id, now)
    except RevocationsAltered as exc:
        log.warning(json.dumps({"event": EVENT_ALTERED, "ca": ca, **exc.summary()}))
        if strict:
            raise
        altered.append({"ca": ca, **exc.summary()})
        return None


def issue_crls(
    cas: Cas, conn: Connection, policy: Policy, digest: str, now: float, *, strict: bool = True
) -> list[dict[str, Any]]:
    """Bring the CRL of every generated CA of ``policy`` (its version ``digest``, current in
    ``conn``, a write transaction) up to date at ``now``: a new one where there is none, the CA
    has a new version, the revoked set changed or the current one is due (:func:`crl_due`).
    Records one ``crl-issued`` event; returns what it lists.

    A CA whose revocation records do not authenticate (RevocationsAltered: a row edited,
    deleted or forged) gets no new CRL: the current one stays (fail closed: a CRL that may omit a
    revocation is never signed). ``strict`` (a policy update, an owner revocation: transactions
    that may record revocations): the error is raised, so the transaction, and whatever it would
    have revoked, is rolled back and the caller told. Otherwise (the renewal sweep) the warning
    and the ledger event ``revocations-altered`` (policy, CA, key identifier, the check) and the
    next CA."""
    issued: list[dict[str, Any]] = []
    altered: list[dict[str, str]] = []
    for spec in policy.secrets:
        if not generated_ca(spec):
            continue
        row = cas._latest_secret(conn, policy.name, spec.name)
        cert = None if row is None else _certificate(row.public)
        key_id = None if cert is None else _key_id(cert, authority=False)
        if row is None or key_id is None:
            continue
        entries = _verified_entries(cas, conn, policy.name, spec.name, key_id, now, strict, altered)
        if entries is None:
            continue
        entries_sha256 = _entries_sha256(entries)
        current = current_crl(conn, policy.name, spec.name)
        if (
            current is not None
            and current.ca_version == row.version
            and current.entries_sha256 == entries_sha256
            and not crl_due(current.this_update, current.next_update, now)
        ):
            continue
        value = cas._unseal(row)
        sealed = None if value.certificate is None else x509.load_der_x509_certificate(value.certificate)
        sealed_id = None if sealed is None else _key_id(sealed, authority=False)
        if sealed is not None and sealed_id is not None and sealed_id != key_id:
            # The row's public part (not authenticated) shows another key identifier than the
            # sealed certificate: the entries are those of the key that signs (RFC 5280 §5.2.1).
            cert, key_id = sealed, sealed_id
            entries = _verified_entries(cas, conn, policy.name, spec.name, key_id, now, strict, altered)
            if entries is None:
                continue
            entries_sha256 = _entries_sha256(entries)
        number = 1 if current is None else current.number + 1
        this_update = float(int(now))
        next_update = this_update + cas.crl_validity
        der = build_crl(value, entries, number=number, this_update=this_update, next_update=next_update)
        assert cert is not None
        dist = crl_distribution_id(cert.subject, bytes.fromhex(key_id))
        if current is None:
            raw_execute(
                conn,
                "INSERT INTO crls (policy, ca, number, ca_version, entries_sha256, this_update, next_update, "
                "der, distribution_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (policy.name, spec.name, number, row.version, entries_sha256, this_update, next_update, der,
                 dist),
            )  # fmt: skip
        else:
            raw_execute(
                conn,
                "UPDATE crls SET number = ?, ca_version = ?, entries_sha256 = ?, this_update = ?, "
                "next_update = ?, der = ?, distribution_id = ? WHERE policy = ? AND ca = ?",
                (number, row.version, entries_sha256, this_update, next_update, der, dist, policy.name,
                 spec.name),
            )  # fmt: skip
        expired = [e.serial for e in entries if e.not_after < this_update]
        if expired:  # listed once beyond their validity period: left out from the next CRL on
            raw_executemany(
                conn,
                "UPDATE revoked_certificates SET expiry_listed_at = ? "
                "WHERE policy = ? AND issuer_key_id = ? AND serial = ?",
                [(this_update, policy.name, key_id, serial) for serial in expired],
            )
        issued.append(
            {
                "ca": spec.name, "ca_version": row.version, "number": number, "revoked": len(entries),
                "this_update": _utc(this_update).isoformat(), "next_update": _utc(next_update).isoformat(),
                "issuer_key_id": key_id, "crl_sha256": hashlib.sha256(der).hexdigest(),
            }
        )  # fmt: skip
    if issued:
        cas.events.record(conn, "crl-issued", policy.name, {"hash": digest, "crls": issued})
    if altered:
        cas.events.record(conn, EVENT_ALTERED, policy.name, {"hash": digest, "cas": altered})
    return issued

"""The delegated OCSP responder certificate of each generated CA declared ``ocsp`` (docs/cas.md
"OCSP"; RFC 6960 §4.2.2.2).

The CA does not sign OCSP responses itself: it signs, for a key the CAS generates, a short-lived
certificate that authorises that key to sign them (a "CA Designated Responder", §4.2.2.2), and
:mod:`confide.cas.ocsp_responder` signs every response with that key and includes the
certificate. The certificate:

- subject ``CN=<the CA's common name> OCSP responder``, issuer the CA's subject, a random serial;
- notBefore 5 minutes back (as every CAS certificate), notAfter :data:`RESPONDER_VALIDITY`
  after issue;
- basicConstraints ``cA FALSE`` (critical), keyUsage ``digitalSignature`` (critical),
  extendedKeyUsage ``id-kp-OCSPSigning`` (§4.2.2.2: "MUST contain an extended key usage
  extension" with it), ``id-pkix-ocsp-nocheck`` (§4.2.2.2.1: relying parties do not check
  the responder certificate's status, since asking this responder about its own key proves
  nothing), subject and authority key identifiers; no CRL distribution point, no AIA.
- a key of the CA key's type (same curve or modulus size, or Ed25519), so a relying party that
  verifies the CA's signatures verifies the responder's.

Because of nocheck, a responder certificate cannot be revoked in any way a relying party would
see: its short validity is the only bound on a leaked responder key. It is renewed (a new key
and certificate) once less than half of :data:`RESPONDER_VALIDITY` is left, when the CA's key
changed (a regenerated CA), or when there is none yet.

Storage: the key and certificate are a version of the row ``<ca>/ocsp-responder`` (kind
``ocsp-responder``) in the ``secrets`` table, sealed under the master key like every generated
key (associated data: policy, that name, version; a ``/`` is in no secret's name, so no declared
secret shares it), re-sealed by master-key rotations with the rest. The row's public part holds
the certificate, its serial and notAfter, and the CA's key identifier it was issued under.
Issued inside the CAS write transaction of :func:`confide.cas.renewal.renew_policy` (the sweep,
or the responder itself when it finds none usable), with the renewed certificates in the same
``certificates-renewed`` event (ledger ``certificates.renewed``): name, kind, versions, reason,
serial, validity, certificate SHA-256. Never a private value. A CA declared ``ocsp: {signer:
ca}`` signs its responses itself and gets no responder.

Replacement (:func:`replace_responder`). The row's public part is not authenticated; a row the
responder refuses (its public part does not match the sealed certificate, or the sealed value
does not open) is deleted and replaced, in one write transaction, by a new key and certificate
from the CA's current sealed key, nothing of the refused row being used; reason ``replaced``
in the event, with the refused version, the check and the SHA-256 of its public part and
sealed value. How often is the responder's to bound
(:data:`confide.cas.ocsp_responder.REPLACE_INTERVAL`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import Connection, insert

from confide.cas import db as t
from confide.cas.crl import generated_ca
from confide.cas.db import raw_execute
from confide.cas.secret_heads import SecretRowsAltered
from confide.cas.secrets import SecretValue
from confide.policy.secret import OcspSigner

if TYPE_CHECKING:
    from confide.cas.core import Cas, SecretRow
    from confide.policy.model import Policy

__all__ = [
    "REPLACED",
    "RESPONDER_KIND",
    "RESPONDER_VALIDITY",
    "due_reason",
    "issue_responders",
    "replace_responder",
    "responder_certificate",
    "responder_due",
    "responder_name",
    "responder_state",
]

RESPONDER_KIND = "ocsp-responder"
RESPONDER_VALIDITY = 2 * 86400.0
"""Seconds a responder certificate is valid: renewed at half, so a response's nextUpdate (never
past the certificate's notAfter) is at least one day ahead, and a leaked responder key signs
answers relying parties accept for at most two days after the CAS stops using it."""
REPLACED = "replaced"
"""The ``reason`` of a responder version that replaced a refused row (:func:`replace_responder`)."""
_SUFFIX = "/ocsp-responder"
_CN_MAX = 64  # RFC 5280 Appendix A: ub-common-name


def responder_name(ca: str) -> str:
    """The ``secrets`` row name of CA ``ca``'s responder (no declared secret has a ``/``)."""
    return ca + _SUFFIX


def latest_responder(cas: Cas, conn: Connection, policy: str, name: str) -> tuple[SecretRow | None, int]:
    """Responder row ``name``'s current version (``None``: none) and the version a new one is
    stored as. A responder is the CAS's own OCSP signing key, never released: when its current
    version's row was deleted (:class:`~confide.cas.secret_heads.SecretRowsAltered` for deleted
    rows) a new one is issued after the version its authenticated head names, never an older
    row signing again nor a version number reused; any other refusal stands."""
    try:
        row = cas._latest_secret(conn, policy, name)
    except SecretRowsAltered as exc:
        if exc.deleted_after is None:
            raise
        return None, exc.deleted_after + 1
    return row, 1 if row is None else row.version + 1


def responder_state(public: str) -> tuple[str, float] | None:
    """The CA key identifier (hex) and notAfter (POSIX seconds) a responder row's public part
    records; ``None`` when it records neither."""
    try:
        info = json.loads(public)
        return str(info["issuer_key_id"]), datetime.fromisoformat(info["not_after"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def due_reason(ca_key_id: bytes, state: tuple[str, float] | None, now: float) -> str | None:
    """Why CA ``ca_key_id``'s responder needs a new certificate at ``now`` (``new``,
    ``issuer-key-changed``, ``due``), from its latest row's :func:`responder_state`; ``None``:
    it does not."""
    if state is None:
        return "new"
    issuer, not_after = state
    if issuer != ca_key_id.hex():
        return "issuer-key-changed"
    if not_after - now <= RESPONDER_VALIDITY / 2:
        return "due"
    return None


def responder_due(ca_key_id: bytes, public: str | None, now: float) -> str | None:
    """:func:`due_reason` from the latest row's public part (``None``: no row)."""
    return due_reason(ca_key_id, None if public is None else responder_state(public), now)


def _key_like(ca_key: Any) -> Any:
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(ca_key.curve)
    if isinstance(ca_key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(65537, ca_key.key_size)
    if isinstance(ca_key, ed448.Ed448PrivateKey):
        return ed448.Ed448PrivateKey.generate()
    if isinstance(ca_key, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    raise TypeError(f"no OCSP responder key for a CA key {type(ca_key).__name__}")


def responder_certificate(ca: SecretValue, now: float) -> SecretValue:
    """A new responder key and its certificate signed by the CA ``ca`` (module docstring)."""
    if ca.certificate is None or not ca.data:
        raise ValueError("an OCSP responder certificate needs the CA's certificate and key")
    ca_cert = x509.load_der_x509_certificate(ca.certificate)
    ca_key: Any = serialization.load_der_private_key(ca.data, None)
    key = _key_like(ca_key)
    names = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(names[0].value) if names else "CA"
    suffix = " OCSP responder"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, base[: _CN_MAX - len(suffix)] + suffix)])
    at = datetime.fromtimestamp(int(now), UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(minutes=5))
        .not_valid_after(at + timedelta(seconds=RESPONDER_VALIDITY))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        # RFC 6960 §4.2.2.2: id-kp-OCSPSigning in extendedKeyUsage, the delegation itself
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        # RFC 6960 §4.2.2.2.1: id-pkix-ocsp-nocheck, value NULL; non-critical
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    algorithm = (
        None if isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    )
    cert = builder.sign(ca_key, algorithm)
    private = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SecretValue(
        RESPONDER_KIND, private, cert.public_bytes(serialization.Encoding.DER), (ca.certificate, *ca.chain)
    )


def _ski(certificate: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(certificate)
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def issue_responders(
    cas: Cas, conn: Connection, name: str, policy: Policy, now: float, fresh: dict[str, SecretValue]
) -> list[dict[str, Any]]:
    """A new responder certificate for every generated CA of ``policy`` (policy ``name``)
    declared ``ocsp`` with the delegated signer whose responder is due (:func:`responder_due`),
    in ``conn`` (a write transaction). ``fresh``: CA values renewed in this transaction. Returns
    what the ``certificates-renewed`` event records of each. A CA whose responses its own key
    signs (``ocsp: {signer: ca}``) gets none."""
    out: list[dict[str, Any]] = []
    for spec in policy.secrets:
        if not (generated_ca(spec) and spec.ocsp_signer is OcspSigner.DELEGATED):
            continue
        ca_row = cas._latest_secret(conn, name, spec.name)
        if ca_row is None:
            continue
        ca = fresh.get(spec.name) or cas.sealer.unseal(
            ca_row.sealed, policy=name, name=spec.name, version=ca_row.version
        )
        if ca.certificate is None:
            continue
        ski = _ski(ca.certificate)
        row, version = latest_responder(cas, conn, name, responder_name(spec.name))
        reason = responder_due(ski, None if row is None else row.public, now)
        if reason is None:
            continue
        record = _store(cas, conn, name, spec.name, ca_row.version, ca, version, now)
        out.append({**record, "previous_version": None if row is None else row.version, "reason": reason})
    return out


def _store(
    cas: Cas,
    conn: Connection,
    policy: str,
    ca_name: str,
    ca_version: int,
    ca: SecretValue,
    version: int,
    now: float,
) -> dict[str, Any]:
    """A new responder key and certificate (:func:`responder_certificate`) by CA ``ca`` (version
    ``ca_version`` of ``ca_name``), sealed and inserted as ``version`` of its row in ``conn``;
    what the ``certificates-renewed`` event records of it (names, serial, validity, hash)."""
    assert ca.certificate is not None
    value = responder_certificate(ca, now)
    name = responder_name(ca_name)
    public = {**value.public_info(), "issuer_key_id": _ski(ca.certificate).hex(), "ca_version": ca_version}
    conn.execute(
        insert(t.secrets).values(
            policy=policy, name=name, version=version, kind=RESPONDER_KIND,
            sealed=cas.sealer.seal(value, policy=policy, name=name, version=version),
            public=json.dumps(public), created_at=now,
        )
    )  # fmt: skip
    cas.secret_heads.put(conn, policy, name, version, now)  # confide.cas.secret_heads
    assert value.certificate is not None
    cert = x509.load_der_x509_certificate(value.certificate)
    return {
        "name": name, "kind": RESPONDER_KIND, "version": version,
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "certificate_sha256": hashlib.sha256(value.certificate).hexdigest(),
    }  # fmt: skip


def replace_responder(
    cas: Cas, conn: Connection, policy: str, ca_name: str, refused: tuple[int, str], check: str, now: float
) -> dict[str, Any] | None:
    """Replace CA ``ca_name``'s refused responder row (module docstring, "Replacement") in
    ``conn`` (a write transaction): ``refused`` is its (version, public part) as the responder
    read them, ``check`` the check it failed. The row is deleted and a new key and certificate,
    signed by the CA's current sealed key, inserted as the next version, recorded in a
    ``certificates-renewed`` event (reason ``replaced``, with the refused version, the check and
    the SHA-256 of the refused public part and sealed value; never a value). ``None``, writing
    nothing, when the latest row is no longer that one (replaced or renewed meanwhile) or the CA
    no longer has a delegated responder."""
    head = cas.policy_auth.head(conn, policy)  # verified (confide.cas.policy_auth)
    if head is None:
        return None
    try:
        spec = cas._load(conn, policy, head.hash).secret(ca_name)
    except KeyError:
        return None
    if not generated_ca(spec) or spec.ocsp_signer is not OcspSigner.DELEGATED:
        return None
    name = responder_name(ca_name)
    row, _ = latest_responder(cas, conn, policy, name)
    ca_row = cas._latest_secret(conn, policy, ca_name)
    if row is None or (row.version, row.public) != refused or ca_row is None:
        return None
    ca = cas.sealer.unseal(ca_row.sealed, policy=policy, name=ca_name, version=ca_row.version)
    if ca.certificate is None:
        return None
    raw_execute(
        conn, "DELETE FROM secrets WHERE policy = ? AND name = ? AND version = ?", (policy, name, row.version)
    )
    record = _store(cas, conn, policy, ca_name, ca_row.version, ca, row.version + 1, now)
    record.update(
        previous_version=row.version, reason=REPLACED,
        replaced={
            "version": row.version, "check": check,
            "public_sha256": hashlib.sha256(row.public.encode()).hexdigest(),
            "sealed_sha256": hashlib.sha256(row.sealed).hexdigest(),
        },
    )  # fmt: skip
    cas.events.record(conn, "certificates-renewed", policy, {"hash": head.hash, "certificates": [record]})
    return record

"""Renewal of CAS-held certificates before they expire (docs/cas.md "Certificate renewal").

A generated ``x509`` or ``x509-ca`` secret (:func:`confide.cas.secrets.renewable`) is *due* once
the CAS clock reaches its notAfter minus the renewal window
(:func:`confide.cas.secrets.renewal_window`: ``renew_before``, else a third of the validity).
A due certificate is never released: phase 1 of an attestation raises :class:`RenewalDue`, the
CAS renews the policy's due certificates (:func:`renew_due`) and renders again. In ``cas serve``
a background sweep (:class:`CertificateRenewer`) renews them ahead of any release.

One renewal (:func:`renew_policy`), inside a write transaction (the CAS write lock is held):

1. read the latest version of every renewable certificate of the policy's current version, in
   generation order (:func:`confide.policy.secret.generation_order`: an issuer before what it
   signs, otherwise declaration order);
2. a certificate that is due, or whose issuer was renewed in this transaction, or a CA whose
   certificate's keyUsage no longer matches its OCSP signer (``key-usage``: digitalSignature
   exactly when ``ocsp: {signer: ca}``) or whose pathLenConstraint is not the one the policy
   gives it (``path-length``: an x509-ca level added or removed below it, or its ``path_len``
   changed; :func:`confide.cas.secrets.ca_reissue_reason`), gets a new certificate for the
   *same* key, subject and extensions, with a new serial and validity, signed by the issuer's
   version current now (:func:`confide.cas.secrets.renew_certificate`); it is sealed as the
   next version (associated data: policy, name, version), with the declaration's fingerprint in
   its current form (:mod:`confide.cas.declaration`) when the renewed version had one of its
   forms;
3. every generated CA declared ``ocsp`` whose delegated OCSP responder certificate is due gets
   a new one (:func:`confide.cas.ocsp_delegate.issue_responders`: a new key, signed by the CA's
   version current now);
4. one ``certificates-renewed`` event (ledger entry ``certificates.renewed``) names each new
   version, responder certificates included: name, versions, serial, validity, SHA-256 of the
   certificate, reason. Never a private value;
5. every generated CA's CRL is brought up to date (:func:`confide.cas.crl.issue_crls`: a new
   one when the revoked set or the CA changed, or half of the current one's validity has
   passed). The previous version is **not** revoked: it stays valid until its notAfter, so a
   service still running with it keeps working until it attests again; a policy update that
   changes or removes the declaration revokes every still-valid version (docs/cas.md
   "Revocation").

Concurrent renewers (attestations, the sweep, other replicas on the same database) serialise on
the write lock; a later one re-reads in step 1, finds nothing due and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy import Connection, insert

from confide.cas import db as t
from confide.cas.crl import crl_due, generated_ca, issue_crls
from confide.cas.db import raw_execute
from confide.cas.declaration import fingerprints
from confide.cas.ocsp_delegate import issue_responders, latest_responder, responder_due, responder_name
from confide.cas.periodic import PeriodicTask
from confide.cas.policy_auth import PolicyRowsAltered
from confide.cas.secrets import (
    SecretValue,
    ca_path_lengths,
    ca_reissue_reason,
    renew_certificate,
    renewable,
    renewal_window,
)
from confide.errors import ConfideError, PolicyError
from confide.policy.secret import OcspSigner, Secret, SecretKind, generation_order

if TYPE_CHECKING:
    from confide.cas.core import Cas

__all__ = [
    "DEFAULT_SWEEP_SECONDS",
    "CertificateRenewer",
    "RenewalDue",
    "RenewalSchedule",
    "due_policies",
    "renew_due",
    "renew_policy",
]

DEFAULT_SWEEP_SECONDS = 60.0
log = logging.getLogger("confide.cas")


class RenewalDue(Exception):
    """A certificate about to be released is due for renewal (phase 1 of an attestation)."""

    def __init__(self, policy: str, name: str) -> None:
        super().__init__(f"certificate {policy}/{name} is due for renewal")
        self.policy, self.name = policy, name


def _due_at(spec: Secret, public: str) -> float:
    if not renewable(spec):
        return math.inf
    try:
        not_after = datetime.fromisoformat(json.loads(public)["not_after"])
    except (KeyError, TypeError, ValueError):
        return math.inf  # no certificate metadata: nothing to schedule
    return (not_after - renewal_window(spec)).timestamp()


class RenewalSchedule:
    """When each stored certificate version is due (POSIX seconds; ``inf``: never renewed).
    A stored version never changes (and its declaration is fixed: a changed declaration is a
    new version), so the attestation path parses a version's metadata once and then only
    looks it up: no database round trip and no parsing per attestation."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._due: dict[tuple[str, str, int], float] = {}  # single dict operations: GIL-atomic

    def due_at(self, policy: str, spec: Secret, version: int, public: str) -> float:
        key = (policy, spec.name, version)
        at = self._due.get(key)
        if at is None:
            at = _due_at(spec, public)
            if len(self._due) >= self._size:
                self._due.clear()
            self._due[key] = at
        return at


def renew_policy(
    cas: Cas, conn: Connection, name: str, now: float, *, at_update: bool = False
) -> list[dict[str, Any]]:
    """Steps 1-5 of the module docstring for policy ``name`` at ``now``, in ``conn`` (a write
    transaction). Returns what the renewal event records (empty: nothing was due).
    ``at_update``: in the transaction of the policy update that made ``name``'s current version
    (:meth:`confide.cas.core.Cas._activate`): only CAs whose keyUsage their OCSP signer changed
    (reason ``key-usage``) or whose pathLenConstraint the update changed (``path-length``) and
    what they signed are renewed, and steps 3 and 5 are left to the update (it brings the CRLs
    up to date itself; responders are issued as before)."""
    current = cas.policy_auth.head(conn, name)  # verified (confide.cas.policy_auth)
    if current is None:
        return []
    head = (current.hash,)
    policy = cas._load(conn, name, head[0])
    at = datetime.fromtimestamp(now, UTC)
    fresh: dict[str, SecretValue] = {}  # renewed in this transaction
    renewed: list[dict[str, Any]] = []
    path_lengths = ca_path_lengths(policy.secrets)
    for spec in generation_order(policy.secrets):
        if not renewable(spec):
            continue
        follows = spec.issuer is not None and spec.issuer in fresh
        if at_update and spec.kind != SecretKind.X509_CA and not follows:
            continue  # only a CA's extensions can have changed, and what such a CA signed follows it
        row = cas._latest_secret(conn, name, spec.name)
        if row is None:
            continue
        path_length = path_lengths.get(spec.name, 0)
        reissue = ca_reissue_reason(spec, row.public, path_length)
        if follows:
            reason = "issuer-renewed"
        elif reissue is not None:
            # ``ocsp: {signer: ...}`` changed, so the CA certificate's keyUsage must say whether
            # its key signs OCSP responses (RFC 5280 §4.2.1.3 digitalSignature; docs/cas.md
            # "OCSP"), or the CA levels below it did, which its pathLenConstraint must allow
            # (RFC 5280 §4.2.1.9): a re-issue with the same key and subject, as a renewal.
            reason = reissue
        elif not at_update and cas.renewals.due_at(name, spec, row.version, row.public) <= now:
            reason = "due"
        else:
            continue
        old = cas.sealer.unseal(row.sealed, policy=name, name=spec.name, version=row.version)
        issuer = None
        if spec.issuer is not None:
            issuer = fresh.get(spec.issuer)
            if issuer is None:
                issuer_row = cas._latest_secret(conn, name, spec.issuer)
                if issuer_row is None:
                    raise PolicyError(f"secret {spec.name} of {name}: issuer {spec.issuer} has no value")
                issuer = cas.sealer.unseal(
                    issuer_row.sealed, policy=name, name=spec.issuer, version=issuer_row.version
                )
        value = renew_certificate(
            spec, old, issuer=issuer, now=at, published=cas.published(policy, spec), path_length=path_length
        )
        version = row.version + 1
        stored_spec = json.loads(row.public).get("spec")
        prints = fingerprints(spec)
        spec_print = prints.current if stored_spec in prints.accepted else stored_spec
        public = {**value.public_info(), "spec": spec_print}
        conn.execute(
            insert(t.secrets).values(
                policy=name, name=spec.name, version=version, kind=value.kind,
                sealed=cas.sealer.seal(value, policy=name, name=spec.name, version=version),
                public=json.dumps(public), created_at=now,
            )
        )  # fmt: skip
        cas.secret_heads.put(conn, name, spec.name, version, now)  # confide.cas.secret_heads
        fresh[spec.name] = value
        assert value.certificate is not None
        cert = x509.load_der_x509_certificate(value.certificate)
        renewed.append(
            {
                "name": spec.name, "kind": value.kind, "version": version, "previous_version": row.version,
                "reason": reason, "serial": format(cert.serial_number, "x"),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "certificate_sha256": hashlib.sha256(value.certificate).hexdigest(),
            }
        )  # fmt: skip
    if at_update:
        if renewed:
            cas.events.record(conn, "certificates-renewed", name, {"hash": head[0], "certificates": renewed})
        return renewed
    # Each CA declared ``ocsp`` gets a new delegated responder certificate when its own is due
    # (confide.cas.ocsp_delegate), recorded in the same event.
    renewed += issue_responders(cas, conn, name, policy, now, fresh)
    if renewed:
        cas.events.record(conn, "certificates-renewed", name, {"hash": head[0], "certificates": renewed})
    # The sweep records no revocation: a CA whose revocations do not authenticate keeps its CRL
    # and the sweep goes on (confide.cas.crl.issue_crls).
    issue_crls(cas, conn, policy, head[0], now, strict=False)
    return renewed


def _verified_head(cas: Cas, conn: Connection, name: str) -> str | None:
    """``name``'s current hash, verified; ``None`` (logged, no values) when its rows do not
    authenticate: the sweep goes on with the other policies, and a renewal of this one is
    refused (:func:`renew_policy`) until the rows are restored."""
    try:
        head = cas.policy_auth.head(conn, name)
    except PolicyRowsAltered as exc:
        log.warning(json.dumps({"event": "policy-rows-altered", "policy": name[:128], "row": exc.what}))
        return None
    return None if head is None else head.hash


def due_policies(cas: Cas, now: float) -> list[str]:
    """The policies with a certificate due at ``now``, or a generated CA whose CRL is due or
    missing, or (declared ``ocsp``) whose OCSP responder certificate is (one read transaction,
    no write lock)."""
    due: set[str] = set()
    with cas.db.read() as conn:
        names = {str(r[0]) for r in raw_execute(conn, "SELECT name FROM policy_heads").fetchall()}
        heads: dict[str, str | None] = {}  # verified as they are needed (confide.cas.policy_auth)
        crls = {
            (r[0], r[1]): (float(r[2]), float(r[3]))
            for r in raw_execute(conn, "SELECT policy, ca, this_update, next_update FROM crls").fetchall()
        }
        rows = raw_execute(
            conn,
            "SELECT s.policy, s.name, s.version, s.public FROM secrets s "
            "WHERE s.kind IN ('x509', 'x509-ca') AND s.version = "
            "(SELECT MAX(m.version) FROM secrets m WHERE m.policy = s.policy AND m.name = s.name)",
        ).fetchall()
        lengths: dict[str, dict[str, int]] = {}  # per policy: its CAs' pathLenConstraints
        for policy_name, name, version, public in rows:
            if policy_name in due or policy_name not in names:
                continue
            if policy_name not in heads:
                heads[policy_name] = _verified_head(cas, conn, policy_name)
            digest = heads[policy_name]
            if digest is None:
                continue
            current = cas._load(conn, policy_name, digest)
            try:
                spec = current.secret(name)
            except KeyError:
                continue  # no longer declared: never released again
            path_length = 0
            if generated_ca(spec):
                if policy_name not in lengths:
                    lengths[policy_name] = ca_path_lengths(current.secrets)
                path_length = lengths[policy_name].get(name, 0)
            if (
                cas.renewals.due_at(policy_name, spec, version, public) <= now
                or ca_reissue_reason(spec, public, path_length) is not None
            ):
                due.add(policy_name)
            elif generated_ca(spec):
                crl = crls.get((policy_name, name))
                crl_stale = crl is None or crl_due(*crl, now)
                if crl_stale or (
                    spec.ocsp_signer is OcspSigner.DELEGATED
                    and _responder_due(cas, conn, policy_name, name, public, now)
                ):
                    due.add(policy_name)
    return sorted(due)


def _responder_due(cas: Cas, conn: Connection, policy: str, ca: str, ca_public: str, now: float) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(json.loads(ca_public)["certificate"].encode())
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (KeyError, TypeError, ValueError, x509.ExtensionNotFound):
        return False  # no certificate to issue under
    row, _ = latest_responder(cas, conn, policy, responder_name(ca))
    return responder_due(ski, None if row is None else row.public, now) is not None


def renew_due(cas: Cas, policies: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Renew every due certificate of ``policies`` (default: of every policy that has one),
    one write transaction per policy. Returns the renewals by policy."""
    now = cas.clock()
    names = due_policies(cas, now) if policies is None else list(policies)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        with cas.db.write() as conn:
            renewed = renew_policy(cas, conn, name, now)
        if renewed:
            out[name] = renewed
    return out


class CertificateRenewer(PeriodicTask):
    """``cas serve``'s sweep: :func:`renew_due` at start and then every ``interval`` seconds, so
    certificates are renewed ahead of any release (:class:`PeriodicTask`)."""

    tick_at_start = True

    def __init__(
        self,
        cas: Cas,
        interval: float = DEFAULT_SWEEP_SECONDS,
        *,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(interval, what="renewal interval", thread_name="cas-certificate-renewer", wait=wait)
        self.cas = cas
        self.failures = 0

    def tick(self) -> dict[str, list[dict[str, Any]]]:
        return self.sweep_once()

    def sweep_once(self) -> dict[str, list[dict[str, Any]]]:
        """One sweep. Never raises: a failure is logged (class and message, no values) and
        counted, and retried on the next period."""
        try:
            renewed = renew_due(self.cas)
        except Exception as exc:
            self.failures += 1
            detail = exc.message if isinstance(exc, ConfideError) else type(exc).__name__
            failed = {
                "event": "certificate-renewal-failed",
                "error": type(exc).__name__,
                "detail": detail[:200],
                "retry_in_seconds": self.interval,
                "failures": self.failures,
            }
            log.warning(json.dumps(failed))
            return {}
        for policy, certificates in renewed.items():
            names = [{k: c[k] for k in ("name", "version", "not_after")} for c in certificates]
            log.info(json.dumps({"event": "certificates-renewed", "policy": policy, "certificates": names}))
        return renewed

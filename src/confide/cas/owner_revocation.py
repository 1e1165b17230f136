"""Revocation of a certificate by a policy's owner, without changing its declaration
(docs/cas.md "Revocation"; reasons: RFC 5280 §5.3.1).

The request is a signed ``confide/revoke/v2`` document (Ed25519 over RFC 8785 JSON, as the other
signed documents of :mod:`confide.cas.core`)::

    {"type": "confide/revoke/v2", "name": POLICY, "secret": NAME, "reason": REASON,
     "serial": HEX | "all_valid": true, "time": UNIX_SECONDS, "cas": HEX, "signer": KEY,
     "signature": SIG}

and nothing else (a field this CAS does not know is refused, :func:`parse_request`). ``cas`` is
the CAS it is for (the SHA-256 of its TLS SubjectPublicKeyInfo, as approvals and read requests
name it): a request signed for one CAS is refused at another where the signer owns a policy of
the same name (:meth:`confide.cas.core.Cas.revoke_certificates`, before any policy is looked
at). The former ``confide/revoke/v1`` named no CAS and is refused as malformed.

Steps, in one write transaction (:func:`revoke_request`):

1. Who: an identity named by the *current* version's ``access_policy.update`` rules, as a listed
   identity or as a member of a board (``require-all``, ``require-at-least-N``), alone and at
   once: a revocation takes nothing away but validity, and one for key compromise must not wait
   for a board's quorum. Everyone else is refused (``AccessDeniedError``, the same message
   whether the policy exists or not; recorded as ``revocation-refused`` either way: under the
   policy, or under no policy with the name when it does not exist, so that the public
   checkpoint's size does not tell a refused caller whether it does).
2. Freshness: ``time`` within :data:`~confide.cas.core.READ_WINDOW` of the CAS clock, and the
   request is carried out once (its digest is kept until its window has passed): a replay of an
   ``all_valid`` request cannot revoke certificates issued after it.
3. Scope: ``secret`` is declared by the current version and its certificates are signed by a
   generated CA of the same policy: a generated ``x509`` (or intermediate ``x509-ca``) whose
   issuer is one (:func:`confide.cas.crl.issued_by_generated_ca`), or an ``issue_to_runtime``
   certificate whose issuer is one (recorded at release, ``runtime_certificates``).
4. What: with ``serial``, the stored version or the runtime certificate with that serial, still
   valid; a serial not found there (another CA's, another secret's, expired) is refused
   (``PolicyError``). With ``all_valid``, every version and every runtime certificate of the
   secret still valid. A certificate revoked before stays as it was (the first revocation
   stands); a request that revokes nothing new changes nothing.
5. Replacement: when the current version of a generated certificate is revoked, the CAS issues
   the next version in the same transaction (same key), and re-issues what it signed if it is
   a CA, so the next release hands out a valid certificate. For ``keyCompromise`` and
   ``cACompromise`` the key itself is compromised: every still-valid certificate of the policy
   in scope with that key is revoked for the same reason, and the key (when the CAS generated it)
   is regenerated with everything derived from it. A key given explicitly or imported cannot be
   replaced by the CAS: the certificate is revoked and not re-issued (change the key's
   declaration).
6. Record: one ``certificates-revoked`` event (the signer, the request's SHA-256, names,
   versions, serials, reasons, certificate digests; never a value), the CRLs issued
   (:func:`confide.cas.crl.issue_crls`), and the policy head's ``revision`` incremented, so a
   release rendered before this transaction is refused at its commit.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from confide.cas.crl import (
    COMPROMISE,
    REASONS,
    generated_ca,
    issue_crls,
    issued_by_generated_ca,
    not_after,
    revoke,
)
from confide.cas.crl import revoke_runtime_certificates as revoke_runtime
from confide.cas.db import raw_execute
from confide.cas.documents import REVOKE_TYPE
from confide.errors import AccessDeniedError, ConflictError, ParseError, PolicyError, StorageError
from confide.policy import Policy
from confide.policy.canonical import jcs
from confide.policy.secret import Secret

if TYPE_CHECKING:
    from confide.cas.core import Cas

__all__ = [
    "REVOKE_TYPE",
    "REVOKE_V1_TYPE",
    "RevokeRequest",
    "in_scope",
    "parse_request",
    "refusal",
    "revoke_request",
]

REVOKE_V1_TYPE = "confide/revoke/v1"
"""A revocation request that names no CAS: refused since v2 (docs/cas.md "Revoking a certificate")."""
# The signed body's fields (``signature`` is not part of it): a field this CAS does not know,
# say one a later version would use to narrow a revocation, is refused rather than ignored.
FIELDS = frozenset({"type", "name", "secret", "reason", "serial", "all_valid", "time", "cas", "signer"})
_SERIAL = re.compile(r"[0-9a-fA-F]{1,40}")  # RFC 5280 §4.1.2.2: at most 20 octets


class RevokeRequest:
    """A parsed, signature-checked ``confide/revoke/v2`` request."""

    def __init__(self, body: dict[str, Any], signer: str) -> None:
        self.name, self.secret, self.reason = body["name"], body["secret"], body["reason"]
        self.cas: str = body["cas"]
        self.time: int = body["time"]
        serial = body.get("serial")
        self.serial: str | None = None if serial is None else format(int(serial, 16), "x")
        self.signer = signer
        self.digest = hashlib.sha256(jcs(body)).hexdigest()


def parse_request(body: dict[str, Any], signer: str) -> RevokeRequest:
    """Check the fields of a revocation request (hostile input) whose signature by ``signer``
    (a fingerprint) the caller has checked."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ParseError(
            f"got field {unknown[0][:40]!r}, expected only {', '.join(sorted(FIELDS))}", structure=REVOKE_TYPE
        )
    for field in ("name", "secret", "reason", "cas"):
        value = body.get(field)
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ParseError(f"{field} must be a non-empty string", structure=REVOKE_TYPE, field=field)
    if body["reason"] not in REASONS:
        raise ParseError(
            f"got reason {body['reason'][:40]!r}, expected one of {', '.join(REASONS)} (RFC 5280 §5.3.1)",
            structure=REVOKE_TYPE,
            field="reason",
        )
    when = body.get("time")
    if not isinstance(when, int) or isinstance(when, bool):
        raise ParseError("time must be an integer (Unix seconds)", structure=REVOKE_TYPE, field="time")
    serial, all_valid = body.get("serial"), body.get("all_valid")
    if (serial is None) == (all_valid is None):
        raise ParseError("expected exactly one of serial and all_valid", structure=REVOKE_TYPE)
    if serial is not None and (
        not isinstance(serial, str) or not _SERIAL.fullmatch(serial) or int(serial, 16) == 0
    ):
        raise ParseError(
            f"got serial {str(serial)[:48]!r}, expected 1 to 40 hex digits, not zero",
            structure=REVOKE_TYPE,
            field="serial",
        )
    if all_valid is not None and all_valid is not True:
        raise ParseError("all_valid must be true", structure=REVOKE_TYPE, field="all_valid")
    return RevokeRequest(body, signer)


def in_scope(policy: Policy, spec: Secret) -> bool:
    """Step 3: the secret's certificates are signed by a generated CA of ``policy``."""
    if spec.issue_to_runtime and spec.issuer is not None:
        try:
            return generated_ca(policy.secret(spec.issuer))
        except KeyError:
            return False
    return issued_by_generated_ca(policy, spec)


def _public_key(public: str) -> str | None:
    try:
        key = json.loads(public).get("public_key")
    except (ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _versions(conn: Connection, policy: str, name: str, now: float) -> list[tuple[int, str, str | None]]:
    """The stored versions of ``name`` still valid at ``now``: version, public metadata, serial."""
    rows = raw_execute(
        conn,
        "SELECT version, public FROM secrets WHERE policy = ? AND name = ? ORDER BY version",
        (policy, name),
    ).fetchall()
    out = []
    for version, public in rows:
        if not_after(public) > now:
            try:
                serial = json.loads(public).get("serial")
            except ValueError:
                serial = None
            out.append((int(version), public, serial if isinstance(serial, str) else None))
    return out


def revoke_request(
    cas: Cas, conn: Connection, req: RevokeRequest, now: float, *, spent_until: float
) -> dict[str, Any]:
    """Steps 2-6 of the module docstring for an authorised request (step 1 and the time window
    are the caller's, :meth:`confide.cas.core.Cas.revoke_certificates`), in ``conn`` (a write
    transaction). ``spent_until``: when the request's digest may be forgotten."""
    verified = cas.policy_auth.head(conn, req.name)  # confide.cas.policy_auth
    if verified is None:  # the caller found it in this transaction
        raise StorageError(f"policy {req.name[:128]!r} has no current version")
    head = (verified.hash,)
    policy = cas._load(conn, req.name, head[0])
    # Step 2.
    raw_execute(conn, "DELETE FROM revocation_requests WHERE expires_at < ?", (now,))
    spent = raw_execute(
        conn,
        "INSERT INTO revocation_requests (digest, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (req.digest, spent_until),
    )
    if spent.rowcount != 1:
        raise ConflictError("this revocation request was carried out before (replay); sign a new one")
    # Step 3.
    where = f"{req.name}/{req.secret}"
    try:
        spec = policy.secret(req.secret)
    except KeyError:
        raise PolicyError(f"{where}: the policy's current version declares no such secret") from None
    if not in_scope(policy, spec):
        raise PolicyError(
            f"{where} is not a certificate under a CA that policy {req.name} generated: it is on no CRL "
            '(docs/cas.md "Revocation")'
        )
    # Step 4.
    revoked: list[dict[str, Any]] = []
    regenerate: set[str] = set()
    kept_key: str | None = None
    found = 0
    if spec.issue_to_runtime:
        found, revoked = revoke_runtime(
            conn, cas.sealer, req.name, req.secret, req.reason, now, serial=req.serial
        )
    else:
        versions = _versions(conn, req.name, req.secret, now)
        targets = [
            v for v in versions if req.serial is None or (v[2] and int(v[2], 16) == int(req.serial, 16))
        ]
        found = len(targets)
        current = cas._latest_secret(conn, req.name, req.secret)
        current_key = None if current is None else _public_key(current.public)
        compromised = False
        for version, public, _serial in targets:
            entry = revoke(conn, cas.sealer, req.name, req.secret, version, public, req.reason, now)
            if entry is not None:
                revoked.append(entry)
                if current is not None and version == current.version:
                    regenerate.add(req.secret)
                compromised |= req.reason in COMPROMISE and _public_key(public) == current_key
        # Step 5: a compromised key is every certificate's that declares it (a generated
        # certificate always names its private_key secret; a renewal keeps the key).
        key = spec.private_key
        if compromised and key is not None and current_key is not None:
            for other in policy.secrets:
                if other.private_key != key or not issued_by_generated_ca(policy, other):
                    continue
                for version, public, _serial in _versions(conn, req.name, other.name, now):
                    if _public_key(public) != current_key:
                        continue
                    entry = revoke(conn, cas.sealer, req.name, other.name, version, public, req.reason, now)
                    if entry is not None:
                        revoked.append(entry)
            regenerate.discard(req.secret)  # re-issued after its key, as derived from it
            if policy.secret(key).generated:
                regenerate.add(key)
            else:
                kept_key = key  # explicit or imported: the CAS cannot replace it
    if found == 0:
        what = f"serial {req.serial}" if req.serial is not None else "any certificate"
        raise PolicyError(
            f"{where}: no valid certificate with {what} (a serial of another CA or secret, an expired one, "
            "or one issued before it was recorded)"
        )
    out: dict[str, Any] = {"name": req.name, "secret": req.secret, "reason": req.reason, "revoked": revoked,
                           "reissued": [], "key_replaced": False}  # fmt: skip
    if not revoked:
        return out  # all revoked before: nothing changes (idempotent)
    if regenerate:
        out["reissued"] = cas._generate_secrets(conn, policy, head[0], regenerate=frozenset(regenerate))
        out["key_replaced"] = spec.private_key is not None and spec.private_key in regenerate
    if kept_key is not None:
        out["key_not_replaced"] = kept_key  # the owner must change its declaration
    cas.policy_auth.bump_revision(conn, req.name, now)
    payload = {
        "hash": head[0], "signer": req.signer, "request_sha256": req.digest, "secret": req.secret,
        "reason": req.reason, "certificates": revoked,
        "reissued": [{"name": c["name"], "version": c["version"]} for c in out["reissued"]],
    }  # fmt: skip
    payload["request"] = {"serial": req.serial} if req.serial is not None else {"all_valid": True}
    cas.events.record(conn, "certificates-revoked", req.name, payload)
    out["crls"] = [
        {"ca": c["ca"], "number": c["number"]} for c in issue_crls(cas, conn, policy, head[0], now)
    ]
    return out


def refusal(name: str, signer: str) -> AccessDeniedError:
    """Step 1's refusal: the same whether the policy exists or not."""
    return AccessDeniedError(f"identity {signer[:16]}… may not revoke certificates of policy {name}")

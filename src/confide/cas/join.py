"""``confide cas serve --join URL``: the joining side of the attested master-key release.

:func:`join_cas` gets the master key from the CAS running at ``URL`` (the releasing side and
the rule are :mod:`confide.cas.key_release`; docs/cas.md "Joining a running CAS"):

1. It fetches the running CAS's own evidence over TLS and verifies it bound to the certificate
   of that connection, as ``confide cas attest`` does (:func:`~confide.cas.pin.
   verify_cas_document`: signatures, chains, collateral, binding); every later request goes over
   TLS trusting only that certificate (pinned in memory).
2. It asks for a single-use nonce, makes a fresh P-256 key pair, and obtains its own evidence
   over :func:`~confide.cas.key_release.key_release_binding` of the key and the nonce (from the
   TEE, or the simulator with ``--dev``), and verifies that too with its own verifier.
3. It appraises the running CAS with the same fixed rule the running CAS applies to it
   (:func:`~confide.cas.key_release.appraise_peer`: same platform, not debug, TCB UpToDate,
   the same identity claims as its own evidence; with ``--replica-min-tcb``, an SEV-SNP
   releaser's ``REPORTED_TCB`` at least the minimum for its product): it sends nothing to a CAS
   that is not the same code on the same kind of TEE. With ``successor`` (``--join-as-successor``: this CAS is
   a new version of the running one) the identity claims may differ, but only when the database
   names a key: the check of step 4 then accepts only that key, whose id (a one-way function of
   the key) no CAS can match without holding the database's key, so an impostor cannot make
   this CAS seal anything under a key of its choosing.
4. It sends the evidence and decrypts the answer with its private key (which never leaves the
   process). The key must have the id the answer names and, when the database names one, the
   database's (:func:`~confide.cas.rotation.stored_master_key_id`).

The key is returned to :func:`confide.cas.server.prepare`, which holds it in memory or seals
it with ``--seal`` (:func:`confide.cas.master_key.install_master_key`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.client import CasClient
from confide.cas.core import EvidenceVerifier, decrypt_release
from confide.cas.key_release import (
    PAYLOAD_TYPE,
    ReplicaMinTcb,
    appraise_peer,
    appraise_platform,
    identity_of,
    key_release_binding,
)
from confide.cas.pin import fetch_unverified, verify_cas_document
from confide.cas.rotation import master_key_id
from confide.cas.verifier import check_binding
from confide.collateral import public_url
from confide.collateral.dcap import DcapCollateralSource
from confide.errors import AppraisalError, BindingError, ParseError, UsageError
from confide.runtime.quote import Evidence
from confide.verify.result import ClaimValue
from confide.verify.sev_snp import AmdRootStore

__all__ = ["JoinResult", "join_cas"]

ObtainEvidence = Callable[[bytes], Evidence]
"""This CAS's evidence over the given 64 bytes of report data (its TEE or the simulator)."""


@dataclass(frozen=True)
class JoinResult:
    """What a join obtained: the key (never shown) and what the ledger and the log may say."""

    master_key: bytes = field(repr=False)
    master_key_id: str
    releaser_url: str
    releaser_cert_sha256: str
    releaser_evidence_sha256: str
    evidence_sha256: str
    platform: str
    simulated: bool
    identity: dict[str, ClaimValue]
    releaser_identity: dict[str, ClaimValue] = field(default_factory=dict)
    successor: bool = False

    def summary(self) -> dict[str, object]:
        """For the ``cas-start`` ledger entry and the log: names and hashes, never the key."""
        return {
            "from": self.releaser_url,
            "releaser_cert_sha256": self.releaser_cert_sha256,
            "releaser_evidence_sha256": self.releaser_evidence_sha256,
            "evidence_sha256": self.evidence_sha256,
            "platform": self.platform,
            "simulated": self.simulated,
            "identity": self.identity,
            **({"successor_of": self.releaser_identity} if self.successor else {}),
        }


def join_cas(
    url: str,
    *,
    obtain: ObtainEvidence,
    verifier: EvidenceVerifier,
    sim_key_pem: bytes | None,
    collateral: DcapCollateralSource | None,
    amd_roots: AmdRootStore | None = None,
    expected_key_id: str | None = None,
    at: datetime | None = None,
    client: Callable[[str, bytes], CasClient] = CasClient,
    successor: bool = False,
    min_tcb: ReplicaMinTcb | None = None,
) -> JoinResult:
    """Obtain the master key from the CAS at ``url`` (module docstring). ``expected_key_id``:
    the id the database names (``None``: it names none). ``client`` makes the client that trusts
    only the given PEM certificate (tests pass their own). ``successor``: this CAS is another
    version of the running one (step 3). ``min_tcb``: ``--replica-min-tcb``, the minimum
    ``REPORTED_TCB`` of an SEV-SNP releaser (step 3; ``None``: not judged)."""
    when = at or datetime.now(UTC)
    shown_url = public_url(url)
    if successor and expected_key_id is None:
        raise UsageError(
            "--join-as-successor needs a database that names its master key: the key id is what "
            "proves that the key released by a CAS of another version is the database's"
        )
    # 1. The running CAS, verified and bound to the certificate of this TLS connection.
    cert_der, body = fetch_unverified(url, "/v1/cas/evidence")
    pinned = verify_cas_document(
        cert_der, body, sim_key_pem=sim_key_pem, at=when, collateral=collateral, amd_roots=amd_roots
    )
    releaser = pinned.evidence
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with client(url, pinned.certificate_pem) as cas:
        # 2. A nonce, and this CAS's evidence over the key and the nonce, verified here too.
        nonce_hex = cas.key_release_nonce()
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            raise ParseError("the key-release nonce is not hex", structure="key-release nonce") from None
        binding = key_release_binding(key_der, nonce)
        evidence = obtain(binding)
        own = verifier.verify(evidence.platform, evidence.raw, dict(evidence.aux), at=when)
        check_binding(own, binding)
        # 3. The running CAS must be the same CAS (the rule it applies to this one).
        appraise = appraise_platform if successor else appraise_peer
        reasons = appraise(own, releaser, min_tcb=min_tcb)
        if reasons:
            raise AppraisalError(
                f"the CAS at {shown_url} is not the same CAS as this one, not joining: " + "; ".join(reasons),
                problems=list(reasons),
            )
        # 4. The key, encrypted to this process's key.
        response = cas.key_release(
            {
                "platform": evidence.platform.value,
                "evidence": base64.b64encode(evidence.raw).decode(),
                "aux": {k: base64.b64encode(v).decode() for k, v in sorted(evidence.aux.items())},
                "public_key": base64.b64encode(key_der).decode(),
                "nonce": nonce_hex,
            }
        )
    key, key_id = _open_payload(decrypt_release(private_key, response, nonce, public_key_der=key_der))
    if expected_key_id is not None and not hmac.compare_digest(key_id, expected_key_id):
        raise BindingError(
            f"the CAS at {shown_url} released master key id {key_id}, but the database's secrets are"
            f" sealed under {expected_key_id}: it is not this database's CAS (another --db?)"
        )
    return JoinResult(
        master_key=key,
        master_key_id=key_id,
        releaser_url=shown_url,
        releaser_cert_sha256=pinned.certificate_sha256,
        releaser_evidence_sha256=releaser.evidence_digest,
        evidence_sha256=hashlib.sha256(evidence.raw).hexdigest(),
        platform=own.platform.value,
        simulated=own.simulated,
        identity=identity_of(own),
        releaser_identity=identity_of(releaser),
        successor=successor,
    )


def _open_payload(payload: object) -> tuple[bytes, str]:
    """The released key and its id (hostile input until checked: the id must be the key's)."""
    what = "master-key release"
    try:
        if not isinstance(payload, dict) or payload.get("type") != PAYLOAD_TYPE:
            raise TypeError
        key = base64.b64decode(str(payload["master_key"]), validate=True)
        named = str(payload["master_key_id"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        expected = f"expected {PAYLOAD_TYPE} with master_key and master_key_id"
        raise ParseError(expected, structure=what) from None
    if len(key) != 32:
        raise ParseError(f"got a {len(key)}-byte master key, expected 32", structure=what)
    key_id = master_key_id(key)
    if not hmac.compare_digest(key_id, named.lower()):
        raise BindingError(f"the released key has id {key_id}, but the release names {named[:40]!r}")
    return key, key_id

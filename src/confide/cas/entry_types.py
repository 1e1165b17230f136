"""Which ledger entry type each CAS event is recorded as (docs/ledger.md "In the CAS").

In a module of its own, without the CAS's database layer: the readers of the ledger
(:mod:`confide.cas.audit`, and so ``confide ledger history|accesses``) need the mapping, not the
writer (:mod:`confide.cas.ledger_sink`, which re-exports it).
"""

from __future__ import annotations

from confide.ledger.encoding import EntryType

__all__ = ["ENTRY_TYPES"]

ENTRY_TYPES: dict[str, EntryType] = {
    "cas-start": EntryType.CAS_STARTED,
    "policy-created": EntryType.POLICY_CREATED,
    "policy-updated": EntryType.POLICY_UPDATED,
    "policy-approved": EntryType.POLICY_APPROVED,
    "policy-pending": EntryType.POLICY_SUBMITTED,
    "policy-stale": EntryType.POLICY_STALE,
    "policy-update-refused": EntryType.POLICY_REFUSED,
    "policy-create-refused": EntryType.POLICY_REFUSED,
    "revocation-refused": EntryType.POLICY_REFUSED,
    "secrets-generated": EntryType.SECRETS_GENERATED,
    "certificates-renewed": EntryType.CERTIFICATES_RENEWED,
    "certificates-revoked": EntryType.CERTIFICATES_REVOKED,
    "crl-issued": EntryType.CRL_ISSUED,
    "revocations-altered": EntryType.REVOCATIONS_ALTERED,
    "revocations-bound": EntryType.REVOCATIONS_BOUND,
    "policy-rows-bound": EntryType.POLICY_ROWS_BOUND,
    "secret-heads-bound": EntryType.SECRET_HEADS_BOUND,
    "dcap-tcb-evaluation-floor-raised": EntryType.TCB_FLOOR_RAISED,
    "dcap-tcb-evaluation-floor-altered": EntryType.TCB_FLOOR_ALTERED,
    "dcap-tcb-evaluation-floor-bound": EntryType.TCB_FLOOR_BOUND,
    "gce-crl-newest-raised": EntryType.GCE_CRL_NEWEST_RAISED,
    "gce-crl-newest-altered": EntryType.GCE_CRL_NEWEST_ALTERED,
    "gce-crl-newest-bound": EntryType.GCE_CRL_NEWEST_BOUND,
    "attestation": EntryType.ATTESTATION,
    "secret-release": EntryType.SECRET_RELEASED,
    "export-release": EntryType.EXPORT_RELEASED,
    "volume-tag": EntryType.VOLUME_TAG,
    "volume-key": EntryType.VOLUME_KEY,
    "master-key-rotated": EntryType.KEY_ROTATED,
    "master-key-released": EntryType.KEY_RELEASED,
    "master-key-release-refused": EntryType.KEY_RELEASE_REFUSED,
    "successor-board-set": EntryType.SUCCESSOR_BOARD_SET,
    "successor-approved": EntryType.SUCCESSOR_APPROVED,
    "successor-approval-refused": EntryType.SUCCESSOR_APPROVAL_REFUSED,
    "successor-withdrawn": EntryType.SUCCESSOR_WITHDRAWN,
    "successor-withdrawal-refused": EntryType.SUCCESSOR_WITHDRAWAL_REFUSED,
    "successor-board-change-approved": EntryType.SUCCESSOR_BOARD_CHANGE_APPROVED,
    "successor-board-change-refused": EntryType.SUCCESSOR_BOARD_CHANGE_REFUSED,
    "successor-board-changed": EntryType.SUCCESSOR_BOARD_CHANGED,
    "successor-version-retired": EntryType.SUCCESSOR_VERSION_RETIRED,
    "successor-retirement-approved": EntryType.SUCCESSOR_RETIREMENT_APPROVED,
    "successor-retirement-refused": EntryType.SUCCESSOR_RETIREMENT_REFUSED,
}

"""Verification of confide's *simulated* evidence (development only).

Steps (format in :mod:`confide.evidence.sim`, rationale in ``docs/simulator.md``):

1. Parse the 268-byte structure (magic, version, SIMULATED marker, reserved flag bits).
2. Check that ``platform_key_id`` is SHA-256 of the raw Ed25519 platform public key the
   caller trusts (a different platform key is a :class:`~confide.errors.SignatureError`
   naming both key ids).
3. Verify the Ed25519 signature over bytes ``[0, 0xCC)`` with that key.
4. Return :class:`~confide.verify.result.VerifiedEvidence` with ``simulated=True``.

A successful result only says "the holder of this simulated platform key produced these
bytes": the key is an ordinary file, so nothing is protected. Policies accept it only when
they tolerate ``simulation``. The timestamp is reported, not judged (freshness comes from a
nonce in ``report_data``). No I/O and no clock here: the time is passed as ``at``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.errors import SignatureError
from confide.evidence.sim import MEASUREMENT_SIZE, SIGNED_SIZE, SimEvidence
from confide.verify.result import Platform, VerifiedEvidence

__all__ = ["platform_key_id", "verify_sim"]


def platform_key_id(public_key: Ed25519PublicKey) -> bytes:
    """SHA-256 of the raw 32-byte Ed25519 public key (the evidence's ``platform_key_id``)."""
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).digest()


_KEY_IDS: dict[int, tuple[Ed25519PublicKey, bytes]] = {}
_KEY_IDS_MAX = 8


def _trusted_key_id(public_key: Ed25519PublicKey) -> bytes:
    """:func:`platform_key_id` of a trusted key, kept by the key object's identity (a verifier
    passes the same object for every evidence; the entry holds the object, so its ``id`` cannot
    be reused while the entry exists; a few keys at most, then the cache starts afresh)."""
    entry = _KEY_IDS.get(id(public_key))
    if entry is not None and entry[0] is public_key:
        return entry[1]
    key_id = platform_key_id(public_key)
    if len(_KEY_IDS) >= _KEY_IDS_MAX:
        _KEY_IDS.clear()
    _KEY_IDS[id(public_key)] = (public_key, key_id)
    return key_id


def verify_sim(evidence: bytes, platform_key: Ed25519PublicKey, *, at: datetime) -> VerifiedEvidence:
    """Verify simulated evidence against the trusted simulated platform public key."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    # Step 1.
    parsed = SimEvidence.from_bytes(evidence)
    # Step 2.
    expected_id = _trusted_key_id(platform_key)
    if not hmac.compare_digest(parsed.platform_key_id, expected_id):
        raise SignatureError(
            f"simulated evidence names platform key id {parsed.platform_key_id.hex()}, "
            f"expected {expected_id.hex()} (the trusted simulated platform key)"
        )
    # Step 3. The signed bytes as received: the parse above accepted them, and they are exactly
    # what ``parsed.signed_bytes()`` serialises again (every field has a fixed width).
    try:
        platform_key.verify(parsed.signature, bytes(evidence[:SIGNED_SIZE]))
    except InvalidSignature:
        raise SignatureError(
            "simulated evidence: Ed25519 signature does not verify with the simulated platform key"
        ) from None
    # Step 4.
    # ISO 8601 in UTC, clamped to the end of year 9999 (the timestamp is unsigned: from 1970)
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(parsed.timestamp, 253402300799)))
    return VerifiedEvidence(
        platform=Platform.SIMULATED,
        simulated=True,
        claims={
            "measurement": parsed.measurement.hex(),
            "report_data": parsed.report_data.hex(),
            "debug": parsed.debug,
            "svn": parsed.svn,
            "platform_key_id": parsed.platform_key_id.hex(),
            "timestamp": parsed.timestamp,
        },
        tcb_status=None,
        verified_at=at.astimezone(UTC),
        evidence_digest=hashlib.sha256(evidence).hexdigest(),
        details={
            "warning": "SIMULATED evidence: produced in software, no hardware protection",
            "format_version": parsed.version,
            "measurement_algorithm": f"sha{MEASUREMENT_SIZE * 8}",
            "issued_at": issued,
        },
    )

"""Verification of confide's *simulated* evidence (development only).

Steps (format in :mod:`confide.evidence.sim`, rationale in ``docs/simulator.md``):

1. Parse the 268-byte structure (magic, version, SIMULATED marker, reserved flag bits).
2. The version must match the trusted key's type: version 1 only with an Ed25519 key,
   version 2 only with an ECDSA P-256 key (else a :class:`~confide.errors.SignatureError`
   naming both).
3. Check that ``platform_key_id`` is the id of the platform public key the caller trusts
   (:func:`platform_key_id`; a different platform key is a
   :class:`~confide.errors.SignatureError` naming both key ids).
4. Verify the signature over bytes ``[0, 0xCC)`` with that key: Ed25519 (RFC 8032) for
   version 1; for version 2 ECDSA with SHA-256 (FIPS 186-5 section 6.4.2), the 64 signature
   bytes read as r || s (32-byte big-endian integers each; nothing else is accepted).
5. Return :class:`~confide.verify.result.VerifiedEvidence` with ``simulated=True``.

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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.errors import SignatureError
from confide.evidence.sim import MEASUREMENT_SIZE, SIGNED_SIZE, VERSION_ED25519, VERSION_P256, SimEvidence
from confide.verify.result import Platform, VerifiedEvidence

__all__ = ["SimPlatformPublicKey", "key_version", "platform_key_id", "verify_sim"]

# A simulated platform's public key: Ed25519 (evidence version 1) or ECDSA P-256 (version 2).
SimPlatformPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

# The order n of the P-256 base point (FIPS 186-5 / SP 800-186 section 3.2.1.3).
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def key_version(public_key: SimPlatformPublicKey) -> int:
    """The evidence version this platform key signs: 1 for Ed25519, 2 for ECDSA P-256.
    Any other key (another curve, RSA) is a :class:`~confide.errors.SignatureError`."""
    if isinstance(public_key, Ed25519PublicKey):
        return VERSION_ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        return VERSION_P256
    curve = getattr(getattr(public_key, "curve", None), "name", None)
    raise SignatureError(
        f"simulated platform key: got {curve or type(public_key).__name__}, expected Ed25519 or ECDSA P-256"
    )


def platform_key_id(public_key: SimPlatformPublicKey) -> bytes:
    """The evidence's ``platform_key_id``: SHA-256 of the raw 32-byte Ed25519 public key
    (version 1), or SHA-256 of the 65-byte uncompressed P-256 point ``0x04 || X || Y``
    (SEC 1 v2 section 2.3.3; version 2)."""
    if key_version(public_key) == VERSION_ED25519:
        return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).digest()
    return hashlib.sha256(public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)).digest()


_KEY_IDS: dict[int, tuple[SimPlatformPublicKey, bytes, int]] = {}
_KEY_IDS_MAX = 8


def _trusted_key(public_key: SimPlatformPublicKey) -> tuple[bytes, int]:
    """:func:`platform_key_id` of a trusted key, kept by the key object's identity (a verifier
    passes the same object for every evidence; the entry holds the object, so its ``id`` cannot
    be reused while the entry exists; a few keys at most, then the cache starts afresh)."""
    entry = _KEY_IDS.get(id(public_key))
    if entry is not None and entry[0] is public_key:
        return entry[1], entry[2]
    version = key_version(public_key)
    key_id = platform_key_id(public_key)
    if len(_KEY_IDS) >= _KEY_IDS_MAX:
        _KEY_IDS.clear()
    _KEY_IDS[id(public_key)] = (public_key, key_id, version)
    return key_id, version


_SCHEMES = {VERSION_ED25519: "Ed25519", VERSION_P256: "ECDSA P-256"}


def verify_sim(evidence: bytes, platform_key: SimPlatformPublicKey, *, at: datetime) -> VerifiedEvidence:
    """Verify simulated evidence against the trusted simulated platform public key."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    # Step 1.
    parsed = SimEvidence.from_bytes(evidence)
    # Step 2.
    expected_id, key_version_ = _trusted_key(platform_key)
    if parsed.version != key_version_:
        raise SignatureError(
            f"simulated evidence version {parsed.version} is signed with {_SCHEMES[parsed.version]}, "
            f"but the trusted simulated platform key is {_SCHEMES[key_version_]} (version {key_version_})"
        )
    # Step 3.
    if not hmac.compare_digest(parsed.platform_key_id, expected_id):
        raise SignatureError(
            f"simulated evidence names platform key id {parsed.platform_key_id.hex()}, "
            f"expected {expected_id.hex()} (the trusted simulated platform key)"
        )
    # Step 4. The signed bytes as received: the parse above accepted them, and they are exactly
    # what ``parsed.signed_bytes()`` serialises again (every field has a fixed width).
    signed = bytes(evidence[:SIGNED_SIZE])
    try:
        if isinstance(platform_key, Ed25519PublicKey):
            platform_key.verify(parsed.signature, signed)
        else:
            r = int.from_bytes(parsed.signature[:32], "big")
            s = int.from_bytes(parsed.signature[32:], "big")
            # FIPS 186-5 section 6.4.2 step 1: r and s in [1, n-1] (also checked by OpenSSL;
            # here so that the refusal does not depend on the DER round trip).
            if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
                raise InvalidSignature
            platform_key.verify(encode_dss_signature(r, s), signed, _ECDSA_SHA256)
    except InvalidSignature:
        raise SignatureError(
            f"simulated evidence: {_SCHEMES[parsed.version]} signature does not verify with the "
            "simulated platform key"
        ) from None
    # Step 5.
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

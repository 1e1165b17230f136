"""Verify AWS Nitro Enclaves attestation documents.

Steps (AWS nitro-enclaves-nsm-api ``docs/attestation_process.md`` §3.2 "Verifying the root of
trust"; RFC 9052 §4.4):

1. Parse the COSE_Sign1 envelope and the payload, checking every field's type and size.
2. ``cabundle[0]`` must be the pinned AWS Nitro Enclaves root (G1, SHA-256
   ``641a0321…79bb5b``); the chain root → ``cabundle[1..]`` → ``certificate`` is checked link by
   link at ``at`` (names, signatures, dates, BasicConstraints, path length, keyCertSign).
   The leaf (``certificate``) must be a signing end entity (§3.2.3.3): not a CA (BasicConstraints
   cA false or absent, RFC 5280 §4.2.1.9) and, with a KeyUsage extension, ``digitalSignature``.
3. The document's own timestamp must fall within the leaf certificate's validity.
4. The protected header must name ES384 (-35); the signature (r ‖ s, 48 + 48 bytes) over the
   ``Sig_structure`` ``["Signature1", protected, b"", payload]`` must verify with the leaf key
   (ECDSA P-384, SHA-384).
5. The document's ``nonce`` must equal ``expected_nonce`` when one is given.

Leaf certificates live about three hours: verify at (or near) the document's timestamp when
checking stored documents. No I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from confide.errors import BindingError, CertificateChainError, ParseError, SignatureError
from confide.evidence.nitro import COSE_ALG_ES384, NitroDocument
from confide.verify._pinned_chain import (
    check_signing_end_entity,
    fingerprint,
    load_chain_certificate,
    load_pinned_root,
    subject_cn,
    verify_pinned_chain,
)
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence

__all__ = ["AWS_NITRO_ROOT_SHA256", "aws_nitro_root", "document_time", "verify_nitro_document"]

AWS_NITRO_ROOT_FILE = "aws_nitro_enclaves_root_g1.pem"
AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
SIGNATURE_SIZE = 96
COORDINATE_SIZE = 48
DEBUG_PCRS = (0, 1, 2)


def aws_nitro_root() -> x509.Certificate:
    """The embedded AWS Nitro Enclaves root, checked against its pinned fingerprint."""
    return load_pinned_root(AWS_NITRO_ROOT_FILE, AWS_NITRO_ROOT_SHA256)


def document_time(timestamp_ms: int) -> datetime:
    """The document's timestamp as an aware UTC datetime."""
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        raise ParseError(
            f"timestamp {timestamp_ms} ms is out of range", structure="Nitro attestation document"
        ) from None


def verify_nitro_document(
    evidence: bytes,
    *,
    at: datetime,
    expected_nonce: bytes | None = None,
    root: x509.Certificate | None = None,
) -> VerifiedEvidence:
    """Verify a binary Nitro attestation document; see the module docstring for the steps."""
    # 1. parse
    parsed = NitroDocument.from_bytes(evidence)
    doc = parsed.document
    # 2. chain: cabundle is root first; our chain helper wants leaf first.
    pinned = root if root is not None else aws_nitro_root()
    bundle = [load_chain_certificate(c, f"cabundle[{i}]") for i, c in enumerate(doc.cabundle)]
    leaf = load_chain_certificate(doc.certificate, "certificate")
    if bundle[0] != pinned:
        raise CertificateChainError(
            f"cabundle[0] is {subject_cn(bundle[0])!r} (SHA-256 {fingerprint(bundle[0])}),"
            f" expected the pinned AWS Nitro root (SHA-256 {fingerprint(pinned)})"
        )
    chain = [leaf, *reversed(bundle)]
    verify_pinned_chain(chain, pinned, at)
    # attestation_process.md §3.2.3.3: the target certificate has digitalSignature and no
    # pathLenConstraint ("this is a client certificate").
    check_signing_end_entity(leaf, "leaf")
    # 3. the document was produced while its leaf was valid
    produced = document_time(doc.timestamp)
    if not leaf.not_valid_before_utc <= produced <= leaf.not_valid_after_utc:
        raise CertificateChainError(
            f"document timestamp {produced.isoformat()} is outside the leaf's validity"
            f" {leaf.not_valid_before_utc.isoformat()}..{leaf.not_valid_after_utc.isoformat()}"
        )
    # 4. signature
    if parsed.cose.algorithm != COSE_ALG_ES384:
        raise SignatureError(f"COSE alg: got {parsed.cose.algorithm}, expected {COSE_ALG_ES384} (ES384)")
    if len(parsed.cose.signature) != SIGNATURE_SIZE:
        raise SignatureError(
            f"signature: got {len(parsed.cose.signature)} bytes, expected {SIGNATURE_SIZE} (r‖s)"
        )
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(f"leaf certificate: unusable public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CertificateChainError("leaf certificate: expected an ECDSA P-384 key")
    sig = parsed.cose.signature
    r = int.from_bytes(sig[:COORDINATE_SIZE], "big")
    s = int.from_bytes(sig[COORDINATE_SIZE:], "big")
    try:
        key.verify(encode_dss_signature(r, s), parsed.cose.sig_structure, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            f"COSE_Sign1 signature does not verify with the key of {subject_cn(leaf)!r}"
        ) from None
    # 5. nonce
    if expected_nonce is not None:
        if doc.nonce is None:
            raise BindingError(f"nonce: the document has none, expected {expected_nonce.hex()}")
        if not hmac.compare_digest(doc.nonce, expected_nonce):
            raise BindingError(f"nonce: got {doc.nonce.hex()}, expected {expected_nonce.hex()}")

    debug = all(i in doc.pcrs and not any(doc.pcrs[i]) for i in DEBUG_PCRS)
    claims: dict[str, ClaimValue] = {
        "module_id": doc.module_id,
        "timestamp": doc.timestamp,
        "timestamp_iso": produced.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "digest": doc.digest,
        **{f"pcr{i}": v.hex() for i, v in doc.pcrs.items()},
        "public_key": None if doc.public_key is None else doc.public_key.hex(),
        "user_data": None if doc.user_data is None else doc.user_data.hex(),
        "nonce": None if doc.nonce is None else doc.nonce.hex(),
        "nonce_checked": expected_nonce is not None,
        "debug": debug,
    }
    details: dict[str, ClaimValue] = {
        "signature_algorithm": "ES384 (ECDSA P-384 SHA-384)",
        "cose_tagged": parsed.cose.tagged,
        "chain": [subject_cn(c) for c in chain],
        "leaf_not_after": leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "root_sha256": fingerprint(pinned),
        "root_overridden": root is not None,
    }
    return VerifiedEvidence(
        platform=Platform.AWS_NITRO,
        claims=claims,
        verified_at=at,
        evidence_digest=hashlib.sha256(evidence).hexdigest(),
        details=details,
    )

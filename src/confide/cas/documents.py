"""The signed documents' types and their signing (docs/cas.md "Policies and governance").

What a client needs to sign a request, in a module of its own: :mod:`confide.cas.client` (and
so ``confide policy ...``, ``confide run``, ``confide cas successor ...``) does not import the
CAS's database layer and policy engine to name a document type. The modules that verify each
document re-export its type under the name they always had (``confide.cas.core.POLICY_TYPE``,
``confide.cas.successor.APPROVAL_TYPE``, ...).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.errors import ParseError
from confide.identity import PublicIdentity
from confide.jcs import jcs

__all__ = [
    "APPROVAL_TYPE",
    "APPROVAL_V1_TYPE",
    "BOARD_CHANGE_TYPE",
    "POLICY_TYPE",
    "POLICY_V1_TYPE",
    "READABLE_PATH",
    "READ_NONCE_PATH",
    "READ_TYPE",
    "READ_V2_TYPE",
    "RETIREMENT_TYPE",
    "REVOKE_TYPE",
    "SUCCESSOR_APPROVAL_TYPE",
    "WITHDRAWAL_TYPE",
    "sign_document",
    "spki_sha256",
    "verify_signed",
]

POLICY_TYPE = "confide/policy/v2"
APPROVAL_TYPE = "confide/approval/v2"
READ_TYPE = "confide/read/v3"
READ_V2_TYPE = "confide/read/v2"
"""A read request with a time and no nonce from the CAS: replayable for five minutes, so refused
since v3 (docs/cas.md "Reading a policy")."""
READ_NONCE_PATH = "/v1/read/nonce"
"""Where a client asks for the single-use nonce a ``confide/read/v3`` request carries."""
READABLE_PATH = "/v1/read/policies"
"""The policies a read request's signer may read (route ``list``; docs/cas.md "Reading a policy")."""
REVOKE_TYPE = "confide/revoke/v2"
SUCCESSOR_APPROVAL_TYPE = "confide/successor-approval/v1"
WITHDRAWAL_TYPE = "confide/successor-withdrawal/v1"
BOARD_CHANGE_TYPE = "confide/successor-board-change/v1"
RETIREMENT_TYPE = "confide/successor-retirement/v1"


def spki_sha256(certificate: x509.Certificate) -> str:
    """The hex SHA-256 of ``certificate``'s DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7): the
    CAS a read request is for (its ``cas``; docs/cas.md "Policies and governance"). The key,
    not the certificate: a certificate re-issued for the same TLS key names the same CAS."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def sign_document(body: dict[str, Any], sign: Callable[[bytes], bytes], signer_b64: str) -> dict[str, Any]:
    doc = {**body, "signer": signer_b64}
    return {**doc, "signature": base64.b64encode(sign(jcs(doc))).decode()}


POLICY_V1_TYPE = "confide/policy/v1"
"""A policy submission that names no CAS: refused since v2 (docs/cas.md "Policies and
governance"); ledger entries and ``policies`` rows recorded before hold such submissions
(``confide.cas.audit``)."""
APPROVAL_V1_TYPE = "confide/approval/v1"
"""An approval of a version that names no CAS: refused since v2 (docs/cas.md "Policies and
governance"); ledger entries recorded before hold such approvals (``confide.cas.audit``)."""


def verify_signed(doc: Any, expected_type: str) -> tuple[dict[str, Any], PublicIdentity]:
    """The body of a document signed as :func:`sign_document` signs it (Ed25519 over the RFC 8785
    JSON of everything but ``signature``) and its signer, once the type, the canonical base64
    signature and the signature itself are checked."""
    if not isinstance(doc, dict):
        raise ParseError("expected a JSON object", structure=expected_type)
    if doc.get("type") != expected_type:
        raise ParseError(
            f"got type {doc.get('type')!r}, expected {expected_type!r}", structure="signed document"
        )
    sig_text = doc.get("signature")
    if not isinstance(sig_text, str):
        raise ParseError("missing signature", structure=expected_type, field="signature")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except ValueError:
        raise ParseError("signature is not base64", structure=expected_type, field="signature") from None
    if base64.b64encode(signature).decode() != sig_text:  # RFC 4648 §3.5: one text per signature
        raise ParseError("signature is not canonical base64 (pad bits set)", structure=expected_type,
                         field="signature")  # fmt: skip
    signer = PublicIdentity.from_base64(doc.get("signer"))
    body = {k: v for k, v in doc.items() if k != "signature"}
    signer.verify(signature, jcs(body))
    return body, signer

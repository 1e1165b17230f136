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

from confide.jcs import jcs

__all__ = [
    "APPROVAL_TYPE",
    "BOARD_CHANGE_TYPE",
    "POLICY_TYPE",
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

"""A test PKI in AWS Nitro's shape (root → ICA → enclave leaf, ECDSA P-384) and attestation
documents signed by its leaf.

Such documents verify only under this PKI's root passed explicitly (``root=``), never under the
pinned AWS Nitro root. Certificates are valid from an hour before ``now`` to three hours after,
like AWS's short-lived leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from pki import Issuer, p384_cert

COSE_ES384 = -35
COSE_SIGN1_TAG = 18


def make_ca(cn: str, now: datetime, issuer: Issuer | None = None, *, ca: bool = True) -> Issuer:
    return p384_cert(cn, now - timedelta(hours=1), now + timedelta(hours=3), issuer, ca=ca)


@dataclass(frozen=True)
class NitroPki:
    root: Issuer
    ica: Issuer
    leaf: Issuer
    now: datetime

    @property
    def root_cert(self) -> x509.Certificate:
        return self.root[0]


def make_pki(now: datetime) -> NitroPki:
    root = make_ca("Test Nitro Root", now)
    ica = make_ca("Test Nitro ICA", now, root)
    leaf = make_ca("Test enclave", now, ica, ca=False)
    return NitroPki(root, ica, leaf, now)


def payload_for(pki: NitroPki) -> dict[str, Any]:
    """A well-formed payload (non-zero PCRs: not a debug enclave)."""
    der = [c.public_bytes(Encoding.DER) for c, _ in (pki.root, pki.ica, pki.leaf)]
    return {
        "module_id": "i-test-enc1",
        "digest": "SHA384",
        "timestamp": int(pki.now.timestamp() * 1000),
        "pcrs": {i: bytes([i]) * 48 for i in range(16)},
        "certificate": der[2],
        "cabundle": der[:2],
        "public_key": None,
        "user_data": b"hello",
        "nonce": b"n" * 16,
    }


def forge_document(pki: NitroPki, *, alg: int = COSE_ES384, tagged: bool = False, **changes: Any) -> bytes:
    """A COSE_Sign1 attestation document signed by the PKI's leaf, payload fields ``changes``d."""
    payload = payload_for(pki)
    payload.update(changes)
    protected = cbor2.dumps({1: alg})
    body = cbor2.dumps(payload)
    to_sign = cbor2.dumps(["Signature1", protected, b"", body])
    r, s = decode_dss_signature(pki.leaf[1].sign(to_sign, ec.ECDSA(hashes.SHA384())))
    cose = [protected, {}, body, r.to_bytes(48, "big") + s.to_bytes(48, "big")]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, cose) if tagged else cose)

"""``confide evidence verify --platform sim``: the simulated TEE (development only).

``--root`` names the simulated platform public key (PEM or DER SubjectPublicKeyInfo, ECDSA
P-256 or Ed25519; or the raw 65-byte P-256 point or 32-byte Ed25519 key), e.g.
``DIR/platform-key.pub.pem`` written by ``confide sim init --dir DIR``. ``--nonce HEX``, if
given, must equal the report data (zero-padded on the right to 64 bytes).
"""

from __future__ import annotations

import hmac

from confide.errors import BindingError, UsageError
from confide.evidence.sim import REPORT_DATA_SIZE
from confide.platforms import VerifyRequest
from confide.sim.platform import load_platform_public_key
from confide.verify.result import VerifiedEvidence
from confide.verify.sim import verify_sim

__all__ = ["verify_request"]


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    if req.root is None:
        raise UsageError(
            "--platform sim needs --root FILE: the simulated platform public key "
            "(DIR/platform-key.pub.pem from `confide sim init --dir DIR`)"
        )
    try:
        key_bytes = req.root.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root: cannot read {str(req.root)!r}: {exc.strerror or exc}") from None
    key = load_platform_public_key(key_bytes, source=str(req.root))
    result = verify_sim(req.evidence, key, at=req.at)
    if req.nonce is not None:
        if len(req.nonce) > REPORT_DATA_SIZE:
            raise UsageError(f"--nonce: got {len(req.nonce)} bytes, expected at most {REPORT_DATA_SIZE}")
        expected = req.nonce.ljust(REPORT_DATA_SIZE, b"\0").hex()
        got = str(result.claims["report_data"])
        if not hmac.compare_digest(got, expected):
            raise BindingError(f"report_data is {got}, expected {expected} (--nonce, zero-padded)")
    return result

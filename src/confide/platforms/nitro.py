"""CLI glue for ``confide evidence verify --platform aws-nitro``.

The evidence may be the binary COSE_Sign1 document or its base64 text (``.b64``); ``--root``
overrides the pinned AWS root (tests only); ``--nonce`` must equal the document's nonce.
"""

from __future__ import annotations

from confide.errors import UsageError
from confide.evidence.nitro import decode_document_text
from confide.platforms import VerifyRequest
from confide.platforms._root import load_root_certificate
from confide.verify.nitro import verify_nitro_document
from confide.verify.result import VerifiedEvidence

__all__ = ["verify_request"]


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    if req.cert_chain is not None or req.vcek is not None or req.chain is not None:
        raise UsageError(
            "--platform aws-nitro takes its chain from the document: drop --cert-chain/--vcek/--chain"
        )
    if req.collateral is not None or req.collateral_url is not None:
        raise UsageError("--platform aws-nitro needs no collateral: drop --collateral")
    evidence = decode_document_text(req.evidence)
    root = load_root_certificate(req.root, "--root") if req.root is not None else None
    return verify_nitro_document(evidence, at=req.at, expected_nonce=req.nonce, root=root)

"""CLI glue for ``confide evidence verify --platform aws-nitro``.

The evidence may be the binary COSE_Sign1 document or its base64 text (``.b64``); ``--root``
overrides the pinned AWS root (tests only); ``--nonce`` must equal the document's nonce.
"""

from __future__ import annotations

from cryptography import x509

from confide.errors import ParseError, UsageError
from confide.evidence.nitro import decode_document_text
from confide.platforms import VerifyRequest
from confide.verify.nitro import verify_nitro_document
from confide.verify.result import VerifiedEvidence

__all__ = ["verify_request"]


def _load_root(req: VerifyRequest) -> x509.Certificate | None:
    if req.root is None:
        return None
    try:
        data = req.root.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root: cannot read {str(req.root)!r}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ParseError(f"--root: not a PEM or DER certificate: {exc}") from None


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    if req.cert_chain is not None or req.vcek is not None or req.chain is not None:
        raise UsageError(
            "--platform aws-nitro takes its chain from the document: drop --cert-chain/--vcek/--chain"
        )
    evidence = decode_document_text(req.evidence)
    return verify_nitro_document(evidence, at=req.at, expected_nonce=req.nonce, root=_load_root(req))

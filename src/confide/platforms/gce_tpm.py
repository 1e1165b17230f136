"""CLI glue for ``confide evidence verify --platform gce-tpm``.

The evidence is a binary go-tpm-tools ``attest.Attestation`` protobuf (as ``gotpm attest``
writes it). ``--nonce`` must equal every quote's extraData; ``--root`` replaces the pinned
Google roots by one certificate (tests only).
"""

from __future__ import annotations

from cryptography import x509

from confide.errors import ParseError, UsageError
from confide.platforms import VerifyRequest
from confide.verify.gce_tpm import verify_gce_attestation
from confide.verify.result import VerifiedEvidence

__all__ = ["verify_request"]


def _load_root(req: VerifyRequest) -> list[x509.Certificate] | None:
    if req.root is None:
        return None
    try:
        data = req.root.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root: cannot read {str(req.root)!r}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            return [x509.load_pem_x509_certificate(data)]
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ParseError(f"--root: not a PEM or DER certificate: {exc}") from None


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    unused = [
        name
        for name, value in (
            ("--collateral", req.collateral),
            ("--vcek", req.vcek),
            ("--chain", req.chain),
            ("--cert-chain", req.cert_chain),
            ("--event-log", req.event_log),
            ("--rim-root", req.rim_root),
        )
        if value is not None
    ]
    if unused:
        raise UsageError(
            "--platform gce-tpm takes its AK certificate and event log from the attestation:"
            f" drop {', '.join(unused)}"
        )
    return verify_gce_attestation(req.evidence, at=req.at, expected_nonce=req.nonce, roots=_load_root(req))

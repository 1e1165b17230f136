"""CLI glue for ``confide evidence verify --platform gce-tpm``.

The evidence is a binary go-tpm-tools ``attest.Attestation`` protobuf (as ``gotpm attest``
writes it). ``--nonce`` must equal every quote's extraData; ``--root`` replaces the pinned
Google roots by one certificate (tests only).
"""

from __future__ import annotations

from confide.errors import UsageError
from confide.platforms import VerifyRequest
from confide.platforms._root import load_root_certificate
from confide.verify.gce_tpm import verify_gce_attestation
from confide.verify.result import VerifiedEvidence

__all__ = ["verify_request"]


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    unused = [
        name
        for name, value in (
            ("--collateral", req.collateral or req.collateral_url),
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
    roots = [load_root_certificate(req.root, "--root")] if req.root is not None else None
    return verify_gce_attestation(req.evidence, at=req.at, expected_nonce=req.nonce, roots=roots)

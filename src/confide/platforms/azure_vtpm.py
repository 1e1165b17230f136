"""``confide evidence verify --platform az-snp-vtpm | az-tdx-vtpm``: files in, :class:`VerifiedEvidence` out.

Inputs:

* EVIDENCE: trustee's Azure vTPM evidence JSON (v0, v1 or v2 for SEV-SNP; v0 or v1 for TDX; see
  :mod:`confide.evidence.azure_vtpm`).
* ``--nonce HEX``: the expected report data. It must equal the TPM quote's ``extraData`` and,
  in v2 evidence, the runtime claims' ``user-data`` (zero-padded to 64 bytes). Without it the
  quote's ``extraData`` is only reported (claim ``nonce``, ``nonce_checked: false``).
* SEV-SNP: the VCEK comes from the evidence and chains to the pinned AMD roots
  (``--root`` replaces the pinned ARK, tests only). ``--vcek``/``--chain`` are refused.
* TDX: ``--collateral`` (or ``CONFIDE_DCAP_COLLATERAL``), ``--min-tcb-eval-number N|auto``
  and ``--tcb-eval-numbers`` as for ``--platform tdx`` (the TD quote's collateral).
"""

from __future__ import annotations

from confide.errors import UsageError
from confide.evidence.azure_vtpm import HclReportType, parse_evidence
from confide.evidence.dcap import Quote
from confide.platforms import VerifyRequest
from confide.platforms.dcap import request_collateral, root_der
from confide.platforms.sev_snp import embedded_verifier, roots_with_override
from confide.verify.azure_vtpm import verify_azure_snp, verify_azure_tdx
from confide.verify.dcap import DcapVerifier
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.sev_snp import SnpVerifier

__all__ = ["verify_request"]

_DCAP = DcapVerifier()


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    if (
        req.vcek is not None
        or req.chain is not None
        or req.cert_chain is not None
        or req.event_log is not None
    ):
        raise UsageError(
            f"--platform {req.platform.value} takes its certificates from the evidence: "
            "drop --vcek/--chain/--cert-chain/--event-log"
        )
    if req.platform is Platform.AZURE_SNP_VTPM:
        if req.collateral is not None or req.collateral_url is not None:
            raise UsageError("--collateral: the SEV-SNP VCEK travels in the evidence; drop --collateral")
        evidence = parse_evidence(req.evidence, HclReportType.SNP)
        snp = SnpVerifier(roots_with_override(req.root), cache_size=0) if req.root else embedded_verifier()
        return verify_azure_snp(evidence, snp, at=req.at, nonce=req.nonce)
    if req.platform is not Platform.AZURE_TDX_VTPM:
        raise UsageError(f"platform {req.platform.value!r} is not an Azure vTPM platform")
    evidence = parse_evidence(req.evidence, HclReportType.TDX)
    assert evidence.td_quote is not None
    dcap = DcapVerifier(root_ca_der=root_der(req.root)) if req.root else _DCAP
    # the TD quote's collateral as evidence verify fetches an SGX/TDX quote's (with auto, Intel's
    # TCB evaluation data numbers too: verified with it, kept in the result)
    collateral, pck = request_collateral(dcap, Quote.from_bytes(evidence.td_quote), req)
    return verify_azure_tdx(evidence, dcap, collateral, at=req.at, nonce=req.nonce, pck=pck)

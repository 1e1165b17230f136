"""Verification of Azure confidential VM evidence (SEV-SNP and TDX CVMs with the paravisor's vTPM).

What is checked, in order (numbers are used in error messages and ``docs/azure-vtpm.md``):

1. The evidence parses (:mod:`confide.evidence.azure_vtpm`): the HCL report's header and IGVM
   request data are self-consistent and name the expected hardware report (SNP or TDX).
2. The hardware report is genuine, by the existing verifiers:
   SEV-SNP: the embedded ``ATTESTATION_REPORT`` with :class:`~confide.verify.sev_snp.SnpVerifier`
   (the VCEK from the evidence, chained to the pinned AMD ARK; the VCEK's TCB extensions equal
   REPORTED_TCB; the report's signature); and VMPL is 0, the paravisor's level (a report from a
   higher VMPL was requested by the guest OS and vouches for nothing the paravisor wrote).
   TDX: the DCAP quote with :class:`~confide.verify.dcap.DcapVerifier` and collateral; then
   every field of the HCL's TDREPORT_STRUCT that the quote body carries (TEE_TCB_INFO: SVN,
   MRSEAM, MRSIGNERSEAM, attributes; TDINFO: attributes, XFAM, MRTD, MRCONFIGID, MROWNER,
   MROWNERCONFIG, RTMR0..3, and MRSERVICETD for a 1.5 body; REPORTDATA) equals it, and the
   REPORTMACSTRUCT's TEE_TCB_INFO_HASH and TEE_INFO_HASH are the SHA-384 of the two structures.
3. The digest of the HCL's variable data (the runtime claims), of the hash type the IGVM request
   names, equals the first bytes of the hardware report's REPORT_DATA: this is what makes the
   runtime claims, and the AK in them, hardware-attested.
4. The runtime claims hold exactly one RSA JWK ``HCLAkPub``: the vTPM's attestation key.
5. Evidence version 2 (trustee's container): the runtime claims' ``user-data`` equals the
   expected nonce, zero-padded to 64 bytes.
6. The TPM2_Quote (TPMS_ATTEST) verifies with the AK (:func:`confide.verify.tpm.verify_quote`):
   its signature, its PCR digest over the supplied SHA-256 PCR values, and its ``extraData``
   equal to the expected nonce when one is given.

Nothing here reads files, sockets or the clock.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.errors import BindingError, CertificateChainError, ParseError
from confide.evidence.azure_vtpm import (
    AzureVtpmEvidence,
    HclReportType,
    RuntimeClaims,
    TdReportStruct,
)
from confide.evidence.dcap import Quote, TdReport
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.tpm import TPM_ALG_SHA256, rsassa_signature
from confide.verify.dcap import DcapVerifier
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdChain, SnpVerifier, load_certificates
from confide.verify.tpm import verify_quote

__all__ = ["HCL_VMPL", "USER_DATA_SIZE", "verify_azure_snp", "verify_azure_tdx"]

HCL_VMPL = 0  # the paravisor runs at VMPL0 and requests the report from there
USER_DATA_SIZE = 64  # runtime claims "user-data": the report data, zero-padded (trustee v2)


def _check_var_data(evidence: AzureVtpmEvidence, report_data: bytes, what: str) -> None:
    """Step 3."""
    hcl = evidence.hcl_report
    digest = hcl.var_data_digest()
    if not hmac.compare_digest(report_data[: len(digest)], digest):
        raise BindingError(
            f"step 3: {what} REPORT_DATA[0:{len(digest)}] is {report_data[: len(digest)].hex()}, "
            f"expected the {hcl.hash_type.name} of the HCL variable data {digest.hex()} "
            "(the runtime claims are not the ones the hardware report vouches for)"
        )


def _check_user_data(evidence: AzureVtpmEvidence, claims: RuntimeClaims, nonce: bytes | None) -> bool:
    """Step 5. Returns whether user-data was compared."""
    if evidence.version < 2 or nonce is None:
        return False
    if len(nonce) > USER_DATA_SIZE:
        raise BindingError(f"step 5: the nonce has {len(nonce)} bytes, expected at most {USER_DATA_SIZE}")
    expected = nonce + bytes(USER_DATA_SIZE - len(nonce))
    if claims.user_data is None or not hmac.compare_digest(claims.user_data, expected):
        got = "none" if claims.user_data is None else claims.user_data.hex()
        raise BindingError(
            f"step 5: user-data in the HCL runtime claims is {got}, expected the nonce {expected.hex()}"
        )
    return True


def _check_tpm_quote(
    evidence: AzureVtpmEvidence, claims: RuntimeClaims, nonce: bytes | None
) -> tuple[bytes, dict[str, ClaimValue]]:
    """Step 6. Returns the quote's extraData and the SHA-256 PCRs it selects (index → hex)."""
    blob = evidence.tpm_quote
    # trustee's container carries the bare RSA signature: RSASSA-PKCS1-v1_5 with SHA-256.
    signature = rsassa_signature(blob.signature, TPM_ALG_SHA256)
    pcrs = {TPM_ALG_SHA256: dict(enumerate(blob.pcrs))}
    verified = verify_quote(blob.message, signature, claims.ak_public_key, pcrs, nonce=nonce)
    # Only the PCRs the quote selects are vouched for; other values given are not claims.
    selected = verified.pcrs.get(TPM_ALG_SHA256, {})
    return verified.extra_data, {str(i): selected[i].hex() for i in sorted(selected)}


def _azure_claims(
    claims: RuntimeClaims,
    extra_data: bytes,
    pcrs: dict[str, ClaimValue],
    nonce: bytes | None,
    user_data_checked: bool,
) -> dict[str, ClaimValue]:
    return {
        "pcrs": pcrs,
        "nonce": extra_data.hex(),
        "nonce_checked": nonce is not None,
        "vm_configuration": dict(claims.vm_configuration),
        "hcl_user_data": None if claims.user_data is None else claims.user_data.hex(),
        "hcl_user_data_checked": user_data_checked,
    }


def _details(evidence: AzureVtpmEvidence, claims: RuntimeClaims) -> dict[str, ClaimValue]:
    hcl = evidence.hcl_report
    spki = claims.ak_public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return {
        "evidence_version": evidence.version,
        "hcl_header_version": hcl.header_version,
        "hcl_report_type": hcl.report_type.name,
        "hcl_hash_type": hcl.hash_type.name,
        "hcl_var_data_sha256": hashlib.sha256(hcl.var_data).hexdigest(),
        "ak_spki_sha256": hashlib.sha256(spki).hexdigest(),
        "runtime_key_ids": list(claims.key_ids),
    }


def verify_azure_snp(
    evidence: AzureVtpmEvidence,
    snp: SnpVerifier,
    *,
    at: datetime,
    nonce: bytes | None = None,
) -> VerifiedEvidence:
    """Verify SEV-SNP CVM evidence (steps 2-6) at time ``at``."""
    if evidence.hcl_report.report_type is not HclReportType.SNP or evidence.vcek is None:
        raise ParseError(
            "not SEV-SNP vTPM evidence (no SNP report or no VCEK)", structure="Azure vTPM evidence"
        )
    # Step 2.
    certs = load_certificates(evidence.vcek, "vcek of the evidence")
    chain: AmdChain | None = None
    if len(certs) == 3:
        chain = AmdChain.from_certificates(certs[1:], "vcek of the evidence (VCEK, ASK, ARK)")
    elif len(certs) != 1:
        raise CertificateChainError(
            f"vcek of the evidence: got {len(certs)} certificates, expected 1 (VCEK) or 3 (VCEK, ASK, ARK)"
        )
    vek: x509.Certificate = certs[0]
    hw = snp.verify(evidence.hcl_report.hw_report, vek, at=at, chain=chain)
    vmpl = hw.claims["vmpl"]
    if vmpl != HCL_VMPL:
        raise BindingError(f"step 2: the SNP report's VMPL is {vmpl}, expected {HCL_VMPL} (the paravisor's)")
    report_data = bytes.fromhex(str(hw.claims["report_data"]))
    return _steps_3_to_6(evidence, hw, report_data, "SNP report", Platform.AZURE_SNP_VTPM, at, nonce)


def _steps_3_to_6(
    evidence: AzureVtpmEvidence,
    hw: VerifiedEvidence,
    report_data: bytes,
    what: str,
    platform: Platform,
    at: datetime,
    nonce: bytes | None,
) -> VerifiedEvidence:
    """The runtime claims bound by the verified hardware report ``hw`` (its REPORT_DATA), the
    user-data and the TPM quote; the result carries the hardware claims and the vTPM's."""
    _check_var_data(evidence, report_data, what)
    claims = evidence.hcl_report.runtime_claims()
    checked = _check_user_data(evidence, claims, nonce)
    extra_data, pcrs = _check_tpm_quote(evidence, claims, nonce)
    out = dict(hw.claims)
    out.update(_azure_claims(claims, extra_data, pcrs, nonce, checked))
    details = dict(hw.details)
    details.update(_details(evidence, claims))
    return VerifiedEvidence(
        platform=platform,
        claims=out,
        verified_at=at,
        evidence_digest=hashlib.sha256(evidence.raw).hexdigest(),
        tcb_status=hw.tcb_status,
        advisory_ids=hw.advisory_ids,
        details=details,
        tcb_evaluation=hw.tcb_evaluation,
        tcb_evaluation_numbers=hw.tcb_evaluation_numbers,
    )


def _check_td_report(td: TdReportStruct, body: TdReport) -> None:
    """Step 2 (TDX): the HCL's TDREPORT is the one the quote was made from."""
    pairs: list[tuple[str, bytes, bytes]] = [
        ("REPORTDATA", td.report_data, body.report_data),
        ("TEE_TCB_SVN", td.tee_tcb_svn, body.tee_tcb_svn),
        ("MRSEAM", td.mr_seam, body.mr_seam),
        ("MRSIGNERSEAM", td.mr_signer_seam, body.mr_signer_seam),
        ("SEAMATTRIBUTES", td.seam_attributes, body.seam_attributes),
        ("TDATTRIBUTES", td.td_attributes, body.td_attributes),
        ("XFAM", td.xfam, body.xfam),
        ("MRTD", td.mr_td, body.mr_td),
        ("MRCONFIGID", td.mr_config_id, body.mr_config_id),
        ("MROWNER", td.mr_owner, body.mr_owner),
        ("MROWNERCONFIG", td.mr_owner_config, body.mr_owner_config),
        ("RTMR0", td.rtmrs[0], body.rtmr0),
        ("RTMR1", td.rtmrs[1], body.rtmr1),
        ("RTMR2", td.rtmrs[2], body.rtmr2),
        ("RTMR3", td.rtmrs[3], body.rtmr3),
    ]
    if body.mr_servicetd is not None:
        pairs.append(("MRSERVICETD", td.servtd_hash, body.mr_servicetd))
    for name, got, want in pairs:
        if got != want:
            raise BindingError(
                f"step 2: the HCL's TD report {name} is {got.hex()}, the TD quote's is {want.hex()} "
                "(the quote was not made from this TD report)"
            )
    for name, struct, digest in (
        ("TEE_TCB_INFO_HASH", td.tee_tcb_info, td.tee_tcb_info_hash),
        ("TEE_INFO_HASH", td.td_info, td.tee_info_hash),
    ):
        if hashlib.sha384(struct).digest() != digest:
            raise BindingError(f"step 2: the HCL's TD report {name} is not the SHA-384 of its structure")


def verify_azure_tdx(
    evidence: AzureVtpmEvidence,
    dcap: DcapVerifier,
    collateral: DcapCollateral | None,
    *,
    at: datetime,
    nonce: bytes | None = None,
    pck: PckCertificate | None = None,
) -> VerifiedEvidence:
    """Verify TDX CVM evidence (steps 2-6) at time ``at`` with the DCAP ``collateral`` (and
    ``pck``, the PCK certificate of a TD quote whose certification data names it, types 1-4)."""
    if evidence.hcl_report.report_type is not HclReportType.TDX or evidence.td_quote is None:
        raise ParseError(
            "not TDX vTPM evidence (no TD report or no TD quote)", structure="Azure vTPM evidence"
        )
    # Step 2.
    quote = Quote.from_bytes(evidence.td_quote)
    if not quote.is_tdx or not isinstance(quote.report, TdReport):
        raise ParseError("td_quote: got an SGX quote, expected TDX", structure="Azure vTPM evidence")
    hw = dcap.verify_parsed(quote, evidence.td_quote, collateral, at=at, pck=pck)
    td = TdReportStruct.from_bytes(evidence.hcl_report.hw_report)
    _check_td_report(td, quote.report)
    return _steps_3_to_6(
        evidence, hw, quote.report.report_data, "TD quote", Platform.AZURE_TDX_VTPM, at, nonce
    )

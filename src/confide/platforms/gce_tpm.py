"""CLI glue for ``confide evidence verify --platform gce-tpm``.

The evidence is a binary go-tpm-tools ``attest.Attestation`` protobuf (as ``gotpm attest``
writes it). ``--nonce`` must equal every quote's extraData; ``--root`` replaces the pinned
Google roots by one certificate (tests only).

A Confidential VM's attestation also carries its SEV-SNP report (field 8) or TDX quote (field
9), verified as ``--platform sev-snp`` / ``tdx`` verify them: the SEV-SNP report with the
VCEK/VLEK of the attestation's certificate chain, or ``--vcek FILE`` (the VEK, or VEK, ASK/ASVK
and ARK) and ``--chain FILE`` (ASK/ASVK and ARK, and an ARK-signed CRL); the TDX quote with
``--collateral DIR|FILE|URL`` (else ``$CONFIDE_DCAP_COLLATERAL``) and the DCAP options.

``--crl FILE``: Google's CRLs (DER or PEM, several, at most 16 MiB); the AK certificate and its
intermediates are then checked for revocation at ``--at`` (:mod:`confide.verify.gce_crl`).
"""

from __future__ import annotations

from pathlib import Path

from confide.errors import CertificateChainError, UsageError
from confide.evidence.gce_tee import GceSnpAttestation, GceTdxAttestation
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.platforms import VerifyRequest, read_input_file
from confide.platforms._root import load_root_certificate
from confide.platforms.dcap import request_collateral
from confide.platforms.sev_snp import embedded_verifier, load_crl
from confide.verify.dcap import DcapVerifier
from confide.verify.gce_crl import load_crls
from confide.verify.gce_tpm import GceTeeCollateral, verify_gce_attestation
from confide.verify.result import VerifiedEvidence
from confide.verify.sev_snp import AmdChain, load_certificates

__all__ = ["verify_request"]

_MAX_CERTS = 256 * 1024
MAX_CRL_FILE = 16 * 1024 * 1024
_PEM_CRL = b"-----BEGIN X509 CRL-----"
_DCAP = DcapVerifier()


def _read(path: Path, what: str) -> bytes:
    return read_input_file(path, what, _MAX_CERTS, "certificates (DER or PEM)")


def _snp_collateral(req: VerifyRequest) -> GceTeeCollateral:
    ctx = GceTeeCollateral(snp=embedded_verifier())
    chain: AmdChain | None = None
    crl = None
    if req.chain is not None:
        data = _read(req.chain, "--chain")
        chain = AmdChain.from_certificates(load_certificates(data, "--chain"), "--chain")
        if _PEM_CRL in data:
            crl = load_crl(data)
    if req.vcek is None:
        if chain is not None:
            raise UsageError("--chain goes with --vcek (the attestation's own VEK comes with its own chain)")
        return ctx
    certs = load_certificates(_read(req.vcek, "--vcek"), "--vcek")
    if len(certs) == 3 and chain is None:
        chain = AmdChain.from_certificates(certs[1:], "--vcek (VEK, ASK/ASVK, ARK)")
    elif len(certs) != 1:
        raise CertificateChainError(
            f"--vcek: got {len(certs)} certificates, expected 1 (the VEK) or 3 (VEK, ASK/ASVK, ARK)"
        )
    return GceTeeCollateral(snp=ctx.snp, vek=certs[0], vek_chain=chain, vek_crl=crl)


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    tee = parse_gce_attestation(req.evidence).tee
    allowed: set[str] = set()
    if isinstance(tee, GceSnpAttestation):
        allowed = {"--vcek", "--chain"}
    elif isinstance(tee, GceTdxAttestation):
        allowed = {"--collateral"}
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
        if value is not None and name not in allowed
    ]
    if unused:
        what = {
            None: "a vTPM attestation without a Confidential VM report",
            GceSnpAttestation: "an attestation with an SEV-SNP report (it takes --vcek, --chain)",
            GceTdxAttestation: "an attestation with a TDX quote (it takes --collateral)",
        }[type(tee) if tee is not None else None]
        raise UsageError(
            f"--platform gce-tpm takes its AK certificate and event log from the attestation, {what}:"
            f" drop {', '.join(unused)}"
        )
    roots = [load_root_certificate(req.root, "--root")] if req.root is not None else None
    ctx: GceTeeCollateral | None = None
    if isinstance(tee, GceSnpAttestation):
        ctx = _snp_collateral(req)
    elif isinstance(tee, GceTdxAttestation):
        collateral, pck = request_collateral(_DCAP, tee.parsed, req)
        ctx = GceTeeCollateral(dcap=_DCAP, tdx_collateral=collateral, tdx_pck=pck)
    crls = None
    if req.crl is not None:
        crls = load_crls(read_input_file(req.crl, "--crl", MAX_CRL_FILE, "CRLs (DER or PEM)"), "--crl")
    return verify_gce_attestation(
        req.evidence, at=req.at, expected_nonce=req.nonce, roots=roots, tee=ctx, crls=crls
    )

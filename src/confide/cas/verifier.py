"""The CAS's evidence verifier: dispatches to the platform verifiers (no I/O of its own;
collateral sources are configured when the CAS starts)."""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from confide.collateral.dcap import DcapCollateralSource
from confide.errors import CollateralMissingError, UsageError
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.snp_certs import VCEK_GUID, VLEK_GUID, parse_cert_table
from confide.platforms.sev_snp import embedded_roots
from confide.verify.dcap import DcapVerifier
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.sev_snp import SnpVerifier
from confide.verify.sim import verify_sim

__all__ = ["PlatformVerifier"]


class PlatformVerifier:
    """Verifies evidence for the CAS. ``sim_key`` enables the simulator (development only);
    ``dcap_source`` supplies Intel collateral (``aux["collateral"]`` may carry a dcap-qvl JSON
    bundle instead)."""

    def __init__(
        self, *, sim_key: Ed25519PublicKey | None = None, dcap_source: DcapCollateralSource | None = None
    ) -> None:
        self.sim_key = sim_key
        self.dcap_source = dcap_source
        self.dcap = DcapVerifier()
        self.snp = SnpVerifier(embedded_roots())

    def verify(
        self, platform: Platform, evidence: bytes, aux: dict[str, bytes], *, at: datetime
    ) -> VerifiedEvidence:
        if platform is Platform.SIMULATED:
            if self.sim_key is None:
                raise UsageError("this CAS does not accept simulated evidence (start it with --dev)")
            return verify_sim(evidence, self.sim_key, at=at)
        if platform in (Platform.SGX, Platform.TDX):
            quote = Quote.from_bytes(evidence)
            collateral: DcapCollateral | None = None
            if "collateral" in aux:
                collateral = DcapCollateral.from_dcap_qvl_json(aux["collateral"])
            elif self.dcap_source is not None:
                chain = self.dcap.pck_chain(quote)
                collateral = self.dcap_source.get_collateral(
                    fmspc=chain.extension.fmspc, ca=chain.ca, tee=quote.tee
                )
            else:
                raise CollateralMissingError("this CAS has no DCAP collateral source configured")
            return self.dcap.verify_parsed(quote, evidence, collateral, at=at)
        if platform is Platform.SEV_SNP:
            # The VCEK/VLEK comes with the evidence: configfs-tsm's auxblob (certificate table)
            # or a "vcek" blob; the ASK/ARK chain is the embedded, pinned one.
            vek = aux.get("vcek")
            if vek is None and "auxblob" in aux:
                table = parse_cert_table(aux["auxblob"])
                vek = table.get(VCEK_GUID) or table.get(VLEK_GUID)
            if vek is None:
                raise CollateralMissingError("SEV-SNP evidence came without its VCEK/VLEK (auxblob or vcek)")
            return self.snp.verify(evidence, vek, at=at)
        raise UsageError(f"this CAS does not verify {platform.value} evidence yet")

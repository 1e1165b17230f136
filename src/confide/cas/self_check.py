"""The CAS checks its own evidence document before publishing it, as a client would.

:class:`SelfCheck` runs :func:`~confide.cas.pin.verify_cas_document`, the verification core of
``confide cas attest`` (:func:`~confide.cas.pin.verify_cas_evidence`), on the document the CAS
is about to publish, with the CAS's own TLS certificate and its own verifier configuration: the
DCAP collateral source of ``--collateral`` (TDX, SGX, az-tdx-vtpm) and the pinned AMD roots
(SEV-SNP, az-snp-vtpm; replaceable for test PKIs only). Signatures, certificate chains,
collateral and the binding to the TLS certificate and log key must verify; debug mode, the TCB
status and advisories are not judged (that is the client's decision, ``--tolerate``) but
reported in :meth:`SelfCheck.__call__`'s summary, which the CAS logs. With ``cas serve
--min-tcb-eval-number N``, DCAP evidence verified with collateral of an older TCB evaluation is
refused (:class:`~confide.errors.CollateralOutdatedError`), as a client's would be.

Without a collateral source, DCAP evidence cannot be verified locally: the summary says so
(``"verified": false``) and the document is published unchecked; the CAS logs that once at
startup. :class:`~confide.cas.own_evidence.CasEvidence` publishes a document only when the check
returns; a check that raises keeps the previous document (refresh) or stops the CAS (startup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confide.cas.pin import DCAP_PLATFORMS, verify_cas_document
from confide.collateral.dcap import DcapCollateralSource
from confide.errors import CollateralMissingError
from confide.platforms import TcbEvaluationMinimum
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdRootStore

__all__ = ["SelfCheck", "unchecked_reason"]


def unchecked_reason(platform: str) -> str:
    return (
        f"{platform} evidence needs DCAP collateral and the CAS has no --collateral: it cannot check"
        " its own evidence before publishing it (clients still verify it with theirs)"
    )


@dataclass(frozen=True)
class SelfCheck:
    """Verifies the CAS's own document ``body`` at ``at`` (when it was obtained) for the CAS's
    TLS certificate ``cert_der``. ``sim_key_pem``: the simulated platform's key (``--dev``).
    ``amd_roots`` replaces the pinned AMD roots: for test PKIs only."""

    cert_der: bytes
    collateral: DcapCollateralSource | None = None
    amd_roots: AmdRootStore | None = None
    sim_key_pem: bytes | None = None
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None
    """``cas serve --min-tcb-eval-number``: the CAS's own DCAP evidence is judged by the minimum
    it applies to its clients' (:func:`~confide.cas.pin.verify_cas_document`)."""

    def verified(self, body: bytes, at: datetime) -> VerifiedEvidence:
        """The CAS's own document ``body`` verified at ``at`` (as :meth:`__call__` checks it),
        for the attested master-key release (:mod:`confide.cas.key_release`), which compares it
        with a peer's. DCAP evidence without a collateral source cannot be verified here:
        :class:`~confide.errors.CollateralMissingError`."""
        platform = str(json.loads(body).get("platform", ""))
        if self.collateral is None and platform in {p.value for p in DCAP_PLATFORMS}:
            raise CollateralMissingError(unchecked_reason(platform) + "; start it with --collateral")
        return verify_cas_document(
            self.cert_der,
            body,
            sim_key_pem=self.sim_key_pem,
            at=at,
            collateral=self.collateral,
            amd_roots=self.amd_roots,
            min_tcb_evaluation_data_number=self.min_tcb_evaluation_data_number,
        ).evidence

    def __call__(self, body: bytes, at: datetime) -> dict[str, Any]:
        """The summary logged with the document: ``verified`` and, when verified, the platform,
        TCB status, advisories and debug flag. Any verification error propagates unchanged."""
        platform = str(json.loads(body).get("platform", ""))  # the CAS's own document
        if self.collateral is None and platform in {p.value for p in DCAP_PLATFORMS}:
            return {"verified": False, "platform": platform, "reason": unchecked_reason(platform)}
        pinned = verify_cas_document(
            self.cert_der,
            body,
            sim_key_pem=self.sim_key_pem,
            at=at,
            collateral=self.collateral,
            amd_roots=self.amd_roots,
            min_tcb_evaluation_data_number=self.min_tcb_evaluation_data_number,
        )
        evidence = pinned.evidence
        debug = evidence.claims.get("debug")
        summary: dict[str, Any] = {
            "verified": True,
            "platform": evidence.platform.value,
            "tcb_status": evidence.tcb_status.value if evidence.tcb_status else None,
            "advisory_ids": list(evidence.advisory_ids),
            "debug": debug if isinstance(debug, bool) else None,
            "simulated": evidence.platform is Platform.SIMULATED,
        }
        if evidence.tcb_evaluation is not None:
            summary["tcb_evaluation"] = {
                "tcb_info": evidence.tcb_evaluation.tcb_info,
                "qe_identity": evidence.tcb_evaluation.qe_identity,
            }
        return summary

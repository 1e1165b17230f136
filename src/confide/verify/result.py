"""The typed result of verification: :class:`VerifiedEvidence`.

Verification (``confide.verify``) is the only producer of this type; appraisal
(``confide.policy``) accepts nothing else. A ``VerifiedEvidence`` means: the signatures and
certificate chains checked out against pinned roots at time ``verified_at``, the collateral was
valid then, and ``claims`` are what the hardware vouched for. It does *not* mean the claims are
acceptable: debug mode, outdated TCB and the like are reported here and judged by a policy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TypeAlias, Union

__all__ = ["ClaimValue", "Platform", "TcbEvaluation", "TcbStatus", "VerifiedEvidence"]

# A claim is JSON-shaped: byte strings are normalised to lower-case hex text.
ClaimValue: TypeAlias = Union[str, int, bool, list["ClaimValue"], dict[str, "ClaimValue"], None]  # noqa: UP007


class Platform(enum.StrEnum):
    SGX = "sgx"
    TDX = "tdx"
    SEV_SNP = "sev-snp"
    NVIDIA_GPU = "nvidia-gpu"
    AWS_NITRO = "aws-nitro"
    AZURE_SNP_VTPM = "az-snp-vtpm"
    AZURE_TDX_VTPM = "az-tdx-vtpm"
    GCE_TPM = "gce-tpm"
    SIMULATED = "sim"

    def __str__(self) -> str:
        return self.value


class TcbStatus(enum.StrEnum):
    """Intel's TCB status values (Intel PCS API v4, TCB Info ``tcbStatus``), in the order
    from best to worst that Intel's QVL uses when combining statuses, then the two that only
    Intel's QVL computes, never a TCB Info: a TD (TD report 1.5) launched before a TD
    preserving update of its TDX module, whose launch TCB is out of date but whose current
    TCB (TEE_TCB_SVN2) is not (QVL ``TcbLevelCheck``, 4.1.2.5.1.20, ``checkForRelaunch``)."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    TD_RELAUNCH_ADVISED = "TDRelaunchAdvised"
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED = "TDRelaunchAdvisedConfigurationNeeded"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TcbEvaluation:
    """The ``tcbEvaluationDataNumber`` of the two signed pieces of Intel collateral that a DCAP
    verification used (Intel PCS API v4, "TCB Info" and "Enclave Identity" models): the TCB
    evaluation (TCB recovery) each was made for. Verification reports them; a policy decides
    how recent they must be (``security.attestation.min_tcb_evaluation_data_number``)."""

    tcb_info: int
    qe_identity: int

    def below(self, minimum: int) -> tuple[tuple[str, int], ...]:
        """The pieces whose number is below ``minimum``, as (name, number): "TCB Info",
        "QE Identity"; empty when both are at least ``minimum``."""
        return tuple(
            (name, number)
            for name, number in (("TCB Info", self.tcb_info), ("QE Identity", self.qe_identity))
            if number < minimum
        )


def _frozen(claims: Mapping[str, ClaimValue]) -> Mapping[str, ClaimValue]:
    return MappingProxyType(dict(claims))


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """Evidence whose signatures, chains and collateral were verified."""

    platform: Platform
    claims: Mapping[str, ClaimValue]
    verified_at: datetime
    evidence_digest: str
    """SHA-256 of the raw evidence bytes, lower-case hex (for the ledger and replay checks)."""
    tcb_status: TcbStatus | None = None
    advisory_ids: tuple[str, ...] = ()
    simulated: bool = False
    """True only for the development simulator: policies must tolerate ``simulation``."""
    details: Mapping[str, ClaimValue] = field(default_factory=dict)
    """Verification details that are not claims (collateral dates, matched TCB level, ...)."""
    tcb_evaluation: TcbEvaluation | None = None
    """Intel DCAP (SGX, TDX, Azure TDX vTPM): the TCB evaluation data numbers of the collateral
    used; ``None`` for every other platform."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "claims", _frozen(self.claims))
        object.__setattr__(self, "details", _frozen(self.details))
        if self.simulated != (self.platform is Platform.SIMULATED):
            raise ValueError("simulated must be set exactly for the simulated platform")

    def to_json(self) -> dict[str, ClaimValue]:
        """The CLI's ``--json`` object (without the ``error`` key)."""
        return {
            "verified": True,
            "platform": self.platform.value,
            "tcb_status": self.tcb_status.value if self.tcb_status else None,
            "advisory_ids": list(self.advisory_ids),
            "claims": dict(self.claims),
            "simulated": self.simulated,
            "evidence_digest": self.evidence_digest,
            "verified_at": self.verified_at.isoformat().replace("+00:00", "Z"),
            "details": dict(self.details),
        }

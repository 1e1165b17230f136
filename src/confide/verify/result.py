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
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TypeAlias, Union

__all__ = [
    "DEFAULT_TCB_RECOVERY_GRACE_DAYS",
    "ClaimValue",
    "Platform",
    "RequiredTcbEvaluation",
    "TcbEvalNumber",
    "TcbEvaluation",
    "TcbEvaluationNumbers",
    "TcbStatus",
    "VerifiedEvidence",
]

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


DEFAULT_TCB_RECOVERY_GRACE_DAYS = 365
"""The grace period of an automatic minimum when none is given: Intel PCS's standard update
(what it serves without ``update=early``) serves the collateral of the highest evaluation whose
TCB recovery event is at least twelve months old (Automata's ``TcbEvalDao.standard()``; the
collateral Intel PCS served in June, August and October 2025, of evaluation 17 while 18 was
seven to eleven months old, tests/assets). A shorter grace needs early-update collateral."""


@dataclass(frozen=True, slots=True)
class TcbEvalNumber:
    """One entry of Intel's TCB evaluation data numbers list (Intel PCS API v4, "TCB Evaluation
    Data Numbers" model v1): a TCB evaluation, the date its TCB recovery event was made public
    (``tcbRecoveryEventDate``) and the TCB date of its TCB levels (``tcbDate``)."""

    number: int
    tcb_recovery_event_date: datetime
    tcb_date: datetime


@dataclass(frozen=True, slots=True)
class RequiredTcbEvaluation:
    """The minimum TCB evaluation data number that a verified list and a grace period require
    at a time (:meth:`TcbEvaluationNumbers.required`), and why."""

    number: int
    grace: timedelta
    at: datetime
    list_issue_date: datetime
    event: TcbEvalNumber | None
    """The entry that set it (its recovery event + grace is at or before ``at``); ``None``: no
    entry is old enough yet, the lowest number Intel still lists is required."""

    def reason(self) -> str:
        grace = f"{self.grace.days} day(s)"
        listed = f"Intel's TCB evaluation data numbers list issued {_iso(self.list_issue_date)}"
        if self.event is None:
            return (
                f"{listed}: no TCB recovery event is {grace} old at {_iso(self.at)}; the lowest "
                f"number still listed, {self.number}, is required"
            )
        return (
            f"{listed}: TCB recovery event of {_iso(self.event.tcb_recovery_event_date)} "
            f"(tcbEvaluationDataNumber {self.event.number}) + grace {grace} is at or before {_iso(self.at)}"
        )

    def to_json(self) -> dict[str, ClaimValue]:
        return {
            "required": self.number,
            "grace_days": self.grace.days,
            "at": _iso(self.at),
            "list_issue_date": _iso(self.list_issue_date),
            "tcb_recovery_event_date": _iso(self.event.tcb_recovery_event_date) if self.event else None,
            "reason": self.reason(),
        }


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TcbEvaluationNumbers:
    """Intel's TCB evaluation data numbers for SGX or TDX, verified: signed by the Intel SGX TCB
    Signing certificate under the pinned root, not revoked, current at ``verified_at``
    (:meth:`confide.verify.dcap.DcapVerifier.verify_tcb_evaluation_numbers`)."""

    id: str
    """``SGX`` or ``TDX``."""
    version: int
    issue_date: datetime
    next_update: datetime
    numbers: tuple[TcbEvalNumber, ...]
    """Highest number first."""
    verified_at: datetime

    def required(self, at: datetime, grace: timedelta) -> RequiredTcbEvaluation:
        """The minimum that this list sets at ``at`` with ``grace`` after each recovery event:
        the highest ``tcbEvaluationDataNumber`` whose ``tcbRecoveryEventDate + grace`` is at or
        before ``at`` (as Fortanix's ``pcs`` crate, ``TcbPolicy::minimum_tcb_evaluation_data_number``;
        docs/dcap.md). When no event is that old yet, the lowest number the list still gives
        (Intel lists the evaluations it still supports)."""
        if grace < timedelta(0):
            raise ValueError("grace must not be negative")
        # at - grace, not date + grace: a list read unverified (a cache's decisions) may date an
        # event in year 9999, and the sum overflowed (OverflowError, not a refusal)
        enforced = [n for n in self.numbers if n.tcb_recovery_event_date <= at - grace]
        if enforced:
            event = max(enforced, key=lambda n: n.number)
            return RequiredTcbEvaluation(event.number, grace, at, self.issue_date, event)
        lowest = min(n.number for n in self.numbers)
        return RequiredTcbEvaluation(lowest, grace, at, self.issue_date, None)

    def to_json(self) -> dict[str, ClaimValue]:
        return {
            "id": self.id,
            "issue_date": _iso(self.issue_date),
            "next_update": _iso(self.next_update),
            "numbers": [
                {
                    "tcb_evaluation_data_number": n.number,
                    "tcb_recovery_event_date": _iso(n.tcb_recovery_event_date),
                    "tcb_date": _iso(n.tcb_date),
                }
                for n in self.numbers
            ],
        }


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
    tcb_evaluation_numbers: TcbEvaluationNumbers | None = None
    """Intel DCAP, when asked for (``--min-tcb-eval-number auto``, ``--tcb-eval-numbers``):
    Intel's list of TCB evaluation data numbers for the platform, verified at ``verified_at``
    (what an automatic minimum is computed from)."""

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

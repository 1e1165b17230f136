"""Appraisal: does verified evidence satisfy a service's policy?

:func:`appraise` takes only :class:`~confide.verify.result.VerifiedEvidence` (the product of a
successful verification) and reports *every* mismatch, each naming the policy field, what the
evidence had and what the policy expected. It checks, independently:

1. the evidence is not newer than ``at`` (no evidence from the future);
2. simulated evidence only with ``tolerate: [simulation]``, an NVIDIA GPU report alone only with
   ``tolerate: [gpu-only]``, a Google vTPM's quote (``gce-tpm``) only with ``tolerate: [vtpm-only]``;
3. debug mode (the ``debug`` claim) only with ``tolerate: [debug-mode]``; ``gce-tpm`` evidence
   (a vTPM: no debug mode) only with a restricted-signing AK (``ak_restricted_signing``);
4. the TCB status against the tolerances (Intel's statuses; see :data:`TCB_TOLERANCES`), and
   for Intel DCAP evidence the TCB evaluation data numbers of its collateral against
   ``min_tcb_evaluation_data_number``;
5. every advisory ID of the evidence is ignored (``ignore_advisories``, or ``"*"``, or the
   shortcuts ``hyperthreading`` = INTEL-SA-00233 and ``insecure-igpu`` = INTEL-SA-00219, as
   SCONE documents them; when *all* advisories are covered by tolerated shortcuts, the
   shortcut also stands for the ``configuration-needed`` category);
6. at least one attestation variant of the service matches: same platform, and every factor
   of the variant holds (hex compared case-insensitively, integers exactly, SVN ranges
   inclusive). When no variant matches, the mismatches of every variant are reported.

Composite attestation (a confidential VM with GPUs): ``devices`` are the verified reports of the
GPUs sent with the CPU evidence, in request order (``gpu0``, ``gpu1``, ...). They are accepted
only with CPU evidence of :data:`~confide.policy.attestation.GPU_HOSTS`, each must be
``nvidia-gpu`` evidence not newer than ``at``, and a GPU presented twice (the same report, or a
report signed by the same attestation key) is a mismatch and counts once. A composite variant
(CPU factors with ``nvidia-gpu``) holds when its CPU factors hold for ``evidence``, its
``nvidia-gpu`` factors hold for *every* device, and the number of distinct devices is ``count``
(at least one when no count is given). A variant without ``nvidia-gpu`` says nothing about GPUs.

No clock is read, no I/O is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from confide.errors import AppraisalError
from confide.policy._types import short
from confide.policy.attestation import GPU_HOSTS
from confide.policy.model import (
    AttestationSecurity,
    AttestationVariant,
    AwsNitroFactors,
    GceTpmFactors,
    NvidiaGpuFactors,
    Policy,
    SevSnpFactors,
    SgxSigner,
    SimFactors,
    SnpTcbMinimum,
    TdxFactors,
    Tolerance,
)
from confide.verify.result import (
    DEFAULT_TCB_RECOVERY_GRACE_DAYS,
    ClaimValue,
    Platform,
    TcbStatus,
    VerifiedEvidence,
)

__all__ = [
    "TCB_TOLERANCES",
    "AppraisalResult",
    "Reason",
    "appraise",
    "check_security",
    "check_snp_min_tcb",
    "raise_for_result",
]

TCB_TOLERANCES: dict[TcbStatus, tuple[Tolerance, ...] | None] = {
    TcbStatus.UP_TO_DATE: (),
    TcbStatus.SW_HARDENING_NEEDED: (Tolerance.SOFTWARE_HARDENING_NEEDED,),
    TcbStatus.CONFIGURATION_NEEDED: (Tolerance.CONFIGURATION_NEEDED,),
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED: (
        Tolerance.CONFIGURATION_NEEDED,
        Tolerance.SOFTWARE_HARDENING_NEEDED,
    ),
    TcbStatus.OUT_OF_DATE: (Tolerance.OUTDATED_TCB,),
    TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED: (Tolerance.OUTDATED_TCB, Tolerance.CONFIGURATION_NEEDED),
    TcbStatus.REVOKED: None,
    TcbStatus.TD_RELAUNCH_ADVISED: (Tolerance.RELAUNCH_ADVISED,),
    TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED: (
        Tolerance.RELAUNCH_ADVISED,
        Tolerance.CONFIGURATION_NEEDED,
    ),
}
"""The tolerances each TCB status needs (``None``: never acceptable). ``relaunch-advised`` is
also satisfied by ``outdated-tcb``: a TD advised to relaunch has an out-of-date launch TCB and a
current one that is not, so a policy that accepts OutOfDate accepts it too."""

ADVISORY_SHORTCUTS: dict[str, Tolerance] = {
    "INTEL-SA-00233": Tolerance.HYPERTHREADING,
    "INTEL-SA-00219": Tolerance.INSECURE_IGPU,
}
"""Advisories that a named tolerance covers (SCONE v0.3, "Tolerating Hardware Attestation Issues")."""

_DEBUG_CLAIM_PLATFORMS = frozenset(
    {
        Platform.SGX,
        Platform.TDX,
        Platform.SEV_SNP,
        Platform.AZURE_SNP_VTPM,
        Platform.AZURE_TDX_VTPM,
        Platform.AWS_NITRO,
        Platform.SIMULATED,
    }
)
"""Platforms whose verifier always states ``debug``: evidence of them without the claim is refused
(never taken for production); NVIDIA GPU reports have no debug mode to state."""
_TCB_PLATFORMS = frozenset({Platform.SGX, Platform.TDX, Platform.AZURE_TDX_VTPM})
"""Intel DCAP evidence: a TCB status and TCB evaluation data numbers are required."""
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Reason:
    """One mismatch: ``field`` of the policy (or of the evidence), what was found, what was wanted."""

    field: str
    got: str
    expected: str

    def __str__(self) -> str:
        return f"{self.field}: got {self.got}, expected {self.expected}"


@dataclass(frozen=True, slots=True)
class AppraisalResult:
    """The outcome of :func:`appraise`. ``tolerated`` lists the tolerances the decision relied
    on (for the ledger: a simulated or debug acceptance is visible)."""

    accepted: bool
    reasons: tuple[Reason, ...]
    tolerated: tuple[Tolerance, ...]
    matched_variant: int | None
    service: str
    platform: Platform

    def __str__(self) -> str:
        if self.accepted:
            extra = f", tolerating {', '.join(self.tolerated)}" if self.tolerated else ""
            return f"accepted by variant {self.matched_variant} of service {self.service!r}{extra}"
        return f"rejected for service {self.service!r}: " + "; ".join(str(r) for r in self.reasons)


def raise_for_result(result: AppraisalResult) -> AppraisalResult:
    """Return ``result`` if accepted, else raise :class:`AppraisalError` carrying every reason."""
    if not result.accepted:
        raise AppraisalError(str(result), problems=result.reasons)
    return result


def appraise(
    evidence: VerifiedEvidence,
    policy: Policy,
    service_name: str,
    *,
    at: datetime,
    devices: Sequence[VerifiedEvidence] = (),
) -> AppraisalResult:
    """Appraise verified evidence (and the verified reports of the GPUs sent with it,
    ``devices``) against the attestation rules of ``service_name`` in ``policy``."""
    devices = tuple(devices)
    _require_verified(evidence, *devices)
    if not isinstance(policy, Policy):
        raise TypeError(f"got {type(policy).__name__}, expected a validated Policy")
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise TypeError("at: expected a timezone-aware datetime")

    reasons: list[Reason] = []
    tolerated: set[Tolerance] = set()
    security = policy.security.attestation

    try:
        service = policy.service(service_name)
    except KeyError:
        known = ", ".join(repr(s.name) for s in policy.services) or "none"
        reason = Reason("service", short(service_name), f"a service of policy {policy.name!r} ({known})")
        return AppraisalResult(False, (reason,), (), None, str(service_name), evidence.platform)

    if evidence.verified_at.tzinfo is None or evidence.verified_at > at:
        reasons.append(Reason("verified_at", evidence.verified_at.isoformat(), f"not after {at.isoformat()}"))

    _check_security(evidence, security, tolerated, reasons)
    gpus = _distinct_gpus(evidence, devices, at, reasons)

    matched: int | None = None
    variant_reasons: list[Reason] = []
    for i, variant in enumerate(service.variants()):
        found = _variant_mismatches(variant, evidence, gpus, f"attestation[{i}]")
        if not found:
            matched = i
            break
        variant_reasons += found
    if matched is None:
        reasons += variant_reasons
    accepted = matched is not None and not reasons
    return AppraisalResult(
        accepted, tuple(reasons), tuple(sorted(tolerated)), matched, service.name, evidence.platform
    )


# ---------------------------------------------------------------------------------------------
# Platform-independent checks
# ---------------------------------------------------------------------------------------------


def check_security(
    evidence: VerifiedEvidence, security: AttestationSecurity
) -> tuple[tuple[Reason, ...], tuple[Tolerance, ...]]:
    """Checks 2-5 of :func:`appraise` alone (simulation, GPU-only, vTPM-only, debug mode, TCB status,
    advisories), without a policy's services: for evidence judged against tolerances only, e.g.
    the CAS's own evidence (``confide cas attest --tolerate``). Returns the mismatches (empty:
    acceptable) and the tolerances relied on."""
    _require_verified(evidence)
    if not isinstance(security, AttestationSecurity):
        raise TypeError(f"got {type(security).__name__}, expected an AttestationSecurity")
    reasons: list[Reason] = []
    tolerated: set[Tolerance] = set()
    _check_security(evidence, security, tolerated, reasons)
    return tuple(reasons), tuple(sorted(tolerated))


def check_snp_min_tcb(evidence: VerifiedEvidence, minimum: SnpTcbMinimum, field: str) -> tuple[Reason, ...]:
    """The ``min_tcb`` factor of ``sev-snp`` alone (the comparison of :func:`appraise`, each SPL
    of ``minimum`` against the same component of the evidence's ``REPORTED_TCB``, SEV-SNP ABI
    spec Table 23 offset 0x180), for SEV-SNP evidence judged without a policy, e.g. a CAS
    replica's (``cas serve --replica-min-tcb``). Each mismatch is named ``field.<component>``;
    evidence without a ``reported_tcb`` claim (not SEV-SNP) fails as a whole."""
    _require_verified(evidence)
    c = _Checker(evidence.claims, "")
    _snp_min_tcb(c, minimum, field)
    return tuple(c.reasons)


def _require_verified(*items: object) -> None:
    """The typed boundary (``confide.verify.result``): appraisal judges only what verification
    produced, never parsed or look-alike data."""
    for item in items:
        if not isinstance(item, VerifiedEvidence):
            raise TypeError(
                f"got {type(item).__name__}, expected VerifiedEvidence (verify the evidence first)"
            )


def _check_security(
    evidence: VerifiedEvidence,
    security: AttestationSecurity,
    tolerated: set[Tolerance],
    reasons: list[Reason],
) -> None:
    if evidence.simulated:
        _need(Tolerance.SIMULATION, security, tolerated, reasons, "platform", "simulated evidence (sim)")
    if evidence.platform is Platform.NVIDIA_GPU:
        # A GPU report proves a genuine GPU in CC mode, not that the caller runs inside a CPU
        # TEE; releasing secrets on it alone must be the policy's explicit choice.
        _need(
            Tolerance.GPU_ONLY, security, tolerated, reasons, "platform",
            "an NVIDIA GPU report alone (it attests the GPU, not the CPU TEE that runs the service)",
        )  # fmt: skip
    if evidence.platform is Platform.GCE_TPM:
        # A vTPM's quote proves the boot chain Google's vTPM recorded, not confidential memory:
        # the VM's operator (Google) runs that vTPM and the host. Relying on it is the policy's
        # explicit choice, as a GPU report alone is (docs/gce-tpm.md "whom it trusts").
        _need(
            Tolerance.VTPM_ONLY, security, tolerated, reasons, "platform",
            "a Google vTPM's quote (it attests the VM's boot, not memory the host cannot read)",
        )  # fmt: skip
    if evidence.platform is Platform.GCE_TPM and evidence.claims.get("ak_restricted_signing") is not True:
        # An AK that is not a restricted signing key signs any digest, a forged TPMS_ATTEST too
        # (TPM 2.0 Part 2 §8.3, TPMA_OBJECT.restricted): its quotes say nothing of the PCRs.
        reasons.append(
            Reason(
                "claims.ak_restricted_signing",
                _show(evidence.claims.get("ak_restricted_signing", _MISSING)),
                "true (the vTPM's AK signs only what the TPM itself generated)",
            )
        )
    _check_debug(evidence, security, tolerated, reasons)
    _check_tcb(evidence, security, tolerated, reasons)
    _check_tcb_evaluation(evidence, security, reasons)
    _check_advisories(evidence, security, tolerated, reasons)


def _need(
    t: Tolerance,
    security: AttestationSecurity,
    tolerated: set[Tolerance],
    reasons: list[Reason],
    field: str,
    got: str,
) -> None:
    if security.tolerates(t):
        if t is Tolerance.CONFIGURATION_NEEDED and Tolerance.CONFIGURATION_NEEDED not in security.tolerate:
            t = Tolerance.INSECURE_CONFIGURATION
        tolerated.add(t)
    else:
        reasons.append(Reason(field, got, f"security.attestation.tolerate to include {t.value!r}"))


def _check_debug(
    evidence: VerifiedEvidence,
    security: AttestationSecurity,
    tolerated: set[Tolerance],
    reasons: list[Reason],
) -> None:
    debug = evidence.claims.get("debug", _MISSING)
    if debug is _MISSING:
        if evidence.platform in _DEBUG_CLAIM_PLATFORMS:
            reasons.append(
                Reason("claims.debug", "no debug claim", f"a debug claim in {evidence.platform} evidence")
            )
    elif not isinstance(debug, bool):
        reasons.append(Reason("claims.debug", _show(debug), "a boolean"))
    elif debug:
        _need(Tolerance.DEBUG_MODE, security, tolerated, reasons, "claims.debug", "true (debug mode)")


def _check_tcb(
    evidence: VerifiedEvidence,
    security: AttestationSecurity,
    tolerated: set[Tolerance],
    reasons: list[Reason],
) -> None:
    status = evidence.tcb_status
    if status is None:
        if evidence.platform in _TCB_PLATFORMS:
            reasons.append(Reason("tcb_status", "none", f"a TCB status in {evidence.platform} evidence"))
        return
    if status not in TCB_TOLERANCES:  # a status added to the verifier but not judged here yet
        reasons.append(Reason("tcb_status", str(status), f"one of {', '.join(TCB_TOLERANCES)}"))
        return
    needed = TCB_TOLERANCES[status]
    if needed is None:
        reasons.append(
            Reason("tcb_status", status.value, "a TCB status other than Revoked (never tolerated)")
        )
        return
    for t in needed:
        if t is Tolerance.CONFIGURATION_NEEDED and _shortcuts_cover(evidence, security):
            continue  # e.g. ConfigurationNeeded only because of Hyper-Threading: the shortcut suffices
        if t is Tolerance.RELAUNCH_ADVISED:
            _need_relaunch(status, security, tolerated, reasons)
            continue
        _need(t, security, tolerated, reasons, "tcb_status", status.value)


def _need_relaunch(
    status: TcbStatus, security: AttestationSecurity, tolerated: set[Tolerance], reasons: list[Reason]
) -> None:
    """``relaunch-advised``, or the wider ``outdated-tcb`` (:data:`TCB_TOLERANCES`)."""
    for t in (Tolerance.RELAUNCH_ADVISED, Tolerance.OUTDATED_TCB):
        if security.tolerates(t):
            tolerated.add(t)
            return
    reasons.append(
        Reason(
            "tcb_status",
            status.value,
            "security.attestation.tolerate to include 'relaunch-advised' (or 'outdated-tcb'); "
            "or the TD relaunched on its updated TDX module",
        )
    )


_PIECES = {"TCB Info": "tcb_info", "QE Identity": "qe_identity"}
"""The field suffix of each piece of collateral that :meth:`TcbEvaluation.below` names."""


def _check_tcb_evaluation(
    evidence: VerifiedEvidence, security: AttestationSecurity, reasons: list[Reason]
) -> None:
    """``min_tcb_evaluation_data_number`` (Intel DCAP evidence only): the TCB Info and the QE
    Identity the evidence was verified with must both be of at least that TCB evaluation."""
    configured = security.min_tcb_evaluation_data_number
    # Intel DCAP evidence, or other evidence verified with DCAP collateral (a GCE Confidential
    # VM's TDX quote)
    if configured is None or (evidence.platform not in _TCB_PLATFORMS and evidence.tcb_evaluation is None):
        return
    setting = "security.attestation.min_tcb_evaluation_data_number"
    if isinstance(configured, int):
        minimum = configured
        wanted = f">= {minimum} ({setting})"
    else:  # "auto"
        listed = evidence.tcb_evaluation_numbers
        if listed is None:
            reasons.append(
                Reason(
                    "tcb_evaluation_data_number",
                    "no verified TCB evaluation data numbers",
                    f"Intel's TCB evaluation data numbers verified with the evidence ({setting}: auto; "
                    "verify with --min-tcb-eval-number auto, or a CAS started with it)",
                )
            )
            return
        days = security.tcb_recovery_grace_days
        grace = timedelta(days=DEFAULT_TCB_RECOVERY_GRACE_DAYS if days is None else days)
        required = listed.required(evidence.verified_at, grace)
        minimum = required.number
        wanted = f">= {minimum} ({setting}: auto; {required.reason()})"
    numbers = evidence.tcb_evaluation
    if numbers is None:
        reasons.append(
            Reason("tcb_evaluation_data_number", "none", f"{wanted} in {evidence.platform} evidence")
        )
        return
    for name, number in numbers.below(minimum):
        reasons.append(
            Reason(
                f"tcb_evaluation_data_number.{_PIECES[name]}",
                f"{number} ({name})",
                f"{wanted}: collateral of a later TCB evaluation",
            )
        )


def _shortcuts_cover(evidence: VerifiedEvidence, security: AttestationSecurity) -> bool:
    """True when every advisory is one that a tolerated shortcut (``hyperthreading``,
    ``insecure-igpu``) names: SCONE's shortcuts stand for the configuration category too."""
    shortcuts = [ADVISORY_SHORTCUTS.get(a.upper()) for a in evidence.advisory_ids]
    return bool(shortcuts) and all(t is not None and security.tolerates(t) for t in shortcuts)


def _check_advisories(
    evidence: VerifiedEvidence,
    security: AttestationSecurity,
    tolerated: set[Tolerance],
    reasons: list[Reason],
) -> None:
    ignored = security.ignore_advisories
    for advisory in evidence.advisory_ids:
        aid = advisory.upper()
        if ignored == "*" or aid in ignored:
            continue
        shortcut = ADVISORY_SHORTCUTS.get(aid)
        if shortcut is not None and security.tolerates(shortcut):
            tolerated.add(shortcut)
            continue
        hint = f" (or tolerate {shortcut.value!r})" if shortcut else ""
        reasons.append(
            Reason(
                "advisory_ids", short(advisory), f"it listed in security.attestation.ignore_advisories{hint}"
            )
        )


def _distinct_gpus(
    evidence: VerifiedEvidence, devices: tuple[VerifiedEvidence, ...], at: datetime, reasons: list[Reason]
) -> list[tuple[int, VerifiedEvidence]]:
    """The GPU reports sent with ``evidence`` that count, by slot: each one ``nvidia-gpu``
    evidence, not from the future, and a GPU presented twice counted once (and reported)."""
    if not devices:
        return []
    if evidence.platform not in GPU_HOSTS:
        hosts = ", ".join(sorted(p.value for p in GPU_HOSTS))
        reasons.append(
            Reason("devices", f"{len(devices)} GPU report(s) with {evidence.platform} evidence",
                   f"GPU reports only with the evidence of a CPU TEE ({hosts})")
        )  # fmt: skip
        return []
    gpus: list[tuple[int, VerifiedEvidence]] = []
    seen: dict[str, int] = {}
    for slot, gpu in enumerate(devices):
        if gpu.platform is not Platform.NVIDIA_GPU:
            reasons.append(Reason(f"gpu{slot}", f"{gpu.platform} evidence", "nvidia-gpu evidence"))
            continue
        if gpu.verified_at.tzinfo is None or gpu.verified_at > at:
            reasons.append(
                Reason(f"gpu{slot}.verified_at", gpu.verified_at.isoformat(), f"not after {at.isoformat()}")
            )
        # The same GPU twice: the same report, or two reports signed by one attestation key
        # (its leaf key, unique to the GPU and its firmware).
        key = gpu.claims.get("attestation_key_sha256")
        ids = [f"report {gpu.evidence_digest}"] + ([f"key {key}"] if isinstance(key, str) else [])
        first = next((seen[i] for i in ids if i in seen), None)
        if first is not None:
            reasons.append(Reason(f"gpu{slot}", f"the same GPU as gpu{first}", "each GPU presented once"))
            continue
        seen.update(dict.fromkeys(ids, slot))
        gpus.append((slot, gpu))
    return gpus


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is _MISSING:
        return "no claim"
    if isinstance(value, bool):
        return "true" if value else "false"
    return short(value, 110)


def _allowed(values: tuple[Any, ...]) -> str:
    shown = [str(v) for v in values[:4]]
    if len(values) == 1:
        return shown[0]
    more = f", ... ({len(values)} values)" if len(values) > 4 else ""
    return f"one of [{', '.join(shown)}{more}]"


class _Checker:
    """Collects the mismatches of one variant against one piece of evidence."""

    def __init__(self, claims: Any, prefix: str) -> None:
        self.claims = claims
        self.prefix = prefix
        self.reasons: list[Reason] = []

    def fail(self, field: str, got: str, expected: str) -> None:
        self.reasons.append(Reason(f"{self.prefix}.{field}" if self.prefix else field, got, expected))

    def hex_in(self, field: str, claim: str, allowed: tuple[str, ...] | str | None) -> None:
        if allowed is None:
            return
        wanted = (allowed,) if isinstance(allowed, str) else allowed
        value = self.claims.get(claim, _MISSING)
        if not isinstance(value, str):
            self.fail(field, _show(value), f"{_allowed(wanted)} (claim {claim})")
        elif value.lower() not in wanted:
            self.fail(field, value.lower(), _allowed(wanted))

    def text_in(self, field: str, claim: str, allowed: tuple[str, ...] | None, *, fold: bool = False) -> None:
        if allowed is None:
            return
        value = self.claims.get(claim, _MISSING)
        norm: Callable[[str], str] = str.lower if fold else str
        if not isinstance(value, str):
            self.fail(field, _show(value), f"{_allowed(allowed)} (claim {claim})")
        elif norm(value) not in {norm(a) for a in allowed}:
            self.fail(field, _show(value), _allowed(allowed))

    def integer(self, claim: str) -> int | None:
        value = self.claims.get(claim, _MISSING)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return None

    def int_range(
        self, field: str, claim: str, exact: int | None, lo: int | None = None, hi: int | None = None
    ) -> None:
        if exact is None and lo is None and hi is None:
            return
        value = self.integer(claim)
        if exact is not None:
            expected = str(exact)
        elif lo is not None and hi is not None:
            expected = f"{lo} <= {claim} <= {hi}"
        elif lo is not None:
            expected = f">= {lo}"
        else:
            expected = f"<= {hi}"
        if value is None:
            self.fail(
                field, _show(self.claims.get(claim, _MISSING)), f"an integer {expected} (claim {claim})"
            )
        elif (
            (exact is not None and value != exact)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            self.fail(field, str(value), expected)

    def int_in(self, field: str, claim: str, allowed: tuple[int, ...] | None) -> None:
        if allowed is None:
            return
        value = self.integer(claim)
        if value is None:
            self.fail(field, _show(self.claims.get(claim, _MISSING)), f"{_allowed(allowed)} (claim {claim})")
        elif value not in allowed:
            self.fail(field, str(value), _allowed(allowed))

    def boolean(self, field: str, claim: str, expected: bool | None) -> None:
        if expected is None:
            return
        value = self.claims.get(claim, _MISSING)
        if value is not expected:
            self.fail(field, _show(value), _show(expected))


def _variant_mismatches(
    variant: AttestationVariant,
    evidence: VerifiedEvidence,
    gpus: list[tuple[int, VerifiedEvidence]],
    prefix: str,
) -> list[Reason]:
    platform = variant.platform  # a property that looks at every factor: once
    if platform is not evidence.platform:
        with_gpus = " with nvidia-gpu reports" if variant.composite else ""
        return [Reason(f"{prefix}", f"{evidence.platform} evidence", f"{platform} evidence{with_gpus}")]
    c = _Checker(evidence.claims, prefix)
    if platform is Platform.SGX:
        c.hex_in("mrenclave", "mr_enclave", variant.mrenclave)
        if variant.signer is not None:
            _sgx_signer(c, variant.signer)
    elif variant.tdx is not None:
        _tdx(c, variant.tdx)
    elif variant.sev_snp is not None:
        _sev_snp(c, variant.sev_snp)
    elif variant.az_snp_vtpm is not None:
        _sev_snp(c, variant.az_snp_vtpm, "az-snp-vtpm")
        _vtpm_pcrs(c, "az-snp-vtpm", variant.az_snp_vtpm.pcrs)
    elif variant.az_tdx_vtpm is not None:
        _tdx(c, variant.az_tdx_vtpm, "az-tdx-vtpm")
        _vtpm_pcrs(c, "az-tdx-vtpm", variant.az_tdx_vtpm.pcrs)
    elif variant.gce_tpm is not None:
        _gce_tpm(c, variant.gce_tpm)
    elif variant.aws_nitro is not None:
        _nitro(c, variant.aws_nitro)
    elif variant.sim is not None:
        _sim(c, variant.sim)
    if variant.nvidia_gpu is not None and not variant.composite:
        _nvidia(c, variant.nvidia_gpu, evidence.claims)
    elif variant.nvidia_gpu is not None:
        _composite_gpus(c, variant.nvidia_gpu, gpus)
    return c.reasons


def _composite_gpus(c: _Checker, n: NvidiaGpuFactors, gpus: list[tuple[int, VerifiedEvidence]]) -> None:
    """The ``nvidia-gpu`` factors of a composite variant: the GPU count, and every factor for
    every GPU (each mismatch named by the GPU's slot: ``attestation[i].gpu<k>.nvidia-gpu...``)."""
    if n.count is not None and len(gpus) != n.count:
        c.fail("nvidia-gpu.count", f"{len(gpus)} distinct GPU report(s)", str(n.count))
    elif not gpus:
        c.fail("nvidia-gpu", "no GPU report", "at least one verified GPU report (aux gpu0, gpu1, ...)")
    for slot, gpu in gpus:
        g = _Checker(gpu.claims, f"{c.prefix}.gpu{slot}")
        _nvidia(g, n, gpu.claims)
        c.reasons += g.reasons


def _sgx_signer(c: _Checker, s: SgxSigner) -> None:
    c.hex_in("signer.mrsigner", "mr_signer", s.mrsigner)
    c.int_range("signer.isvprodid", "isv_prod_id", s.isvprodid)
    field = "signer.isvsvn" if s.isvsvn is not None else "signer.isvsvn_min/isvsvn_max"
    c.int_range(field, "isv_svn", s.isvsvn, s.isvsvn_min, s.isvsvn_max)


_TDX_MEASUREMENTS = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "mr_seam",
    "mr_servicetd",
)


def _tdx(c: _Checker, t: TdxFactors, key: str = "tdx") -> None:
    for name in _TDX_MEASUREMENTS:
        c.hex_in(f"{key}.{name}", name, getattr(t, name))
    c.hex_in(f"{key}.td_attributes", "td_attributes", t.td_attributes)
    c.hex_in(f"{key}.xfam", "xfam", t.xfam)
    c.boolean(f"{key}.sept_ve_disable", "sept_ve_disable", t.sept_ve_disable)


def _sev_snp(c: _Checker, s: SevSnpFactors, key: str = "sev-snp") -> None:
    for name in ("measurement", "host_data", "family_id", "image_id", "id_key_digest", "author_key_digest"):
        c.hex_in(f"{key}.{name}", name, getattr(s, name))
    c.int_range(f"{key}.policy", "policy", s.policy)
    c.int_range(f"{key}.vmpl", "vmpl", s.vmpl)
    field = f"{key}.guest_svn" if s.guest_svn is not None else f"{key}.guest_svn_min/guest_svn_max"
    c.int_range(field, "guest_svn", s.guest_svn, s.guest_svn_min, s.guest_svn_max)
    if s.min_tcb is not None:
        _snp_min_tcb(c, s.min_tcb, f"{key}.min_tcb")


_SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


def _snp_min_tcb(c: _Checker, minimum: SnpTcbMinimum, field: str) -> None:
    """Each SPL of ``min_tcb`` against the same component of the ``reported_tcb`` claim (a map of
    the decoded REPORTED_TCB); a component the evidence lacks (``fmc`` before Turin) fails."""
    reported = c.claims.get("reported_tcb", _MISSING)
    if not isinstance(reported, Mapping):
        c.fail(field, _show(reported), "a reported_tcb claim (the decoded REPORTED_TCB)")
        return
    for name in _SNP_TCB_COMPONENTS:
        wanted: int | None = getattr(minimum, name)
        if wanted is None:
            continue
        value = reported.get(name, _MISSING)
        expected = f">= {wanted} (reported_tcb{'; Turin only' if name == 'fmc' else ''})"
        if not isinstance(value, int) or isinstance(value, bool):
            c.fail(f"{field}.{name}", "no component" if value is _MISSING else _show(value), expected)
        elif value < wanted:
            c.fail(f"{field}.{name}", str(value), expected)


def _vtpm_pcrs(c: _Checker, key: str, pcrs: dict[str, tuple[str, ...]] | None) -> None:
    """The vTPM's SHA-256 PCRs the quote selected (claim ``pcrs``: ``{"0": hex, ...}``)."""
    if pcrs is None:
        return
    found = c.claims.get("pcrs", _MISSING)
    for index, allowed in sorted(pcrs.items(), key=lambda kv: int(kv[0])):
        field = f"{key}.pcrs.{index}"
        value = found.get(index, _MISSING) if isinstance(found, Mapping) else _MISSING
        if not isinstance(value, str):
            c.fail(field, _show(value), f"{_allowed(allowed)} (PCR {index} not in the quote)")
        elif value.lower() not in allowed:
            c.fail(field, value.lower(), _allowed(allowed))


def _gce_tpm(c: _Checker, g: GceTpmFactors) -> None:
    """The ``gce-tpm`` factors against ``confide.verify.gce_tpm``'s claims: ``pcrs.sha256``, the
    event log's ``secure_boot`` and ``platform``, and the AK certificate's production
    ``instance`` (a claim that is absent or ``null`` matches no factor that reads it)."""
    pcrs = c.claims.get("pcrs", _MISSING)
    banks = pcrs if isinstance(pcrs, Mapping) else {}
    _vtpm_pcrs(_nested(c, {"pcrs": banks.get("sha256", _MISSING)}), "gce-tpm", g.pcrs)
    log = c.claims.get("event_log", _MISSING)
    log_claims: Mapping[str, Any] = log if isinstance(log, Mapping) else {}
    if g.secure_boot is not None:
        state = log_claims.get("secure_boot", _MISSING)
        if state is not g.secure_boot:
            why = (
                "no event log"
                if not isinstance(log, Mapping)
                else "no SecureBoot state (PCR 7 not replayed, or no SecureBoot event before its separator)"
                if state is None or state is _MISSING
                else _show(state)
            )
            c.fail("gce-tpm.secure_boot", why, _show(g.secure_boot))
    platform = log_claims.get("platform")
    platform_claims: Mapping[str, Any] = platform if isinstance(platform, Mapping) else {}
    p = _nested(c, platform_claims)
    if g.gce_firmware_version_min is not None:
        p.int_range(
            "gce-tpm.gce_firmware_version_min",
            "gce_firmware_version",
            None,
            g.gce_firmware_version_min,
        )
    p.text_in("gce-tpm.confidential_technology", "confidential_technology", g.confidential_technology)
    _gce_tee(c, g)
    instance = c.claims.get("instance")
    wanted = [
        (name, getattr(g, name))
        for name in ("project_id", "project_number", "zone", "instance_id", "instance_name")
        if getattr(g, name) is not None
    ]
    if g.min_security_version is not None:
        wanted.append(("min_security_version", g.min_security_version))
    if not isinstance(instance, Mapping):
        for name, allowed in wanted:
            shown = _allowed(allowed) if isinstance(allowed, tuple) else f">= {allowed}"
            c.fail(
                f"gce-tpm.{name}",
                "no production instance in the AK certificate",
                f"{shown} (the AK certificate's instance extension, production instances only)",
            )
        return
    i = _nested(c, instance)
    i.text_in("gce-tpm.project_id", "project_id", g.project_id)
    i.text_in("gce-tpm.zone", "zone", g.zone)
    i.text_in("gce-tpm.instance_name", "instance_name", g.instance_name)
    i.int_in("gce-tpm.project_number", "project_number", g.project_number)
    i.int_in("gce-tpm.instance_id", "instance_id", g.instance_id)
    i.int_range("gce-tpm.min_security_version", "security_version", None, g.min_security_version)


def _gce_tee(c: _Checker, g: GceTpmFactors) -> None:
    """``gce-tpm.sev-snp`` / ``gce-tpm.tdx``: the factors of those variants against the verified
    hardware report of the attestation (claim ``tee``, whose ``type`` names the technology)."""
    for wanted, factors, name in (("sev-snp", g.sev_snp, "SEV-SNP report"), ("tdx", g.tdx, "TDX quote")):
        if factors is None:
            continue
        tee = c.claims.get("tee")
        field = f"gce-tpm.{wanted}"
        if not isinstance(tee, Mapping) or tee.get("type") != wanted:
            got = (
                "no Confidential VM report" if not isinstance(tee, Mapping) else f"a {tee.get('type')} report"
            )
            c.fail(field, got, f"a verified {name} in the attestation (go-tpm-tools field 8 or 9)")
            continue
        if isinstance(factors, TdxFactors):
            _tdx(_nested(c, tee), factors, field)
        else:
            _sev_snp(_nested(c, tee), factors, field)


def _nested(c: _Checker, claims: Mapping[str, Any]) -> _Checker:
    """A checker over ``claims`` (a nested claim) whose mismatches go to ``c``."""
    nested = _Checker(claims, c.prefix)
    nested.reasons = c.reasons
    return nested


def _nvidia(c: _Checker, n: NvidiaGpuFactors, claims: Any) -> None:
    c.text_in("nvidia-gpu.driver_version", "driver_version", n.driver_version)
    c.text_in("nvidia-gpu.vbios_version", "vbios_version", n.vbios_version, fold=True)
    if n.measurements is None:
        return
    found: ClaimValue | object = claims.get("measurements", _MISSING)
    for index, allowed in n.measurements.items():
        field = f"nvidia-gpu.measurements.{index}"
        value: Any = _MISSING
        if isinstance(found, list) and int(index) < len(found):
            value = found[int(index)]
        elif isinstance(found, dict):
            value = found.get(index, _MISSING)
        if not isinstance(value, str):
            c.fail(field, _show(value), f"{_allowed(allowed)} (claim measurements[{index}])")
        elif value.lower() not in allowed:
            c.fail(field, value.lower(), _allowed(allowed))


def _nitro(c: _Checker, n: AwsNitroFactors) -> None:
    for index, allowed in sorted(n.pcrs.items(), key=lambda kv: int(kv[0])):
        c.hex_in(f"aws-nitro.pcrs.{index}", f"pcr{index}", allowed)


def _sim(c: _Checker, s: SimFactors) -> None:
    c.hex_in("sim.measurement", "measurement", s.measurement)

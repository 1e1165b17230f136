"""Front ends that turn command-line/file inputs into calls of the pure verifiers.

Each platform has one module here exposing ``verify_request(VerifyRequest) -> VerifiedEvidence``.
This layer may read files (collateral bundles, certificate files); ``confide.verify`` may not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from confide import jsonstrict
from confide.collateral import is_url
from confide.errors import (
    CollateralMissingError,
    CollateralOutdatedError,
    ParseError,
    StorageError,
    UsageError,
)
from confide.fsutil import read_bounded
from confide.verify.result import DEFAULT_TCB_RECOVERY_GRACE_DAYS, Platform, VerifiedEvidence

__all__ = [
    "AUTO",
    "DCAP_PLATFORMS",
    "MAX_CERTIFICATE_FILE",
    "MAX_EVIDENCE_FILE",
    "MAX_TCB_EVAL_NUMBER",
    "MAX_TCB_RECOVERY_GRACE_DAYS",
    "PLATFORM_MODULES",
    "AutoTcbEvaluation",
    "TcbEvaluationMinimum",
    "VerifyRequest",
    "automatic_minimum_source",
    "detect_platform",
    "read_input_file",
    "require_automatic_tcb_evaluation",
    "require_minimum",
    "require_tcb_evaluation",
    "tcb_evaluation_minimum",
    "verify_request",
]


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """Everything ``confide evidence verify`` was given."""

    evidence: bytes
    platform: Platform
    at: datetime
    collateral: Path | None = None
    collateral_url: str | None = None
    """``--collateral`` given as an http(s) URL (Intel PCS/PCCS, AMD KDS) instead of a path."""
    vcek: Path | None = None
    chain: Path | None = None
    cert_chain: Path | None = None
    root: Path | None = None
    nonce: bytes | None = None
    event_log: Path | None = None
    rim_root: Path | None = None
    ocsp: str | None = None
    """NVIDIA: ``--ocsp`` (an OCSP responder URL or a directory of stored responses)."""
    crl: Path | None = None
    """GCE vTPM: ``--crl FILE``, Google's CRLs (DER or PEM) for the AK chain's revocation."""
    min_tcb_evaluation_data_number: int | None = None
    """Intel DCAP: ``--min-tcb-eval-number N`` (:func:`require_tcb_evaluation`)."""
    tcb_evaluation_numbers: bool = False
    """Intel DCAP (SGX, TDX): also verify Intel's TCB evaluation data numbers for the platform
    (``--min-tcb-eval-number auto``), from ``tcb_evaluation_numbers_file`` or else the
    ``--collateral`` directory or URL; reported in ``VerifiedEvidence.tcb_evaluation_numbers``."""
    tcb_evaluation_numbers_file: Path | None = None
    """``--tcb-eval-numbers FILE``: Intel PCS's answer, signed by the TCB Info's signer."""
    tcb_recovery_grace: timedelta | None = None
    """With ``tcb_evaluation_numbers``: the automatic minimum's grace (``--tcb-recovery-grace``),
    which a URL source also keeps older collateral out of its disk cache by."""
    pcs_update: str | None = None
    """Intel DCAP: ``--pcs-update early|standard``, the ``update`` a ``--collateral URL`` asks
    Intel PCS for (:class:`~confide.collateral.dcap.PcsHttpSource`)."""
    pcs_tcb_eval_number: int | None = None
    """Intel DCAP: ``--pcs-tcb-eval-number N``, the one TCB evaluation a ``--collateral URL`` asks
    Intel PCS for (``tcbEvaluationDataNumber``; not with ``pcs_update``)."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.evidence).hexdigest()


MAX_EVIDENCE_FILE = 16 << 20
"""The largest EVIDENCE file ``confide evidence verify`` reads: twice the largest evidence any
parser accepts (a GCE attestation, :data:`confide.evidence.gce_tpm.MAX_ATTESTATION_SIZE`, 4 MiB)
as hex text, with room for white space; a larger file is refused before it is read whole."""

MAX_CERTIFICATE_FILE = 1 << 20
"""The largest ``--vcek``, ``--chain`` or ``--cert-chain`` file read: they travel with the
evidence (the attester sends them), and a chain is at most
:data:`confide.evidence.pem.MAX_CHAIN_LENGTH` certificates of a few KiB (and, in ``--chain``,
AMD's CRL)."""


def read_input_file(path: Path, what: str, limit: int, expected: str) -> bytes:
    """The bytes of ``path`` (:func:`confide.fsutil.read_bounded`: no further than one byte past
    ``limit``; a pipe is read as the file it stands for): a file that cannot be read is a
    :class:`UsageError` (the command line named it), a larger one, or a device that never ends,
    a :class:`ParseError` naming ``what``, the limit and ``expected``."""
    try:
        return read_bounded(path, limit, label=what, expected=expected, structure=what)
    except StorageError as exc:
        raise UsageError(f"cannot read {exc.message}") from None


PLATFORM_MODULES: dict[Platform, str] = {
    Platform.SGX: "confide.platforms.dcap",
    Platform.TDX: "confide.platforms.dcap",
    Platform.SEV_SNP: "confide.platforms.sev_snp",
    Platform.NVIDIA_GPU: "confide.platforms.nvidia",
    Platform.AWS_NITRO: "confide.platforms.nitro",
    Platform.AZURE_SNP_VTPM: "confide.platforms.azure_vtpm",
    Platform.AZURE_TDX_VTPM: "confide.platforms.azure_vtpm",
    Platform.GCE_TPM: "confide.platforms.gce_tpm",
    Platform.SIMULATED: "confide.platforms.sim",
}


DCAP_PLATFORMS = frozenset({Platform.SGX, Platform.TDX, Platform.AZURE_TDX_VTPM})
"""The platforms whose evidence is verified with Intel DCAP collateral (TCB evaluation data
numbers apply)."""


def require_tcb_evaluation(result: VerifiedEvidence, minimum: int, where: str) -> VerifiedEvidence:
    """``result`` if the TCB Info and QE Identity it was verified with are both of TCB
    evaluation ``minimum`` or later (Intel PCS API v4 ``tcbEvaluationDataNumber``), else
    :class:`~confide.errors.CollateralOutdatedError` naming each number and the minimum
    (``where``: the option or setting that asked for it)."""
    numbers = result.tcb_evaluation
    if numbers is None:
        raise UsageError(f"{where} applies to Intel DCAP evidence only, got {result.platform.value}")
    low = numbers.below(minimum)
    if low:
        found = ", ".join(f"{name} tcbEvaluationDataNumber {n}" for name, n in low)
        raise CollateralOutdatedError(
            f"the collateral is of an older TCB evaluation than required: {found}, expected at least "
            f"{minimum} ({where}); get current collateral (a PCCS that serves superseded collateral, "
            "or collateral replayed, would let a platform pass that a later TCB recovery made out of date)"
        )
    return result


@dataclass(frozen=True, slots=True)
class AutoTcbEvaluation:
    """``--min-tcb-eval-number auto``: the minimum TCB evaluation data number is the one Intel's
    verified TCB evaluation data numbers set at the verification time, ``grace`` after each TCB
    recovery event (:meth:`~confide.verify.result.TcbEvaluationNumbers.required`)."""

    grace: timedelta = timedelta(days=DEFAULT_TCB_RECOVERY_GRACE_DAYS)

    def __post_init__(self) -> None:
        # The cap of --tcb-recovery-grace and the policy's setting: a larger grace (built here
        # directly) overflowed the date arithmetic of every verification (OverflowError).
        if not isinstance(self.grace, timedelta):
            raise TypeError(f"grace: expected a timedelta, got {type(self.grace).__name__}")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")
        if self.grace > timedelta(days=MAX_TCB_RECOVERY_GRACE_DAYS):
            raise ValueError(
                f"grace must be at most {MAX_TCB_RECOVERY_GRACE_DAYS} days, got {self.grace.days} days"
            )


TcbEvaluationMinimum = int | AutoTcbEvaluation
"""A fixed minimum TCB evaluation data number, or the automatic one."""

AUTO = "auto"
"""``--min-tcb-eval-number auto``, ``min_tcb_evaluation_data_number: auto``."""

MAX_TCB_EVAL_NUMBER = 0xFFFF_FFFF
MAX_TCB_RECOVERY_GRACE_DAYS = 3650


def tcb_evaluation_minimum(
    value: object,
    grace_days: object = None,
    *,
    option: str = "--min-tcb-eval-number",
    grace_option: str = "--tcb-recovery-grace",
) -> TcbEvaluationMinimum | None:
    """The minimum that ``option`` (an integer 1..2**32-1, ``auto`` or ``None``) and
    ``grace_option`` (days 0..3650, with ``auto`` only; ``None``: the default,
    :data:`~confide.verify.result.DEFAULT_TCB_RECOVERY_GRACE_DAYS`) ask for: ``None``, the
    number, or :class:`AutoTcbEvaluation`. What every command and the SDK take, checked alike
    (:class:`UsageError` naming the option; a boolean is not an integer)."""
    if grace_days is not None and value != AUTO:
        raise UsageError(f"{grace_option} is for {option} auto")
    if value is None:
        return None
    if value == AUTO:
        if grace_days is None:
            return AutoTcbEvaluation()
        if type(grace_days) is not int or not 0 <= grace_days <= MAX_TCB_RECOVERY_GRACE_DAYS:
            raise UsageError(
                f"{grace_option}: got {grace_days!r}, expected an integer, "
                f"0 to {MAX_TCB_RECOVERY_GRACE_DAYS} (days)"
            )
        return AutoTcbEvaluation(timedelta(days=grace_days))
    if type(value) is not int or not 1 <= value <= MAX_TCB_EVAL_NUMBER:
        raise UsageError(
            f"{option}: got {value!r}, expected an integer, 1 to {MAX_TCB_EVAL_NUMBER}, or 'auto'"
        )
    return value


def automatic_minimum_source(
    location: str | None,
    minimum: TcbEvaluationMinimum | None,
    *,
    option: str = "--min-tcb-eval-number auto",
    collateral_option: str = "--collateral DIR|URL",
) -> bool:
    """Whether the collateral source at ``location`` (``--collateral``) must bring Intel's TCB
    evaluation data numbers: with :class:`AutoTcbEvaluation` it must be a PCS directory or a
    URL (Intel PCS, a PCCS), a :class:`UsageError` otherwise (a dcap-qvl bundle file has no
    list, and without a source nothing brings one)."""
    if not isinstance(minimum, AutoTcbEvaluation):
        return False
    if not (location and (is_url(location) or Path(location).is_dir())):
        raise UsageError(
            f"{option} needs {collateral_option} (a PCS directory, Intel PCS or a PCCS: they bring "
            "Intel's TCB evaluation data numbers; a bundle file has none)"
        )
    return True


def require_minimum(
    result: VerifiedEvidence, minimum: TcbEvaluationMinimum, where: str, context: str = ""
) -> VerifiedEvidence:
    """:func:`require_tcb_evaluation` for a fixed ``minimum``,
    :func:`require_automatic_tcb_evaluation` for :class:`AutoTcbEvaluation` (``where``, the
    option, then gets `` auto``), the refusal naming ``where`` and ``context`` (e.g. ``", the
    CAS's own evidence"``). What every command, the CAS and the SDK apply."""
    if isinstance(minimum, AutoTcbEvaluation):
        return require_automatic_tcb_evaluation(result, minimum.grace, f"{where} auto{context}")
    return require_tcb_evaluation(result, minimum, f"{where}{context}")


def require_automatic_tcb_evaluation(
    result: VerifiedEvidence, grace: timedelta, where: str
) -> VerifiedEvidence:
    """:func:`require_tcb_evaluation` with the minimum that the verified TCB evaluation data
    numbers of ``result`` set at its verification time with ``grace``
    (:meth:`~confide.verify.result.TcbEvaluationNumbers.required`); ``result`` with that list
    and the requirement (number and reason) in its details. The refusal names the reason;
    evidence of a platform without Intel collateral is a :class:`UsageError`, as for a number."""
    if result.tcb_evaluation is None:
        raise UsageError(f"{where} applies to Intel DCAP evidence only, got {result.platform.value}")
    numbers = result.tcb_evaluation_numbers
    if numbers is None:
        raise CollateralMissingError(
            f"{where}: the evidence was verified without Intel's TCB evaluation data numbers"
        )
    required = numbers.required(result.verified_at, grace)
    require_tcb_evaluation(result, required.number, f"{where}: {required.reason()}")
    details = dict(result.details)
    details["tcb_evaluation_numbers"] = numbers.to_json()
    details["required_tcb_evaluation"] = required.to_json()
    return dataclasses.replace(result, details=details)


def verify_request(request: VerifyRequest) -> VerifiedEvidence:
    module_name = PLATFORM_MODULES[request.platform]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UsageError(f"platform {request.platform.value!r} is not supported by this build") from None
    fn = cast(Callable[[VerifyRequest], VerifiedEvidence], module.verify_request)
    return fn(request)


# Intel DCAP quote header: version (u16) and TEE type (u32 at offset 4).
# Intel SGX DCAP Quote Library API, "Quote Header"; TDX DCAP Quote Generation Library, A.3.
_TEE_TYPE_SGX = 0x00000000
_TEE_TYPE_TDX = 0x00000081
# AMD SEV-SNP ABI, Table 23 (ATTESTATION_REPORT): 0x4A0 bytes.
_SNP_REPORT_SIZE = 0x4A0


# trustee's Azure vTPM evidence containers: their exact top-level key sets
# (confide.evidence.azure_vtpm; v0 has no "version").
_AZURE_KEYS: dict[frozenset[str], Platform] = {
    frozenset({"quote", "report", "vcek"}): Platform.AZURE_SNP_VTPM,
    frozenset({"version", "tpm_quote", "hcl_report", "vcek"}): Platform.AZURE_SNP_VTPM,
    frozenset({"tpm_quote", "hcl_report", "td_quote"}): Platform.AZURE_TDX_VTPM,
    frozenset({"version", "tpm_quote", "hcl_report", "td_quote"}): Platform.AZURE_TDX_VTPM,
}
_MAX_JSON_DETECT = 1 << 20


def _detect_json(evidence: bytes) -> Platform | None:
    if len(evidence) > _MAX_JSON_DETECT or evidence.lstrip()[:1] != b"{":
        return None
    try:
        doc = jsonstrict.loads(evidence)
    except ParseError:
        return None
    return _AZURE_KEYS.get(frozenset(doc)) if isinstance(doc, dict) else None


def detect_platform(evidence: bytes) -> Platform:
    """Guess the platform of raw evidence from its leading bytes (used when --platform is absent)."""
    if evidence.startswith(b"CONFIDE-SIM"):  # confide.evidence.sim.MAGIC
        return Platform.SIMULATED
    azure = _detect_json(evidence)
    if azure is not None:
        return azure
    # SEV-SNP first: a v2/v3/v5 report of exactly 0x4A0 bytes with SIGNATURE_ALGO 1 (ECDSA
    # P-384) at 0x34. Its GUEST_SVN (bytes 4..7) is often 0, which the SGX test below would
    # otherwise take for an SGX quote's TEE type.
    if (
        len(evidence) == _SNP_REPORT_SIZE
        and int.from_bytes(evidence[0:4], "little") in (2, 3, 5)
        and int.from_bytes(evidence[0x34:0x38], "little") == 1
    ):
        return Platform.SEV_SNP
    if len(evidence) >= 8:
        version = int.from_bytes(evidence[0:2], "little")
        tee_type = int.from_bytes(evidence[4:8], "little")
        if version in (3, 4, 5) and tee_type == _TEE_TYPE_SGX and len(evidence) > 436:
            return Platform.SGX
        if version in (4, 5) and tee_type == _TEE_TYPE_TDX:
            return Platform.TDX
    if evidence[:1] in (b"\x84", b"\xd2"):
        return Platform.AWS_NITRO
    if len(evidence) == _SNP_REPORT_SIZE:
        return Platform.SEV_SNP
    if evidence[:1] == b"\x11" and len(evidence) > 40:
        return Platform.NVIDIA_GPU
    raise ParseError("cannot tell the evidence's platform from its content; pass --platform")

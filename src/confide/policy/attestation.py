"""Attestation variants of a service: SCONE's SGX factors and confide's platform extensions.

A map is one variant whose factors must all hold; a service lists one or more variants, any of
which suffices (SCONE v0.3, "Combining" / "Independent Attestation Factors").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from confide.policy._base import (
    U16,
    U32,
    _Model,
)
from confide.policy._types import (
    Hex8,
    Hex16List,
    Hex32,
    Hex32List,
    Hex32Or48List,
    Hex48List,
    TextList,
    _one_or_many,
    short,
)
from confide.verify.result import Platform

__all__ = [
    "GPU_HOSTS",
    "MAX_GPUS",
    "AttestationVariant",
    "AwsNitroFactors",
    "AzureSnpVtpmFactors",
    "AzureTdxVtpmFactors",
    "GceTpmFactors",
    "MeasurementIndex",
    "NvidiaGpuFactors",
    "PcrIndex",
    "SevSnpFactors",
    "SgxSigner",
    "SimFactors",
    "SnpTcbMinimum",
    "TdxFactors",
]


# --------------------------------------------------------------------------------------------
# Attestation variants ("Service Description" > "Attestation"; confide platform extensions)
# --------------------------------------------------------------------------------------------


class SgxSigner(_Model):
    """SCONE "Signer-based SGX Attestation": ``mrsigner`` and ``isvprodid`` are mandatory, the
    security version is either exact (``isvsvn``) or an inclusive range (``isvsvn_min``/``_max``)."""

    mrsigner: Hex32
    isvprodid: U16
    isvsvn: U16 | None = None
    isvsvn_min: U16 | None = None
    isvsvn_max: U16 | None = None

    @model_validator(mode="after")
    def _svn(self) -> SgxSigner:
        if self.isvsvn is not None and (self.isvsvn_min is not None or self.isvsvn_max is not None):
            raise ValueError("got isvsvn together with isvsvn_min/isvsvn_max, expected one or the other")
        if self.isvsvn_min is not None and self.isvsvn_max is not None and self.isvsvn_min > self.isvsvn_max:
            raise ValueError(
                f"got isvsvn_min {self.isvsvn_min} > isvsvn_max {self.isvsvn_max}, expected min <= max"
            )
        return self


def _require_some(model: BaseModel, what: str) -> None:
    if not any(getattr(model, f) is not None for f in type(model).model_fields):
        raise ValueError(f"got an empty {what} variant, expected at least one factor")


class TdxFactors(_Model):
    """Intel TDX TD report fields (TDX Module ABI, TDREPORT / TD Quote body). Each measurement
    is one value or a list of allowed values; all given factors must match."""

    mr_td: Hex48List | None = None
    rtmr0: Hex48List | None = None
    rtmr1: Hex48List | None = None
    rtmr2: Hex48List | None = None
    rtmr3: Hex48List | None = None
    mr_config_id: Hex48List | None = None
    mr_owner: Hex48List | None = None
    mr_owner_config: Hex48List | None = None
    mr_seam: Hex48List | None = None
    mr_servicetd: Hex48List | None = None
    td_attributes: Hex8 | None = None
    xfam: Hex8 | None = None
    sept_ve_disable: StrictBool | None = None

    _variant_name: ClassVar[str] = "tdx"

    @model_validator(mode="after")
    def _some(self) -> TdxFactors:
        _require_some(self, self._variant_name)
        return self


Spl = Annotated[StrictInt, Field(ge=0, le=0xFF)]
"""A security patch level: one byte of a SEV-SNP ``TCB_VERSION`` (ABI spec, Tables 3 and 4)."""


class SnpTcbMinimum(_Model):
    """``min_tcb``: the lowest SPL accepted for each component of the report's ``REPORTED_TCB``
    (SEV-SNP ABI spec, Table 23 offset 0x180; the TCB the VCEK/VLEK certifies, AMD 57230
    blSPL/teeSPL/snpSPL/ucodeSPL/fmcSPL, which verification compared with it). Components not
    given are not judged; ``fmc`` exists on Turin only (Table 4), so a report of Milan or Genoa
    never reaches a minimum ``fmc``."""

    bootloader: Spl | None = None
    tee: Spl | None = None
    snp: Spl | None = None
    microcode: Spl | None = None
    fmc: Spl | None = None

    @model_validator(mode="after")
    def _some(self) -> SnpTcbMinimum:
        if all(getattr(self, f) is None for f in type(self).model_fields):
            raise ValueError(
                "got an empty min_tcb, expected at least one of bootloader, tee, snp, microcode, fmc"
            )
        return self


class SevSnpFactors(_Model):
    """AMD SEV-SNP attestation report fields (SEV-SNP ABI spec, Table "ATTESTATION_REPORT")."""

    measurement: Hex48List | None = None
    host_data: Hex32List | None = None
    family_id: Hex16List | None = None
    image_id: Hex16List | None = None
    """``family_id`` and ``image_id`` come from the ID block the host gives SNP_LAUNCH_FINISH
    (ABI Table 23 offsets 0x010, 0x020), signed by an ID key of the host's choosing: they say
    something only together with ``id_key_digest``."""
    id_key_digest: Hex48List | None = None
    """SHA-384 of the ID key that signed the ID block (ABI Table 23 offset 0x0E0; zero without
    an ID block)."""
    author_key_digest: Hex48List | None = None
    """SHA-384 of the author key that certified the ID key (offset 0x110; zero unless
    ``AUTHOR_KEY_EN``)."""
    policy: Annotated[StrictInt, Field(ge=0, le=(1 << 53) - 1)] | None = None
    """The guest policy, compared exactly (bits 63:26 are reserved in ABI Table 9, so 53 bits
    suffice; a report with a higher bit set never matches)."""
    vmpl: Annotated[StrictInt, Field(ge=0, le=3)] | None = None
    guest_svn: U32 | None = None
    guest_svn_min: U32 | None = None
    guest_svn_max: U32 | None = None
    min_tcb: SnpTcbMinimum | None = None
    """Minimum SPLs of ``REPORTED_TCB`` (:class:`SnpTcbMinimum`): SEV-SNP has no TCB status,
    so this is how a policy refuses an out-of-date firmware or microcode."""

    _variant_name: ClassVar[str] = "sev-snp"

    @model_validator(mode="after")
    def _checks(self) -> SevSnpFactors:
        _require_some(self, self._variant_name)
        if self.guest_svn is not None and (self.guest_svn_min is not None or self.guest_svn_max is not None):
            raise ValueError(
                "got guest_svn together with guest_svn_min/guest_svn_max, expected one or the other"
            )
        lo, hi = self.guest_svn_min, self.guest_svn_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"got guest_svn_min {lo} > guest_svn_max {hi}, expected min <= max")
        return self


def _index_checker(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) > limit:
            raise ValueError(f"got {short(value)}, expected an index 0..{limit}")
        return str(int(value))

    return check


PcrIndex = Annotated[StrictStr, AfterValidator(_index_checker(31))]
MeasurementIndex = Annotated[StrictStr, AfterValidator(_index_checker(63))]
TpmPcrIndex = Annotated[StrictStr, AfterValidator(_index_checker(23))]
"""A PCR of a PC Client TPM (24 PCRs per bank, TCG PC Client Platform TPM Profile)."""


def _distinct_indexes(value: Any) -> Any:
    """Refuse two keys of one index map that name the same index ("7" and "07"): the index
    checker normalises both to "7", and the later value would silently replace the first."""
    if isinstance(value, dict):
        seen: dict[int, str] = {}
        for key in value:
            if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 18:
                first = seen.setdefault(int(key), key)
                if first != key:
                    raise ValueError(
                        f"got keys {short(first)} and {short(key)}, both index {int(key)}, "
                        "expected each index once"
                    )
    return value


DistinctIndexes = BeforeValidator(_distinct_indexes)


MAX_GPUS = 8
"""Most GPU reports one attestation request may carry (an HGX board has 8 GPUs)."""

GPU_HOSTS = frozenset(
    {Platform.TDX, Platform.SEV_SNP, Platform.AZURE_SNP_VTPM, Platform.AZURE_TDX_VTPM, Platform.SIMULATED}
)
"""The CPU-TEE platforms whose variants may add ``nvidia-gpu`` factors: the confidential VMs
that own GPUs in CC mode, and the simulator for development. SGX enclaves and Nitro enclaves
do not drive GPUs in CC mode."""


class NvidiaGpuFactors(_Model):
    """NVIDIA GPU (Hopper confidential computing) attestation report claims. Alone, they are
    appraised against a GPU report sent as the evidence (``tolerate: [gpu-only]``); together
    with a CPU TEE's factors (:data:`GPU_HOSTS`), against *every* GPU report sent with the CPU
    evidence, and ``count`` (composite only) is the exact number of distinct GPUs required
    (default: at least one)."""

    driver_version: TextList | None = None
    vbios_version: TextList | None = None
    measurements: Annotated[dict[MeasurementIndex, Hex48List], DistinctIndexes] | None = None
    count: Annotated[StrictInt, Field(ge=1, le=MAX_GPUS)] | None = None

    @model_validator(mode="after")
    def _some(self) -> NvidiaGpuFactors:
        _require_some(self, "nvidia-gpu")
        return self


class AwsNitroFactors(_Model):
    """AWS Nitro Enclaves attestation document PCRs (SHA-384), by index."""

    pcrs: Annotated[dict[PcrIndex, Hex48List], Field(min_length=1), DistinctIndexes]


class AzureSnpVtpmFactors(SevSnpFactors):
    """An Azure SEV-SNP confidential VM (``az-snp-vtpm`` evidence, ``docs/azure-vtpm.md``): the
    SEV-SNP report fields of the paravisor's report (on Azure ``measurement`` is the paravisor
    firmware Microsoft publishes, not the guest) and the vTPM's SHA-256 PCRs, which measure the
    guest's boot chain."""

    _variant_name: ClassVar[str] = "az-snp-vtpm"
    pcrs: Annotated[dict[PcrIndex, Hex32List], DistinctIndexes] | None = None


class AzureTdxVtpmFactors(TdxFactors):
    """An Azure TDX confidential VM (``az-tdx-vtpm`` evidence): the TD quote's fields (``mr_td``
    is the paravisor's) and the vTPM's SHA-256 PCRs."""

    _variant_name: ClassVar[str] = "az-tdx-vtpm"
    pcrs: Annotated[dict[PcrIndex, Hex32List], DistinctIndexes] | None = None


JSON_EXACT_MAX = 2**53 - 1
"""The largest integer RFC 8785 encodes exactly (its numbers are IEEE 754 doubles, §3.2.2.3)."""

_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


def _u64_from_canonical(value: object) -> object:
    """The canonical JSON of a policy writes an unsigned 64-bit integer beyond
    :data:`JSON_EXACT_MAX` (a GCE instance id has 19 digits) as its decimal string, which the CAS
    and an auditor read back (``loads_policy(..., stored=True)``): such a string, and only in
    that form (digits, no sign, no leading zero, from 2^53 to 2^64 - 1), is that integer. Any
    other string is left to the strict integer check, which refuses it."""
    if (
        isinstance(value, str)
        and 16 <= len(value) <= 20
        and value.isascii()
        and value.isdigit()
        and value[0] != "0"
        and JSON_EXACT_MAX < int(value) <= _U64_MAX
    ):
        return int(value)
    return value


def _u64_to_json(value: int) -> int | str:
    """An integer beyond :data:`JSON_EXACT_MAX` as its decimal string (see above); else itself,
    so that the hash of every policy that could be hashed before is unchanged."""
    return str(value) if value > JSON_EXACT_MAX else value


U64 = Annotated[
    StrictInt,
    BeforeValidator(_u64_from_canonical),
    Field(ge=0, le=_U64_MAX),
    PlainSerializer(_u64_to_json, when_used="json"),
]


def _one_int_or_many(value: object) -> object:
    """A single integer stands for a list of one: ``project_number: 1`` == ``[1]``."""
    if isinstance(value, str):
        raise ValueError(f"got the string {short(value)}, expected an integer (unquoted) or a list of them")
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


U64List = Annotated[tuple[U64, ...], BeforeValidator(_one_int_or_many), Field(min_length=1)]
"""One unsigned 64-bit integer or a non-empty list of them, meaning "any of"."""

GCE_CONFIDENTIAL_TECHNOLOGIES = ("NONE", "AMD_SEV", "AMD_SEV_ES", "INTEL_TDX", "AMD_SEV_SNP")
"""go-tpm-tools ``GCEConfidentialTechnology`` names, as ``confide.verify.gce_tpm`` reports them."""


def _technology(value: str) -> str:
    if value not in GCE_CONFIDENTIAL_TECHNOLOGIES:
        raise ValueError(f"got {short(value)}, expected one of {', '.join(GCE_CONFIDENTIAL_TECHNOLOGIES)}")
    return value


Technology = Annotated[StrictStr, AfterValidator(_technology)]
TechnologyList = Annotated[tuple[Technology, ...], BeforeValidator(_one_or_many), Field(min_length=1)]


class GceTpmFactors(_Model):
    """A Google Compute Engine Shielded or Confidential VM's vTPM (``gce-tpm`` evidence,
    ``docs/gce-tpm.md``). Every factor is something ``confide.verify.gce_tpm`` verified:

    - ``pcrs``: SHA-256 PCR values by index (signed by the AK in the quote);
    - ``secure_boot``: the ``SecureBoot`` variable the firmware measured into PCR 7 before its
      separator (from the event log, replayed against the quote; no event log, or no
      separator: no state, which matches neither ``true`` nor ``false``);
    - ``gce_firmware_version_min`` and ``confidential_technology``: the GCE firmware version
      and the confidential technology (``NONE``, ``AMD_SEV``, ``AMD_SEV_ES``, ``INTEL_TDX``,
      ``AMD_SEV_SNP``) the firmware measured into PCR 0 (event log, replayed);
    - ``project_id``, ``project_number``, ``zone``, ``instance_id``, ``instance_name`` and
      ``min_security_version``: the instance of the AK certificate's Google extension (signed
      by Google's CA), claimed for a production instance only, as go-tpm-tools does;
    - ``sev-snp`` or ``tdx``: the factors of the ``sev-snp`` / ``tdx`` variants, against the
      Confidential VM's hardware report the attestation carries (go-tpm-tools field 8 or 9,
      verified and bound to the quotes' nonce: claim ``tee``). Either asks for that report: an
      attestation without one, or with the other technology's, does not match.

    The AK itself must be a restricted signing key (checked for every ``gce-tpm`` evidence, not
    a factor). A vTPM has no debug mode and no TCB status: ``debug-mode`` and the TCB
    tolerances do not apply to it."""

    pcrs: Annotated[dict[TpmPcrIndex, Hex32List], DistinctIndexes] | None = None
    secure_boot: StrictBool | None = None
    gce_firmware_version_min: U32 | None = None
    confidential_technology: TechnologyList | None = None
    project_id: TextList | None = None
    project_number: U64List | None = None
    zone: TextList | None = None
    instance_id: U64List | None = None
    instance_name: TextList | None = None
    min_security_version: U64 | None = None
    sev_snp: SevSnpFactors | None = Field(default=None, alias="sev-snp")
    tdx: TdxFactors | None = None

    @model_validator(mode="after")
    def _some(self) -> GceTpmFactors:
        _require_some(self, "gce-tpm")
        if self.sev_snp is not None and self.tdx is not None:
            raise ValueError(
                "a gce-tpm variant pins one Confidential VM technology, sev-snp or tdx (an attestation"
                " carries one report); list two variants to allow both"
            )
        # The PCRs and boot claims say which image booted, not whose VM it is: anyone can boot a
        # public image in a project of their own (and log in through metadata SSH keys, which
        # are not measured), and Google's vTPM quotes their key too. Only the AK certificate's
        # project or instance says whose VM it is (docs/gce-tpm.md "Pin the project").
        if self.project_id is None and self.project_number is None and self.instance_id is None:
            raise ValueError(
                "a gce-tpm variant must pin the project (project_id or project_number) or the "
                "instance (instance_id): without them any GCE VM booted from the same image, "
                "in anyone's project, is accepted"
            )
        return self


class SimFactors(_Model):
    """The confide simulated TEE: its measurement (see the simulator's documentation)."""

    measurement: Hex32Or48List


_PLATFORM_FIELDS: dict[str, Platform] = {
    "tdx": Platform.TDX,
    "sev_snp": Platform.SEV_SNP,
    "nvidia_gpu": Platform.NVIDIA_GPU,
    "aws_nitro": Platform.AWS_NITRO,
    "az_snp_vtpm": Platform.AZURE_SNP_VTPM,
    "az_tdx_vtpm": Platform.AZURE_TDX_VTPM,
    "gce_tpm": Platform.GCE_TPM,
    "sim": Platform.SIMULATED,
}


class AttestationVariant(_Model):
    """One attestation variant: a map of factors that must *all* hold. SGX factors are SCONE's
    ``mrenclave`` and ``signer``; other platforms put their factors under their own key.

    A variant names one platform, or one CPU TEE of :data:`GPU_HOSTS` together with
    ``nvidia-gpu`` (composite attestation: the CPU evidence and the GPU reports sent with it
    must all hold)."""

    mrenclave: Hex32List | None = None
    signer: SgxSigner | None = None
    tdx: TdxFactors | None = None
    sev_snp: SevSnpFactors | None = Field(default=None, alias="sev-snp")
    nvidia_gpu: NvidiaGpuFactors | None = Field(default=None, alias="nvidia-gpu")
    aws_nitro: AwsNitroFactors | None = Field(default=None, alias="aws-nitro")
    az_snp_vtpm: AzureSnpVtpmFactors | None = Field(default=None, alias="az-snp-vtpm")
    az_tdx_vtpm: AzureTdxVtpmFactors | None = Field(default=None, alias="az-tdx-vtpm")
    gce_tpm: GceTpmFactors | None = Field(default=None, alias="gce-tpm")
    sim: SimFactors | None = None

    @model_validator(mode="after")
    def _one_platform(self) -> AttestationVariant:
        platforms = self._platforms()
        cpu = [p for p in platforms if p is not Platform.NVIDIA_GPU]
        if len(cpu) == 1 and len(platforms) == 2 and cpu[0] not in GPU_HOSTS:
            raise ValueError(
                f"got {cpu[0]} with nvidia-gpu, expected nvidia-gpu alone or together with the factors "
                "of a confidential VM (tdx, sev-snp, az-snp-vtpm, az-tdx-vtpm) or sim: GPUs in CC mode "
                "belong to a confidential VM"
            )
        if len(platforms) != 1 and not (len(cpu) == 1 and len(platforms) == 2):
            got = ", ".join(p.value for p in platforms) or "no factor"
            raise ValueError(
                f"got {got}, expected the factors of exactly one platform (SGX: mrenclave/signer, or one "
                "of tdx, sev-snp, az-snp-vtpm, az-tdx-vtpm, gce-tpm, nvidia-gpu, aws-nitro, sim), or one "
                "of tdx, "
                "sev-snp, az-snp-vtpm, az-tdx-vtpm, sim together with nvidia-gpu; list several variants "
                "to allow several"
            )
        return self

    def _platforms(self) -> list[Platform]:
        found = [Platform.SGX] if self.mrenclave is not None or self.signer is not None else []
        found += [p for f, p in _PLATFORM_FIELDS.items() if getattr(self, f) is not None]
        return found

    @property
    def platform(self) -> Platform:
        """The platform of the evidence a request sends (``platform``): the CPU TEE of a
        composite variant, else the variant's only platform."""
        platforms = self._platforms()
        return next((p for p in platforms if p is not Platform.NVIDIA_GPU), platforms[0])

    @property
    def composite(self) -> bool:
        """True when the variant combines a CPU TEE's factors with ``nvidia-gpu`` factors."""
        return self.nvidia_gpu is not None and self.platform is not Platform.NVIDIA_GPU

"""The typed model of a confide policy: the SCONE session language v0.3, extended.

Field names follow the SCONE session language v0.3 ("SCONE Session Language (v0.3)" on
sconedocs, sections noted on each class) so that existing session files load unchanged where
they use supported features. Every model is frozen and rejects unknown keys. Values are
normalised where the meaning is the same (hex to lower case, one value to a list of one, a
command string to its argument list, ``tolerate`` sorted), so that the canonical encoding
(:mod:`confide.policy.canonical`) does not depend on how the YAML was written.

confide extensions: attestation variants for other platforms (``tdx``, ``sev-snp``,
``nvidia-gpu``, ``aws-nitro``, ``az-snp-vtpm``, ``az-tdx-vtpm``, ``gce-tpm``, ``sim``), the
``public-key`` secret kind, ``san`` and ``renew_before`` on certificates, the
``configuration-needed``, ``relaunch-advised`` and ``simulation`` tolerances,
``min_tcb_evaluation_data_number``.
Deviations are listed in ``docs/policy.md``.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from confide.identity import fingerprint_of_public_key
from confide.policy import placeholders as ph
from confide.policy._base import (
    AbsPath,
    PlaceholderText,
    Text,
    _check_placeholder_syntax,
    _Model,
    _no_nul,
    _one_or_many,
)
from confide.policy._types import (
    Hex16,
    Hex16Or32,
    Hex32,
    Hex32List,
    Name,
    PolicyName,
    short,
)
from confide.policy.access import (
    KEYWORDS,
    AccessPolicy,
    AccessRule,
    RequireAll,
    RequireAtLeast,
    SignerRule,
)
from confide.policy.attestation import (
    AttestationVariant,
    AwsNitroFactors,
    AzureSnpVtpmFactors,
    AzureTdxVtpmFactors,
    GceTpmFactors,
    NvidiaGpuFactors,
    SevSnpFactors,
    SgxSigner,
    SimFactors,
    SnpTcbMinimum,
    TdxFactors,
)
from confide.policy.problems import Path, Problem, policy_error
from confide.policy.secret import (
    Endpoint,
    ExportTarget,
    KeyType,
    Secret,
    SecretImport,
    SecretKind,
    ca_levels_below,
)
from confide.verify.result import Platform

__all__ = [
    "MAX_GENERATED_BYTES",
    "MAX_GENERATED_RSA_KEYS",
    "MAX_SECRETS",
    "SUPPORTED_VERSION",
    "AccessPolicy",
    "AccessRule",
    "AttestationSecurity",
    "AttestationVariant",
    "AwsNitroFactors",
    "AzureSnpVtpmFactors",
    "AzureTdxVtpmFactors",
    "Endpoint",
    "ExportTarget",
    "GceTpmFactors",
    "Image",
    "ImageVolume",
    "InjectionFile",
    "KeyType",
    "NvidiaGpuFactors",
    "Policy",
    "RequireAll",
    "RequireAtLeast",
    "Secret",
    "SecretImport",
    "SecretKind",
    "Security",
    "Service",
    "SevSnpFactors",
    "SgxSigner",
    "SignerRule",
    "SimFactors",
    "SnpTcbMinimum",
    "TdxFactors",
    "Tolerance",
    "UpdatePolicy",
    "Volume",
    "VolumeExport",
    "VolumeExportTo",
    "VolumeImport",
    "command_secret_warning",
    "command_warnings",
    "injection_file_warning",
    "injection_file_warnings",
    "policy_warnings",
    "tolerance_warnings",
]

SUPPORTED_VERSION = "0.3"

MAX_SECRETS = 512
"""Most secrets one policy declares (loaded anew; docs/policy.md "Limits")."""
MAX_GENERATED_RSA_KEYS = 16
"""Most RSA private keys the CAS generates for one policy (``private-key`` secrets with an
``RSA-*`` ``key_type`` and no ``value``): it generates a version's secrets in the transaction
that applies it, ~0.1-0.6 s per RSA-3072 key, and anyone may create a policy under a free name."""
MAX_GENERATED_BYTES = 1 << 20
"""Most bytes of ``ascii`` and ``binary`` secrets the CAS generates for one policy (their
``size``, 20 by default)."""


# --------------------------------------------------------------------------------------------
# Services ("Service Description")
# --------------------------------------------------------------------------------------------


def _split_command(value: object) -> object:
    if isinstance(value, str):
        _no_nul(value)
        return ph.split_command(value)
    return value


def _env_name(value: str) -> str:
    if not value or "=" in value or "\x00" in value:
        raise ValueError(f"got {short(value)}, expected a non-empty name without '=' or NUL")
    return value


EnvName = Annotated[StrictStr, AfterValidator(_env_name)]

_FSPF_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _fspf_key(value: str) -> str:
    if _FSPF_KEY_HEX.fullmatch(value):
        return value.lower()
    found = ph.find_placeholders(value)
    if len(found) == 1 and found[0].start == 0 and found[0].end == len(value):
        return value
    # A volume key: never part of the message, not even a prefix (a mistyped key is mostly the key).
    what = "a placeholder that is not the whole value" if "$$SCONE::" in value else f"{len(value)} characters"
    raise ValueError(f"got {what} (value not shown), expected 64 hex digits or '$$SCONE::name$$'")


FspfKey = Annotated[StrictStr, AfterValidator(_fspf_key)]


class Service(_Model):
    """A service: its configuration and the attestation variants allowed to get it."""

    name: Name
    image_name: Name | None = None
    command: (
        Annotated[tuple[PlaceholderText, ...], BeforeValidator(_split_command), Field(min_length=1)] | None
    ) = None
    """The argument list; a string is split as SCONE documents (whitespace, quotes)."""
    environment: dict[EnvName, PlaceholderText] = Field(default_factory=dict)
    pwd: Annotated[Text, Field(min_length=1, max_length=4096)] | None = None
    fspf_path: AbsPath | None = None
    fspf_key: FspfKey | None = None
    fspf_tag: Hex16 | None = None
    attestation: (
        Annotated[
            tuple[AttestationVariant, ...], BeforeValidator(_one_or_many), Field(min_length=1, max_length=256)
        ]
        | None
    ) = None
    """A map is one variant (all factors), a list is several variants (any of them)."""
    mrenclaves: Hex32List | None = None
    """Deprecated SCONE form, equivalent to ``attestation: {mrenclave: [...]}``."""

    @model_validator(mode="after")
    def _checks(self) -> Service:
        if self.attestation is None and self.mrenclaves is None:
            raise ValueError("got no attestation, expected 'attestation' with at least one variant")
        if self.attestation is not None and self.mrenclaves is not None:
            raise ValueError("got both 'attestation' and the deprecated 'mrenclaves', expected only one")
        if (self.fspf_key is None) != (self.fspf_tag is None):
            raise ValueError("got only one of fspf_key/fspf_tag, expected both or neither")
        if self.fspf_key is not None and self.fspf_path is None:
            raise ValueError("got fspf_key/fspf_tag without fspf_path, expected fspf_path too")
        return self

    def variants(self) -> tuple[AttestationVariant, ...]:
        """The attestation variants, with the deprecated ``mrenclaves`` as one variant."""
        if self.attestation is not None:
            return self.attestation
        return (AttestationVariant(mrenclave=self.mrenclaves),)

    def command_secrets(self) -> tuple[str, ...]:
        """The secrets the command's placeholders name (any format: a certificate's
        ``privatekey`` too, the runtime's own key for one issued to it), each once, in order:
        every local user can read them in ``/proc/PID/cmdline`` while the program runs
        (:func:`command_secret_warning`). The environment's and the files' are not."""
        names: dict[str, None] = {}
        for arg in self.command or ():
            for p in ph.find_placeholders(arg):
                names.setdefault(p.name)
        return tuple(names)


# --------------------------------------------------------------------------------------------
# Volumes and images ("Volumes", "Images")
# --------------------------------------------------------------------------------------------


class UpdatePolicy(enum.StrEnum):
    """How a service may update a volume (SCONE ``update_policy``; confide's reading is in
    ``docs/policy.md``, "Volume update policies"):

    * ``rollback_protected`` (the default): changes persist; the runtime refuses any version
      but the CAS's current one, and a new tag is recorded by compare-and-swap;
    * ``ephemeral``: the service may write during its run, but nothing persists: the runtime
      discards the changes at exit and the CAS refuses every tag update;
    * ``no_rollback_protection``: the runtime accepts any authentic version, and the CAS records
      a reported tag without compare-and-swap (last writer wins).
    """

    ROLLBACK_PROTECTED = "rollback_protected"
    EPHEMERAL = "ephemeral"
    NO_ROLLBACK_PROTECTION = "no_rollback_protection"

    @property
    def strictness(self) -> int:
        """Order for combining two policies: ``ephemeral`` (nothing persists, the current version
        only) > ``rollback_protected`` (changes persist, the current version only) >
        ``no_rollback_protection`` (changes persist, any authentic version)."""
        return _STRICTNESS[self]

    @classmethod
    def strictest(cls, *policies: UpdatePolicy) -> UpdatePolicy:
        """The strictest of ``policies`` (the default, ``rollback_protected``, for none)."""
        return max(policies, key=lambda p: p.strictness, default=cls.ROLLBACK_PROTECTED)


_STRICTNESS = {
    UpdatePolicy.NO_ROLLBACK_PROTECTION: 0,
    UpdatePolicy.ROLLBACK_PROTECTED: 1,
    UpdatePolicy.EPHEMERAL: 2,
}


class VolumeExportTo(_Model):
    session: PolicyName
    session_hash: Hex32 | None = None


class VolumeExport(_Model):
    """``{session, session_hash}`` or ``{to: {session, session_hash}, update_policy}``."""

    session: PolicyName | None = None
    session_hash: Hex32 | None = None
    to: VolumeExportTo | None = None
    update_policy: UpdatePolicy | None = None

    @model_validator(mode="after")
    def _form(self) -> VolumeExport:
        if (self.session is None) == (self.to is None):
            raise ValueError("got neither or both of session/to, expected exactly one")
        if self.to is None and self.update_policy is not None:
            raise ValueError("got update_policy without 'to', expected session and session_hash under 'to'")
        if self.session is None and self.session_hash is not None:
            raise ValueError("got session_hash next to 'to', expected it under 'to'")
        return self


class VolumeImport(_Model):
    session: PolicyName
    volume: Name
    session_hash: Hex32 | None = None


class Volume(_Model):
    """An encrypted volume; its key is generated by the CAS unless ``fspf_key``/``fspf_tag``.
    ``fspf_tag`` is SCONE's 16-byte FSPF tag or a confide volume tag (32 bytes, the SHA-256 of
    the volume manifest, ``docs/volume-format.md``)."""

    name: Name
    fspf_key: FspfKey | None = None
    fspf_tag: Hex16Or32 | None = None
    export: Annotated[tuple[VolumeExport, ...], BeforeValidator(_one_or_many)] = ()
    import_: VolumeImport | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _checks(self) -> Volume:
        if (self.fspf_key is None) != (self.fspf_tag is None):
            raise ValueError("got only one of fspf_key/fspf_tag, expected both or neither")
        # An imported volume may be exported again (a chain, resolved to its owner by the CAS:
        # docs/cas.md, "Volumes shared between policies"); its key and tag stay the owner's.
        if self.import_ is not None and self.fspf_key is not None:
            raise ValueError("got fspf_key/fspf_tag on an imported volume, expected neither")
        return self


class ImageVolume(_Model):
    name: Name
    path: AbsPath
    update_policy: UpdatePolicy | None = None


def _file_mode(value: int) -> int:
    """An injection file's ``permission`` (SCONE v0.3.10: "File permissions of secret injection
    files can now be controlled in the session", written ``permission: 0o100``): the nine
    permission bits, without write for group or others (a secret file they could change) and
    with read for the owner (the service runs as the user who writes it)."""
    if not 0 <= value <= 0o777:
        raise ValueError(
            f"got {value} ({value:#o}), expected permission bits 0o000 to 0o777 written in octal as"
            " SCONE writes them, e.g. 0o600 (YAML 1.2 reads 0600 as the decimal 600)"
        )
    if value & 0o022:
        raise ValueError(
            f"got {value:#o}: group or others could write the secret file, expected no write bit for"
            " them (e.g. 0o600, or 0o640 to let the group read it)"
        )
    if not value & 0o400:
        raise ValueError(
            f"got {value:#o}: its owner could not read the file, expected the owner's read bit 0o400"
            " (e.g. 0o400 or 0o600; SCONE's documentation example 0o100 is execute-only)"
        )
    return value


FileMode = Annotated[StrictInt, AfterValidator(_file_mode)]
DEFAULT_FILE_MODE = 0o600
"""An injection file's mode without ``permission``."""


class InjectionFile(_Model):
    """A file whose placeholders are substituted at start; ``content`` given here, or read from
    the image at ``path`` when omitted. ``permission``: its mode (default 0o600: confide's; SCONE's
    default is 0o700)."""

    path: AbsPath
    content: Annotated[StrictStr, AfterValidator(_check_placeholder_syntax)] | None = None
    permission: FileMode | None = None

    @property
    def mode(self) -> int:
        """The mode ``confide run`` creates the file with."""
        return DEFAULT_FILE_MODE if self.permission is None else self.permission


def _injection_file(value: object) -> object:
    return [{"path": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class Image(_Model):
    name: Name
    volumes: tuple[ImageVolume, ...] = ()
    injection_files: Annotated[tuple[InjectionFile, ...], BeforeValidator(_injection_file)] = ()

    @model_validator(mode="after")
    def _unique(self) -> Image:
        paths = [f.path for f in self.injection_files] + [v.path for v in self.volumes]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"got path {dup[0]!r} more than once, expected distinct paths")
        return self


# --------------------------------------------------------------------------------------------
# Security ("Attestation Security")
# --------------------------------------------------------------------------------------------


class Tolerance(enum.StrEnum):
    """What a policy tolerates (``security.attestation.tolerate``)."""

    DEBUG_MODE = "debug-mode"
    HYPERTHREADING = "hyperthreading"
    INSECURE_IGPU = "insecure-igpu"
    SOFTWARE_HARDENING_NEEDED = "software-hardening-needed"
    CONFIGURATION_NEEDED = "configuration-needed"
    INSECURE_CONFIGURATION = "insecure-configuration"
    """SCONE's name for ``configuration-needed``; both are accepted and mean the same."""
    OUTDATED_TCB = "outdated-tcb"
    RELAUNCH_ADVISED = "relaunch-advised"
    """confide: accept an Intel TD whose launch TCB is out of date while the TDX module it runs
    now is not (``TDRelaunchAdvised``; ``outdated-tcb`` accepts it too)."""
    SIMULATION = "simulation"
    """confide: accept evidence from the development simulator."""
    GPU_ONLY = "gpu-only"
    """confide: accept an NVIDIA GPU's report alone. It attests the GPU, not the confidential
    VM that runs the service: anyone with a genuine GPU (the host operator included) can obtain
    such a report for the CAS's nonce."""
    VTPM_ONLY = "vtpm-only"
    """confide: accept a Google Compute Engine vTPM's quote (``gce-tpm``). It attests the VM's
    measured boot as Google's vTPM recorded it, not memory the host cannot read: Google, the
    VM's operator, runs that vTPM and can read a Shielded VM's memory."""


def _advisory(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(f"got {short(value)}, expected an advisory ID such as INTEL-SA-00161")
    return value.upper()


AdvisoryId = Annotated[StrictStr, AfterValidator(_advisory)]


def _sorted_unique(value: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(sorted(set(value)))


def _min_tcb_evaluation(value: Any) -> Any:
    """``min_tcb_evaluation_data_number``: an integer 1..2**32-1 (not a boolean, not a string of
    digits) or ``auto``; ``null``: none."""
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 0xFFFF_FFFF:
        return value
    raise ValueError(f"got {short(value)}, expected an integer 1..4294967295 or auto")


def _advisories(value: Any) -> Any:
    return [value] if isinstance(value, str) and value != "*" else value


class AttestationSecurity(_Model):
    mode: Literal["hardware"] = "hardware"
    """Only hardware attestation: SCONE's ``none`` and ``maa`` are not supported."""
    tolerate: Annotated[tuple[Tolerance, ...], AfterValidator(_sorted_unique)] = ()
    ignore_advisories: Annotated[
        Literal["*"] | Annotated[tuple[AdvisoryId, ...], AfterValidator(_sorted_unique)],
        BeforeValidator(_advisories),
    ] = ()
    trusted_scone_qe_pubkeys: tuple[Hex32, ...] = ()
    """Accepted for compatibility; confide has no SCONE quoting enclave, so it has no effect."""
    min_tcb_evaluation_data_number: Annotated[int | str | None, BeforeValidator(_min_tcb_evaluation)] = None
    """confide: Intel DCAP evidence (sgx, tdx, az-tdx-vtpm) must have been verified with a TCB
    Info and a QE Identity whose ``tcbEvaluationDataNumber`` are both at least this (Intel PCS
    API v4), so that collateral made before a TCB recovery (a stale PCCS, or replayed) cannot
    pass a platform the recovery made out of date. Other platforms are not affected. ``auto``:
    the number that Intel's TCB evaluation data numbers, verified with the evidence, require at
    its verification time (the latest TCB recovery event at least ``tcb_recovery_grace_days``
    old; docs/dcap.md, "Automatic minimum"); evidence verified without that list fails."""
    tcb_recovery_grace_days: Annotated[StrictInt, Field(ge=0, le=3650)] | None = None
    """confide, with ``min_tcb_evaluation_data_number: auto`` only: days after a TCB recovery
    event before its number is required (absent: 365, what Intel PCS's standard update serves:
    :data:`confide.verify.result.DEFAULT_TCB_RECOVERY_GRACE_DAYS`)."""

    @model_validator(mode="after")
    def _grace_needs_auto(self) -> AttestationSecurity:
        if self.tcb_recovery_grace_days is not None and self.min_tcb_evaluation_data_number != "auto":
            raise ValueError("tcb_recovery_grace_days applies to min_tcb_evaluation_data_number: auto only")
        return self

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value != "hardware":
            raise ValueError(
                f"got {short(value)}, expected 'hardware' "
                "(confide never disables attestation and has no MAA mode)"
            )
        return value

    @model_validator(mode="after")
    def _wildcard(self) -> AttestationSecurity:
        if self.ignore_advisories == "*" and not {Tolerance.DEBUG_MODE, Tolerance.SIMULATION} & set(
            self.tolerate
        ):
            raise ValueError(
                "got ignore_advisories '*' without debug-mode, expected explicit advisory IDs in production"
            )
        return self

    def tolerates(self, t: Tolerance) -> bool:
        if t in (Tolerance.CONFIGURATION_NEEDED, Tolerance.INSECURE_CONFIGURATION):
            return (
                Tolerance.CONFIGURATION_NEEDED in self.tolerate
                or Tolerance.INSECURE_CONFIGURATION in self.tolerate
            )
        return t in self.tolerate


class Security(_Model):
    attestation: AttestationSecurity = AttestationSecurity()


# --------------------------------------------------------------------------------------------
# The policy (SCONE: session description)
# --------------------------------------------------------------------------------------------


def _version(value: Any) -> Any:
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError(f'got the number {value!r}, expected the string "{SUPPORTED_VERSION}" (quote it)')
    return value


class Policy(_Model):
    """A policy document (a SCONE session description)."""

    name: PolicyName
    version: Annotated[Literal["0.3"], BeforeValidator(_version)]
    predecessor: Hex32 | None = None
    """Hash of the policy this one replaces (absent when creating)."""
    services: tuple[Service, ...] = ()
    secrets: tuple[Secret, ...] = ()
    volumes: tuple[Volume, ...] = ()
    images: tuple[Image, ...] = ()
    access_policy: AccessPolicy = AccessPolicy()
    security: Security = Security()

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Policy:
        stored = bool(isinstance(info.context, dict) and info.context.get("stored"))
        problems = list(_reference_problems(self, stored=stored))
        if problems:
            raise policy_error(problems)
        return self

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def secret(self, name: str) -> Secret:
        for s in self.secrets:
            if s.name == name:
                return s
        raise KeyError(name)

    def image(self, name: str) -> Image:
        for i in self.images:
            if i.name == name:
                return i
        raise KeyError(name)


def command_secret_warning(service: str, secret: str) -> str:
    """The one-line warning about secret ``secret`` in the command's arguments of service
    ``service`` (names only, never a value): ``confide policy apply``, the SDK's and the web
    page's apply, and ``confide run`` before it starts the program (docs/limitations.md
    "``confide run``")."""
    return (
        f"warning: service '{service}' puts secret '{secret}' into its command's arguments: every"
        " local user can read it in /proc/PID/cmdline while the program runs; put it into the"
        " environment or an injected file instead"
    )


def command_warnings(policy: Policy) -> tuple[str, ...]:
    """One :func:`command_secret_warning` per service and secret its command names, in the
    policy's order (not a refusal: such a policy is valid)."""
    return tuple(
        command_secret_warning(service.name, secret)
        for service in policy.services
        for secret in service.command_secrets()
    )


_GROUP_OR_OTHER_READ = 0o044
"""The permission bits that let the file's group (``0o040``) or every other local user
(``0o004``) read an injection file: the ones :func:`injection_file_warnings` warns about."""


def injection_file_warning(image: str, path: str, mode: int) -> str:
    """The one-line warning about an injection file whose ``permission`` lets group or others
    read it (:data:`_GROUP_OR_OTHER_READ`): allowed, as in SCONE, but every local user of that
    group (or every local user) can then read the secrets in it while it exists."""
    who = "every local user" if mode & 0o004 else "every local user in the file's group"
    return (
        f"warning: image '{image}' injects {path} with permission {mode:#o}: {who} can read the"
        " secrets in it while the program runs; use 0o600 (or 0o400) unless the program needs more"
    )


def injection_file_warnings(policy: Policy) -> tuple[str, ...]:
    """One :func:`injection_file_warning` per injection file whose ``permission`` lets group or
    others read it (not a refusal). Execute alone (``0o710``, ``0o701``) reveals nothing of the
    contents and is not warned about; write is refused when the policy is loaded."""
    return tuple(
        injection_file_warning(image.name, f.path, f.mode)
        for image in policy.images
        for f in image.injection_files
        if f.mode & _GROUP_OR_OTHER_READ
    )


_NEEDS_TOLERANCE = {
    Platform.GCE_TPM: (Tolerance.VTPM_ONLY, "a Google vTPM's quote", "docs/gce-tpm.md"),
    Platform.NVIDIA_GPU: (Tolerance.GPU_ONLY, "an NVIDIA GPU report alone", "docs/nvidia.md"),
}
"""Variants whose evidence the appraisal accepts only with a tolerance (``confide.policy.appraise``):
the platform, the tolerance, what it is and where it is explained."""


def tolerance_warnings(policy: Policy) -> tuple[str, ...]:
    """One warning per attestation variant that no evidence can match because the policy does
    not tolerate what it attests: a ``gce-tpm`` variant without ``vtpm-only``, an ``nvidia-gpu``
    variant alone without ``gpu-only`` (valid, but every attestation by it is then refused; a
    ``sim`` variant without ``simulation`` is refused when the policy is loaded)."""
    sec = policy.security.attestation
    out = []
    for service in policy.services:
        for j, variant in enumerate(service.variants()):
            need = _NEEDS_TOLERANCE.get(variant.platform)
            if need is not None and not sec.tolerates(need[0]):
                out.append(
                    f"warning: service '{service.name}' attestation[{j}] ({variant.platform.value}) accepts"
                    f" nothing: {need[1]} is accepted only with security.attestation.tolerate:"
                    f" [{need[0].value}] ({need[2]})"
                )
    return tuple(out)


def policy_warnings(policy: Policy) -> tuple[str, ...]:
    """Every warning about a valid policy, in order: :func:`command_warnings`, then
    :func:`injection_file_warnings`, then :func:`tolerance_warnings` (``confide policy apply``,
    the SDK's apply)."""
    return command_warnings(policy) + injection_file_warnings(policy) + tolerance_warnings(policy)


def _duplicates(path: str, names: list[str]) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            yield Problem((path, i, "name"), f"got duplicate name {n!r}, expected unique names")
        seen.add(n)


_RSA_KEY_TYPES = (KeyType.RSA2048, KeyType.RSA3072)


def _generation_problems(policy: Policy) -> Iterator[Problem]:
    """What the CAS would generate for ``policy`` beyond :data:`MAX_SECRETS`,
    :data:`MAX_GENERATED_RSA_KEYS` and :data:`MAX_GENERATED_BYTES` (checked for versions loaded
    anew only: one stored before had its secrets generated already)."""
    if len(policy.secrets) > MAX_SECRETS:
        yield Problem(
            ("secrets",),
            f"got {len(policy.secrets)} secrets, expected at most {MAX_SECRETS} in one policy",
        )
    rsa = 0
    generated = 0
    for i, s in enumerate(policy.secrets):
        if not s.generated:
            continue
        if s.kind is SecretKind.PRIVATE_KEY and s.key_type in _RSA_KEY_TYPES:
            rsa += 1
            if rsa == MAX_GENERATED_RSA_KEYS + 1:
                yield Problem(
                    ("secrets", i, "key_type"),
                    f"got more than {MAX_GENERATED_RSA_KEYS} generated RSA keys, expected at most"
                    f" {MAX_GENERATED_RSA_KEYS} RSA keys the CAS generates for one policy (it generates"
                    " them while it applies the policy; give the others as values, or use P-256,"
                    " P-384 or Ed25519)",
                )
        if s.kind in (SecretKind.ASCII, SecretKind.BINARY):
            before = generated
            generated += s.size or 20
            if before <= MAX_GENERATED_BYTES < generated:
                yield Problem(
                    ("secrets", i),
                    f"got more than {MAX_GENERATED_BYTES} bytes of generated ascii and binary secrets"
                    f" in one policy, expected at most {MAX_GENERATED_BYTES} bytes",
                )


def _placeholder_problems(
    text: str,
    path: Path,
    context: ph.Context,
    kinds: dict[str, SecretKind | None],
    refused: Mapping[tuple[str, ph.Encoding], str] | None = None,
) -> Iterator[Problem]:
    """``refused``: (secret, encoding) pairs the kind has but this secret cannot give, with why."""
    try:
        found = ph.find_placeholders(text)
    except ph.PlaceholderSyntaxError as exc:  # already reported by the field validator
        yield Problem(path, str(exc))
        return
    for p in found:
        if p.name not in kinds:
            known = ", ".join(sorted(kinds)) or "none"
            yield Problem(path, f"got placeholder {p} naming an unknown secret, expected one of: {known}")
            continue
        try:
            encoding = ph.encoding_for(kinds[p.name], p.format, context)
        except ValueError as exc:
            yield Problem(path, f"{p}: {exc}")
            continue
        why = (refused or {}).get((p.name, encoding)) if encoding is not None else None
        if why is not None:
            yield Problem(path, f"{p}: {why}")


def _reference_problems(policy: Policy, *, stored: bool = False) -> Iterator[Problem]:
    """Cross-references: names unique and defined, placeholders valid, issuers and keys right.
    ``stored``: a version the CAS stored before (:func:`confide.policy.loader.loads_policy`):
    the checks added after versions could pass without them are left out, so such a version
    still loads (and can be updated); what they refuse is refused at release instead."""
    yield from _duplicates("services", [s.name for s in policy.services])
    yield from _duplicates("secrets", [s.name for s in policy.secrets])
    yield from _duplicates("volumes", [v.name for v in policy.volumes])
    yield from _duplicates("images", [i.name for i in policy.images])

    if not stored:
        yield from _generation_problems(policy)

    kinds: dict[str, SecretKind | None] = {s.name: s.kind for s in policy.secrets}
    keyless = (ph.Encoding.PEM_PKCS8, ph.Encoding.DER_PKCS8, ph.Encoding.PKCS12)
    refused: dict[tuple[str, ph.Encoding], str] = {}
    for s in policy.secrets:
        if s.kind in (SecretKind.X509, SecretKind.X509_CA) and s.value is not None and s.private_key is None:
            # Certificates given as a value without private_key: the CAS holds no key to inject.
            for e in keyless:
                refused[s.name, e] = (
                    "got a private-key format for a certificate given as an explicit value without"
                    " private_key, expected a certificate format (or name the key with private_key)"
                )
        if stored:
            continue
        if s.issue_to_runtime:
            # The runtime's own key never leaves the TEE: confide run writes it as PEM only.
            refused[s.name, ph.Encoding.DER_PKCS8] = (
                "got a DER private-key format for a certificate issued to the runtime, expected"
                " privatekey (PEM: confide run writes the runtime's own key only as PEM)"
            )
            refused[s.name, ph.Encoding.PKCS12] = (
                "got pkcs12-with-private-key for a certificate issued to the runtime, expected"
                " crt and privatekey (PEM): its key never leaves the runtime, so the CAS cannot put"
                " it into a PKCS#12 archive"
            )
        if s.kind == SecretKind.X509_CA and s.value is not None:
            # The CAS has a CRL only for the CAs it generates (docs/cas.md "Revocation").
            for e in (ph.Encoding.CRL_PEM, ph.Encoding.CRL_DER):
                refused[s.name, e] = (
                    "got a crl format for a CA given as an explicit value, expected it only for a CA"
                    " the CAS generates (it keeps no CRL for another's CA)"
                )
    images = {i.name for i in policy.images}
    volumes = {v.name for v in policy.volumes}
    sec = policy.security.attestation

    imported = {s.name for s in policy.secrets if s.import_ is not None}
    for i, s in enumerate(policy.secrets):
        for field, want in (("private_key", SecretKind.PRIVATE_KEY), ("issuer", SecretKind.X509_CA)):
            ref = getattr(s, field)
            if ref is None:
                continue
            if ref not in kinds:
                yield Problem(("secrets", i, field), f"got {ref!r}, expected the name of a {want} secret")
            elif kinds[ref] not in (want, None):
                yield Problem(
                    ("secrets", i, field), f"got {ref!r} of kind {kinds[ref]}, expected a {want} secret"
                )
            elif ref in imported and not stored and not (field == "issuer" and s.issue_to_runtime):
                # The CAS makes a certificate or public key only from the key and issuer it holds
                # for the policy; an imported value is resolved at each release, for a runtime.
                why = (
                    "an imported CA issues only certificates to runtimes, issue_to_runtime"
                    if field == "issuer"
                    else "import the certificate or public key made of it instead"
                )
                yield Problem(
                    ("secrets", i, field),
                    f"got {ref!r}, an imported secret, expected a {want} secret of this policy ({why})",
                )
        if s.issuer is not None:
            seen: set[str] = {s.name}
            cur: str | None = s.issuer
            while cur is not None and cur in kinds:
                if cur in seen:
                    yield Problem(
                        ("secrets", i, "issuer"), f"got an issuer cycle through {cur!r}, expected a chain"
                    )
                    break
                seen.add(cur)
                cur = policy.secret(cur).issuer
    yield from _path_length_problems(policy, stored=stored)

    for i, svc in enumerate(policy.services):
        base: Path = ("services", i)
        if svc.image_name is not None and svc.image_name not in images:
            yield Problem((*base, "image_name"), f"got {svc.image_name!r}, expected the name of an image")
        if not stored and svc.pwd is not None and not svc.pwd.startswith("/"):
            # confide run changes to it from the directory the host started it in: relative, the
            # host would choose where the program runs (and what its relative paths name).
            yield Problem(
                (*base, "pwd"),
                f"got {short(svc.pwd)}, expected an absolute path (confide run would resolve a"
                " relative one from the directory the host starts it in)",
            )
        for j, arg in enumerate(svc.command or ()):
            yield from _placeholder_problems(arg, (*base, "command", j), ph.Context.COMMAND, kinds, refused)
        for k, v in svc.environment.items():
            yield from _placeholder_problems(
                v, (*base, "environment", k), ph.Context.ENVIRONMENT, kinds, refused
            )
        if svc.fspf_key is not None and svc.fspf_key.startswith("$$"):
            yield from _placeholder_problems(svc.fspf_key, (*base, "fspf_key"), ph.Context.FSPF_KEY, kinds)
        for j, variant in enumerate(svc.variants()):
            if variant.platform is Platform.SIMULATED and not sec.tolerates(Tolerance.SIMULATION):
                yield Problem(
                    (*base, "attestation", j),
                    "got a sim variant, expected security.attestation.tolerate to include 'simulation'",
                )
            gpu = variant.nvidia_gpu
            if gpu is not None and gpu.count is not None and not variant.composite and gpu.count != 1:
                # A GPU-only request carries one GPU report; more come only with a CPU TEE's evidence.
                yield Problem(
                    (*base, "attestation", j, "nvidia-gpu", "count"),
                    f"got count {gpu.count} without a CPU TEE, expected nvidia-gpu together with tdx, "
                    "sev-snp or sim to require several GPUs (a GPU-only request carries one GPU report)",
                )

    for i, vol in enumerate(policy.volumes):
        if vol.name == "ocsp-responder" and "volume" in kinds and not stored:
            # The CAS keeps a volume's key as the row ``volume/NAME`` and a CA's delegated OCSP
            # responder as ``CA/ocsp-responder`` (confide.cas.ocsp_delegate): one row name for
            # both, and the volume would be released the responder's key.
            yield Problem(
                ("volumes", i, "name"),
                "got volume 'ocsp-responder' beside a secret named 'volume', expected another name for"
                " one of them (the CAS keeps this volume's key and that secret's OCSP responder under"
                " one name, volume/ocsp-responder)",
            )
        if vol.fspf_key is not None and vol.fspf_key.startswith("$$"):
            yield from _placeholder_problems(
                vol.fspf_key, ("volumes", i, "fspf_key"), ph.Context.FSPF_KEY, kinds
            )

    for i, img in enumerate(policy.images):
        for j, iv in enumerate(img.volumes):
            if iv.name not in volumes:
                yield Problem(
                    ("images", i, "volumes", j, "name"), f"got {iv.name!r}, expected the name of a volume"
                )
            if not stored and (alias := _path_alias(iv.path)) is not None:
                yield Problem(("images", i, "volumes", j, "path"), alias)
        for j, f in enumerate(img.injection_files):
            if not stored and (alias := _path_alias(f.path)) is not None:
                yield Problem(("images", i, "injection_files", j, "path"), alias)
            if f.content is not None:
                yield from _placeholder_problems(
                    f.content, ("images", i, "injection_files", j, "content"), ph.Context.FILE, kinds, refused
                )

    ap = policy.access_policy
    for op in ("read", "update", "create_sessions"):
        rules = getattr(ap, op)
        for j, rule in enumerate(rules or ()):
            yield from _access_rule_problems(rule, ("access_policy", op, j), policy, kinds, stored)


def _path_alias(path: str) -> str | None:
    """Why the absolute ``path`` of an injection file or image volume is not written the one way
    it can be (no empty, ``.`` or ``..`` segment, no trailing ``/``, not ``/`` itself); ``None``
    when it is. Another spelling of one file (``/run//a``, ``/run/./a``, ``/run/x/../a``) passed
    the check for a path given twice, and ``confide run`` then wrote the file twice, the later
    content (and mode) replacing the earlier; ``..`` after a symbolic link names another
    directory than the text does."""
    segments = path.split("/")[1:]
    if all(s not in ("", ".", "..") for s in segments):
        return None
    return (
        f"got {short(path)}, expected an absolute path written plainly: no '//', '.' or '..' segment"
        " and no trailing '/' (another spelling of a path names the same file twice)"
    )


def _explicit_path_length(value: str) -> tuple[bool, int | None] | None:
    """(cA, pathLenConstraint) of the first certificate of an explicit ``value``; ``None``
    when it has no basicConstraints or does not load (its own check reports that).
    :class:`ValueError` when its extensions do not parse: RFC 5280 §4.2, "A certificate MUST
    NOT include more than one instance of a particular extension" (cryptography raises
    :class:`~cryptography.x509.DuplicateExtension`, not a ValueError, for that one)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long attribute values in real-world names
            cert = x509.load_pem_x509_certificate(value.encode())
    except (ValueError, TypeError):
        return None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(str(exc)) from None
    return bc.ca, bc.path_length


def _path_length_problems(policy: Policy, *, stored: bool) -> Iterator[Problem]:
    """RFC 5280 §4.2.1.9: each x509-ca's certificate must allow the x509-ca levels the policy
    declares below it (:func:`confide.policy.secret.ca_levels_below`): a generated CA's
    ``path_len``, an explicit CA certificate's own basicConstraints (checked only for versions
    loaded anew: stored versions predate the check, and their chains were issued already)."""
    levels = ca_levels_below(policy.secrets)
    for i, s in enumerate(policy.secrets):
        below = levels.get(s.name, 0)
        if s.kind is not SecretKind.X509_CA or s.import_ is not None:
            continue
        if s.path_len is not None and s.path_len < below:
            yield Problem(
                ("secrets", i, "path_len"),
                f"got path_len {s.path_len}, expected at least {below}: the policy declares {below}"
                " level(s) of x509-ca below it",
            )
        if s.value is None or stored:
            continue
        try:
            found = _explicit_path_length(s.value)
        except ValueError as exc:
            yield Problem(
                ("secrets", i, "value"),
                f"got a certificate whose extensions do not parse ({exc}), expected each extension"
                " well-formed and at most once (RFC 5280 §4.2)",
            )
            continue
        if found is None:
            continue
        is_ca, length = found
        if below and not is_ca:
            yield Problem(
                ("secrets", i, "value"),
                "got a certificate with basicConstraints cA false, expected a CA certificate: the"
                " policy declares x509-ca secrets issued by it",
            )
        elif below and length is not None and length < below:
            yield Problem(
                ("secrets", i, "value"),
                f"got a certificate with pathLenConstraint {length}, expected at least {below}: the"
                f" policy declares {below} level(s) of x509-ca below it",
            )


_UPPER_FINGERPRINT = re.compile(r"(?=.*[A-F])[0-9a-fA-F]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


_IDENTITY_KINDS = (SecretKind.PRIVATE_KEY, SecretKind.PUBLIC_KEY, SecretKind.X509, SecretKind.X509_CA)
"""The kinds an access entry ``$$SCONE::name$$`` may name: those whose value has a public key,
which is the identity (confide identities are Ed25519 keys, docs/policy.md "access_policy")."""


def _identity_key_problem(policy: Policy, name: str, seen: frozenset[str] = frozenset()) -> str | None:
    """Why secret ``name`` of ``policy`` cannot name an identity in an access entry, as far as
    the policy alone tells (an import is checked when the CAS applies the version); ``None``
    when it can, or when the policy cannot tell."""
    try:
        spec = policy.secret(name)
    except KeyError:
        return None  # reported as an unknown secret
    if spec.import_ is not None or name in seen:
        return None
    seen = seen | {name}
    want = (
        "expected a private-key, public-key, x509 or x509-ca secret with an Ed25519 key (confide "
        "identities are Ed25519 keys), or the identity's fingerprint written as the entry itself"
    )
    if spec.kind not in _IDENTITY_KINDS:
        return f"got a secret of kind {spec.kind}, {want}"
    if spec.issue_to_runtime:
        return (
            "got a certificate issued to the runtime (its key is the attested runtime's own, a new one "
            f"at each start, and the CAS holds none), {want}"
        )
    key: object = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if spec.value is not None and spec.kind is SecretKind.PRIVATE_KEY:
                key = load_pem_private_key(spec.value.encode(), password=None).public_key()
            elif spec.value is not None and spec.kind is SecretKind.PUBLIC_KEY:
                key = load_pem_public_key(spec.value.encode())
            elif spec.value is not None:
                key = x509.load_pem_x509_certificates(spec.value.encode())[0].public_key()
    except (ValueError, TypeError, IndexError):
        return None  # the value's own check reports it
    except UnsupportedAlgorithm:
        # A certificate loads (its own check) although its subject key is of a type the
        # library does not know (RFC 5280 §4.1.2.7 allows any algorithm): not an Ed25519 key.
        return f"its value: got a certificate whose key is of an unsupported type, {want}"
    if key is not None:
        try:
            fingerprint_of_public_key(key)
        except ValueError as exc:
            return f"its value: {exc}"
        return None
    if spec.private_key is not None:
        why = _identity_key_problem(policy, spec.private_key, seen)
        return None if why is None else f"its private_key {spec.private_key!r}: {why}"
    if spec.key_type is not KeyType.ED25519:
        return (
            f"got a {spec.kind} secret the CAS generates with key_type {spec.key_type or KeyType.P256}"
            f" (the default is {KeyType.P256.value}), expected key_type: {KeyType.ED25519.value}:"
            " confide identities are Ed25519 keys"
        )
    return None


def _access_rule_problems(
    rule: Any, path: Path, policy: Policy, kinds: dict[str, SecretKind | None], stored: bool
) -> Iterator[Problem]:
    if isinstance(rule, str | SignerRule):
        identity, where = (rule, path) if isinstance(rule, str) else (rule.signer, (*path, "signer"))
        yield from _placeholder_problems(identity, where, ph.Context.ACCESS_POLICY, kinds)
        if not stored and ph.PREFIX in identity:
            # sconedocs "Governance": the entry stands for the identity the secret holds. Here
            # that is the secret's public key (an Ed25519 key: an identity's); an entry that
            # could name no one is refused rather than left granting nothing. Versions stored
            # before this check still load (such an entry then stands for no one).
            try:
                found = ph.find_placeholders(identity)
            except ph.PlaceholderSyntaxError:
                found = []  # reported above
            if len(found) > 1 or (found and (found[0].start, found[0].end) != (0, len(identity))):
                yield Problem(
                    where,
                    "got a placeholder inside a longer entry, expected the entry to be exactly one "
                    "$$SCONE::name$$ (or an identity's fingerprint)",
                )
            for p in found[:1]:
                why = _identity_key_problem(policy, p.name) if p.name in kinds else None
                if why is not None:
                    yield Problem(where, f"{p}: {why}")
        if (
            not stored
            and identity not in KEYWORDS
            and ph.PREFIX not in identity
            and not _FINGERPRINT.fullmatch(identity)
            and not _UPPER_FINGERPRINT.fullmatch(identity)
        ):
            # The CAS matches an entry against the fingerprints of the identities that signed
            # (confide.identity: SHA-256 of the raw Ed25519 key, lower-case hex); anything else
            # (a name, a PEM certificate or key, SCONE's key hash) matches no one, so a rule made
            # of it grants nothing and a board needing it can never be met. Stored versions,
            # which loaded before this check, still load (such an entry stands for no one).
            yield Problem(
                where,
                f"got {short(identity)}, expected an identity's fingerprint (64 lower-case hex digits, "
                "as confide identity create prints it), CREATOR, ANY, NONE or $$SCONE::name$$ naming "
                "a secret with an Ed25519 key (anything else matches no one)",
            )
        if not stored and _UPPER_FINGERPRINT.fullmatch(identity):
            # The CAS compares an identity's fingerprint as ``confide identity create`` prints it
            # (lower-case hex): written in upper case it names no one, so a board needing it
            # could never be met. Left out for stored versions, which loaded before this check.
            yield Problem(
                where,
                f"got the fingerprint {identity[:16]}… in upper case, expected lower-case hex "
                "(as confide identity create prints it; in upper case it matches no one)",
            )
    elif isinstance(rule, RequireAll):
        for k, r in enumerate(rule.require_all):
            yield from _access_rule_problems(r, (*path, "require-all", k), policy, kinds, stored)
    elif isinstance(rule, RequireAtLeast):
        for k, r in enumerate(rule.rules):
            yield from _access_rule_problems(
                r, (*path, f"require-at-least-{rule.n}", k), policy, kinds, stored
            )

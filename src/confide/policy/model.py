"""The typed model of a confide policy: the SCONE session language v0.3, extended.

Field names follow the SCONE session language v0.3 ("SCONE Session Language (v0.3)" on
sconedocs, sections noted on each class) so that existing session files load unchanged where
they use supported features. Every model is frozen and rejects unknown keys. Values are
normalised where the meaning is the same (hex to lower case, one value to a list of one, a
command string to its argument list, ``tolerate`` sorted), so that the canonical encoding
(:mod:`confide.policy.canonical`) does not depend on how the YAML was written.

confide extensions: attestation variants for other platforms (``tdx``, ``sev-snp``,
``nvidia-gpu``, ``aws-nitro``, ``sim``), the ``public-key`` secret kind, ``san`` and
``renew_before`` on certificates, the ``configuration-needed`` and ``simulation`` tolerances.
Deviations are listed in ``docs/policy.md``.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core.core_schema import SerializerFunctionWrapHandler

from confide.policy import placeholders as ph
from confide.policy._types import (
    Duration,
    Hex8,
    Hex16,
    Hex16List,
    Hex32,
    Hex32List,
    Hex32Or48List,
    Hex48List,
    Name,
    PolicyName,
    SecretName,
    TextList,
    duration_seconds,
    short,
)
from confide.policy.problems import Path, Problem, policy_error
from confide.verify.result import Platform

__all__ = [
    "SUPPORTED_VERSION",
    "AccessPolicy",
    "AccessRule",
    "AttestationSecurity",
    "AttestationVariant",
    "AwsNitroFactors",
    "Endpoint",
    "ExportTarget",
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
    "TdxFactors",
    "Tolerance",
    "UpdatePolicy",
    "Volume",
    "VolumeExport",
    "VolumeExportTo",
    "VolumeImport",
]

SUPPORTED_VERSION = "0.3"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, validate_by_alias=True, validate_by_name=False
    )


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, dict | str) else value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("got a string containing NUL, expected C-string text (no NUL byte)")
    return value


def _check_placeholder_syntax(value: str) -> str:
    ph.find_placeholders(value)
    return value


Text = Annotated[StrictStr, AfterValidator(_no_nul)]
"""A string without NUL that may contain placeholders (their syntax is checked)."""
PlaceholderText = Annotated[StrictStr, AfterValidator(_no_nul), AfterValidator(_check_placeholder_syntax)]
U8 = Annotated[StrictInt, Field(ge=0, le=0xFF)]
U16 = Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
U32 = Annotated[StrictInt, Field(ge=0, le=0xFFFF_FFFF)]


def _abs_path(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/") or len(value) > 4096:
        raise ValueError(f"got {short(value)}, expected an absolute path (starting with '/')")
    return value


AbsPath = Annotated[StrictStr, AfterValidator(_abs_path)]


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

    @model_validator(mode="after")
    def _some(self) -> TdxFactors:
        _require_some(self, "tdx")
        return self


class SevSnpFactors(_Model):
    """AMD SEV-SNP attestation report fields (SEV-SNP ABI spec, Table "ATTESTATION_REPORT")."""

    measurement: Hex48List | None = None
    host_data: Hex32List | None = None
    family_id: Hex16List | None = None
    image_id: Hex16List | None = None
    policy: Annotated[StrictInt, Field(ge=0, le=(1 << 53) - 1)] | None = None
    """The guest policy, compared exactly (bits 63:25 are reserved, so 53 bits suffice)."""
    vmpl: Annotated[StrictInt, Field(ge=0, le=3)] | None = None
    guest_svn: U32 | None = None
    guest_svn_min: U32 | None = None
    guest_svn_max: U32 | None = None

    @model_validator(mode="after")
    def _checks(self) -> SevSnpFactors:
        _require_some(self, "sev-snp")
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
        if not value.isascii() or not value.isdigit() or int(value) > limit:
            raise ValueError(f"got {short(value)}, expected an index 0..{limit}")
        return str(int(value))

    return check


PcrIndex = Annotated[StrictStr, AfterValidator(_index_checker(31))]
MeasurementIndex = Annotated[StrictStr, AfterValidator(_index_checker(63))]


class NvidiaGpuFactors(_Model):
    """NVIDIA GPU (Hopper confidential computing) attestation report claims."""

    driver_version: TextList | None = None
    vbios_version: TextList | None = None
    measurements: dict[MeasurementIndex, Hex48List] | None = None

    @model_validator(mode="after")
    def _some(self) -> NvidiaGpuFactors:
        _require_some(self, "nvidia-gpu")
        return self


class AwsNitroFactors(_Model):
    """AWS Nitro Enclaves attestation document PCRs (SHA-384), by index."""

    pcrs: Annotated[dict[PcrIndex, Hex48List], Field(min_length=1)]


class SimFactors(_Model):
    """The confide simulated TEE: its measurement (see the simulator's documentation)."""

    measurement: Hex32Or48List


_PLATFORM_FIELDS: dict[str, Platform] = {
    "tdx": Platform.TDX,
    "sev_snp": Platform.SEV_SNP,
    "nvidia_gpu": Platform.NVIDIA_GPU,
    "aws_nitro": Platform.AWS_NITRO,
    "sim": Platform.SIMULATED,
}


class AttestationVariant(_Model):
    """One attestation variant: a map of factors that must *all* hold. SGX factors are SCONE's
    ``mrenclave`` and ``signer``; other platforms put their factors under their own key."""

    mrenclave: Hex32List | None = None
    signer: SgxSigner | None = None
    tdx: TdxFactors | None = None
    sev_snp: SevSnpFactors | None = Field(default=None, alias="sev-snp")
    nvidia_gpu: NvidiaGpuFactors | None = Field(default=None, alias="nvidia-gpu")
    aws_nitro: AwsNitroFactors | None = Field(default=None, alias="aws-nitro")
    sim: SimFactors | None = None

    @model_validator(mode="after")
    def _one_platform(self) -> AttestationVariant:
        platforms = self._platforms()
        if len(platforms) != 1:
            got = ", ".join(p.value for p in platforms) or "no factor"
            raise ValueError(
                f"got {got}, expected the factors of exactly one platform (SGX: mrenclave/signer, or one "
                "of tdx, sev-snp, nvidia-gpu, aws-nitro, sim); list several variants to allow several"
            )
        return self

    def _platforms(self) -> list[Platform]:
        found = [Platform.SGX] if self.mrenclave is not None or self.signer is not None else []
        found += [p for f, p in _PLATFORM_FIELDS.items() if getattr(self, f) is not None]
        return found

    @property
    def platform(self) -> Platform:
        return self._platforms()[0]


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
    raise ValueError(f"got {short(value[:8] + '...')}, expected 64 hex digits or '$$SCONE::name$$'")


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


# --------------------------------------------------------------------------------------------
# Secrets ("Secrets", "Secret Sharing", "Referencing Other Sessions")
# --------------------------------------------------------------------------------------------


class SecretKind(enum.StrEnum):
    ASCII = "ascii"
    BINARY = "binary"
    PRIVATE_KEY = "private-key"
    PUBLIC_KEY = "public-key"
    X509 = "x509"
    X509_CA = "x509-ca"


class KeyType(enum.StrEnum):
    P256 = "P-256"
    P384 = "P-384"
    ED25519 = "Ed25519"
    RSA2048 = "RSA-2048"
    RSA3072 = "RSA-3072"


class Endpoint(enum.StrEnum):
    SERVER = "server"
    CLIENT = "client"


class ExportTarget(_Model):
    """Who may import a secret: one policy (optionally pinned to its hash) or a namespace."""

    session: PolicyName | None = None
    session_hash: Hex32 | None = None
    namespace: PolicyName | None = None

    @model_validator(mode="after")
    def _one(self) -> ExportTarget:
        if (self.session is None) == (self.namespace is None):
            raise ValueError("got neither or both of session/namespace, expected exactly one")
        if self.session_hash is not None and self.session is None:
            raise ValueError("got session_hash with namespace, expected session_hash only with session")
        return self


class SecretImport(_Model):
    """Import of a secret exported by another policy, optionally pinned to its policy hash."""

    session: PolicyName
    secret: SecretName
    session_hash: Hex32 | None = None


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _dns_name(value: str) -> str:
    labels = value[2:].split(".") if value.startswith("*.") else value.split(".")
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"got {short(value)}, expected a DNS name (optionally starting with '*.')")
    return value


def _san(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _dns_name(value)
    return value


DnsName = Annotated[StrictStr, AfterValidator(_dns_name)]
SanEntry = Annotated[StrictStr, AfterValidator(_san)]

_ALLOWED: dict[SecretKind, frozenset[str]] = {
    SecretKind.ASCII: frozenset({"size", "value"}),
    SecretKind.BINARY: frozenset({"size", "value"}),
    SecretKind.PRIVATE_KEY: frozenset({"key_type", "value", "migrate"}),
    SecretKind.PUBLIC_KEY: frozenset({"value", "private_key"}),
    SecretKind.X509: frozenset(
        {
            "value",
            "private_key",
            "issuer",
            "common_name",
            "endpoint",
            "dns",
            "san",
            "valid_for",
            "renew_before",
        }
    ),
    SecretKind.X509_CA: frozenset(
        {"value", "private_key", "issuer", "common_name", "valid_for", "renew_before"}
    ),
}
_KIND_PARAMS = frozenset().union(*_ALLOWED.values())
MAX_SECRET_SIZE = 65536


def _pem_private_key_type(value: str) -> KeyType | None:
    key = load_pem_private_key(value.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": KeyType.P256, "secp384r1": KeyType.P384}.get(key.curve.name)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return KeyType.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: KeyType.RSA2048, 3072: KeyType.RSA3072}.get(key.key_size)
    return None


class Secret(_Model):
    """A secret: generated by the CAS, given explicitly (``value``) or imported."""

    name: SecretName
    kind: SecretKind | None = None
    size: Annotated[StrictInt, Field(ge=1, le=MAX_SECRET_SIZE)] | None = None
    value: StrictStr | None = None
    key_type: KeyType | None = None
    migrate: StrictBool = False
    private_key: SecretName | None = None
    issuer: SecretName | None = None
    common_name: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    endpoint: Endpoint | None = None
    dns: Annotated[tuple[DnsName, ...], BeforeValidator(_one_or_many), Field(min_length=1)] | None = None
    san: Annotated[tuple[SanEntry, ...], BeforeValidator(_one_or_many), Field(min_length=1)] | None = None
    valid_for: Duration | None = None
    renew_before: Duration | None = None
    export: Annotated[tuple[ExportTarget, ...], BeforeValidator(_one_or_many)] = ()
    export_public: StrictBool = False
    import_: SecretImport | None = Field(default=None, alias="import")

    def _set_params(self) -> set[str]:
        out = {f for f in _KIND_PARAMS - {"migrate"} if getattr(self, f) is not None}
        if self.migrate:
            out.add("migrate")
        return out

    @model_validator(mode="after")
    def _checks(self) -> Secret:
        params = self._set_params()
        if self.import_ is not None:
            extra = sorted(
                params
                | ({"export"} if self.export else set())
                | ({"export_public"} if self.export_public else set())
            )
            if extra:
                raise ValueError(
                    f"got {', '.join(extra)} on an imported secret, expected only name, kind and import "
                    "(imported secrets cannot be re-exported)"
                )
            return self
        if self.kind is None:
            raise ValueError("got no kind, expected one of: " + ", ".join(k.value for k in SecretKind))
        extra = sorted(params - _ALLOWED[self.kind])
        if extra:
            raise ValueError(
                f"got {', '.join(extra)} for a {self.kind} secret, "
                f"expected only: {', '.join(sorted(_ALLOWED[self.kind]))}"
            )
        getattr(self, "_check_" + self.kind.replace("-", "_"))()
        if self.renew_before is not None:
            if self.valid_for is None:
                raise ValueError("got renew_before without valid_for, expected valid_for too")
            if duration_seconds(self.renew_before) >= duration_seconds(self.valid_for):
                raise ValueError(
                    "got renew_before >= valid_for, expected renew_before shorter than valid_for"
                )
        return self

    def _check_ascii(self) -> None:
        if self.value is not None:
            if self.size is not None:
                raise ValueError("got both size and value, expected one or the other")
            if not self.value.isascii() or "\x00" in self.value or not self.value:
                raise ValueError(
                    "got a value with non-ASCII or NUL characters, expected non-empty ASCII text"
                )
            if len(self.value) > MAX_SECRET_SIZE:
                raise ValueError(f"got a value longer than {MAX_SECRET_SIZE}, expected a shorter one")

    def _check_binary(self) -> None:
        if self.value is not None:
            if self.size is not None:
                raise ValueError("got both size and value, expected one or the other")
            v = self.value
            if not v or len(v) % 2 or not all(c in "0123456789abcdefABCDEF" for c in v):
                raise ValueError(
                    f"got a value of {len(v)} characters that is not hex, expected hex-encoded bytes"
                )
            if len(v) > 2 * MAX_SECRET_SIZE:
                raise ValueError(f"got a value longer than {MAX_SECRET_SIZE} bytes, expected a shorter one")

    def _check_private_key(self) -> None:
        if self.value is not None:
            try:
                found = _pem_private_key_type(self.value)
            except (ValueError, TypeError):
                raise ValueError("got a value that is not an unencrypted PEM PKCS#8 private key") from None
            except Exception:
                raise ValueError("got a value with an unsupported private key") from None
            if found is None:
                raise ValueError(
                    "got a private key of another type, expected one of: "
                    + ", ".join(k.value for k in KeyType)
                )
            if self.key_type is not None and found != self.key_type:
                raise ValueError(f"got a {found} key in value, expected key_type {self.key_type}")

    def _check_public_key(self) -> None:
        if (self.value is None) == (self.private_key is None):
            raise ValueError("got neither or both of value/private_key, expected exactly one")
        if self.value is not None:
            try:
                load_pem_public_key(self.value.encode())
            except Exception:
                raise ValueError("got a value that is not a PEM SubjectPublicKeyInfo public key") from None

    def _check_x509(self) -> None:
        if self.value is not None:
            given = sorted(
                f
                for f in ("common_name", "endpoint", "dns", "san", "valid_for", "renew_before")
                if getattr(self, f)
            )
            if given:
                raise ValueError(
                    f"got {', '.join(given)} with an explicit value, expected them only when generated"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x509.load_pem_x509_certificate(self.value.encode())
            except Exception:
                raise ValueError("got a value that is not a PEM X.509 certificate") from None
        elif self.private_key is None:
            raise ValueError("got no private_key, expected a private-key secret name (or an explicit value)")
        if self.endpoint is Endpoint.CLIENT and (self.dns or self.san):
            raise ValueError("got dns/san with endpoint client, expected them only for server certificates")

    _check_x509_ca = _check_x509

    @property
    def generated(self) -> bool:
        """True when the CAS generates the value (not explicit, not imported)."""
        return self.value is None and self.import_ is None and self.kind is not SecretKind.PUBLIC_KEY


# --------------------------------------------------------------------------------------------
# Volumes and images ("Volumes", "Images")
# --------------------------------------------------------------------------------------------


class UpdatePolicy(enum.StrEnum):
    ROLLBACK_PROTECTED = "rollback_protected"
    EPHEMERAL = "ephemeral"
    NO_ROLLBACK_PROTECTION = "no_rollback_protection"


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
    """An encrypted volume; its key is generated by the CAS unless ``fspf_key``/``fspf_tag``."""

    name: Name
    fspf_key: FspfKey | None = None
    fspf_tag: Hex16 | None = None
    export: Annotated[tuple[VolumeExport, ...], BeforeValidator(_one_or_many)] = ()
    import_: VolumeImport | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _checks(self) -> Volume:
        if (self.fspf_key is None) != (self.fspf_tag is None):
            raise ValueError("got only one of fspf_key/fspf_tag, expected both or neither")
        if self.import_ is not None and (self.fspf_key is not None or self.export):
            raise ValueError("got fspf_key/fspf_tag/export on an imported volume, expected none of them")
        return self


class ImageVolume(_Model):
    name: Name
    path: AbsPath
    update_policy: UpdatePolicy | None = None


class InjectionFile(_Model):
    """A file whose placeholders are substituted at start; ``content`` given here, or read from
    the image at ``path`` when omitted."""

    path: AbsPath
    content: Annotated[StrictStr, AfterValidator(_check_placeholder_syntax)] | None = None


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
# Access control ("Access Control"; sconedocs "Governance" > "Policy Board")
# --------------------------------------------------------------------------------------------

KEYWORDS = frozenset({"CREATOR", "ANY", "NONE"})
_AT_LEAST = re.compile(r"require-at-least-([0-9]{1,4})")


def _identity(value: str) -> str:
    if not value.strip() or "\x00" in value or len(value) > 16384:
        raise ValueError(
            f"got {short(value)}, expected an identity (key hash, certificate, CREATOR, ANY, NONE)"
        )
    ph.find_placeholders(value)
    return value


Identity = Annotated[StrictStr, AfterValidator(_identity)]


class SignerRule(_Model):
    """``signer: <public key>``: a stakeholder identity whose signature is required."""

    signer: Identity


class RequireAll(_Model):
    require_all: Annotated[tuple[AccessRule, ...], Field(min_length=1)] = Field(alias="require-all")


class RequireAtLeast(_Model):
    """``require-at-least-N: [rules]`` (serialised back to that form)."""

    n: Annotated[StrictInt, Field(ge=1)]
    rules: Annotated[tuple[AccessRule, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _from_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1:
            ((key, rules),) = data.items()
            m = _AT_LEAST.fullmatch(key) if isinstance(key, str) else None
            if m:
                return {"n": int(m.group(1)), "rules": rules}
        return data

    @model_validator(mode="after")
    def _threshold(self) -> RequireAtLeast:
        if self.n > len(self.rules):
            raise ValueError(
                f"got require-at-least-{self.n} of {len(self.rules)} rules, expected N <= {len(self.rules)}"
            )
        return self

    @model_serializer(mode="wrap")
    def _to_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if isinstance(data, dict) and "rules" in data:
            return {f"require-at-least-{self.n}": data["rules"]}
        return data  # type: ignore[no-any-return]


def _rule_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "identity"
    if isinstance(value, SignerRule | RequireAll | RequireAtLeast):
        return {SignerRule: "signer", RequireAll: "require-all", RequireAtLeast: "require-at-least"}[
            type(value)
        ]
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        if key in ("signer", "require-all"):
            return str(key)
        if isinstance(key, str) and _AT_LEAST.fullmatch(key):
            return "require-at-least"
    return None


AccessRule = Annotated[
    Annotated[Identity, Tag("identity")]
    | Annotated[SignerRule, Tag("signer")]
    | Annotated[RequireAll, Tag("require-all")]
    | Annotated[RequireAtLeast, Tag("require-at-least")],
    Discriminator(
        _rule_tag,
        custom_error_type="access_rule",
        custom_error_message=(
            "expected an identity string, {signer: KEY}, {require-all: [...]} or {require-at-least-N: [...]}"
        ),
    ),
]
RequireAll.model_rebuild()
RequireAtLeast.model_rebuild()

AccessList = Annotated[tuple[AccessRule, ...], BeforeValidator(_one_or_many), Field(min_length=1)]


def _rules_have_board(rules: tuple[Any, ...]) -> bool:
    return any(isinstance(r, RequireAll | RequireAtLeast) for r in rules)


class AccessPolicy(_Model):
    """Who may read, update, and create policies in the namespace of this one. ``CREATOR`` is
    the identity that created the policy; ``ANY``/``NONE`` must stand alone; boards
    (``require-all``, ``require-at-least-N``) are allowed in update and create_sessions."""

    read: AccessList = ("CREATOR",)
    update: AccessList = ("CREATOR",)
    create_sessions: AccessList | None = None
    """Defaults to the ``update`` rules."""

    @model_validator(mode="after")
    def _checks(self) -> AccessPolicy:
        for op in ("read", "update", "create_sessions"):
            rules = getattr(self, op)
            if rules is None:
                continue
            for word in ("ANY", "NONE"):
                if word in rules and len(rules) > 1:
                    raise ValueError(f"got {word} with other entries in {op}, expected {word} alone")
        if _rules_have_board(self.read):
            raise ValueError(
                "got a require-all/require-at-least rule in read, expected boards only in update"
            )
        return self

    @property
    def effective_create_sessions(self) -> tuple[Any, ...]:
        return self.create_sessions if self.create_sessions is not None else self.update


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
    SIMULATION = "simulation"
    """confide: accept evidence from the development simulator."""


def _advisory(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(f"got {short(value)}, expected an advisory ID such as INTEL-SA-00161")
    return value.upper()


AdvisoryId = Annotated[StrictStr, AfterValidator(_advisory)]


def _sorted_unique(value: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(sorted(set(value)))


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
    def _references(self) -> Policy:
        problems = list(_reference_problems(self))
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


def _duplicates(path: str, names: list[str]) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            yield Problem((path, i, "name"), f"got duplicate name {n!r}, expected unique names")
        seen.add(n)


def _placeholder_problems(
    text: str, path: Path, context: ph.Context, kinds: dict[str, SecretKind | None]
) -> Iterator[Problem]:
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
            ph.encoding_for(kinds[p.name], p.format, context)
        except ValueError as exc:
            yield Problem(path, f"{p}: {exc}")


def _reference_problems(policy: Policy) -> Iterator[Problem]:
    """Cross-references: names unique and defined, placeholders valid, issuers and keys right."""
    yield from _duplicates("services", [s.name for s in policy.services])
    yield from _duplicates("secrets", [s.name for s in policy.secrets])
    yield from _duplicates("volumes", [v.name for v in policy.volumes])
    yield from _duplicates("images", [i.name for i in policy.images])

    kinds: dict[str, SecretKind | None] = {s.name: s.kind for s in policy.secrets}
    images = {i.name for i in policy.images}
    volumes = {v.name for v in policy.volumes}
    sec = policy.security.attestation

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

    for i, svc in enumerate(policy.services):
        base: Path = ("services", i)
        if svc.image_name is not None and svc.image_name not in images:
            yield Problem((*base, "image_name"), f"got {svc.image_name!r}, expected the name of an image")
        for j, arg in enumerate(svc.command or ()):
            yield from _placeholder_problems(arg, (*base, "command", j), ph.Context.COMMAND, kinds)
        for k, v in svc.environment.items():
            yield from _placeholder_problems(v, (*base, "environment", k), ph.Context.ENVIRONMENT, kinds)
        if svc.fspf_key is not None and svc.fspf_key.startswith("$$"):
            yield from _placeholder_problems(svc.fspf_key, (*base, "fspf_key"), ph.Context.FSPF_KEY, kinds)
        for j, variant in enumerate(svc.variants()):
            if variant.platform is Platform.SIMULATED and not sec.tolerates(Tolerance.SIMULATION):
                yield Problem(
                    (*base, "attestation", j),
                    "got a sim variant, expected security.attestation.tolerate to include 'simulation'",
                )

    for i, vol in enumerate(policy.volumes):
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
        for j, f in enumerate(img.injection_files):
            if f.content is not None:
                yield from _placeholder_problems(
                    f.content, ("images", i, "injection_files", j, "content"), ph.Context.FILE, kinds
                )

    ap = policy.access_policy
    for op in ("read", "update", "create_sessions"):
        rules = getattr(ap, op)
        for j, rule in enumerate(rules or ()):
            yield from _access_rule_problems(rule, ("access_policy", op, j), kinds)


def _access_rule_problems(rule: Any, path: Path, kinds: dict[str, SecretKind | None]) -> Iterator[Problem]:
    if isinstance(rule, str):
        yield from _placeholder_problems(rule, path, ph.Context.ACCESS_POLICY, kinds)
    elif isinstance(rule, SignerRule):
        yield from _placeholder_problems(rule.signer, (*path, "signer"), ph.Context.ACCESS_POLICY, kinds)
    elif isinstance(rule, RequireAll):
        for k, r in enumerate(rule.require_all):
            yield from _access_rule_problems(r, (*path, "require-all", k), kinds)
    elif isinstance(rule, RequireAtLeast):
        for k, r in enumerate(rule.rules):
            yield from _access_rule_problems(r, (*path, f"require-at-least-{rule.n}", k), kinds)

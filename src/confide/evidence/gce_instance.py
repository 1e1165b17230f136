"""Google's Compute Engine instance extension of vTPM AK/EK certificates
(OID 1.3.6.1.4.1.11129.2.1.21, "cloudComputeInstanceIdentifier").

Structure, as go-tpm-tools (``server/verify.go``, ``gceInstanceInfo``) and go-attestation
(``GCEInstanceID``, ``GCESecurityProperties``) decode it::

    CloudComputeInstanceIdentifier ::= SEQUENCE {
      zone                UTF8String,
      projectNumber       INTEGER,
      projectId           UTF8String,
      instanceId          INTEGER,
      instanceName        UTF8String,
      securityProperties  [0] EXPLICIT SEQUENCE {
        securityVersion              [0] EXPLICIT INTEGER OPTIONAL,
        isProduction                 [1] EXPLICIT BOOLEAN OPTIONAL,
        tpmDataAlwaysEncrypted       [2] EXPLICIT BOOLEAN OPTIONAL,
        suspendResumeAlwaysDisabled  [3] EXPLICIT BOOLEAN OPTIONAL,
        vmtdAlwaysDisabled           [4] EXPLICIT BOOLEAN OPTIONAL,
        alwaysInYarn                 [5] EXPLICIT BOOLEAN OPTIONAL
      } OPTIONAL
    }

Absent booleans are false and an absent security version is unknown (``None``), as in
go-attestation. Integers must be non-negative (go-tpm-tools refuses negative ones). The
extension sits inside a Google-signed certificate, so later Google additions are tolerated
rather than refused: security properties with context tags above [5] are reported by tag
number in ``unknown_security_fields``, and elements after ``securityProperties`` are
counted in ``trailing_elements``. Everything else malformed raises
:class:`~confide.errors.ParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence import _der as der

__all__ = [
    "GCE_INSTANCE_EXTENSION_OID",
    "GceCertInstance",
    "GceSecurityProperties",
    "parse_gce_instance_extension",
]

GCE_INSTANCE_EXTENSION_OID = "1.3.6.1.4.1.11129.2.1.21"
MAX_EXTENSION_SIZE = 4096
MAX_STRING_BYTES = 1024
_UINT64_BYTES = 9  # a uint64 with its high bit set needs a leading zero octet
_STRUCTURE = "GCE instance extension"
_BOOLEAN_FIELDS = (
    (1, "is_production"),
    (2, "tpm_data_always_encrypted"),
    (3, "suspend_resume_always_disabled"),
    (4, "vmtd_always_disabled"),
    (5, "always_in_yarn"),
)
_MAX_CONTEXT_TAG = 30  # low-tag-number form: [0]..[30]


@dataclass(frozen=True, slots=True)
class GceSecurityProperties:
    security_version: int | None = None
    is_production: bool = False
    tpm_data_always_encrypted: bool = False
    suspend_resume_always_disabled: bool = False
    vmtd_always_disabled: bool = False
    always_in_yarn: bool = False
    unknown_security_fields: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GceCertInstance:
    zone: str
    project_number: int
    project_id: str
    instance_id: int
    instance_name: str
    security: GceSecurityProperties | None
    trailing_elements: int = 0


def _err(message: str, offset: int, field: str | None = None) -> ParseError:
    return ParseError(message, structure=_STRUCTURE, field=field, offset=offset)


def _security_properties(data: bytes, start: int, end: int) -> GceSecurityProperties:
    inner = der.children(data, start, end, _STRUCTURE)
    if len(inner) != 1 or inner[0][0] != der.TAG_SEQUENCE:
        raise _err("expected [0] EXPLICIT SEQUENCE", start, "security_properties")
    _, ss, se = inner[0]
    values: dict[str, int | bool] = {}
    unknown: list[int] = []
    last = -1
    for tag, vs, ve in der.children(data, ss, se, _STRUCTURE):
        number = tag & 0x1F
        if tag & 0xE0 != 0xA0 or number > _MAX_CONTEXT_TAG:
            raise _err(
                f"got tag {tag:#x}, expected a context-specific [n] EXPLICIT", vs, "security_properties"
            )
        if number <= last:
            raise _err(
                f"field [{number}] out of order or repeated (DER: ascending tags)", vs, "security_properties"
            )
        last = number
        wrapped = der.children(data, vs, ve, _STRUCTURE)
        if len(wrapped) != 1:
            raise _err(f"[{number}] EXPLICIT must wrap exactly one element", vs, "security_properties")
        itag, is_, ie = wrapped[0]
        if number == 0:
            values["security_version"] = der.der_unsigned(
                data, itag, is_, ie, _STRUCTURE, "security_version", _UINT64_BYTES
            )
        elif number <= len(_BOOLEAN_FIELDS):
            name = _BOOLEAN_FIELDS[number - 1][1]
            values[name] = der.der_boolean(data, itag, is_, ie, _STRUCTURE, name)
        else:
            unknown.append(number)
    version = values.get("security_version")
    return GceSecurityProperties(
        security_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        is_production=bool(values.get("is_production", False)),
        tpm_data_always_encrypted=bool(values.get("tpm_data_always_encrypted", False)),
        suspend_resume_always_disabled=bool(values.get("suspend_resume_always_disabled", False)),
        vmtd_always_disabled=bool(values.get("vmtd_always_disabled", False)),
        always_in_yarn=bool(values.get("always_in_yarn", False)),
        unknown_security_fields=tuple(unknown),
    )


def parse_gce_instance_extension(data: bytes) -> GceCertInstance:
    """Parse the extension's DER value (the extnValue contents)."""
    if len(data) > MAX_EXTENSION_SIZE:
        raise _err(f"got {len(data)} bytes, expected at most {MAX_EXTENSION_SIZE}", 0)
    tag, start, end = der.tlv(data, 0, _STRUCTURE)
    if tag != der.TAG_SEQUENCE or end != len(data):
        raise _err("expected one top-level SEQUENCE", 0)
    elements = der.children(data, start, end, _STRUCTURE)
    if len(elements) < 5:
        raise _err(f"got {len(elements)} elements, expected at least 5", start)

    def text(i: int, field: str) -> str:
        return der.der_utf8(data, *elements[i], _STRUCTURE, field, MAX_STRING_BYTES)

    def number(i: int, field: str) -> int:
        return der.der_unsigned(data, *elements[i], _STRUCTURE, field, _UINT64_BYTES)

    security: GceSecurityProperties | None = None
    rest = elements[5:]
    if rest and rest[0][0] == der.context_tag(0):
        security = _security_properties(data, rest[0][1], rest[0][2])
        rest = rest[1:]
    return GceCertInstance(
        zone=text(0, "zone"),
        project_number=number(1, "project_number"),
        project_id=text(2, "project_id"),
        instance_id=number(3, "instance_id"),
        instance_name=text(4, "instance_name"),
        security=security,
        trailing_elements=len(rest),
    )

"""Azure confidential VM evidence: the paravisor's HCL report and trustee's evidence JSON.

On an Azure SEV-SNP or TDX confidential VM the guest sees a vTPM run by the paravisor (the
"HCL", at VMPL0 / in the TD's L1). The paravisor writes an *HCL report* into TPM NV index
0x01400001: a hardware report whose REPORT_DATA commits to a JSON document ("runtime claims",
the IGVM request's variable data) that holds the vTPM's attestation key. The AK then signs
ordinary TPM2_Quotes. Layout (kinvolk/azure-cvm-tooling ``az-cvm-vtpm/src/hcl``, the IGVM
``IGVM_ATTEST`` request of microsoft/openvmm; all integers little-endian)::

    0x000  ATTESTATION_HEADER   signature "HCLA" | version u32 | report_size u32
                                | request_type u32 | status u32 | reserved u32[3]
    0x020  hw_report[1184]      SNP ATTESTATION_REPORT (1184 bytes) or TDX TDREPORT_STRUCT
                                (1024 bytes, then 160 bytes of padding)
    0x4C0  IGVM_REQUEST_DATA    data_size u32 | version u32 | report_type u32 (2 SNP, 4 TDX)
                                | report_data_hash_type u32 (1 SHA-256, 2 SHA-384, 3 SHA-512)
                                | variable_data_size u32
    0x4D4  variable_data        runtime-claims JSON: {"keys": [JWK "HCLAkPub", "HCLEkPub"],
                                "vm-configuration": {...}, "user-data": "<hex>"}

Only ``variable_data`` is authenticated (its digest is the first bytes of the hardware report's
REPORT_DATA); the header and the request data are not, so this module checks that they are
self-consistent (sizes add up, known versions and types) and nothing here is trusted until
:mod:`confide.verify.azure_vtpm` has checked the digest.

The evidence container is trustee's (``deps/verifier/src/az_{snp,tdx}_vtpm``, ``compat.rs``):

* v0 (no ``version``): byte arrays as JSON lists of integers. SNP: ``{"quote": {"signature",
  "message", "pcrs"}, "report", "vcek": PEM}``; TDX: ``{"tpm_quote": ..., "hcl_report",
  "td_quote"}``.
* v1 / v2 (SNP) and v1 (TDX): ``{"version", "tpm_quote": {"signature": hex, "message": hex,
  "pcrs": [hex, ...]}, "hcl_report": base64url, "vcek": base64url DER | "td_quote": base64url}``.
  v2 means the runtime claims' ``user-data`` carries the verifier's report data.

Every input here is hostile: sizes are bounded before decoding, duplicate JSON keys, unknown
keys, non-strict hex/base64 and JSON numbers other than integers are refused, and every error is
a :class:`~confide.errors.ParseError`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from confide import jsonstrict
from confide.errors import ParseError
from confide.evidence._reader import Reader

__all__ = [
    "HCL_NV_INDEX",
    "HCL_SIGNATURE",
    "HW_REPORT_FIELD_SIZE",
    "MAX_EVIDENCE_SIZE",
    "SNP_REPORT_SIZE",
    "TD_REPORT_SIZE",
    "VAR_DATA_OFFSET",
    "AzureVtpmEvidence",
    "HclHashType",
    "HclReport",
    "HclReportType",
    "RuntimeClaims",
    "TdReportStruct",
    "TpmQuoteBlob",
    "parse_evidence",
    "parse_tpm_quote_json",
]

_STRUCTURE = "HCL report"

HCL_NV_INDEX = 0x01400001  # the vTPM NV index the paravisor writes the HCL report to
HCL_SIGNATURE = b"HCLA"
HEADER_SIZE = 32
KNOWN_HEADER_VERSIONS = (1, 2)  # 1 seen on SNP CVMs, 2 on TDX CVMs
HW_REPORT_FIELD_SIZE = 1184  # max(SNP report, TDREPORT): the field is sized for the larger
SNP_REPORT_SIZE = 1184  # AMD SEV-SNP ABI, Table 23 (0x4A0)
TD_REPORT_SIZE = 1024  # TDX Module ABI, TDREPORT_STRUCT
REQUEST_DATA_OFFSET = HEADER_SIZE + HW_REPORT_FIELD_SIZE  # 0x4C0
REQUEST_DATA_SIZE = 20
VAR_DATA_OFFSET = REQUEST_DATA_OFFSET + REQUEST_DATA_SIZE  # 0x4D4
IGVM_REQUEST_VERSION = 1
MAX_HCL_REPORT_SIZE = 64 * 1024  # the NV index holds 2600 bytes; anything far larger is not one
MAX_EVIDENCE_SIZE = 1 << 20
MAX_PCRS = 24
PCR_SHA256_SIZE = 32
AK_KEY_ID = "HCLAkPub"
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096


class HclReportType(enum.IntEnum):
    """IGVM_REQUEST_DATA.report_type."""

    SNP = 2
    TDX = 4


class HclHashType(enum.IntEnum):
    """IGVM_REQUEST_DATA.report_data_hash_type: the digest of the variable data in REPORT_DATA."""

    SHA256 = 1
    SHA384 = 2
    SHA512 = 3

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.name.lower(), data).digest()


@dataclass(frozen=True, slots=True)
class HclReport:
    header_version: int
    report_size: int
    request_type: int
    status: int
    report_type: HclReportType
    hash_type: HclHashType
    request_version: int
    hw_report: bytes
    """The SNP report (1184 bytes) or the TDREPORT_STRUCT (1024 bytes)."""
    var_data: bytes
    raw: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> HclReport:
        if len(data) > MAX_HCL_REPORT_SIZE:
            raise ParseError(
                f"got {len(data)} bytes, expected at most {MAX_HCL_REPORT_SIZE}", structure=_STRUCTURE
            )
        r = Reader(data, _STRUCTURE)
        signature = r.take(4, "header.signature")
        if signature != HCL_SIGNATURE:
            raise r.error(
                f"got {signature.hex()}, expected {HCL_SIGNATURE.hex()} ('HCLA')", "header.signature", 0
            )
        header_version = r.u32("header.version")
        if header_version not in KNOWN_HEADER_VERSIONS:
            raise r.error(
                f"got {header_version}, expected one of {KNOWN_HEADER_VERSIONS}", "header.version", 4
            )
        report_size = r.u32("header.report_size")
        request_type = r.u32("header.request_type")
        status = r.u32("header.status")
        r.take(12, "header.reserved")
        hw_field = r.take(HW_REPORT_FIELD_SIZE, "hw_report")
        data_size = r.u32("request.data_size")
        request_version = r.u32("request.version")
        raw_type = r.u32("request.report_type")
        raw_hash = r.u32("request.report_data_hash_type")
        var_size = r.u32("request.variable_data_size")
        if request_version != IGVM_REQUEST_VERSION:
            raise r.error(
                f"got {request_version}, expected {IGVM_REQUEST_VERSION}",
                "request.version",
                REQUEST_DATA_OFFSET + 4,
            )
        try:
            report_type = HclReportType(raw_type)
        except ValueError:
            raise r.error(
                f"got {raw_type}, expected 2 (SEV-SNP) or 4 (TDX)",
                "request.report_type",
                REQUEST_DATA_OFFSET + 8,
            ) from None
        try:
            hash_type = HclHashType(raw_hash)
        except ValueError:
            raise r.error(
                f"got {raw_hash}, expected 1 (SHA-256), 2 (SHA-384) or 3 (SHA-512)",
                "request.report_data_hash_type",
                REQUEST_DATA_OFFSET + 12,
            ) from None
        if data_size != REQUEST_DATA_SIZE + var_size:
            raise r.error(
                f"got {data_size}, expected {REQUEST_DATA_SIZE + var_size} (20 + variable_data_size)",
                "request.data_size",
                REQUEST_DATA_OFFSET,
            )
        if report_size != VAR_DATA_OFFSET + var_size:
            raise r.error(
                f"got {report_size}, expected {VAR_DATA_OFFSET + var_size} (0x4D4 + variable_data_size)",
                "header.report_size",
                8,
            )
        var_data = r.take(var_size, "variable_data")
        # Bytes after report_size are the NV index's padding: not part of the report, not used.
        size = SNP_REPORT_SIZE if report_type is HclReportType.SNP else TD_REPORT_SIZE
        return cls(
            header_version=header_version,
            report_size=report_size,
            request_type=request_type,
            status=status,
            report_type=report_type,
            hash_type=hash_type,
            request_version=request_version,
            hw_report=hw_field[:size],
            var_data=var_data,
            raw=data,
        )

    def var_data_digest(self) -> bytes:
        """The digest (of :attr:`hash_type`) that the hardware report's REPORT_DATA must start with."""
        return self.hash_type.digest(self.var_data)

    def runtime_claims(self) -> RuntimeClaims:
        return RuntimeClaims.from_json(self.var_data)


# ---------------------------------------------------------------------------------------------
# Runtime claims (the variable data)


def _load_json(data: bytes, structure: str) -> Any:
    # confide.jsonstrict: duplicate keys, NaN/Infinity and non-integer numbers refused
    return jsonstrict.loads(data, structure=structure, floats=False)


_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _b64url(value: object, structure: str, field: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value.rstrip("=")) % 4 == 1:
        raise ParseError("expected base64url text", structure=structure, field=field)
    text = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ParseError("expected base64url text", structure=structure, field=field) from None


def _hex(value: object, structure: str, field: str) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ParseError("expected an even number of hex digits", structure=structure, field=field)
    return bytes.fromhex(value)


def _byte_list(value: object, structure: str, field: str) -> bytes:
    if not isinstance(value, list) or not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise ParseError("expected a list of integers 0..255", structure=structure, field=field)
    return bytes(value)


_CLAIMS = "HCL runtime claims"


def _claim_value(value: Any, field: str) -> Any:
    """A JSON value as a claim (integers, strings, booleans, null, lists and objects of them)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, list):
        return [_claim_value(v, field) for v in value]
    if isinstance(value, dict):
        return {k: _claim_value(v, field) for k, v in value.items()}
    raise ParseError(f"unexpected value of type {type(value).__name__}", structure=_CLAIMS, field=field)


@dataclass(frozen=True, slots=True)
class RuntimeClaims:
    """The paravisor's runtime claims: the vTPM's AK (JWK ``HCLAkPub``) and VM facts."""

    ak_public_key: rsa.RSAPublicKey
    key_ids: tuple[str, ...]
    vm_configuration: Mapping[str, Any]
    user_data: bytes | None
    document: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: bytes) -> RuntimeClaims:
        doc = _load_json(data, _CLAIMS)
        if not isinstance(doc, dict):
            raise ParseError("expected a JSON object", structure=_CLAIMS)
        keys = doc.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ParseError("expected a list of JWK objects", structure=_CLAIMS, field="keys")
        kids = tuple(str(k.get("kid")) for k in keys)
        aks = [k for k in keys if k.get("kid") == AK_KEY_ID]
        if len(aks) != 1:
            raise ParseError(
                f"got {len(aks)} keys with kid {AK_KEY_ID!r}, expected 1", structure=_CLAIMS, field="keys"
            )
        ak = _rsa_jwk(aks[0])
        config = doc.get("vm-configuration", {})
        if not isinstance(config, dict):
            raise ParseError("expected a JSON object", structure=_CLAIMS, field="vm-configuration")
        user_data: bytes | None = None
        if "user-data" in doc:
            user_data = _hex(doc["user-data"], _CLAIMS, "user-data")
        return cls(
            ak_public_key=ak,
            key_ids=kids,
            vm_configuration=MappingProxyType(_claim_value(config, "vm-configuration")),
            user_data=user_data,
            document=MappingProxyType(doc),
        )


def _rsa_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """RFC 7518 §6.3.1: an RSA public JWK (``n``, ``e`` as unpadded base64url big-endian)."""
    field = f"keys[{AK_KEY_ID}]"
    if jwk.get("kty") != "RSA":
        raise ParseError(f"got kty {jwk.get('kty')!r}, expected 'RSA'", structure=_CLAIMS, field=field)
    n = int.from_bytes(_b64url(jwk.get("n"), _CLAIMS, f"{field}.n"), "big")
    e = int.from_bytes(_b64url(jwk.get("e"), _CLAIMS, f"{field}.e"), "big")
    if not RSA_MIN_BITS <= n.bit_length() <= RSA_MAX_BITS:
        raise ParseError(
            f"got a {n.bit_length()}-bit modulus, expected {RSA_MIN_BITS}..{RSA_MAX_BITS} bits",
            structure=_CLAIMS,
            field=f"{field}.n",
        )
    if e < 3 or e % 2 == 0 or e.bit_length() > 32:
        raise ParseError(
            f"got exponent {e}, expected an odd value 3..2^32-1", structure=_CLAIMS, field=f"{field}.e"
        )
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ParseError(f"not an RSA public key: {exc}", structure=_CLAIMS, field=field) from None


# ---------------------------------------------------------------------------------------------
# The evidence container


@dataclass(frozen=True, slots=True)
class TpmQuoteBlob:
    """A TPM2_Quote as trustee ships it: TPMS_ATTEST bytes, TPMT_SIGNATURE bytes, and the
    SHA-256 PCR values in index order (PCR 0 first)."""

    message: bytes
    signature: bytes
    pcrs: tuple[bytes, ...]


_QUOTE = "TPM quote JSON"


def _check_keys(obj: Mapping[str, Any], allowed: set[str], required: set[str], structure: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ParseError(f"unknown keys {unknown}", structure=structure)
    missing = sorted(required - set(obj))
    if missing:
        raise ParseError(f"missing keys {missing}", structure=structure)


def _quote_blob(obj: object, *, as_bytes_lists: bool, structure: str = _QUOTE) -> TpmQuoteBlob:
    if not isinstance(obj, dict):
        raise ParseError("expected a JSON object", structure=structure)
    _check_keys(obj, {"signature", "message", "pcrs"}, {"signature", "message", "pcrs"}, structure)
    conv = _byte_list if as_bytes_lists else _hex
    message = conv(obj["message"], structure, "message")
    signature = conv(obj["signature"], structure, "signature")
    raw_pcrs = obj["pcrs"]
    if not isinstance(raw_pcrs, list) or not 1 <= len(raw_pcrs) <= MAX_PCRS:
        raise ParseError(f"expected a list of 1..{MAX_PCRS} PCR values", structure=structure, field="pcrs")
    pcrs = tuple(conv(p, structure, f"pcrs[{i}]") for i, p in enumerate(raw_pcrs))
    for i, p in enumerate(pcrs):
        if len(p) != PCR_SHA256_SIZE:
            raise ParseError(
                f"got {len(p)} bytes, expected {PCR_SHA256_SIZE}", structure=structure, field=f"pcrs[{i}]"
            )
    if not message or not signature:
        raise ParseError("empty message or signature", structure=structure)
    return TpmQuoteBlob(message=message, signature=signature, pcrs=pcrs)


def parse_tpm_quote_json(data: bytes) -> TpmQuoteBlob:
    """trustee's ``tpm-quote-v1.json``: ``{"signature": hex, "message": hex, "pcrs": [hex]}``."""
    if len(data) > MAX_EVIDENCE_SIZE:
        raise ParseError(f"got {len(data)} bytes, expected at most {MAX_EVIDENCE_SIZE}", structure=_QUOTE)
    return _quote_blob(_load_json(data, _QUOTE), as_bytes_lists=False)


@dataclass(frozen=True, slots=True)
class AzureVtpmEvidence:
    """One Azure vTPM evidence container (see the module docstring)."""

    version: int
    hcl_report: HclReport
    tpm_quote: TpmQuoteBlob
    vcek: bytes | None = None
    """SEV-SNP: the VCEK, DER (v1/v2) or PEM text (v0; may hold VCEK, ASK, ARK)."""
    td_quote: bytes | None = None
    """TDX: the DCAP quote over the HCL's TD report."""
    raw: bytes = b""
    """The container's bytes as given (its SHA-256 is the evidence digest)."""


_SNP_VERSIONS = (0, 1, 2)
_TDX_VERSIONS = (0, 1)


def parse_evidence(data: bytes, kind: HclReportType) -> AzureVtpmEvidence:
    """Parse a trustee ``az-snp-vtpm`` (``kind`` SNP) or ``az-tdx-vtpm`` (TDX) evidence JSON."""
    structure = f"Azure {'SEV-SNP' if kind is HclReportType.SNP else 'TDX'} vTPM evidence"
    if len(data) > MAX_EVIDENCE_SIZE:
        raise ParseError(f"got {len(data)} bytes, expected at most {MAX_EVIDENCE_SIZE}", structure=structure)
    doc = _load_json(data, structure)
    if not isinstance(doc, dict):
        raise ParseError("expected a JSON object", structure=structure)
    version = doc.get("version", 0)
    allowed = _SNP_VERSIONS if kind is HclReportType.SNP else _TDX_VERSIONS
    if "version" in doc and (type(version) is not int or version not in allowed[1:]):
        raise ParseError(
            f"got {version!r}, expected one of {allowed[1:]}", structure=structure, field="version"
        )
    vcek: bytes | None = None
    td_quote: bytes | None = None
    if version == 0:
        if kind is HclReportType.SNP:
            _check_keys(doc, {"quote", "report", "vcek"}, {"quote", "report", "vcek"}, structure)
            quote = _quote_blob(doc["quote"], as_bytes_lists=True)
            hcl_raw = _byte_list(doc["report"], structure, "report")
            if not isinstance(doc["vcek"], str):
                raise ParseError("expected PEM text", structure=structure, field="vcek")
            vcek = doc["vcek"].encode("utf-8")
        else:
            _check_keys(
                doc,
                {"tpm_quote", "hcl_report", "td_quote"},
                {"tpm_quote", "hcl_report", "td_quote"},
                structure,
            )
            quote = _quote_blob(doc["tpm_quote"], as_bytes_lists=True)
            hcl_raw = _byte_list(doc["hcl_report"], structure, "hcl_report")
            td_quote = _byte_list(doc["td_quote"], structure, "td_quote")
    else:
        extra = "vcek" if kind is HclReportType.SNP else "td_quote"
        keys = {"version", "tpm_quote", "hcl_report", extra}
        _check_keys(doc, keys, keys, structure)
        quote = _quote_blob(doc["tpm_quote"], as_bytes_lists=False)
        hcl_raw = _b64url(doc["hcl_report"], structure, "hcl_report")
        blob = _b64url(doc[extra], structure, extra)
        if kind is HclReportType.SNP:
            vcek = blob
        else:
            td_quote = blob
    hcl = HclReport.from_bytes(hcl_raw)
    if hcl.report_type is not kind:
        raise ParseError(
            f"the HCL report holds a {hcl.report_type.name} report, expected {kind.name}",
            structure=_STRUCTURE,
            field="request.report_type",
            offset=REQUEST_DATA_OFFSET + 8,
        )
    return AzureVtpmEvidence(
        version=version, hcl_report=hcl, tpm_quote=quote, vcek=vcek, td_quote=td_quote, raw=data
    )


# ---------------------------------------------------------------------------------------------
# TDX: the TDREPORT_STRUCT inside the HCL report

_TDREPORT = "TDREPORT_STRUCT"


@dataclass(frozen=True, slots=True)
class TdReportStruct:
    """Intel TDX Module ABI, TDREPORT_STRUCT (1024 bytes): REPORTMACSTRUCT (256) ‖ TEE_TCB_INFO
    (239) ‖ reserved (17) ‖ TDINFO_STRUCT (512). The MAC is only checkable on the platform; the
    fields are compared with the body of the DCAP quote, which is signed."""

    report_type: bytes
    cpu_svn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_info: bytes
    td_info: bytes
    # TEE_TCB_INFO
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    # TDINFO_STRUCT
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    servtd_hash: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, base: int = HEADER_SIZE) -> TdReportStruct:
        r = Reader(data, _TDREPORT, base=base)
        report_type = r.take(4, "reportmacstruct.report_type")
        r.take(12, "reportmacstruct.reserved1")
        cpu_svn = r.take(16, "reportmacstruct.cpusvn")
        tee_tcb_info_hash = r.take(48, "reportmacstruct.tee_tcb_info_hash")
        tee_info_hash = r.take(48, "reportmacstruct.tee_info_hash")
        report_data = r.take(64, "reportmacstruct.report_data")
        r.take(32, "reportmacstruct.reserved2")
        mac = r.take(32, "reportmacstruct.mac")
        tcb_at = r.pos
        tee_tcb_info = r.take(239, "tee_tcb_info")
        r.take(17, "reserved")
        td_info = r.take(512, "tdinfo")
        r.expect_end()
        t = Reader(tee_tcb_info, _TDREPORT, base=base + tcb_at)
        t.take(8, "tee_tcb_info.valid")
        tee_tcb_svn = t.take(16, "tee_tcb_info.tee_tcb_svn")
        mr_seam = t.take(48, "tee_tcb_info.mrseam")
        mr_signer_seam = t.take(48, "tee_tcb_info.mrsignerseam")
        seam_attributes = t.take(8, "tee_tcb_info.attributes")
        i = Reader(td_info, _TDREPORT, base=base + 512)
        td_attributes = i.take(8, "tdinfo.attributes")
        xfam = i.take(8, "tdinfo.xfam")
        mr_td = i.take(48, "tdinfo.mrtd")
        mr_config_id = i.take(48, "tdinfo.mrconfigid")
        mr_owner = i.take(48, "tdinfo.mrowner")
        mr_owner_config = i.take(48, "tdinfo.mrownerconfig")
        rtmrs = (
            i.take(48, "tdinfo.rtmr0"),
            i.take(48, "tdinfo.rtmr1"),
            i.take(48, "tdinfo.rtmr2"),
            i.take(48, "tdinfo.rtmr3"),
        )
        servtd_hash = i.take(48, "tdinfo.servtd_hash")
        return cls(
            report_type=report_type,
            cpu_svn=cpu_svn,
            tee_tcb_info_hash=tee_tcb_info_hash,
            tee_info_hash=tee_info_hash,
            report_data=report_data,
            mac=mac,
            tee_tcb_info=tee_tcb_info,
            td_info=td_info,
            tee_tcb_svn=tee_tcb_svn,
            mr_seam=mr_seam,
            mr_signer_seam=mr_signer_seam,
            seam_attributes=seam_attributes,
            td_attributes=td_attributes,
            xfam=xfam,
            mr_td=mr_td,
            mr_config_id=mr_config_id,
            mr_owner=mr_owner,
            mr_owner_config=mr_owner_config,
            rtmrs=rtmrs,
            servtd_hash=servtd_hash,
        )

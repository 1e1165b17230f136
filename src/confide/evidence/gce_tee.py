"""The TEE attestation of a GCE Confidential VM inside go-tpm-tools' ``attest.Attestation``.

Field 8 ``sevsnp.Attestation sev_snp_attestation`` (go-sev-guest ``proto/sevsnp.proto``) and
field 9 ``tdx.QuoteV4 tdx_attestation`` (go-tdx-guest ``proto/tdx.proto``), a oneof. Both are
*structured* protobufs of the hardware's fields, not the raw bytes the hardware signed: this
module reads them strictly (unknown fields, wrong wire types, repeated singular fields, wrong
lengths and out-of-range integers are :class:`ParseError`) and rebuilds the raw structure byte
for byte, so the existing verifiers (``confide.verify.sev_snp``, ``confide.verify.dcap``) check
the vendor's signature over exactly the bytes the hardware produced: a field rebuilt wrong
breaks the signature.

SEV-SNP (AMD SEV-SNP Firmware ABI, publication 56860, Table 23 "ATTESTATION_REPORT
Structure")::

    message Attestation { Report report = 1; CertificateChain certificate_chain = 2;
                          SevProduct product = 3; }
    message Report { uint32 version = 1; uint32 guest_svn = 2; uint64 policy = 3;
      bytes family_id = 4 (16); bytes image_id = 5 (16); uint32 vmpl = 6; uint32 signature_algo = 7;
      uint64 current_tcb = 8; uint64 platform_info = 9; uint32 signer_info = 10;
      bytes report_data = 11 (64); bytes measurement = 12 (48); bytes host_data = 13 (32);
      bytes id_key_digest = 14 (48); bytes author_key_digest = 15 (48); bytes report_id = 16 (32);
      bytes report_id_ma = 17 (32); uint64 reported_tcb = 18; bytes chip_id = 19 (64);
      uint64 committed_tcb = 20; uint32 current_build/minor/major = 21/22/23;
      uint32 committed_build/minor/major = 24/25/26; uint64 launch_tcb = 27;
      bytes signature = 28 (512); uint32 cpuid1eax_fms = 29; uint64 launch_mit_vector = 30;
      uint64 current_mit_vector = 31; }
    message CertificateChain { bytes vcek_cert = 1; bytes ask_cert = 2; bytes ark_cert = 3;
      bytes firmware_cert = 4; bytes vlek_cert = 6; map<string, bytes> extras = 7; }
    message SevProduct { SevProductName name = 1; uint32 stepping = 2;
      google.protobuf.UInt32Value machine_stepping = 3; }

The structured report has no reserved fields: the rebuild writes zeros there (0x04C..0x04F,
0x188/0x18B..0x19F, 0x1EB, 0x1EF, the tail before 0x2A0), as go-sev-guest's
``ReportToAbiBytes`` does. ``cpuid1eax_fms`` is CPUID(1).EAX masked with 0x0FFF0FFF (AMD CPUID
Fn0000_0001_EAX: stepping 3:0, base model 7:4, base family 11:8, extended model 19:16,
extended family 27:20); a v3+ report's CPUID_FAM_ID/MOD_ID/STEP bytes are derived from it, and it
must be the canonical encoding of those (v2: zero).

TDX (Intel TDX DCAP Quoting Library API, Appendix A.3 "Quote Format", quote v4)::

    message QuoteV4 { Header header = 1; TDQuoteBody td_quote_body = 2; uint32 signed_data_size = 3;
                      Ecdsa256BitQuoteV4AuthData signed_data = 4; bytes extra_bytes = 5; }
    message Header { uint32 version = 1; uint32 attestation_key_type = 2; uint32 tee_type = 3;
      bytes qe_svn = 4 (2); bytes pce_svn = 5 (2); bytes qe_vendor_id = 6 (16); bytes user_data = 7 (20); }
    message TDQuoteBody { bytes tee_tcb_svn = 1 (16); mr_seam = 2; mr_signer_seam = 3 (48);
      seam_attributes = 4; td_attributes = 5; xfam = 6 (8); mr_td = 7; mr_config_id = 8;
      mr_owner = 9; mr_owner_config = 10 (48); repeated bytes rtmrs = 11 (4 x 48);
      bytes report_data = 12 (64); }
    message Ecdsa256BitQuoteV4AuthData { bytes signature = 1 (64); bytes ecdsa_attestation_key = 2 (64);
      CertificationData certification_data = 3; }
    message CertificationData { uint32 certificate_data_type = 1 (6); uint32 size = 2;
      QEReportCertificationData qe_report_certification_data = 3; }
    message QEReportCertificationData { EnclaveReport qe_report = 1; bytes qe_report_signature = 2 (64);
      QeAuthData qe_auth_data = 3; PCKCertificateChainData pck_certificate_chain_data = 4; }
    message QeAuthData { uint32 parsed_data_size = 1; bytes data = 2; }
    message PCKCertificateChainData { uint32 certificate_data_type = 1; uint32 size = 2;
      bytes pck_cert_chain = 3; }
    message EnclaveReport { bytes cpu_svn = 1 (16); uint32 misc_select = 2; bytes reserved1 = 3 (28);
      bytes attributes = 4 (16); bytes mr_enclave = 5 (32); bytes reserved2 = 6 (32);
      bytes mr_signer = 7 (32); bytes reserved3 = 8 (96); uint32 isv_prod_id = 9; uint32 isv_svn = 10;
      bytes reserved4 = 11 (60); bytes report_data = 12 (64); }

Every declared size (``signed_data_size``, the certification data's ``size``, ``parsed_data_size``,
the PCK chain's ``size``) must equal the length of what it sizes; ``extra_bytes`` (the quote
buffer's padding, signed by nothing) must be zeros. The rebuilt quote is then
parsed again by ``confide.evidence.dcap.Quote`` (header version 4, TEE type TDX).

:func:`encode_sev_snp_attestation` and :func:`encode_tdx_quote` are the writers (raw bytes to the
structured protobuf, as go-sev-guest ``ReportToProto`` and go-tdx-guest ``QuoteToProto`` do):
the runtime sends them, tests build evidence with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence._protobuf import WIRE_LEN, WIRE_VARINT, Message, encode_field, parse_message
from confide.evidence.dcap import ENCLAVE_REPORT_SIZE, Quote, TdReport, TeeType
from confide.evidence.sev_snp import REPORT_SIZE, VERSION_CPUID, VERSION_MIT_VECTOR, AttestationReport

__all__ = [
    "MAX_CERT_SIZE",
    "GceSnpAttestation",
    "GceTdxAttestation",
    "encode_sev_snp_attestation",
    "encode_tdx_quote",
    "fms_from_cpuid",
    "parse_sev_snp_attestation",
    "parse_tdx_quote",
]

MAX_CERT_SIZE = 16 * 1024
MAX_EXTRAS = 8
MAX_EXTRA_BYTES = 64 * 1024 - 1  # go-tpm-tools pads a TDX quote to its buffer; bounded here
MAX_PCK_CHAIN = 32 * 1024
MAX_QE_AUTH_DATA = 0xFFFF  # a u16 size field
SNP_PRODUCT_NAMES = {0: "unknown", 1: "Milan", 2: "Genoa", 3: "Turin"}  # SevProduct.SevProductName

_SNP = "GCE sev_snp_attestation"
_TDX = "GCE tdx_attestation"

_V = (WIRE_VARINT, False)
_B = (WIRE_LEN, False)

# sevsnp.Report: field number -> (name, kind, size); kind "u32"/"u64" or "bytes" (exact size).
_REPORT_FIELDS: dict[int, tuple[str, str, int]] = {
    1: ("version", "u32", 0),
    2: ("guest_svn", "u32", 0),
    3: ("policy", "u64", 0),
    4: ("family_id", "bytes", 16),
    5: ("image_id", "bytes", 16),
    6: ("vmpl", "u32", 0),
    7: ("signature_algo", "u32", 0),
    8: ("current_tcb", "u64", 0),
    9: ("platform_info", "u64", 0),
    10: ("signer_info", "u32", 0),
    11: ("report_data", "bytes", 64),
    12: ("measurement", "bytes", 48),
    13: ("host_data", "bytes", 32),
    14: ("id_key_digest", "bytes", 48),
    15: ("author_key_digest", "bytes", 48),
    16: ("report_id", "bytes", 32),
    17: ("report_id_ma", "bytes", 32),
    18: ("reported_tcb", "u64", 0),
    19: ("chip_id", "bytes", 64),
    20: ("committed_tcb", "u64", 0),
    21: ("current_build", "u8", 0),
    22: ("current_minor", "u8", 0),
    23: ("current_major", "u8", 0),
    24: ("committed_build", "u8", 0),
    25: ("committed_minor", "u8", 0),
    26: ("committed_major", "u8", 0),
    27: ("launch_tcb", "u64", 0),
    28: ("signature", "bytes", 0x200),
    29: ("cpuid1eax_fms", "u32", 0),
    30: ("launch_mit_vector", "u64", 0),
    31: ("current_mit_vector", "u64", 0),
}
_REPORT = {n: (_B if kind == "bytes" else _V) for n, (_, kind, _) in _REPORT_FIELDS.items()}
_SNP_ATTESTATION = {1: _B, 2: _B, 3: _B}
_CERT_CHAIN = {1: _B, 2: _B, 3: _B, 4: _B, 6: _B, 7: (WIRE_LEN, True)}
_MAP_ENTRY = {1: _B, 2: _B}
_SEV_PRODUCT = {1: _V, 2: _V, 3: _B}
_UINT32_VALUE = {1: _V}

_QUOTE_V4 = {1: _B, 2: _B, 3: _V, 4: _B, 5: _B}
_HEADER = {1: _V, 2: _V, 3: _V, 4: _B, 5: _B, 6: _B, 7: _B}
_BODY_FIELDS = (
    (1, "tee_tcb_svn", 16),
    (2, "mr_seam", 48),
    (3, "mr_signer_seam", 48),
    (4, "seam_attributes", 8),
    (5, "td_attributes", 8),
    (6, "xfam", 8),
    (7, "mr_td", 48),
    (8, "mr_config_id", 48),
    (9, "mr_owner", 48),
    (10, "mr_owner_config", 48),
)
_BODY = {**{n: _B for n, _, _ in _BODY_FIELDS}, 11: (WIRE_LEN, True), 12: _B}
_AUTH_DATA = {1: _B, 2: _B, 3: _B}
_CERT_DATA = {1: _V, 2: _V, 3: _B}
_QE_CERT_DATA = {1: _B, 2: _B, 3: _B, 4: _B}
_QE_AUTH = {1: _V, 2: _B}
_PCK_DATA = {1: _V, 2: _V, 3: _B}
# EnclaveReport as go-tdx-guest splits it: (field, name, kind, size); 384 bytes in all.
_ENCLAVE_FIELDS = (
    (1, "cpu_svn", "bytes", 16),
    (2, "misc_select", "u32", 4),
    (3, "reserved1", "bytes", 28),
    (4, "attributes", "bytes", 16),
    (5, "mr_enclave", "bytes", 32),
    (6, "reserved2", "bytes", 32),
    (7, "mr_signer", "bytes", 32),
    (8, "reserved3", "bytes", 96),
    (9, "isv_prod_id", "u16", 2),
    (10, "isv_svn", "u16", 2),
    (11, "reserved4", "bytes", 60),
    (12, "report_data", "bytes", 64),
)
_ENCLAVE = {n: (_B if kind == "bytes" else _V) for n, _, kind, _ in _ENCLAVE_FIELDS}
assert sum(size for *_, size in _ENCLAVE_FIELDS) == ENCLAVE_REPORT_SIZE

TDX_QUOTE_VERSION = 4
CERT_TYPE_QE_REPORT = 6
RTMR_COUNT = 4

_BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}


def _exact(msg: Message, number: int, size: int, name: str, structure: str) -> bytes:
    value = msg.bytes_(number)
    if len(value) != size:
        raise ParseError(f"got {len(value)} bytes, expected {size}", structure=structure, field=name)
    return value


def _uint(msg: Message, number: int, kind: str, name: str, structure: str) -> int:
    value = msg.uint(number)
    bits = _BITS[kind]
    if value >= 1 << bits:
        raise ParseError(f"got {value}, expected a {bits}-bit value", structure=structure, field=name)
    return value


# -- SEV-SNP ------------------------------------------------------------------------------------


def fms_from_cpuid(eax: int) -> tuple[int, int, int]:
    """(family, model, stepping) of CPUID Fn0000_0001_EAX (AMD's rule: the extended family and
    model count only when the base family is 0xF)."""
    stepping = eax & 0xF
    base_model = eax >> 4 & 0xF
    base_family = eax >> 8 & 0xF
    ext_model = eax >> 16 & 0xF
    ext_family = eax >> 20 & 0xFF
    if base_family == 0xF:
        return base_family + ext_family, ext_model << 4 | base_model, stepping
    return base_family, base_model, stepping


def cpuid_from_fms(family: int, model: int, stepping: int) -> int:
    """The canonical CPUID(1).EAX of (family, model, stepping): the inverse of :func:`fms_from_cpuid`."""
    if family >= 0xF:
        return (family - 0xF) << 20 | (model >> 4) << 16 | 0xF << 8 | (model & 0xF) << 4 | stepping
    return family << 8 | (model & 0xF) << 4 | stepping


@dataclass(frozen=True, slots=True)
class GceSnpAttestation:
    """Field 8, read: the rebuilt raw report and the certificates that came with it (DER as
    sent, ``None`` when empty)."""

    report: bytes
    parsed: AttestationReport
    vcek: bytes | None
    vlek: bytes | None
    ask: bytes | None
    ark: bytes | None
    product: str | None
    extras: tuple[str, ...]


def _cert(msg: Message, number: int, name: str) -> bytes | None:
    value = msg.bytes_(number)
    if len(value) > MAX_CERT_SIZE:
        raise ParseError(
            f"got {len(value)} bytes, expected at most {MAX_CERT_SIZE}",
            structure=f"{_SNP} certificate_chain",
            field=name,
        )
    return value or None


def _rebuild_report(msg: Message) -> bytes:
    s = f"{_SNP} report"
    v: dict[str, int | bytes] = {}
    for number, (name, kind, size) in _REPORT_FIELDS.items():
        v[name] = _exact(msg, number, size, name, s) if kind == "bytes" else _uint(msg, number, kind, name, s)

    def u(name: str, width: int) -> bytes:
        value = v[name]
        assert isinstance(value, int)
        return value.to_bytes(width, "little")

    def b(name: str) -> bytes:
        value = v[name]
        assert isinstance(value, bytes)
        return value

    version = int.from_bytes(u("version", 4), "little")
    fms = int.from_bytes(u("cpuid1eax_fms", 4), "little")
    if version >= VERSION_CPUID:
        family, model, stepping = fms_from_cpuid(fms)
        if family > 0xFF or cpuid_from_fms(family, model, stepping) != fms:
            raise ParseError(
                f"got {fms:#x}, expected the canonical CPUID(1).EAX of a family, model and stepping",
                structure=s,
                field="cpuid1eax_fms",
            )
        cpuid = bytes([family, model, stepping]) + bytes(21)
    elif fms:
        raise ParseError(
            f"got {fms:#x} in a version {version} report, expected 0 (no CPUID fields before v3)",
            structure=s,
            field="cpuid1eax_fms",
        )
    else:
        cpuid = bytes(24)
    if version < VERSION_MIT_VECTOR and (v["launch_mit_vector"] or v["current_mit_vector"]):
        raise ParseError(
            f"mitigation vectors in a version {version} report (they exist from v5)", structure=s
        )
    # Table 23, offset by offset.
    parts = [
        u("version", 4),  # 0x000
        u("guest_svn", 4),  # 0x004
        u("policy", 8),  # 0x008
        b("family_id"),  # 0x010
        b("image_id"),  # 0x020
        u("vmpl", 4),  # 0x030
        u("signature_algo", 4),  # 0x034
        u("current_tcb", 8),  # 0x038
        u("platform_info", 8),  # 0x040
        u("signer_info", 4),  # 0x048
        bytes(4),  # 0x04C reserved
        b("report_data"),  # 0x050
        b("measurement"),  # 0x090
        b("host_data"),  # 0x0C0
        b("id_key_digest"),  # 0x0E0
        b("author_key_digest"),  # 0x110
        b("report_id"),  # 0x140
        b("report_id_ma"),  # 0x160
        u("reported_tcb", 8),  # 0x180
        cpuid,  # 0x188 CPUID_FAM_ID, MOD_ID, STEP (v3+), reserved to 0x19F
        b("chip_id"),  # 0x1A0
        u("committed_tcb", 8),  # 0x1E0
        u("current_build", 1) + u("current_minor", 1) + u("current_major", 1) + bytes(1),  # 0x1E8
        u("committed_build", 1) + u("committed_minor", 1) + u("committed_major", 1) + bytes(1),  # 0x1EC
        u("launch_tcb", 8),  # 0x1F0
    ]
    if version >= VERSION_MIT_VECTOR:
        parts += [u("launch_mit_vector", 8), u("current_mit_vector", 8), bytes(152)]  # 0x1F8, 0x200
    else:
        parts.append(bytes(168))  # 0x1F8 reserved
    parts.append(b("signature"))  # 0x2A0
    raw = b"".join(parts)
    assert len(raw) == REPORT_SIZE
    return raw


def parse_sev_snp_attestation(data: bytes, *, depth: int = 1, base: int = 0) -> GceSnpAttestation:
    """Field 8 (a ``sevsnp.Attestation``), strictly; the report rebuilt and parsed again."""
    top = parse_message(data, _SNP_ATTESTATION, _SNP, depth=depth, base=base, strict=True)
    report_msg = top.message(1, _REPORT, f"{_SNP} report")
    if report_msg is None:
        raise ParseError("missing", structure=_SNP, field="report")
    raw = _rebuild_report(report_msg)
    parsed = AttestationReport.from_bytes(raw)
    chain = top.message(2, _CERT_CHAIN, f"{_SNP} certificate_chain")
    vcek = vlek = ask = ark = None
    extras: list[str] = []
    if chain is not None:
        vcek, ask = _cert(chain, 1, "vcek_cert"), _cert(chain, 2, "ask_cert")
        ark = _cert(chain, 3, "ark_cert")
        _cert(chain, 4, "firmware_cert")
        vlek = _cert(chain, 6, "vlek_cert")
        entries = chain.messages(7, _MAP_ENTRY, f"{_SNP} certificate_chain.extras")
        if len(entries) > MAX_EXTRAS:
            raise ParseError(
                f"got {len(entries)} entries, expected at most {MAX_EXTRAS}",
                structure=f"{_SNP} certificate_chain",
                field="extras",
            )
        for entry in entries:
            key = entry.string(1)
            _cert(entry, 2, f"extras[{key!r}]")
            if key in extras:
                raise ParseError(
                    f"key {key!r} appears twice", structure=f"{_SNP} certificate_chain", field="extras"
                )
            extras.append(key)
    product: str | None = None
    product_msg = top.message(3, _SEV_PRODUCT, f"{_SNP} product")
    if product_msg is not None:
        name = product_msg.uint(1, bits=32)
        if name not in SNP_PRODUCT_NAMES:
            raise ParseError(f"got product {name}, expected 0..3", structure=f"{_SNP} product", field="name")
        _uint(product_msg, 2, "u32", "stepping", f"{_SNP} product")
        stepping = product_msg.message(3, _UINT32_VALUE, f"{_SNP} product.machine_stepping")
        if stepping is not None:
            _uint(stepping, 1, "u32", "machine_stepping", f"{_SNP} product")
        product = SNP_PRODUCT_NAMES[name]
    return GceSnpAttestation(raw, parsed, vcek, vlek, ask, ark, product, tuple(extras))


def encode_sev_snp_attestation(
    report: bytes,
    *,
    vcek: bytes | None = None,
    vlek: bytes | None = None,
    ask: bytes | None = None,
    ark: bytes | None = None,
) -> bytes:
    """A raw ``ATTESTATION_REPORT`` (and certificates, DER) as a ``sevsnp.Attestation``.

    Raises :class:`ParseError` for a report this module could not rebuild byte for byte
    (non-zero reserved bytes): sending it would only fail the signature at the verifier."""
    r = AttestationReport.from_bytes(report)
    fms = 0
    if r.cpuid_fam_id is not None:
        fms = cpuid_from_fms(r.cpuid_fam_id, r.cpuid_mod_id or 0, r.cpuid_step or 0)
    values: dict[str, int | bytes] = {
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": r.policy.raw,
        "family_id": r.family_id,
        "image_id": r.image_id,
        "vmpl": r.vmpl,
        "signature_algo": r.signature_algo,
        "current_tcb": r.current_tcb_raw,
        "platform_info": r.platform_info.raw,
        "signer_info": r.key_info,
        "report_data": r.report_data,
        "measurement": r.measurement,
        "host_data": r.host_data,
        "id_key_digest": r.id_key_digest,
        "author_key_digest": r.author_key_digest,
        "report_id": r.report_id,
        "report_id_ma": r.report_id_ma,
        "reported_tcb": r.reported_tcb_raw,
        "chip_id": r.chip_id,
        "committed_tcb": r.committed_tcb_raw,
        "current_build": r.current_build,
        "current_minor": r.current_minor,
        "current_major": r.current_major,
        "committed_build": r.committed_build,
        "committed_minor": r.committed_minor,
        "committed_major": r.committed_major,
        "launch_tcb": r.launch_tcb_raw,
        "signature": r.signature_r + r.signature_s + r.signature_reserved,
        "cpuid1eax_fms": fms,
        "launch_mit_vector": r.launch_mit_vector or 0,
        "current_mit_vector": r.current_mit_vector or 0,
    }
    body = b""
    for number, (name, _, _) in _REPORT_FIELDS.items():
        value = values[name]
        if value:  # proto3: zero values are not written
            body += encode_field(number, value)
    out = encode_field(1, body)
    chain = b""
    for number, cert in ((1, vcek), (2, ask), (3, ark), (6, vlek)):
        if cert:
            chain += encode_field(number, cert)
    if chain:
        out += encode_field(2, chain)
    rebuilt = parse_sev_snp_attestation(out).report
    if rebuilt != report:
        raise ParseError(
            "the report has non-zero reserved bytes: the structured protobuf cannot carry them",
            structure="SEV-SNP ATTESTATION_REPORT",
        )
    return out


# -- TDX ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GceTdxAttestation:
    """Field 9, read: the rebuilt raw quote v4 and its parse."""

    quote: bytes
    parsed: Quote


def _u16(msg: Message, number: int, name: str, structure: str) -> bytes:
    return _uint(msg, number, "u16", name, structure).to_bytes(2, "little")


def _sized(msg: Message, number: int, actual: int, name: str, structure: str) -> None:
    declared = _uint(msg, number, "u32", name, structure)
    if declared != actual:
        raise ParseError(f"declares {declared} bytes, the data has {actual}", structure=structure, field=name)


def _enclave_report(msg: Message | None, structure: str) -> bytes:
    if msg is None:
        raise ParseError("missing", structure=structure)
    out = b""
    for number, name, kind, size in _ENCLAVE_FIELDS:
        if kind == "bytes":
            out += _exact(msg, number, size, name, structure)
        else:
            out += _uint(msg, number, kind, name, structure).to_bytes(size, "little")
    return out


def _required(msg: Message | None, structure: str) -> Message:
    if msg is None:
        raise ParseError("missing", structure=structure)
    return msg


def parse_tdx_quote(data: bytes, *, depth: int = 1, base: int = 0) -> GceTdxAttestation:
    """Field 9 (a ``tdx.QuoteV4``), strictly; the quote rebuilt and parsed again."""
    top = parse_message(data, _QUOTE_V4, _TDX, depth=depth, base=base, strict=True)
    hs = f"{_TDX} header"
    h = _required(top.message(1, _HEADER, hs), hs)
    version = _uint(h, 1, "u16", "version", hs)
    if version != TDX_QUOTE_VERSION:
        raise ParseError(
            f"got version {version}, expected {TDX_QUOTE_VERSION}", structure=hs, field="version"
        )
    tee_type = _uint(h, 3, "u32", "tee_type", hs)
    if tee_type != TeeType.TDX:
        raise ParseError(f"got TEE type {tee_type:#x}, expected 0x81 (TDX)", structure=hs, field="tee_type")
    header = (
        version.to_bytes(2, "little")
        + _u16(h, 2, "attestation_key_type", hs)
        + tee_type.to_bytes(4, "little")
        + _exact(h, 4, 2, "qe_svn", hs)
        + _exact(h, 5, 2, "pce_svn", hs)
        + _exact(h, 6, 16, "qe_vendor_id", hs)
        + _exact(h, 7, 20, "user_data", hs)
    )
    bs = f"{_TDX} td_quote_body"
    body_msg = _required(top.message(2, _BODY, bs), bs)
    body = b"".join(_exact(body_msg, n, size, name, bs) for n, name, size in _BODY_FIELDS)
    rtmrs = body_msg.repeated_bytes(11)
    if len(rtmrs) != RTMR_COUNT or any(len(r) != 48 for r in rtmrs):
        raise ParseError(
            f"got {len(rtmrs)} RTMRs of {sorted({len(r) for r in rtmrs})} bytes, expected {RTMR_COUNT} of 48",
            structure=bs,
            field="rtmrs",
        )
    body += b"".join(rtmrs) + _exact(body_msg, 12, 64, "report_data", bs)
    ss = f"{_TDX} signed_data"
    sd = _required(top.message(4, _AUTH_DATA, ss), ss)
    cs = f"{ss}.certification_data"
    cd = _required(sd.message(3, _CERT_DATA, cs), cs)
    cert_type = _uint(cd, 1, "u16", "certificate_data_type", cs)
    if cert_type != CERT_TYPE_QE_REPORT:
        raise ParseError(
            f"got {cert_type}, expected {CERT_TYPE_QE_REPORT} (QE report certification data)",
            structure=cs,
            field="certificate_data_type",
        )
    qs = f"{cs}.qe_report_certification_data"
    qe = _required(cd.message(3, _QE_CERT_DATA, qs), qs)
    qe_report = _enclave_report(qe.message(1, _ENCLAVE, f"{qs}.qe_report"), f"{qs}.qe_report")
    qe_sig = _exact(qe, 2, 64, "qe_report_signature", qs)
    aus = f"{qs}.qe_auth_data"
    auth = _required(qe.message(3, _QE_AUTH, aus), aus)
    auth_data = auth.bytes_(2)
    if len(auth_data) > MAX_QE_AUTH_DATA:
        raise ParseError(f"got {len(auth_data)} bytes, expected at most {MAX_QE_AUTH_DATA}", structure=aus)
    _sized(auth, 1, len(auth_data), "parsed_data_size", aus)
    ps = f"{qs}.pck_certificate_chain_data"
    pck = _required(qe.message(4, _PCK_DATA, ps), ps)
    chain = pck.bytes_(3)
    if len(chain) > MAX_PCK_CHAIN:
        raise ParseError(f"got {len(chain)} bytes, expected at most {MAX_PCK_CHAIN}", structure=ps)
    _sized(pck, 2, len(chain), "size", ps)
    pck_type = _uint(pck, 1, "u16", "certificate_data_type", ps)
    qe_cert_data = (
        qe_report
        + qe_sig
        + len(auth_data).to_bytes(2, "little")
        + auth_data
        + pck_type.to_bytes(2, "little")
        + len(chain).to_bytes(4, "little")
        + chain
    )
    _sized(cd, 2, len(qe_cert_data), "size", cs)
    signed = (
        _exact(sd, 1, 64, "signature", ss)
        + _exact(sd, 2, 64, "ecdsa_attestation_key", ss)
        + cert_type.to_bytes(2, "little")
        + len(qe_cert_data).to_bytes(4, "little")
        + qe_cert_data
    )
    _sized(top, 3, len(signed), "signed_data_size", _TDX)
    extra = top.bytes_(5)
    if len(extra) > MAX_EXTRA_BYTES:
        raise ParseError(
            f"got {len(extra)} bytes, expected at most {MAX_EXTRA_BYTES}", structure=_TDX, field="extra_bytes"
        )
    if extra.strip(b"\x00"):
        # Padding of the quote buffer, covered by no signature: anything but zeros is refused
        # rather than carried along unverified.
        raise ParseError("got non-zero bytes, expected zero padding", structure=_TDX, field="extra_bytes")
    raw = header + body + len(signed).to_bytes(4, "little") + signed + extra
    parsed = Quote.from_bytes(raw)
    if not parsed.is_tdx or not isinstance(parsed.report, TdReport) or parsed.report.is_v15:
        raise ParseError("got no TDX quote v4 with a TD report 1.0", structure=_TDX)  # pragma: no cover
    return GceTdxAttestation(raw, parsed)


def encode_tdx_quote(quote: bytes) -> bytes:
    """A raw TDX quote v4 as a ``tdx.QuoteV4`` (what go-tdx-guest ``QuoteToProto`` writes);
    bytes after the signature data go to ``extra_bytes``. Raises :class:`ParseError` for a quote
    that is not a TDX v4 quote with QE report certification data."""
    q = Quote.from_bytes(quote)
    if q.header.version != TDX_QUOTE_VERSION or not isinstance(q.report, TdReport) or q.report.is_v15:
        raise ParseError("got no TDX quote v4 (TD report 1.0)", structure="quote")
    h = q.header

    def fields(pairs: list[tuple[int, int | bytes]]) -> bytes:
        return b"".join(encode_field(n, v) for n, v in pairs if v)

    header = fields(
        [
            (1, h.version),
            (2, h.att_key_type),
            (3, h.tee_type),
            (4, h.reserved1.to_bytes(2, "little")),
            (5, h.reserved2.to_bytes(2, "little")),
            (6, h.qe_vendor_id),
            (7, h.user_data),
        ]
    )
    t = q.report
    body = fields(
        [(n, getattr(t, name)) for n, name, _ in _BODY_FIELDS]
        + [(11, t.rtmr0), (11, t.rtmr1), (11, t.rtmr2), (11, t.rtmr3), (12, t.report_data)]
    )
    sig = q.signature_data
    qe = sig.qe
    raw_qe = qe.qe_report_raw
    enclave = b""
    pos = 0
    for number, _, kind, size in _ENCLAVE_FIELDS:
        chunk = raw_qe[pos : pos + size]
        pos += size
        value: int | bytes = chunk if kind == "bytes" else int.from_bytes(chunk, "little")
        if value:
            enclave += encode_field(number, value)
    cert = qe.certification
    pck = fields([(1, cert.cert_type), (2, len(cert.data)), (3, cert.data)])
    auth = fields([(1, len(qe.qe_auth_data)), (2, qe.qe_auth_data)])
    qe_cert = (
        encode_field(1, enclave)
        + encode_field(2, qe.qe_report_signature)
        + encode_field(3, auth)
        + encode_field(4, pck)
    )
    qe_size = len(qe.to_bytes())
    cert_data = fields([(1, CERT_TYPE_QE_REPORT), (2, qe_size)]) + encode_field(3, qe_cert)
    signed = fields([(1, sig.signature), (2, sig.attestation_key)]) + encode_field(3, cert_data)
    out = (
        encode_field(1, header)
        + encode_field(2, body)
        + encode_field(3, len(sig.to_bytes()))
        + encode_field(4, signed)
    )
    if q.trailing:
        out += encode_field(5, q.trailing)
    return out

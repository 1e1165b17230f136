"""Intel DCAP quotes: SGX quote v3/v4 and TDX quote v4/v5.

Layouts follow the Intel SGX ECDSA Quote Library API (quote v3, "Quote Format", A.4) and the
Intel TDX DCAP Quoting Library API (quote v4 and v5, Appendix A.3, "Quote Format"):

- header (48 bytes, A.3.1), then
- v3/v4: the report body (SGX enclave report, 384 bytes, or TD report 1.0, 584 bytes);
  v5: a body descriptor (type u16, size u32, A.3.2) followed by the body (TD report 1.0 or
  1.5, 648 bytes, or an SGX enclave report);
- the signature data length (u32) and the ECDSA-256 signature data (A.3.8): quote signature,
  attestation public key, then either (v3) the QE report certification fields directly or
  (v4/v5) certification data of type 6 (QE report certification data, A.3.11) wrapping them;
- inside, certification data (A.3.10, "Certification Data"; SGX ECDSA Quote Library API A.4):
  type 5, the PCK certificate chain in PEM, or a PCK certificate identifier that names the
  platform's PCK certificate without carrying it: types 1-3, the PPID (type 1 in clear, 2 and 3
  RSA-2048/RSA-3072-OAEP encrypted to Intel) with the CPUSVN, PCESVN and PCE ID the PCK key
  was used at; type 4, the PCK leaf certificate alone (:class:`PckCertId`).

Parsing makes no cryptographic decision. ``to_bytes`` reproduces the input byte for byte.
Bytes after the signature data (zero padding from quote buffers, test appendices) are kept in
``Quote.trailing``; they are not covered by any signature and carry no meaning.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence._reader import Reader
from confide.evidence.pem import parse_pem_chain

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "CERT_TYPE_PCK_CHAIN",
    "CERT_TYPE_PCK_LEAF",
    "CERT_TYPE_PPID_CLEARTEXT",
    "CERT_TYPE_PPID_RSA2048",
    "CERT_TYPE_PPID_RSA3072",
    "CERT_TYPE_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "BodyType",
    "CertificationData",
    "EcdsaSignatureData",
    "EnclaveReport",
    "PckCertId",
    "QeReportCertificationData",
    "Quote",
    "QuoteHeader",
    "TdReport",
    "TeeType",
    "cert_type_name",
    "parse_pem_chain",
]

# --- sizes (A.3) -----------------------------------------------------------------------------
HEADER_SIZE = 48
QE_VENDOR_ID_SIZE = 16
USER_DATA_SIZE = 20
ENCLAVE_REPORT_SIZE = 384
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
BODY_DESCRIPTOR_SIZE = 6
ECDSA_SIG_SIZE = 64
ECDSA_KEY_SIZE = 64
CPUSVN_SIZE = 16
MEASUREMENT_SIZE = 32  # SGX MRENCLAVE / MRSIGNER
TD_MEASUREMENT_SIZE = 48  # TDX MRTD, RTMRs, MRSEAM, ...
REPORT_DATA_SIZE = 64
TEE_TCB_SVN_SIZE = 16
ATTRIBUTES_SIZE = 16
CONFIG_ID_SIZE = 64
FAMILY_ID_SIZE = 16
EXT_PROD_ID_SIZE = 16

ATT_KEY_TYPE_ECDSA_P256 = 2
# Certification data types (TDX DCAP Quoting Library API A.3.10 "Certification Data"; SGX ECDSA
# Quote Library API A.4; ``sgx_ql_cert_key_type_t`` in sgx_quote_3.h).
CERT_TYPE_PPID_CLEARTEXT = 1
CERT_TYPE_PPID_RSA2048 = 2
CERT_TYPE_PPID_RSA3072 = 3
CERT_TYPE_PCK_LEAF = 4
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_ID_SIZE = 16  # the first 16 bytes of the header's user data (Intel's QE puts its QE ID there)
PCE_ID_SIZE = 2
# The PPID field of types 1-3: sgx_ql_ppid_cleartext_cert_info_t (ppid[16]),
# sgx_ql_ppid_rsa2048_encrypted_cert_info_t (enc_ppid[256]) and
# sgx_ql_ppid_rsa3072_encrypted_cert_info_t (enc_ppid[384]), each followed by cpu_svn[16] and
# sgx_pce_info_t {pce_isv_svn u16, pce_id u16} (little-endian).
_PPID_FIELD_SIZES = {CERT_TYPE_PPID_CLEARTEXT: 16, CERT_TYPE_PPID_RSA2048: 256, CERT_TYPE_PPID_RSA3072: 384}

# Hard ceiling on a quote: real quotes are a few KiB (8 KiB buffers at most in practice).
MAX_QUOTE_SIZE = 1 << 20


# Field layouts as struct formats; lengths are always checked before unpacking.
# SGX REPORTBODY: cpu_svn, misc_select, reserved1, isv_ext_prod_id, attributes, mr_enclave,
# reserved2, mr_signer, reserved3, config_id, isv_prod_id, isv_svn, config_svn, reserved4,
# isv_family_id, report_data.
_ENCLAVE_REPORT = struct.Struct("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s")
# TD report 1.0: tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam,
# mr_td, mr_config_id, mr_owner, mr_owner_config, rtmr0..3, report_data; 1.5 adds
# tee_tcb_svn2 and mr_servicetd.
_TD_REPORT10 = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD_REPORT15 = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s16s48s")
assert _ENCLAVE_REPORT.size == ENCLAVE_REPORT_SIZE
assert _TD_REPORT10.size == TD_REPORT10_SIZE and _TD_REPORT15.size == TD_REPORT15_SIZE


class TeeType(enum.IntEnum):
    SGX = 0x00000000
    TDX = 0x00000081


class BodyType(enum.IntEnum):
    """Quote v5 body descriptor types (TDX DCAP Quoting Library API, A.3.2)."""

    SGX_ENCLAVE_REPORT = 1
    TD_REPORT10 = 2
    TD_REPORT15 = 3


_BODY_SIZES = {
    BodyType.SGX_ENCLAVE_REPORT: ENCLAVE_REPORT_SIZE,
    BodyType.TD_REPORT10: TD_REPORT10_SIZE,
    BodyType.TD_REPORT15: TD_REPORT15_SIZE,
}


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """Quote header (A.3.1). In v3 the ``tee_type`` word is reserved (zero) and the two
    ``reserved`` words carry QE SVN and PCE SVN."""

    version: int
    att_key_type: int
    tee_type: int
    reserved1: int
    reserved2: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def read(cls, r: Reader) -> QuoteHeader:
        return cls(
            version=r.u16("header.version"),
            att_key_type=r.u16("header.att_key_type"),
            tee_type=r.u32("header.tee_type"),
            reserved1=r.u16("header.reserved1"),
            reserved2=r.u16("header.reserved2"),
            qe_vendor_id=r.take(QE_VENDOR_ID_SIZE, "header.qe_vendor_id"),
            user_data=r.take(USER_DATA_SIZE, "header.user_data"),
        )

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.version.to_bytes(2, "little"),
                self.att_key_type.to_bytes(2, "little"),
                self.tee_type.to_bytes(4, "little"),
                self.reserved1.to_bytes(2, "little"),
                self.reserved2.to_bytes(2, "little"),
                self.qe_vendor_id,
                self.user_data,
            )
        )


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """SGX REPORTBODY (A.3.9 / SGX SDM 38.15): used for the SGX quote body and the QE report."""

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, base: int = 0, name: str = "enclave_report") -> EnclaveReport:
        if len(data) != ENCLAVE_REPORT_SIZE:
            raise ParseError(
                f"got {len(data)} bytes, expected {ENCLAVE_REPORT_SIZE}", structure=name, offset=base
            )
        return cls(*_ENCLAVE_REPORT.unpack(data))

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.cpu_svn,
                self.misc_select.to_bytes(4, "little"),
                self.reserved1,
                self.isv_ext_prod_id,
                self.attributes,
                self.mr_enclave,
                self.reserved2,
                self.mr_signer,
                self.reserved3,
                self.config_id,
                self.isv_prod_id.to_bytes(2, "little"),
                self.isv_svn.to_bytes(2, "little"),
                self.config_svn.to_bytes(2, "little"),
                self.reserved4,
                self.isv_family_id,
                self.report_data,
            )
        )

    @property
    def debug(self) -> bool:
        # SGX SDM 38.7.1, SECS.ATTRIBUTES bit 1 = DEBUG.
        return bool(self.attributes[0] & 0x02)

    @property
    def mode64bit(self) -> bool:
        return bool(self.attributes[0] & 0x04)


_TUD_MASK = 0xFF
"""TD_ATTRIBUTES bits 7:0, the TUD group (:attr:`TdReport.debug`)."""


@dataclass(frozen=True, slots=True)
class TdReport:
    """TD report body 1.0 (584 bytes, A.3.3) or 1.5 (648 bytes, A.3.4: adds TEE_TCB_SVN2 and
    MRSERVICETD)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @classmethod
    def from_bytes(cls, data: bytes, *, base: int = 0) -> TdReport:
        if len(data) == TD_REPORT10_SIZE:
            return cls(*_TD_REPORT10.unpack(data))
        if len(data) == TD_REPORT15_SIZE:
            return cls(*_TD_REPORT15.unpack(data))
        raise ParseError(
            f"got {len(data)} bytes, expected {TD_REPORT10_SIZE} or {TD_REPORT15_SIZE}",
            structure="td_report",
            offset=base,
        )

    def to_bytes(self) -> bytes:
        parts = [
            self.tee_tcb_svn,
            self.mr_seam,
            self.mr_signer_seam,
            self.seam_attributes,
            self.td_attributes,
            self.xfam,
            self.mr_td,
            self.mr_config_id,
            self.mr_owner,
            self.mr_owner_config,
            self.rtmr0,
            self.rtmr1,
            self.rtmr2,
            self.rtmr3,
            self.report_data,
        ]
        if self.tee_tcb_svn2 is not None and self.mr_servicetd is not None:
            parts += [self.tee_tcb_svn2, self.mr_servicetd]
        return b"".join(parts)

    @property
    def is_v15(self) -> bool:
        return self.mr_servicetd is not None

    # TD_ATTRIBUTES (TDX Module ABI spec, "TDINFO_STRUCT" / ATTRIBUTES): a 64-bit little-endian
    # word. Bits 7:0 TUD ("TD under debug": bit 0 DEBUG, the others reserved for further TUD
    # flags in TDX 1.0; TDX 1.5 names bits 6:4 "TD under profiling"), bit 28 SEPT_VE_DISABLE,
    # bit 30 PKS, bit 31 KL, bit 63 PERFMON.
    @property
    def td_attributes_word(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        """Any TUD flag (TD_ATTRIBUTES bits 7:0) set, not only DEBUG: Intel TDX DCAP Quoting
        Library API, 2.3.2 "Extended TD checks": "Verify that all TD Under Debug flags
        (TDATTRIBUTES.TUD) are set to zero. If any flag is non-zero, the TD should not be
        trusted" (dcap-qvl reads the same byte)."""
        return self.td_attributes_word & _TUD_MASK != 0

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_word & (1 << 28))


@dataclass(frozen=True, slots=True)
class CertificationData:
    """Certification data (A.3.10): a type and its bytes (type 5 = PEM PCK chain)."""

    cert_type: int
    data: bytes

    @classmethod
    def read(cls, r: Reader, name: str) -> CertificationData:
        cert_type = r.u16(f"{name}.type")
        size = r.u32(f"{name}.size")
        if size > r.remaining:
            raise r.error(
                f"declared size {size} exceeds the {r.remaining} bytes left", f"{name}.size", r.pos - 4
            )
        return cls(cert_type, r.take(size, f"{name}.data"))

    def to_bytes(self) -> bytes:
        return self.cert_type.to_bytes(2, "little") + len(self.data).to_bytes(4, "little") + self.data


_CERT_TYPE_NAMES = {
    CERT_TYPE_PPID_CLEARTEXT: "PPID in clear",
    CERT_TYPE_PPID_RSA2048: "RSA-2048-OAEP encrypted PPID",
    CERT_TYPE_PPID_RSA3072: "RSA-3072-OAEP encrypted PPID",
    CERT_TYPE_PCK_LEAF: "PCK leaf certificate",
    CERT_TYPE_PCK_CHAIN: "PCK certificate chain",
    CERT_TYPE_QE_REPORT: "QE report certification data",
}


def cert_type_name(cert_type: int) -> str:
    """A certification data type's name (A.3.10), for messages."""
    return _CERT_TYPE_NAMES.get(cert_type, "unknown")


@dataclass(frozen=True, slots=True)
class PckCertId:
    """What names a platform's PCK certificate when the quote does not carry the chain
    (certification data types 1-4), for a PCK certificate lookup (Intel PCS API v4 "Get PCK
    Certificate": encrypted PPID, CPUSVN, PCESVN, PCE ID; a PCCS: QE ID, CPUSVN, PCESVN, PCE ID).

    Types 1-3 (``sgx_ql_ppid_*_cert_info_t``): the PPID (type 1) or the PPID encrypted to Intel
    (types 2, 3), and the raw TCB the PCE signed the QE report at: ``cpu_svn``, ``pce_svn``,
    with ``pce_id``. Type 4: ``leaf_der``, the PCK leaf itself (its own TCB, read from its SGX
    extension by the verifier). ``qe_id``: the first 16 bytes of the header's user data. Bytes
    are as in the quote: ``pce_svn_le`` and ``pce_id`` are the little-endian u16 fields, which
    is how Intel PCS and PCCS take them (hex) and how the PCK certificate's PCE-ID octets read."""

    cert_type: int
    qe_id: bytes
    cpu_svn: bytes = b""
    pce_svn: int = 0
    pce_id: bytes = b""
    ppid: bytes | None = None
    encrypted_ppid: bytes | None = None
    leaf_der: bytes | None = None

    @property
    def pce_svn_le(self) -> bytes:
        return self.pce_svn.to_bytes(2, "little")

    def describe(self) -> str:
        """For messages: the type and the lookup values (never the whole encrypted PPID)."""
        parts = [f"certification data type {self.cert_type} ({cert_type_name(self.cert_type)})"]
        if self.leaf_der is None:
            parts.append(f"CPUSVN {self.cpu_svn.hex()}, PCESVN {self.pce_svn}, PCE ID {self.pce_id.hex()}")
        parts.append(f"QE ID {self.qe_id.hex()}")
        return ", ".join(parts)

    @classmethod
    def parse(cls, cert: CertificationData, user_data: bytes, *, base: int = 0) -> PckCertId:
        """The identifier in certification data of type 1-4 (hostile input: exact sizes, ParseError
        naming the field and offset). ``base``: the offset of ``cert.data`` in the quote."""
        name = f"certification_data[type {cert.cert_type}]"
        qe_id = user_data[:QE_ID_SIZE]
        if cert.cert_type == CERT_TYPE_PCK_LEAF:
            ders = parse_pem_chain(cert.data, structure=name, base=base)
            if len(ders) != 1:
                raise ParseError(
                    f"got {len(ders)} certificates, expected the PCK leaf alone", structure=name, offset=base
                )
            return cls(cert.cert_type, qe_id, leaf_der=ders[0])
        ppid_size = _PPID_FIELD_SIZES.get(cert.cert_type)
        if ppid_size is None:
            raise ParseError(
                f"got certification data type {cert.cert_type}, expected 1-4", structure=name, offset=base
            )
        want = ppid_size + CPUSVN_SIZE + 2 + PCE_ID_SIZE
        if len(cert.data) != want:
            raise ParseError(
                f"got {len(cert.data)} bytes, expected {want} (PPID field {ppid_size}, CPUSVN 16, "
                "PCESVN 2, PCE ID 2)",
                structure=name,
                field="size",
                offset=base,
            )
        r = Reader(cert.data, name, base=base)
        ppid_field = r.take(ppid_size, "encrypted_ppid" if ppid_size > 16 else "ppid")
        cpu_svn = r.take(CPUSVN_SIZE, "cpu_svn")
        pce_svn = r.u16("pce_info.pce_isv_svn")
        pce_id = r.take(PCE_ID_SIZE, "pce_info.pce_id")
        r.expect_end(name)
        if cert.cert_type == CERT_TYPE_PPID_CLEARTEXT:
            return cls(cert.cert_type, qe_id, cpu_svn, pce_svn, pce_id, ppid=ppid_field)
        return cls(cert.cert_type, qe_id, cpu_svn, pce_svn, pce_id, encrypted_ppid=ppid_field)


@dataclass(frozen=True, slots=True)
class QeReportCertificationData:
    """QE report certification data (A.3.11): QE report, its signature by the PCK key, QE
    authentication data and the nested certification data (the PCK chain)."""

    qe_report: EnclaveReport
    qe_report_raw: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification: CertificationData

    @classmethod
    def read(cls, r: Reader) -> QeReportCertificationData:
        start = r.base + r.pos
        raw = r.take(ENCLAVE_REPORT_SIZE, "qe_report")
        report = EnclaveReport.from_bytes(raw, base=start, name="qe_report")
        sig = r.take(ECDSA_SIG_SIZE, "qe_report_signature")
        auth_size = r.u16("qe_auth_data.size")
        auth = r.take(auth_size, "qe_auth_data.data")
        cert = CertificationData.read(r, "certification_data")
        if CERT_TYPE_PPID_CLEARTEXT <= cert.cert_type <= CERT_TYPE_PCK_LEAF:
            # Parsed now so that a malformed identifier is a ParseError here, not later.
            PckCertId.parse(cert, b"", base=r.base + r.pos - len(cert.data))
        return cls(report, raw, sig, auth, cert)

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.qe_report_raw,
                self.qe_report_signature,
                len(self.qe_auth_data).to_bytes(2, "little"),
                self.qe_auth_data,
                self.certification.to_bytes(),
            )
        )


@dataclass(frozen=True, slots=True)
class EcdsaSignatureData:
    """ECDSA 256-bit quote signature data (A.3.8). ``wrapped`` is True for v4/v5, where the
    QE report certification data sits inside certification data of type 6."""

    signature: bytes
    attestation_key: bytes
    qe: QeReportCertificationData
    wrapped: bool

    @classmethod
    def read(cls, r: Reader, *, wrapped: bool) -> EcdsaSignatureData:
        sig = r.take(ECDSA_SIG_SIZE, "signature_data.signature")
        key = r.take(ECDSA_KEY_SIZE, "signature_data.attestation_key")
        if wrapped:
            outer_type_at = r.pos
            outer = CertificationData.read(r, "signature_data.certification_data")
            if outer.cert_type != CERT_TYPE_QE_REPORT:
                raise r.error(
                    f"got certification data type {outer.cert_type}, expected {CERT_TYPE_QE_REPORT} "
                    "(QE report certification data)",
                    "signature_data.certification_data.type",
                    outer_type_at,
                )
            inner = Reader(outer.data, r.structure, base=r.base + r.pos - len(outer.data))
            qe = QeReportCertificationData.read(inner)
            inner.expect_end("qe_report_certification_data")
        else:
            qe = QeReportCertificationData.read(r)
        return cls(sig, key, qe, wrapped)

    def to_bytes(self) -> bytes:
        inner = self.qe.to_bytes()
        if self.wrapped:
            inner = CertificationData(CERT_TYPE_QE_REPORT, inner).to_bytes()
        return self.signature + self.attestation_key + inner


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed DCAP quote (SGX v3/v4, TDX v4/v5)."""

    header: QuoteHeader
    body_type: BodyType
    body_raw: bytes
    report: EnclaveReport | TdReport
    signature_data: EcdsaSignatureData
    signed_length: int
    trailing: bytes

    @property
    def tee(self) -> TeeType:
        return TeeType(self.header.tee_type)

    @property
    def is_tdx(self) -> bool:
        return self.header.tee_type == TeeType.TDX

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        if len(data) > MAX_QUOTE_SIZE:
            raise ParseError(f"got {len(data)} bytes, expected at most {MAX_QUOTE_SIZE}", structure="quote")
        r = Reader(data, "quote")
        header = QuoteHeader.read(r)
        if header.version not in (3, 4, 5):
            raise r.error(f"got version {header.version}, expected 3, 4 or 5", "header.version", 0)
        if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
            raise r.error(
                f"got attestation key type {header.att_key_type}, expected {ATT_KEY_TYPE_ECDSA_P256} "
                "(ECDSA-256 with P-256)",
                "header.att_key_type",
                2,
            )
        if header.tee_type not in (TeeType.SGX, TeeType.TDX) or (header.version == 3 and header.tee_type):
            raise r.error(
                f"got TEE type {header.tee_type:#x} in a version {header.version} quote, expected "
                "0x0 (SGX) or, in a version 4 or 5 quote only, 0x81 (TDX)",
                "header.tee_type",
                4,
            )
        body_type: BodyType
        if header.version == 5:
            type_at = r.pos
            raw_type = r.u16("body.type")
            size = r.u32("body.size")
            try:
                body_type = BodyType(raw_type)
            except ValueError:
                raise r.error(f"got body type {raw_type}, expected 1, 2 or 3", "body.type", type_at) from None
            if size != _BODY_SIZES[body_type]:
                raise r.error(
                    f"got body size {size}, expected {_BODY_SIZES[body_type]} for {body_type.name}",
                    "body.size",
                    type_at + 2,
                )
        else:
            body_type = (
                BodyType.TD_REPORT10 if header.tee_type == TeeType.TDX else BodyType.SGX_ENCLAVE_REPORT
            )
        if (body_type is BodyType.SGX_ENCLAVE_REPORT) != (header.tee_type == TeeType.SGX):
            raise r.error(
                f"body type {body_type.name} does not match TEE type {header.tee_type:#x}", "body.type"
            )
        body_at = r.pos
        body_raw = r.take(_BODY_SIZES[body_type], "body")
        report: EnclaveReport | TdReport
        if body_type is BodyType.SGX_ENCLAVE_REPORT:
            report = EnclaveReport.from_bytes(body_raw, base=body_at, name="quote.body")
        else:
            report = TdReport.from_bytes(body_raw, base=body_at)
        signed_length = r.pos
        sig_len = r.u32("signature_data_length")
        if sig_len > r.remaining:
            raise r.error(
                f"declared {sig_len} bytes, only {r.remaining} left", "signature_data_length", signed_length
            )
        sig_at = r.pos
        sig_reader = Reader(r.take(sig_len, "signature_data"), "quote", base=sig_at)
        sig = EcdsaSignatureData.read(sig_reader, wrapped=header.version >= 4)
        sig_reader.expect_end("signature_data")
        return cls(header, body_type, body_raw, report, sig, signed_length, r.rest("trailing"))

    def to_bytes(self) -> bytes:
        parts = [self.header.to_bytes()]
        if self.header.version == 5:
            parts.append(int(self.body_type).to_bytes(2, "little") + len(self.body_raw).to_bytes(4, "little"))
        parts.append(self.body_raw)
        sig = self.signature_data.to_bytes()
        parts += [len(sig).to_bytes(4, "little"), sig, self.trailing]
        return b"".join(parts)

    def pck_cert_id(self) -> PckCertId | None:
        """The PCK certificate identifier of certification data types 1-4 (``None``: another
        type, such as 5, the chain itself)."""
        cert = self.signature_data.qe.certification
        if CERT_TYPE_PPID_CLEARTEXT <= cert.cert_type <= CERT_TYPE_PCK_LEAF:
            return PckCertId.parse(cert, self.header.user_data)
        return None

    def signed_bytes(self, raw: bytes) -> bytes:
        """The bytes covered by the quote signature: header and body (v5: with descriptor)."""
        return raw[: self.signed_length]

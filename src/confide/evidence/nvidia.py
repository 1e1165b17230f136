"""NVIDIA GPU attestation reports: SPDM GET_MEASUREMENTS request + MEASUREMENTS response.

An NVIDIA Hopper (H100) attestation report is the concatenation of the SPDM
``GET_MEASUREMENTS`` request the verifier sent and the ``MEASUREMENTS`` response the GPU
returned, the latter ending with a signature over both (DMTF DSP0274 "SPDM" 1.1, §10.11
"GET_MEASUREMENTS request and MEASUREMENTS response messages", Tables 40, 43, 44, 45).
Vendor tools write it as hex text; the CLI decodes that before it reaches this parser.

The signature length is not written in the message: it follows from the negotiated
asymmetric algorithm (``BaseAsymAlgo``; for H100 TPM_ALG_ECDSA_ECC_NIST_P384, r‖s of 48 bytes
each). :meth:`NvidiaAttestationReport.from_bytes` takes it as a parameter and requires it to
consume exactly what is left after the parsed opaque data: the signature is located by
structure, never by counting back from the end.

The opaque data of the response is NVIDIA's list of ``(type u16, size u16, value)`` fields
(driver version, VBIOS version, SKUs, FWID, ...); the field numbers below are NVIDIA's
``OPAQUE_FIELD_ID_*`` values as used by the nvtrust local GPU verifier.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence._reader import Reader

__all__ = [
    "ECDSA_P384_SIGNATURE_SIZE",
    "MeasurementBlock",
    "MeasurementsRequest",
    "MeasurementsResponse",
    "NvidiaAttestationReport",
    "OpaqueField",
    "OpaqueFieldType",
    "encode_opaque_data",
    "parse_opaque_data",
]

# DSP0274 §10.1 Table 4: SPDMVersion byte (major << 4 | minor). H100 speaks 1.1, the only version
# read: a 1.0 GET_MEASUREMENTS request has no SlotIDParam (added in 1.1, Table 40), and from 1.2
# on the signature is over the combined SPDM prefix and the hash of the transcript (DSP0274 1.2
# §15 "Signature generation"), not over the transcript as verified here.
SPDM_VERSION_1_1 = 0x11
# DSP0274 Table 4 (request/response codes).
GET_MEASUREMENTS_CODE = 0xE0
MEASUREMENTS_CODE = 0x60
# DSP0274 Table 40: Param1 bit 0 = a signature is requested; then Nonce and SlotIDParam follow.
PARAM1_SIGNATURE_REQUESTED = 0x01
NONCE_SIZE = 32
HEADER_SIZE = 4  # SPDMVersion, RequestResponseCode, Param1, Param2
RECORD_LENGTH_SIZE = 3  # MeasurementRecordLength, 24-bit little-endian (Table 43)
# DSP0274 Table 44 (measurement block): Index u8, MeasurementSpecification u8, MeasurementSize u16.
BLOCK_HEADER_SIZE = 4
MEASUREMENT_SPEC_DMTF = 0x01  # bit 0: DMTF measurement specification (Table 45)
DMTF_HEADER_SIZE = 3  # DMTFSpecMeasurementValueType u8, DMTFSpecMeasurementValueSize u16
# TPM_ALG_ECDSA_ECC_NIST_P384: r and s of 48 bytes each (DSP0274 §10.4 Table 15 note).
ECDSA_P384_SIGNATURE_SIZE = 96
OPAQUE_FIELD_HEADER_SIZE = 4  # NVIDIA: type u16, size u16
MSRSCNT_ENTRY_SIZE = 4


class OpaqueFieldType(enum.IntEnum):
    """NVIDIA's opaque-data field numbers (``OPAQUE_FIELD_ID_*``)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    INVALID = 255


@dataclass(frozen=True, slots=True)
class OpaqueField:
    type: int
    value: bytes

    @property
    def name(self) -> str:
        try:
            return OpaqueFieldType(self.type).name.lower()
        except ValueError:
            return f"type_{self.type}"


def parse_opaque_data(data: bytes, *, base: int = 0) -> tuple[OpaqueField, ...]:
    """Split NVIDIA opaque data into its TLV fields (duplicates are a parse error)."""
    r = Reader(data, "NVIDIA opaque data", base=base)
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.remaining:
        start = r.pos
        ftype = r.u16("DataType")
        size = r.u16("DataSize")
        value = r.take(size, f"DataValue (type {ftype})")
        if ftype in seen:
            raise r.error(f"field type {ftype} appears twice", "DataType", offset=start)
        seen.add(ftype)
        if ftype == OpaqueFieldType.MSRSCNT and size % MSRSCNT_ENTRY_SIZE:
            raise r.error(f"got {size} bytes, expected a multiple of {MSRSCNT_ENTRY_SIZE}", "MSRSCNT", start)
        fields.append(OpaqueField(ftype, value))
    return tuple(fields)


def encode_opaque_data(fields: tuple[OpaqueField, ...]) -> bytes:
    return b"".join(
        f.type.to_bytes(2, "little") + len(f.value).to_bytes(2, "little") + f.value for f in fields
    )


def _read_spdm_header(r: Reader, expected_code: int, name: str) -> tuple[int, int, int]:
    """The generic SPDM message header (DSP0274, "Generic SPDM message format"): version,
    request/response code, Param1, Param2."""
    version = r.u8("SPDMVersion")
    if version != SPDM_VERSION_1_1:
        raise r.error(
            f"got {version:#04x}, expected {SPDM_VERSION_1_1:#04x} (SPDM 1.1, the version read)",
            "SPDMVersion",
            r.pos - 1,
        )
    code = r.u8("RequestResponseCode")
    if code != expected_code:
        raise r.error(
            f"got {code:#04x}, expected {expected_code:#04x} ({name})", "RequestResponseCode", r.pos - 1
        )
    return version, r.u8("Param1"), r.u8("Param2")


@dataclass(frozen=True, slots=True)
class MeasurementsRequest:
    """SPDM GET_MEASUREMENTS request (DSP0274 Table 40)."""

    version: int
    param1: int
    param2: int
    nonce: bytes | None
    slot_id: int | None

    @property
    def signature_requested(self) -> bool:
        return bool(self.param1 & PARAM1_SIGNATURE_REQUESTED)

    @classmethod
    def read(cls, r: Reader) -> MeasurementsRequest:
        version, param1, param2 = _read_spdm_header(r, GET_MEASUREMENTS_CODE, "GET_MEASUREMENTS")
        nonce: bytes | None = None
        slot_id: int | None = None
        if param1 & PARAM1_SIGNATURE_REQUESTED:
            nonce = r.take(NONCE_SIZE, "Nonce")
            slot_id = r.u8("SlotIDParam")
        return cls(version, param1, param2, nonce, slot_id)

    def to_bytes(self) -> bytes:
        out = bytes([self.version, GET_MEASUREMENTS_CODE, self.param1, self.param2])
        if self.nonce is not None and self.slot_id is not None:
            out += self.nonce + bytes([self.slot_id])
        return out


@dataclass(frozen=True, slots=True)
class MeasurementBlock:
    """One measurement block with a DMTF measurement (DSP0274 Tables 44 and 45)."""

    index: int
    specification: int
    value_type: int
    """DMTFSpecMeasurementValueType: bits 0-6 the kind (0 immutable ROM, 1 mutable firmware, ...),
    bit 7 set when the value is a raw bit stream rather than a digest."""
    value: bytes

    @property
    def is_raw_bit_stream(self) -> bool:
        return bool(self.value_type & 0x80)

    def to_bytes(self) -> bytes:
        dmtf = bytes([self.value_type]) + len(self.value).to_bytes(2, "little") + self.value
        return bytes([self.index, self.specification]) + len(dmtf).to_bytes(2, "little") + dmtf


@dataclass(frozen=True, slots=True)
class MeasurementsResponse:
    """SPDM MEASUREMENTS response (DSP0274 Table 43), without its signature."""

    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque_data: bytes
    opaque_fields: tuple[OpaqueField, ...]

    @classmethod
    def read(cls, r: Reader) -> MeasurementsResponse:
        version, param1, param2 = _read_spdm_header(r, MEASUREMENTS_CODE, "MEASUREMENTS")
        number_of_blocks = r.u8("NumberOfBlocks")
        record_length = int.from_bytes(r.take(RECORD_LENGTH_SIZE, "MeasurementRecordLength"), "little")
        record_start = r.base + r.pos
        record = Reader(
            r.take(record_length, "MeasurementRecord"), "SPDM measurement record", base=record_start
        )
        blocks: list[MeasurementBlock] = []
        seen: set[int] = set()
        for n in range(number_of_blocks):
            start = record.pos
            index = record.u8(f"block {n} Index")
            spec = record.u8(f"block {n} MeasurementSpecification")
            size = record.u16(f"block {n} MeasurementSize")
            body = Reader(
                record.take(size, f"block {n} Measurement"), record.structure, base=record_start + start + 4
            )
            if spec != MEASUREMENT_SPEC_DMTF:
                raise record.error(
                    f"got {spec:#04x}, expected {MEASUREMENT_SPEC_DMTF:#04x} (DMTF)",
                    f"block {n} MeasurementSpecification",
                    start + 1,
                )
            if index in seen or index == 0:
                raise record.error(f"index {index} is reserved or repeated", f"block {n} Index", start)
            seen.add(index)
            value_type = body.u8(f"block {n} DMTFSpecMeasurementValueType")
            value_size = body.u16(f"block {n} DMTFSpecMeasurementValueSize")
            value = body.take(value_size, f"block {n} DMTFSpecMeasurementValue")
            body.expect_end(
                f"block {n} (MeasurementSize {size} != 3 + DMTFSpecMeasurementValueSize {value_size})"
            )
            blocks.append(MeasurementBlock(index, spec, value_type, value))
        record.expect_end(f"MeasurementRecord (more bytes than {number_of_blocks} blocks)")
        nonce = r.take(NONCE_SIZE, "Nonce")
        opaque_length = r.u16("OpaqueLength")
        opaque_base = r.base + r.pos
        opaque = r.take(opaque_length, "OpaqueData")
        fields = parse_opaque_data(opaque, base=opaque_base)
        return cls(version, param1, param2, tuple(blocks), nonce, opaque, fields)

    def to_bytes(self) -> bytes:
        record = b"".join(b.to_bytes() for b in self.blocks)
        return (
            bytes([self.version, MEASUREMENTS_CODE, self.param1, self.param2, len(self.blocks)])
            + len(record).to_bytes(RECORD_LENGTH_SIZE, "little")
            + record
            + self.nonce
            + len(self.opaque_data).to_bytes(2, "little")
            + self.opaque_data
        )

    def field(self, ftype: OpaqueFieldType) -> bytes | None:
        for f in self.opaque_fields:
            if f.type == ftype:
                return f.value
        return None


@dataclass(frozen=True, slots=True)
class NvidiaAttestationReport:
    """GET_MEASUREMENTS request ‖ MEASUREMENTS response ‖ signature."""

    request: MeasurementsRequest
    response: MeasurementsResponse
    signature: bytes

    @classmethod
    def from_bytes(
        cls, data: bytes, *, signature_size: int = ECDSA_P384_SIGNATURE_SIZE
    ) -> NvidiaAttestationReport:
        r = Reader(data, "NVIDIA attestation report")
        request = MeasurementsRequest.read(r)
        if not request.signature_requested:
            raise r.error("the request did not ask for a signature (Param1 bit 0 clear)", "Param1", 2)
        response = MeasurementsResponse.read(r)  # the same SPDM version as the request (1.1)
        if r.remaining != signature_size:
            raise r.error(
                f"got {r.remaining} bytes after the opaque data, expected a {signature_size}-byte signature",
                "Signature",
            )
        signature = r.take(signature_size, "Signature")
        return cls(request, response, signature)

    @property
    def signed_bytes(self) -> bytes:
        """What the signature covers: the request and the response up to the signature (L1/L2)."""
        return self.request.to_bytes() + self.response.to_bytes()

    def to_bytes(self) -> bytes:
        return self.signed_bytes + self.signature

    @property
    def nonce(self) -> bytes:
        """The requester's nonce (present: :meth:`from_bytes` requires a signed request)."""
        if self.request.nonce is None:  # pragma: no cover - excluded by from_bytes
            raise ParseError("request has no nonce", structure="NVIDIA attestation report")
        return self.request.nonce

    @property
    def measurements(self) -> dict[int, bytes]:
        return {b.index: b.value for b in self.response.blocks}

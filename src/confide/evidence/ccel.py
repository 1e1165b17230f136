"""The ACPI CCEL table and the TCG crypto-agile event log of a confidential VM (Intel TDX).

Two inputs, both read by the guest from firmware:

* the **CCEL ACPI table** (ACPI 6.5, section 5.2.34 "CC Event Log ACPI
  Table"): a 56-byte table with the standard 36-byte ACPI header, the CC type (2 = Intel
  TDX), a subtype, and the log area's minimum length (LAML) and start address (LASA);
* the **event log** found in that area: TCG PC Client Platform Firmware Profile (PFP)
  specification, section 10 "Event Logging". The first record is a ``TCG_PCClientPCREvent``
  (SHA-1 format, section 10.2.1) carrying the ``TCG_EfiSpecIdEvent`` ("Spec ID Event03",
  section 10.4.5.1) that lists the digest algorithms and their sizes; every later record is a
  ``TCG_PCR_EVENT2`` (section 10.2.2): MR index, event type, ``TPML_DIGEST_VALUES``
  (count + (algorithm id, digest) pairs), event size and event data.

In a CC event log the "PCR index" field holds the **CC measurement-register index** (UEFI
spec 2.10 ``EFI_CC_MEASUREMENT_PROTOCOL`` (``MapPcrToMrIndex``); Intel TDX GHCI 1.5, section 4.3.3
"CC Event Log"): 0 = MRTD, 1 = RTMR0, 2 = RTMR1, 3 = RTMR2, 4 = RTMR3.

The log area has a fixed size (LAML, usually 64 KiB or 256 KiB) and the log is followed by
padding: EDK II initialises the area to 0xFF, and dumps of it are sometimes zero-filled. The
log ends at the first record whose MR index is 0xFFFFFFFF, or whose first 8 bytes are all 0x00
or all 0xFF, or at the end of the data (go-eventlog, ``tcg/pfpformat.go``, stops at the same
0xFFFFFFFF index). Everything before that point must be well-formed: a record cut short is a
``ParseError``, never silently dropped.

This module only parses: nothing here says that a single event is genuine. Only a replay
against RTMR values from a verified quote (``confide.verify.eventlog``) gives the events
meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence._reader import Reader

__all__ = [
    "CC_TYPE_NAMES",
    "CC_TYPE_TDX",
    "DIGEST_SIZES",
    "EV_NO_ACTION",
    "MR_NAMES",
    "TPM_ALG_SHA384",
    "CcelTable",
    "Event",
    "EventLog",
    "HeaderEvent",
    "SpecIdEvent",
]

# --- ACPI 6.5, 5.2.6 "System Description Table Header" and 5.2.34 "CCEL" -----------------
CCEL_SIGNATURE = b"CCEL"
ACPI_HEADER_SIZE = 36
SIGNATURE_SIZE = 4
OEM_ID_SIZE = 6
OEM_TABLE_ID_SIZE = 8
CREATOR_ID_SIZE = 4
CCEL_RESERVED_SIZE = 2
CCEL_TABLE_SIZE = 56  # header 36 + CC type 1 + subtype 1 + reserved 2 + LAML 8 + LASA 8

# ACPI 6.5, 5.2.34: the "CC Type" field.
CC_TYPE_TDX = 0x02
CC_TYPE_NAMES = {0x00: "reserved", 0x01: "AMD SEV", 0x02: "Intel TDX"}

# --- TCG PFP, 10.2 and 10.4.5 ------------------------------------------------------------
EV_NO_ACTION = 0x00000003
SHA1_DIGEST_SIZE = 20
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
SPEC_ID_SIGNATURE_SIZE = 16
SPEC_ID_VERSION_MAJOR = 2
SPEC_ID_VERSION_MINOR = 0
EVENT2_HEADER_SIZE = 8  # MR index (u32) + event type (u32): enough to recognise the end

# TCG Algorithm Registry, Table 3 (TPM_ALG_ID) with the digest sizes they imply.
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_SM3_256 = 0x0012
DIGEST_SIZES = {
    TPM_ALG_SHA1: 20,
    TPM_ALG_SHA256: 32,
    TPM_ALG_SHA384: 48,
    TPM_ALG_SHA512: 64,
    TPM_ALG_SM3_256: 32,
}
ALG_NAMES = {
    TPM_ALG_SHA1: "sha1",
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
    TPM_ALG_SM3_256: "sm3_256",
}

# CC measurement-register index -> name (UEFI 2.10 EFI_CC_MEASUREMENT_PROTOCOL; TDX GHCI 1.5, 4.3.3).
MR_NAMES = {0: "mrtd", 1: "rtmr0", 2: "rtmr1", 3: "rtmr2", 4: "rtmr3"}
END_OF_LOG_MR_INDEX = 0xFFFFFFFF

# Bounds for hostile input. A firmware log has a few hundred events of a few KiB each; the
# log area itself is bounded by LAML.
MAX_ALGORITHMS = 16
MAX_UNKNOWN_DIGEST_SIZE = 128
MAX_EVENTS = 65536
MAX_LOG_SIZE = 16 * 1024 * 1024


def _acpi_checksum_ok(data: bytes) -> bool:
    """ACPI 6.5, 5.2.6: all bytes of the table, checksum included, sum to zero mod 256."""
    return sum(data) & 0xFF == 0


@dataclass(frozen=True, slots=True)
class CcelTable:
    """The CCEL ACPI table (ACPI 6.5, 5.2.34 "CC Event Log ACPI Table")."""

    signature: bytes
    length: int
    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int
    cc_type: int
    cc_subtype: int
    reserved: bytes
    log_area_minimum_length: int
    """LAML: the size of the log area in bytes."""
    log_area_start_address: int
    """LASA: the guest-physical address of the log area (informational off the guest)."""

    @classmethod
    def from_bytes(cls, data: bytes) -> CcelTable:
        r = Reader(data, "CCEL ACPI table")
        signature = r.take(SIGNATURE_SIZE, "signature")
        if signature != CCEL_SIGNATURE:
            raise r.error(f"got {signature!r}, expected {CCEL_SIGNATURE!r}", "signature", 0)
        length = r.u32("length")
        if length != CCEL_TABLE_SIZE:
            raise r.error(f"got {length}, expected {CCEL_TABLE_SIZE}", "length", 4)
        if len(data) != length:
            raise r.error(f"table is {len(data)} bytes but its length field says {length}", "length", 4)
        revision = r.u8("revision")
        checksum = r.u8("checksum")
        if not _acpi_checksum_ok(data):
            expected = (checksum - sum(data)) & 0xFF
            raise r.error(f"checksum got {checksum:#04x}, expected {expected:#04x}", "checksum", 9)
        table = cls(
            signature=signature,
            length=length,
            revision=revision,
            checksum=checksum,
            oem_id=r.take(OEM_ID_SIZE, "oem_id"),
            oem_table_id=r.take(OEM_TABLE_ID_SIZE, "oem_table_id"),
            oem_revision=r.u32("oem_revision"),
            creator_id=r.take(CREATOR_ID_SIZE, "creator_id"),
            creator_revision=r.u32("creator_revision"),
            cc_type=r.u8("cc_type"),
            cc_subtype=r.u8("cc_subtype"),
            reserved=r.take(CCEL_RESERVED_SIZE, "reserved"),
            log_area_minimum_length=r.u64("laml"),
            log_area_start_address=r.u64("lasa"),
        )
        r.expect_end()
        return table

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.signature,
                self.length.to_bytes(4, "little"),
                bytes((self.revision, self.checksum)),
                self.oem_id,
                self.oem_table_id,
                self.oem_revision.to_bytes(4, "little"),
                self.creator_id,
                self.creator_revision.to_bytes(4, "little"),
                bytes((self.cc_type, self.cc_subtype)),
                self.reserved,
                self.log_area_minimum_length.to_bytes(8, "little"),
                self.log_area_start_address.to_bytes(8, "little"),
            )
        )

    @property
    def cc_type_name(self) -> str:
        return CC_TYPE_NAMES.get(self.cc_type, f"unknown ({self.cc_type:#04x})")


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """``TCG_EfiSpecIdEvent`` (TCG PFP, 10.4.5.1): the crypto-agile log header."""

    signature: bytes
    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]
    """(TPM_ALG_ID, digest size in bytes) for every bank the log carries."""
    vendor_info: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, base: int = 0) -> SpecIdEvent:
        r = Reader(data, "TCG_EfiSpecIdEvent", base=base)
        signature = r.take(SPEC_ID_SIGNATURE_SIZE, "signature")
        if signature != SPEC_ID_SIGNATURE:
            raise r.error(f"got {signature!r}, expected {SPEC_ID_SIGNATURE!r}", "signature", 0)
        platform_class = r.u32("platformClass")
        minor = r.u8("specVersionMinor")
        major = r.u8("specVersionMajor")
        if (major, minor) != (SPEC_ID_VERSION_MAJOR, SPEC_ID_VERSION_MINOR):
            raise r.error(
                f"spec version got {major}.{minor}, expected {SPEC_ID_VERSION_MAJOR}.{SPEC_ID_VERSION_MINOR}",
                "specVersion",
                r.pos - 2,
            )
        errata = r.u8("specErrata")
        uintn_size = r.u8("uintnSize")
        count_at = r.pos
        count = r.u32("numberOfAlgorithms")
        if not 1 <= count <= MAX_ALGORITHMS:
            raise r.error(f"got {count}, expected 1..{MAX_ALGORITHMS}", "numberOfAlgorithms", count_at)
        algorithms: list[tuple[int, int]] = []
        for i in range(count):
            at = r.pos
            alg = r.u16(f"digestSizes[{i}].algorithmId")
            size = r.u16(f"digestSizes[{i}].digestSize")
            if any(alg == known for known, _ in algorithms):
                raise r.error(f"algorithm {alg:#06x} listed twice", f"digestSizes[{i}]", at)
            expected = DIGEST_SIZES.get(alg)
            if expected is not None and size != expected:
                message = f"got {size}, expected {expected} for {ALG_NAMES[alg]}"
                raise r.error(message, f"digestSizes[{i}]", at)
            if expected is None and not 1 <= size <= MAX_UNKNOWN_DIGEST_SIZE:
                raise r.error(f"got {size}, expected 1..{MAX_UNKNOWN_DIGEST_SIZE}", f"digestSizes[{i}]", at)
            algorithms.append((alg, size))
        vendor_size = r.u8("vendorInfoSize")
        vendor_info = r.take(vendor_size, "vendorInfo")
        r.expect_end()
        return cls(
            signature, platform_class, minor, major, errata, uintn_size, tuple(algorithms), vendor_info
        )

    def to_bytes(self) -> bytes:
        parts = [
            self.signature,
            self.platform_class.to_bytes(4, "little"),
            bytes((self.spec_version_minor, self.spec_version_major, self.spec_errata, self.uintn_size)),
            len(self.algorithms).to_bytes(4, "little"),
        ]
        for alg, size in self.algorithms:
            parts.append(alg.to_bytes(2, "little") + size.to_bytes(2, "little"))
        parts.append(bytes((len(self.vendor_info),)) + self.vendor_info)
        return b"".join(parts)

    def digest_size(self, alg: int) -> int | None:
        for known, size in self.algorithms:
            if known == alg:
                return size
        return None


@dataclass(frozen=True, slots=True)
class HeaderEvent:
    """The first record, ``TCG_PCClientPCREvent`` in SHA-1 format (TCG PFP, 10.2.1)."""

    mr_index: int
    event_type: int
    digest: bytes
    data: bytes

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.mr_index.to_bytes(4, "little"),
                self.event_type.to_bytes(4, "little"),
                self.digest,
                len(self.data).to_bytes(4, "little"),
                self.data,
            )
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One ``TCG_PCR_EVENT2`` record (TCG PFP, 10.2.2)."""

    number: int
    """Position in the log, 1 for the first record after the Spec ID header."""
    offset: int
    """Byte offset of the record in the event log."""
    mr_index: int
    """CC measurement-register index: 0 MRTD, 1..4 RTMR0..RTMR3."""
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    """(TPM_ALG_ID, digest) pairs, in log order."""
    data: bytes

    @property
    def mr_name(self) -> str:
        return MR_NAMES.get(self.mr_index, f"mr{self.mr_index}")

    def digest(self, alg: int) -> bytes | None:
        for known, value in self.digests:
            if known == alg:
                return value
        return None

    def to_bytes(self) -> bytes:
        parts = [
            self.mr_index.to_bytes(4, "little"),
            self.event_type.to_bytes(4, "little"),
            len(self.digests).to_bytes(4, "little"),
        ]
        for alg, value in self.digests:
            parts.append(alg.to_bytes(2, "little") + value)
        parts.append(len(self.data).to_bytes(4, "little"))
        parts.append(self.data)
        return b"".join(parts)


def _is_end(data: bytes, pos: int) -> bool:
    """True where the log stops: padding (all 0x00 / 0xFF) or the 0xFFFFFFFF MR index."""
    head = data[pos : pos + EVENT2_HEADER_SIZE]
    if head.count(0xFF) == len(head) or head.count(0x00) == len(head):
        return True
    return int.from_bytes(head[:4], "little") == END_OF_LOG_MR_INDEX


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed TCG crypto-agile event log (optionally with the CCEL table it came with)."""

    header: HeaderEvent
    spec_id: SpecIdEvent
    events: tuple[Event, ...]
    trailing: bytes
    """Bytes after the end of the log (the log area's padding), kept for ``to_bytes``."""
    table: CcelTable | None = None

    @property
    def trailing_is_padding(self) -> bool:
        """True if everything after the log is 0x00 or 0xFF fill (nothing hidden after the end)."""
        return not self.trailing.translate(None, b"\x00\xff")

    @property
    def log_length(self) -> int:
        """Bytes of the log proper (header and events, no padding)."""
        return self.header_length + sum(len(e.to_bytes()) for e in self.events)

    @property
    def header_length(self) -> int:
        return len(self.header.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, table: CcelTable | None = None) -> EventLog:
        structure = "TCG event log"
        if len(data) > MAX_LOG_SIZE:
            message = f"log is {len(data)} bytes, expected at most {MAX_LOG_SIZE}"
            raise ParseError(message, structure=structure)
        if table is not None and len(data) > table.log_area_minimum_length:
            raise ParseError(
                f"log is {len(data)} bytes, larger than the CCEL log area "
                f"(LAML {table.log_area_minimum_length})",
                structure=structure,
            )
        r = Reader(data, structure)
        # 1. The SHA-1 format header record carrying the Spec ID event (TCG PFP 10.4.5.1).
        mr_index = r.u32("header.pcrIndex")
        event_type = r.u32("header.eventType")
        if event_type != EV_NO_ACTION:
            raise r.error(
                f"got {event_type:#x}, expected EV_NO_ACTION ({EV_NO_ACTION:#x}): not a crypto-agile log",
                "header.eventType",
                4,
            )
        digest = r.take(SHA1_DIGEST_SIZE, "header.digest")
        size = r.u32("header.eventSize")
        spec_at = r.pos
        spec_data = r.take(size, "header.event")
        header = HeaderEvent(mr_index, event_type, digest, spec_data)
        spec_id = SpecIdEvent.from_bytes(spec_data, base=spec_at)
        # 2. TCG_PCR_EVENT2 records until the end marker or the end of the data.
        events: list[Event] = []
        while r.remaining and not _is_end(data, r.pos):
            if len(events) >= MAX_EVENTS:
                raise r.error(f"more than {MAX_EVENTS} events", "events")
            events.append(_parse_event2(r, spec_id, len(events) + 1))
        trailing = data[r.pos :]
        return cls(header, spec_id, tuple(events), trailing, table)

    def to_bytes(self) -> bytes:
        """The log bytes exactly as parsed (header, events, padding)."""
        return self.header.to_bytes() + b"".join(e.to_bytes() for e in self.events) + self.trailing


def _parse_event2(r: Reader, spec_id: SpecIdEvent, number: int) -> Event:
    start = r.pos
    name = f"event[{number}]"
    mr_index = r.u32(f"{name}.pcrIndex")
    event_type = r.u32(f"{name}.eventType")
    count_at = r.pos
    count = r.u32(f"{name}.digests.count")
    if count > len(spec_id.algorithms):
        raise r.error(
            f"got {count} digests, expected at most {len(spec_id.algorithms)} (the Spec ID event's banks)",
            f"{name}.digests.count",
            count_at,
        )
    digests: list[tuple[int, bytes]] = []
    for i in range(count):
        alg_at = r.pos
        alg = r.u16(f"{name}.digests[{i}].hashAlg")
        size = spec_id.digest_size(alg)
        if size is None:
            message = f"algorithm {alg:#06x} is not declared in the Spec ID event"
            raise r.error(message, f"{name}.digests[{i}]", alg_at)
        if any(alg == known for known, _ in digests):
            raise r.error(f"algorithm {alg:#06x} appears twice", f"{name}.digests[{i}]", alg_at)
        digests.append((alg, r.take(size, f"{name}.digests[{i}].digest")))
    size_at = r.pos
    size = r.u32(f"{name}.eventSize")
    if size > r.remaining:
        raise r.error(
            f"event size {size} exceeds the {r.remaining} bytes left in the log (truncated?)",
            f"{name}.eventSize",
            size_at,
        )
    data = r.take(size, f"{name}.event")
    return Event(number, start, mr_index, event_type, tuple(digests), data)

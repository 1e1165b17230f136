"""Evidence of confide's *simulated* TEE (development only: it protects nothing).

The format is confide's own (there is no vendor specification); it is documented here and in
``docs/simulator.md``. All integers are little-endian, every field has a fixed width, and the
whole structure is :data:`SIM_EVIDENCE_SIZE` (268) bytes::

    offset size  field
    0x000   11   magic            b"CONFIDE-SIM"
    0x00B    1   version          1
    0x00C   32   marker           b"SIMULATED:NO-HARDWARE-PROTECTION" (fixed, loud)
    0x02C    4   flags            bit 0: debug; all other bits reserved, must be zero
    0x030    4   svn              security version number of the simulated platform
    0x034    8   timestamp        Unix seconds (UTC) at which the evidence was produced
    0x03C   48   measurement      SHA-384 launch measurement (see confide.sim.measure)
    0x06C   64   report_data      caller-chosen data (binds a key and a nonce)
    0x0AC   32   platform_key_id  SHA-256 of the raw 32-byte Ed25519 platform public key
    0x0CC   64   signature        Ed25519 (RFC 8032) over bytes [0x000, 0x0CC)

This module only parses and serialises; :mod:`confide.verify.sim` checks the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from confide.errors import ParseError
from confide.evidence._reader import Reader

__all__ = [
    "FLAG_DEBUG",
    "MAGIC",
    "MARKER",
    "MEASUREMENT_SIZE",
    "PLATFORM_KEY_ID_SIZE",
    "REPORT_DATA_SIZE",
    "SIGNATURE_SIZE",
    "SIGNED_SIZE",
    "SIM_EVIDENCE_SIZE",
    "VERSION",
    "SimEvidence",
]

STRUCTURE = "confide simulated evidence"

MAGIC = b"CONFIDE-SIM"
MAGIC_SIZE = len(MAGIC)  # 11
VERSION = 1
VERSION_SIZE = 1
MARKER = b"SIMULATED:NO-HARDWARE-PROTECTION"
MARKER_SIZE = 32
FLAGS_SIZE = 4
SVN_SIZE = 4
TIMESTAMP_SIZE = 8
MEASUREMENT_SIZE = 48  # SHA-384, the width of TDX MRTD and SEV-SNP MEASUREMENT
REPORT_DATA_SIZE = 64  # as SGX/TDX REPORTDATA and SEV-SNP REPORT_DATA
PLATFORM_KEY_ID_SIZE = 32  # SHA-256
SIGNATURE_SIZE = 64  # Ed25519, RFC 8032 section 5.1.6

FLAG_DEBUG = 0x1
_KNOWN_FLAGS = FLAG_DEBUG

SIGNED_SIZE = (
    MAGIC_SIZE
    + VERSION_SIZE
    + MARKER_SIZE
    + FLAGS_SIZE
    + SVN_SIZE
    + TIMESTAMP_SIZE
    + MEASUREMENT_SIZE
    + REPORT_DATA_SIZE
    + PLATFORM_KEY_ID_SIZE
)  # 0xCC
SIM_EVIDENCE_SIZE = SIGNED_SIZE + SIGNATURE_SIZE  # 0x10C = 268

assert len(MARKER) == MARKER_SIZE
assert SIGNED_SIZE == 0xCC


def _check_width(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise ParseError(f"got {len(value)} bytes, expected {size}", structure=STRUCTURE, field=name)


@dataclass(frozen=True, slots=True)
class SimEvidence:
    """One piece of simulated evidence (parsed, *not* verified)."""

    debug: bool
    svn: int
    timestamp: int
    measurement: bytes
    report_data: bytes
    platform_key_id: bytes
    signature: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise ParseError(f"got version {self.version}, expected {VERSION}", structure=STRUCTURE)
        if not 0 <= self.svn < 1 << (8 * SVN_SIZE):
            raise ParseError(f"got svn {self.svn}, expected 0..2^32-1", structure=STRUCTURE, field="svn")
        if not 0 <= self.timestamp < 1 << (8 * TIMESTAMP_SIZE):
            raise ParseError(
                f"got timestamp {self.timestamp}, expected 0..2^64-1", structure=STRUCTURE, field="timestamp"
            )
        _check_width(self.measurement, MEASUREMENT_SIZE, "measurement")
        _check_width(self.report_data, REPORT_DATA_SIZE, "report_data")
        _check_width(self.platform_key_id, PLATFORM_KEY_ID_SIZE, "platform_key_id")
        _check_width(self.signature, SIGNATURE_SIZE, "signature")

    @property
    def flags(self) -> int:
        return FLAG_DEBUG if self.debug else 0

    def signed_bytes(self) -> bytes:
        """The bytes the platform key signs: everything before the signature."""
        return b"".join(
            (
                MAGIC,
                self.version.to_bytes(VERSION_SIZE, "little"),
                MARKER,
                self.flags.to_bytes(FLAGS_SIZE, "little"),
                self.svn.to_bytes(SVN_SIZE, "little"),
                self.timestamp.to_bytes(TIMESTAMP_SIZE, "little"),
                self.measurement,
                self.report_data,
                self.platform_key_id,
            )
        )

    def to_bytes(self) -> bytes:
        return self.signed_bytes() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SimEvidence:
        r = Reader(bytes(data), STRUCTURE)
        if len(data) != SIM_EVIDENCE_SIZE:
            # Checked first so that a truncated or padded blob is named as such.
            if len(data) >= MAGIC_SIZE and bytes(data[:MAGIC_SIZE]) != MAGIC:
                raise r.error(f"got {bytes(data[:MAGIC_SIZE])!r}, expected {MAGIC!r}", "magic", 0)
            raise r.error(f"got {len(data)} bytes, expected exactly {SIM_EVIDENCE_SIZE}", "length", 0)
        magic = r.take(MAGIC_SIZE, "magic")
        if magic != MAGIC:
            raise r.error(f"got {magic!r}, expected {MAGIC!r}", "magic", 0)
        version_pos = r.pos
        version = r.u8("version")
        if version != VERSION:
            raise r.error(f"got version {version}, expected {VERSION}", "version", version_pos)
        marker_pos = r.pos
        marker = r.take(MARKER_SIZE, "marker")
        if marker != MARKER:
            raise r.error(f"got {marker!r}, expected {MARKER!r}", "marker", marker_pos)
        flags_pos = r.pos
        flags = r.u32("flags")
        if flags & ~_KNOWN_FLAGS:
            raise r.error(
                f"got reserved flag bits {flags & ~_KNOWN_FLAGS:#x}, expected 0", "flags", flags_pos
            )
        svn = r.u32("svn")
        timestamp = r.u64("timestamp")
        measurement = r.take(MEASUREMENT_SIZE, "measurement")
        report_data = r.take(REPORT_DATA_SIZE, "report_data")
        platform_key_id = r.take(PLATFORM_KEY_ID_SIZE, "platform_key_id")
        signature = r.take(SIGNATURE_SIZE, "signature")
        r.expect_end()
        return cls(
            debug=bool(flags & FLAG_DEBUG),
            svn=svn,
            timestamp=timestamp,
            measurement=measurement,
            report_data=report_data,
            platform_key_id=platform_key_id,
            signature=signature,
            version=version,
        )

"""Evidence of confide's *simulated* TEE (development only: it protects nothing).

The format is confide's own (there is no vendor specification); it is documented here and in
``docs/simulator.md``. All integers are little-endian, every field has a fixed width, and the
whole structure is :data:`SIM_EVIDENCE_SIZE` (268) bytes in both versions, which differ only in
the version byte and in how the platform key and the signature are defined::

    offset size  field
    0x000   11   magic            b"CONFIDE-SIM"
    0x00B    1   version          1 (Ed25519) or 2 (ECDSA P-256)
    0x00C   32   marker           b"SIMULATED:NO-HARDWARE-PROTECTION" (fixed, loud)
    0x02C    4   flags            bit 0: debug; all other bits reserved, must be zero
    0x030    4   svn              security version number of the simulated platform
    0x034    8   timestamp        Unix seconds (UTC) at which the evidence was produced
    0x03C   48   measurement      SHA-384 launch measurement (see confide.sim.measure)
    0x06C   64   report_data      caller-chosen data (binds a key and a nonce)
    0x0AC   32   platform_key_id  v1: SHA-256 of the raw 32-byte Ed25519 platform public key
                                  v2: SHA-256 of the 65-byte uncompressed P-256 point
                                  (SEC 1 v2 section 2.3.3: 0x04 || X || Y)
    0x0CC   64   signature        v1: Ed25519 (RFC 8032) over bytes [0x000, 0x0CC)
                                  v2: ECDSA P-256 with SHA-256 (FIPS 186-5 section 6.4) over
                                  bytes [0x000, 0x0CC), as r || s, each a 32-byte big-endian
                                  integer (the encoding of DCAP quote signatures)

This module only parses and serialises; :mod:`confide.verify.sim` checks the signature.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from confide.errors import ParseError

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
    "VERSIONS",
    "VERSION_ED25519",
    "VERSION_P256",
    "SimEvidence",
]

STRUCTURE = "confide simulated evidence"

MAGIC = b"CONFIDE-SIM"
MAGIC_SIZE = len(MAGIC)  # 11
VERSION_ED25519 = 1  # signed with Ed25519
VERSION_P256 = 2  # signed with ECDSA P-256 / SHA-256
VERSIONS = (VERSION_ED25519, VERSION_P256)
VERSION = VERSION_ED25519  # the dataclass's default (the format before version 2 existed)
VERSION_SIZE = 1
MARKER = b"SIMULATED:NO-HARDWARE-PROTECTION"
MARKER_SIZE = 32
FLAGS_SIZE = 4
SVN_SIZE = 4
TIMESTAMP_SIZE = 8
MEASUREMENT_SIZE = 48  # SHA-384, the width of TDX MRTD and SEV-SNP MEASUREMENT
REPORT_DATA_SIZE = 64  # as SGX/TDX REPORTDATA and SEV-SNP REPORT_DATA
PLATFORM_KEY_ID_SIZE = 32  # SHA-256
SIGNATURE_SIZE = 64  # v1: Ed25519, RFC 8032 section 5.1.6; v2: ECDSA P-256 r || s (2 x 32 bytes)

_EXPECTED_VERSIONS = f"{VERSION_ED25519} or {VERSION_P256}"

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

# The layout above as one struct (little-endian, no padding): the signed part, then the signature.
_SIGNED = struct.Struct(
    f"<{MAGIC_SIZE}sB{MARKER_SIZE}sIIQ{MEASUREMENT_SIZE}s{REPORT_DATA_SIZE}s{PLATFORM_KEY_ID_SIZE}s"
)
_LAYOUT = struct.Struct(_SIGNED.format + f"{SIGNATURE_SIZE}s")
assert _SIGNED.size == SIGNED_SIZE and _LAYOUT.size == SIM_EVIDENCE_SIZE


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
        if self.version not in VERSIONS:
            raise ParseError(
                f"got version {self.version}, expected {_EXPECTED_VERSIONS}", structure=STRUCTURE
            )
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
        """The bytes the platform key signs: everything before the signature (the widths and
        ranges were checked by ``__post_init__``, so the struct neither pads nor truncates)."""
        return _SIGNED.pack(
            MAGIC,
            self.version,
            MARKER,
            FLAG_DEBUG if self.debug else 0,
            self.svn,
            self.timestamp,
            self.measurement,
            self.report_data,
            self.platform_key_id,
        )

    def to_bytes(self) -> bytes:
        return self.signed_bytes() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SimEvidence:
        data = bytes(data)
        if len(data) != SIM_EVIDENCE_SIZE:
            # Checked first so that a truncated or padded blob is named as such.
            if len(data) >= MAGIC_SIZE and data[:MAGIC_SIZE] != MAGIC:
                raise _error(f"got {data[:MAGIC_SIZE]!r}, expected {MAGIC!r}", "magic", 0)
            raise _error(f"got {len(data)} bytes, expected exactly {SIM_EVIDENCE_SIZE}", "length", 0)
        # Exactly the layout's size: every field is there, so the fixed layout is read in one
        # struct call (which cannot fail), then checked field by field in the layout's order.
        (magic, version, marker, flags, svn, timestamp, measurement, report_data, platform_key_id,
         signature) = _LAYOUT.unpack(data)  # fmt: skip
        if magic != MAGIC:
            raise _error(f"got {magic!r}, expected {MAGIC!r}", "magic", 0)
        if version not in VERSIONS:
            raise _error(f"got version {version}, expected {_EXPECTED_VERSIONS}", "version", MAGIC_SIZE)
        if marker != MARKER:
            raise _error(f"got {marker!r}, expected {MARKER!r}", "marker", MAGIC_SIZE + VERSION_SIZE)
        if flags & ~_KNOWN_FLAGS:
            raise _error(
                f"got reserved flag bits {flags & ~_KNOWN_FLAGS:#x}, expected 0", "flags", _FLAGS_OFFSET
            )
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


_FLAGS_OFFSET = MAGIC_SIZE + VERSION_SIZE + MARKER_SIZE  # 0x02C


def _error(message: str, field: str, offset: int) -> ParseError:
    return ParseError(message, structure=STRUCTURE, field=field, offset=offset)

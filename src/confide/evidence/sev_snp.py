"""AMD SEV-SNP ``ATTESTATION_REPORT`` (versions 2, 3 and 5).

Layout: AMD "SEV Secure Nested Paging Firmware ABI Specification" (publication 56860),
section 7.3 "Attestation", Table 23 "ATTESTATION_REPORT Structure"; the guest policy is
Table 9 ("Guest Policy Structure"), ``TCB_VERSION`` is Table 3 (Milan/Genoa) and
Table 4 (family 1Ah, Turin), ``PLATFORM_INFO`` Table 24, and the ECDSA P-384 signature
format Table 141 (``R`` and ``S`` little-endian, zero-extended to 72 bytes).

Version history of the report (ABI revision history):

* v2: the base layout (ABI 1.51+).
* v3: ``CPUID_FAM_ID``, ``CPUID_MOD_ID``, ``CPUID_STEP`` at 0x188..0x18A (ABI 1.55).
* v5: ``LAUNCH_MIT_VECTOR`` and ``CURRENT_MIT_VECTOR`` at 0x1F8 and 0x200 (ABI 1.58).

Other versions (0, 1, 4, 6+) are rejected with a :class:`~confide.errors.ParseError`.

This module only parses. Reserved ranges are kept byte for byte (so ``to_bytes`` round-trips
exactly); judging them, and every signature, is :mod:`confide.verify.sev_snp`'s job.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from confide.evidence._reader import Reader

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "SUPPORTED_VERSIONS",
    "AttestationReport",
    "GuestPolicy",
    "PlatformInfo",
    "Product",
    "SigningKey",
    "TcbVersion",
    "product_from_cpuid",
]

_STRUCTURE = "SEV-SNP ATTESTATION_REPORT"

# Table 23: the report is 0x4A0 bytes; the signature covers 0x000..0x29F.
REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
VERSION_CPUID = 3  # first version with CPUID_FAM_ID/MOD_ID/STEP
VERSION_MIT_VECTOR = 5  # first version with LAUNCH_/CURRENT_MIT_VECTOR

# Field widths of Table 23.
FAMILY_ID_SIZE = 16
IMAGE_ID_SIZE = 16
REPORT_DATA_SIZE = 64
MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
ID_KEY_DIGEST_SIZE = 48
AUTHOR_KEY_DIGEST_SIZE = 48
REPORT_ID_SIZE = 32
REPORT_ID_MA_SIZE = 32
CHIP_ID_SIZE = 64
RESERVED_4C_SIZE = 4  # 0x04C..0x04F
RESERVED_188_V2_SIZE = 24  # 0x188..0x19F (v2)
RESERVED_18B_V3_SIZE = 21  # 0x18B..0x19F (v3+, after the three CPUID bytes)
RESERVED_1F8_V2_SIZE = 168  # 0x1F8..0x29F (v2, v3)
RESERVED_208_V5_SIZE = 152  # 0x208..0x29F (v5)
# Table 141 (ECDSA P-384 with SHA-384 signature): R, S, then reserved up to 0x200 bytes.
SIGNATURE_FIELD_SIZE = 0x200
ECDSA_COMPONENT_SIZE = 72
SIGNATURE_RESERVED_SIZE = SIGNATURE_FIELD_SIZE - 2 * ECDSA_COMPONENT_SIZE

# Table 23 as struct formats: up to REPORTED_TCB, then the version-specific parts.
_HEAD = "<IIQ16s16sIIQQI4s64s48s32s48s48s32s32sQ"
_CPUID_V2 = f"{RESERVED_188_V2_SIZE}s"
_CPUID_V3 = f"BBB{RESERVED_18B_V3_SIZE}s"
_MIDDLE = "64sQBBBBBBBBQ"
_TAIL_V2 = f"{RESERVED_1F8_V2_SIZE}s"
_TAIL_V5 = f"QQ{RESERVED_208_V5_SIZE}s"
_SIGNATURE = f"{ECDSA_COMPONENT_SIZE}s{ECDSA_COMPONENT_SIZE}s{SIGNATURE_RESERVED_SIZE}s"
_LAYOUTS = {
    2: struct.Struct(_HEAD + _CPUID_V2 + _MIDDLE + _TAIL_V2 + _SIGNATURE),
    3: struct.Struct(_HEAD + _CPUID_V3 + _MIDDLE + _TAIL_V2 + _SIGNATURE),
    5: struct.Struct(_HEAD + _CPUID_V3 + _MIDDLE + _TAIL_V5 + _SIGNATURE),
}
assert all(layout.size == REPORT_SIZE for layout in _LAYOUTS.values())

# 0x048 (Table 23): bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY.
_AUTHOR_KEY_EN_BIT = 0
_MASK_CHIP_KEY_BIT = 1
_SIGNING_KEY_SHIFT = 2
_SIGNING_KEY_MASK = 0b111


class Product(enum.StrEnum):
    """AMD EPYC generations with SEV-SNP (the names AMD KDS uses in its URLs)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    def __str__(self) -> str:
        return self.value


# CPUID Fn0000_0001_EAX as reported in v3+ (combined family / model numbers).
_FAMILY_ZEN3_ZEN4 = 0x19
_FAMILY_ZEN5 = 0x1A


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Map the report's ``CPUID_FAM_ID``/``CPUID_MOD_ID`` to a product (None if unknown).

    Family 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh Genoa (incl. Bergamo/Siena);
    family 1Ah models 00h-1Fh are Turin.
    """
    if family == _FAMILY_ZEN3_ZEN4:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    if family == _FAMILY_ZEN5 and model <= 0x1F:
        return Product.TURIN
    return None


class SigningKey(enum.IntEnum):
    """``SIGNING_KEY`` (report 0x048 bits 4:2): which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A ``TCB_VERSION`` (64 bits) decoded in one of AMD's two layouts.

    Milan/Genoa (Table 3): byte 0 BOOT_LOADER, 1 TEE, 2..5 reserved, 6 SNP, 7 MICROCODE.
    Turin (Table 4):       byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4..6 reserved, 7 MICROCODE.
    """

    raw: int
    turin: bool

    @property
    def _bytes(self) -> bytes:
        return self.raw.to_bytes(8, "little")

    @property
    def bootloader(self) -> int:
        return self._bytes[1 if self.turin else 0]

    @property
    def tee(self) -> int:
        return self._bytes[2 if self.turin else 1]

    @property
    def snp(self) -> int:
        return self._bytes[3 if self.turin else 6]

    @property
    def microcode(self) -> int:
        return self._bytes[7]

    @property
    def fmc(self) -> int | None:
        return self._bytes[0] if self.turin else None

    @property
    def reserved(self) -> bytes:
        b = self._bytes
        return b[4:7] if self.turin else b[2:6]

    @classmethod
    def compose(
        cls, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int | None = None
    ) -> TcbVersion:
        """Build the raw value from components (Turin layout iff ``fmc`` is given)."""
        if fmc is not None:
            raw = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        else:
            raw = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
        return cls(int.from_bytes(raw, "little"), fmc is not None)

    def to_dict(self) -> dict[str, int]:
        b = self.raw.to_bytes(8, "little")
        if self.turin:
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest ``POLICY`` (Table 9), decoded. ``raw`` keeps every bit, known or not."""

    raw: int

    ABI_MINOR_SHIFT = 0
    ABI_MAJOR_SHIFT = 8
    SMT_BIT = 16
    RESERVED_ONE_BIT = 17  # must be 1
    MIGRATE_MA_BIT = 18
    DEBUG_BIT = 19
    SINGLE_SOCKET_BIT = 20
    CXL_ALLOW_BIT = 21
    MEM_AES_256_XTS_BIT = 22
    RAPL_DIS_BIT = 23
    CIPHERTEXT_HIDING_DRAM_BIT = 24
    PAGE_SWAP_DISABLE_BIT = 25
    KNOWN_BITS = (1 << 26) - 1

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    @property
    def abi_minor(self) -> int:
        return self.raw >> self.ABI_MINOR_SHIFT & 0xFF

    @property
    def abi_major(self) -> int:
        return self.raw >> self.ABI_MAJOR_SHIFT & 0xFF

    @property
    def smt(self) -> bool:
        return self._bit(self.SMT_BIT)

    @property
    def reserved_one(self) -> bool:
        return self._bit(self.RESERVED_ONE_BIT)

    @property
    def migrate_ma(self) -> bool:
        return self._bit(self.MIGRATE_MA_BIT)

    @property
    def debug(self) -> bool:
        return self._bit(self.DEBUG_BIT)

    @property
    def single_socket(self) -> bool:
        return self._bit(self.SINGLE_SOCKET_BIT)

    @property
    def cxl_allow(self) -> bool:
        return self._bit(self.CXL_ALLOW_BIT)

    @property
    def mem_aes_256_xts(self) -> bool:
        return self._bit(self.MEM_AES_256_XTS_BIT)

    @property
    def rapl_dis(self) -> bool:
        return self._bit(self.RAPL_DIS_BIT)

    @property
    def ciphertext_hiding_dram(self) -> bool:
        return self._bit(self.CIPHERTEXT_HIDING_DRAM_BIT)

    @property
    def page_swap_disable(self) -> bool:
        return self._bit(self.PAGE_SWAP_DISABLE_BIT)

    @property
    def unknown_bits(self) -> int:
        """Bits 63:26, reserved (must be zero) in the ABI revisions this parser knows."""
        return self.raw & ~self.KNOWN_BITS

    def to_dict(self) -> dict[str, int | bool]:
        raw = self.raw
        return {
            "abi_minor": raw & 0xFF,
            "abi_major": raw >> 8 & 0xFF,
            "smt": bool(raw >> self.SMT_BIT & 1),
            "migrate_ma": bool(raw >> self.MIGRATE_MA_BIT & 1),
            "debug": bool(raw >> self.DEBUG_BIT & 1),
            "single_socket": bool(raw >> self.SINGLE_SOCKET_BIT & 1),
            "cxl_allow": bool(raw >> self.CXL_ALLOW_BIT & 1),
            "mem_aes_256_xts": bool(raw >> self.MEM_AES_256_XTS_BIT & 1),
            "rapl_dis": bool(raw >> self.RAPL_DIS_BIT & 1),
            "ciphertext_hiding_dram": bool(raw >> self.CIPHERTEXT_HIDING_DRAM_BIT & 1),
            "page_swap_disable": bool(raw >> self.PAGE_SWAP_DISABLE_BIT & 1),
            "reserved_bit17_one": bool(raw >> self.RESERVED_ONE_BIT & 1),
            "unknown_bits": raw & ~self.KNOWN_BITS,
        }


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """``PLATFORM_INFO`` (Table 24), decoded. ``raw`` keeps every bit."""

    raw: int

    SMT_EN_BIT = 0
    TSME_EN_BIT = 1
    ECC_EN_BIT = 2
    RAPL_DIS_BIT = 3
    CIPHERTEXT_HIDING_EN_BIT = 4
    ALIAS_CHECK_COMPLETE_BIT = 5
    TIO_EN_BIT = 7
    KNOWN_BITS = 0b1011_1111

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    def to_dict(self) -> dict[str, int | bool]:
        raw = self.raw
        return {
            "smt_en": bool(raw >> self.SMT_EN_BIT & 1),
            "tsme_en": bool(raw >> self.TSME_EN_BIT & 1),
            "ecc_en": bool(raw >> self.ECC_EN_BIT & 1),
            "rapl_dis": bool(raw >> self.RAPL_DIS_BIT & 1),
            "ciphertext_hiding_en": bool(raw >> self.CIPHERTEXT_HIDING_EN_BIT & 1),
            "alias_check_complete": bool(raw >> self.ALIAS_CHECK_COMPLETE_BIT & 1),
            "tio_en": bool(raw >> self.TIO_EN_BIT & 1),
            "unknown_bits": raw & ~self.KNOWN_BITS,
        }


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """One SEV-SNP ``ATTESTATION_REPORT`` (Table 23), every field, offsets in comments."""

    version: int  # 0x000 u32
    guest_svn: int  # 0x004 u32
    policy: GuestPolicy  # 0x008 u64
    family_id: bytes  # 0x010 [16]
    image_id: bytes  # 0x020 [16]
    vmpl: int  # 0x030 u32
    signature_algo: int  # 0x034 u32 (1 = ECDSA P-384 with SHA-384)
    current_tcb_raw: int  # 0x038 TCB_VERSION
    platform_info: PlatformInfo  # 0x040 u64
    key_info: int  # 0x048 u32: AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY, reserved 31:5
    reserved_04c: bytes  # 0x04C [4]
    report_data: bytes  # 0x050 [64]
    measurement: bytes  # 0x090 [48]
    host_data: bytes  # 0x0C0 [32]
    id_key_digest: bytes  # 0x0E0 [48]
    author_key_digest: bytes  # 0x110 [48]
    report_id: bytes  # 0x140 [32]
    report_id_ma: bytes  # 0x160 [32]
    reported_tcb_raw: int  # 0x180 TCB_VERSION
    cpuid_fam_id: int | None  # 0x188 u8 (v3+)
    cpuid_mod_id: int | None  # 0x189 u8 (v3+)
    cpuid_step: int | None  # 0x18A u8 (v3+)
    reserved_188: bytes  # 0x188 [24] (v2) / 0x18B [21] (v3+)
    chip_id: bytes  # 0x1A0 [64]
    committed_tcb_raw: int  # 0x1E0 TCB_VERSION
    current_build: int  # 0x1E8 u8
    current_minor: int  # 0x1E9 u8
    current_major: int  # 0x1EA u8
    reserved_1eb: int  # 0x1EB u8
    committed_build: int  # 0x1EC u8
    committed_minor: int  # 0x1ED u8
    committed_major: int  # 0x1EE u8
    reserved_1ef: int  # 0x1EF u8
    launch_tcb_raw: int  # 0x1F0 TCB_VERSION
    launch_mit_vector: int | None  # 0x1F8 u64 (v5+)
    current_mit_vector: int | None  # 0x200 u64 (v5+)
    reserved_1f8: bytes  # 0x1F8 [168] (v2, v3) / 0x208 [152] (v5)
    signature_r: bytes  # 0x2A0 [72] little-endian
    signature_s: bytes  # 0x2E8 [72] little-endian
    signature_reserved: bytes  # 0x330 [368]

    # -- derived views -------------------------------------------------------------------

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info >> _AUTHOR_KEY_EN_BIT & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info >> _MASK_CHIP_KEY_BIT & 1)

    @property
    def signing_key_value(self) -> int:
        return self.key_info >> _SIGNING_KEY_SHIFT & _SIGNING_KEY_MASK

    @property
    def signing_key(self) -> SigningKey | None:
        """VCEK, VLEK or NONE; None for the reserved values 2..6."""
        try:
            return SigningKey(self.signing_key_value)
        except ValueError:
            return None

    @property
    def key_info_reserved(self) -> int:
        return self.key_info >> 5

    @property
    def cpuid_product(self) -> Product | None:
        """The product named by the v3+ CPUID fields (None for v2 or unknown models)."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb_layout_is_turin(self, product: Product | None = None) -> bool:
        """Whether the TCB_VERSION fields use the Turin layout.

        ``product`` (from the certificate chain) wins; otherwise the v3+ CPUID family decides;
        a v2 report without either is read in the Milan/Genoa layout.
        """
        chosen = product or self.cpuid_product
        return chosen is Product.TURIN

    def current_tcb(self, product: Product | None = None) -> TcbVersion:
        return TcbVersion(self.current_tcb_raw, self.tcb_layout_is_turin(product))

    def reported_tcb(self, product: Product | None = None) -> TcbVersion:
        return TcbVersion(self.reported_tcb_raw, self.tcb_layout_is_turin(product))

    def committed_tcb(self, product: Product | None = None) -> TcbVersion:
        return TcbVersion(self.committed_tcb_raw, self.tcb_layout_is_turin(product))

    def launch_tcb(self, product: Product | None = None) -> TcbVersion:
        return TcbVersion(self.launch_tcb_raw, self.tcb_layout_is_turin(product))

    @property
    def signature_r_int(self) -> int:
        return int.from_bytes(self.signature_r, "little")

    @property
    def signature_s_int(self) -> int:
        return int.from_bytes(self.signature_s, "little")

    # -- parsing -------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        """Parse exactly one report of ``REPORT_SIZE`` bytes."""
        data = bytes(data)
        r = Reader(data, _STRUCTURE)
        if len(data) != REPORT_SIZE:
            raise r.error(f"got {len(data)} bytes, expected {REPORT_SIZE} (0x4A0)", "length", 0)
        version = r.u32("VERSION")
        if version not in SUPPORTED_VERSIONS:
            raise r.error(
                f"unsupported report version: got {version}, expected one of "
                + ", ".join(str(v) for v in SUPPORTED_VERSIONS),
                "VERSION",
                0,
            )
        # The length is exact and the version known, so every field below is in bounds: one
        # precompiled struct per layout reads them all (field order and widths of Table 23).
        values = list(_LAYOUTS[version].unpack(data))
        if version < VERSION_CPUID:
            values[19:19] = [None, None, None]
        if version < VERSION_MIT_VECTOR:
            values[34:34] = [None, None]
        values[2] = GuestPolicy(values[2])
        values[8] = PlatformInfo(values[8])
        return cls(*values)

    def signed_bytes(self) -> bytes:
        """Bytes 0x000..0x29F: what the ECDSA signature covers."""
        return self.to_bytes()[:SIGNED_SIZE]

    def to_bytes(self) -> bytes:
        """Serialise back to the 0x4A0-byte ABI form (exact inverse of :meth:`from_bytes`)."""
        u32 = _le(4)
        u64 = _le(8)
        parts = [
            u32(self.version),
            u32(self.guest_svn),
            u64(self.policy.raw),
            self.family_id,
            self.image_id,
            u32(self.vmpl),
            u32(self.signature_algo),
            u64(self.current_tcb_raw),
            u64(self.platform_info.raw),
            u32(self.key_info),
            self.reserved_04c,
            self.report_data,
            self.measurement,
            self.host_data,
            self.id_key_digest,
            self.author_key_digest,
            self.report_id,
            self.report_id_ma,
            u64(self.reported_tcb_raw),
        ]
        if self.version >= VERSION_CPUID:
            parts.append(bytes([self.cpuid_fam_id or 0, self.cpuid_mod_id or 0, self.cpuid_step or 0]))
        parts += [
            self.reserved_188,
            self.chip_id,
            u64(self.committed_tcb_raw),
            bytes([self.current_build, self.current_minor, self.current_major, self.reserved_1eb]),
            bytes([self.committed_build, self.committed_minor, self.committed_major, self.reserved_1ef]),
            u64(self.launch_tcb_raw),
        ]
        if self.version >= VERSION_MIT_VECTOR:
            parts += [u64(self.launch_mit_vector or 0), u64(self.current_mit_vector or 0)]
        parts += [self.reserved_1f8, self.signature_r, self.signature_s, self.signature_reserved]
        out = b"".join(parts)
        if len(out) != REPORT_SIZE:
            raise ValueError(f"field sizes add up to {len(out)} bytes, expected {REPORT_SIZE}")
        return out


def _le(width: int) -> Callable[[int], bytes]:
    def pack(value: int) -> bytes:
        return value.to_bytes(width, "little")

    return pack

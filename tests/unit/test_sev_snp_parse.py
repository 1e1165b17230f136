from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.evidence.sev_snp import (
    REPORT_SIZE,
    AttestationReport,
    GuestPolicy,
    PlatformInfo,
    Product,
    SigningKey,
    TcbVersion,
    product_from_cpuid,
)

ASSETS = Path(__file__).parent.parent / "assets" / "sev-snp"
REPORTS = sorted(ASSETS.rglob("*.bin"))


def load(rel: str) -> bytes:
    return (ASSETS / rel).read_bytes()


def test_assets_present() -> None:
    assert len(REPORTS) == 5


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_real_reports_round_trip(path: Path) -> None:
    raw = path.read_bytes()
    report = AttestationReport.from_bytes(raw)
    assert report.to_bytes() == raw
    assert report.signed_bytes() == raw[:0x2A0]


def test_go_sev_guest_report_fields() -> None:
    # MANIFEST §3: Milan report v2, VMPL0, policy 0xb0000, report_data 0102030405...,
    # chip_id 3ac3fe21..., reported TCB bl=2 tee=0 snp=5 ucode=68.
    r = AttestationReport.from_bytes(load("google-go-sev-guest/attestation.bin"))
    assert r.version == 2
    assert r.vmpl == 0
    assert r.policy.raw == 0xB0000
    assert r.policy.debug is True
    assert r.policy.smt is True
    assert r.policy.migrate_ma is False
    assert r.report_data.hex().startswith("0102030405")
    assert r.chip_id.hex().startswith("3ac3fe21")
    assert r.reported_tcb().to_dict() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert r.cpuid_fam_id is None and r.cpuid_product is None
    assert r.launch_mit_vector is None
    assert r.signing_key is SigningKey.VCEK
    assert r.signature_algo == 1
    assert (r.current_major, r.current_minor, r.current_build) == (1, 49, 3)


def test_trustee_reports_fields() -> None:
    r = AttestationReport.from_bytes(load("trustee/test-report.bin"))
    assert (r.version, r.guest_svn, r.policy.raw) == (2, 4, 0x3001F)
    assert r.policy.abi_minor == 0x1F and r.policy.abi_major == 0
    assert r.policy.debug is False
    v = AttestationReport.from_bytes(load("trustee/test-vlek-report.bin"))
    assert v.version == 3
    assert v.vmpl == 1
    assert v.signing_key is SigningKey.VLEK
    assert (v.cpuid_fam_id, v.cpuid_mod_id, v.cpuid_step) == (0x19, 0x01, 0x01)
    assert v.cpuid_product is Product.MILAN
    assert v.platform_info.to_dict()["tsme_en"] is True


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_versions_are_rejected(version: int) -> None:
    raw = bytearray(load("google-go-sev-guest/attestation.bin"))
    raw[0:4] = version.to_bytes(4, "little")
    with pytest.raises(ParseError) as exc:
        AttestationReport.from_bytes(bytes(raw))
    assert exc.value.field == "VERSION"
    assert exc.value.offset == 0
    assert f"got {version}" in str(exc.value)
    assert "2, 3, 5" in str(exc.value)


@pytest.mark.parametrize("length", [0, 1, 0x2A0, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE])
def test_wrong_length_is_rejected(length: int) -> None:
    raw = (load("google-go-sev-guest/attestation.bin") * 2)[:length]
    with pytest.raises(ParseError) as exc:
        AttestationReport.from_bytes(raw)
    assert exc.value.field == "length"
    assert f"got {length} bytes" in str(exc.value)


def test_v5_layout_round_trips_with_mitigation_vectors() -> None:
    raw = bytearray(load("trustee/test-vlek-report.bin"))
    raw[0:4] = (5).to_bytes(4, "little")
    raw[0x1F8:0x200] = (0x1122).to_bytes(8, "little")
    raw[0x200:0x208] = (0x3344).to_bytes(8, "little")
    r = AttestationReport.from_bytes(bytes(raw))
    assert (r.launch_mit_vector, r.current_mit_vector) == (0x1122, 0x3344)
    assert len(r.reserved_1f8) == 152
    assert r.to_bytes() == bytes(raw)
    # The same bytes read as v3 keep them in the reserved range instead.
    raw[0:4] = (3).to_bytes(4, "little")
    r3 = AttestationReport.from_bytes(bytes(raw))
    assert r3.launch_mit_vector is None
    assert r3.reserved_1f8[:8] == (0x1122).to_bytes(8, "little")


def test_turin_tcb_layout_is_chosen_from_cpuid() -> None:
    raw = bytearray(load("trustee/test-vlek-report.bin"))
    raw[0x188] = 0x1A  # family 1Ah: Turin
    raw[0x189] = 0x02
    raw[0x180:0x188] = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    r = AttestationReport.from_bytes(bytes(raw))
    assert r.cpuid_product is Product.TURIN
    assert r.reported_tcb().to_dict() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    # Read as Milan/Genoa the same bytes mean something else.
    assert r.reported_tcb(Product.GENOA).to_dict() == {"bootloader": 1, "tee": 2, "snp": 0, "microcode": 9}


def test_tcb_compose_inverts_decode() -> None:
    t = TcbVersion.compose(fmc=1, bootloader=2, tee=3, snp=4, microcode=5)
    assert t.turin and t.to_dict() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    m = TcbVersion.compose(bootloader=2, tee=0, snp=5, microcode=68)
    assert not m.turin
    assert m.raw == AttestationReport.from_bytes(load("google-go-sev-guest/attestation.bin")).reported_tcb_raw


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (16, "smt"),
        (18, "migrate_ma"),
        (19, "debug"),
        (20, "single_socket"),
        (21, "cxl_allow"),
        (22, "mem_aes_256_xts"),
        (23, "rapl_dis"),
        (24, "ciphertext_hiding_dram"),
        (25, "page_swap_disable"),
    ],
)
def test_policy_bits(bit: int, name: str) -> None:
    base = GuestPolicy(1 << 17).to_dict()
    flipped = GuestPolicy((1 << 17) | (1 << bit)).to_dict()
    assert base[name] is False
    assert flipped[name] is True
    assert {k for k in base if base[k] != flipped[k]} == {name}


def test_policy_abi_and_unknown_bits() -> None:
    p = GuestPolicy(0x0305 | (1 << 17) | (1 << 40))
    assert (p.abi_major, p.abi_minor) == (3, 5)
    assert p.unknown_bits == 1 << 40


@pytest.mark.parametrize(
    ("bit", "name"),
    [(0, "smt_en"), (1, "tsme_en"), (2, "ecc_en"), (3, "rapl_dis"), (4, "ciphertext_hiding_en"),
     (5, "alias_check_complete"), (7, "tio_en")],
)  # fmt: skip
def test_platform_info_bits(bit: int, name: str) -> None:
    assert PlatformInfo(1 << bit).to_dict()[name] is True
    assert PlatformInfo(0).to_dict()[name] is False


def test_signing_key_field() -> None:
    raw = bytearray(load("google-go-sev-guest/attestation.bin"))
    for value, expected in [(0, SigningKey.VCEK), (1, SigningKey.VLEK), (7, SigningKey.NONE), (3, None)]:
        raw[0x48] = value << 2 | 0b11
        r = AttestationReport.from_bytes(bytes(raw))
        assert r.signing_key is expected
        assert r.author_key_en and r.mask_chip_key


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [(0x19, 0x01, Product.MILAN), (0x19, 0x11, Product.GENOA), (0x19, 0xA0, Product.GENOA),
     (0x1A, 0x02, Product.TURIN), (0x1A, 0x11, Product.TURIN), (0x17, 0x31, None), (0x19, 0x61, None)],
)  # fmt: skip
def test_product_from_cpuid(family: int, model: int, product: Product | None) -> None:
    assert product_from_cpuid(family, model) is product


def test_replace_and_round_trip_every_version() -> None:
    base = AttestationReport.from_bytes(load("trustee/test-vlek-report.bin"))
    v2 = dataclasses.replace(base, version=2, cpuid_fam_id=None, cpuid_mod_id=None, cpuid_step=None,
                             reserved_188=bytes(24))  # fmt: skip
    assert AttestationReport.from_bytes(v2.to_bytes()) == v2
    v5 = dataclasses.replace(
        base, version=5, launch_mit_vector=1, current_mit_vector=2, reserved_1f8=bytes(152)
    )
    assert AttestationReport.from_bytes(v5.to_bytes()) == v5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=REPORT_SIZE + 16))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        report = AttestationReport.from_bytes(data)
    except ParseError:
        return
    assert report.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 3, 5]), st.binary(min_size=REPORT_SIZE - 4, max_size=REPORT_SIZE - 4))
def test_arbitrary_reports_of_known_versions_round_trip(version: int, body: bytes) -> None:
    data = version.to_bytes(4, "little") + body
    report = AttestationReport.from_bytes(data)
    assert report.to_bytes() == data
    report.reported_tcb().to_dict()
    report.policy.to_dict()
    report.platform_info.to_dict()

"""Parsing NVIDIA SPDM attestation reports and RIM SWID tags."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.evidence.nvidia import (
    NvidiaAttestationReport,
    OpaqueField,
    OpaqueFieldType,
    encode_opaque_data,
    parse_opaque_data,
)
from confide.evidence.nvidia_rim import ReferenceManifest

ASSETS = Path(__file__).parent.parent / "assets" / "nvidia"
REPORT = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
REQUEST_SIZE = 37


def test_parses_sample_report_structurally() -> None:
    report = NvidiaAttestationReport.from_bytes(REPORT)
    assert report.to_bytes() == REPORT
    assert report.request.version == 0x11
    assert report.request.nonce is not None and report.request.nonce.hex() == NONCE
    assert report.request.param2 == 0xFF  # all measurements
    assert len(report.response.blocks) == 64
    assert len(report.signature) == 96
    assert report.signed_bytes == REPORT[:-96]
    assert report.response.field(OpaqueFieldType.DRIVER_VERSION) == b"550.90.07\x00"


def test_measurements_match_trustee_claims() -> None:
    expected = json.loads((ASSETS / "hopperAttestationReport-claims.txt").read_text())
    report = NvidiaAttestationReport.from_bytes(REPORT)
    assert {str(i): v.hex() for i, v in report.measurements.items()} == expected["measurements"]
    assert report.response.field(OpaqueFieldType.FWID) == bytes.fromhex(expected["config"]["fwid"])


def test_signature_is_located_by_structure_not_by_length() -> None:
    # One byte more or fewer after the opaque data is not "a signature plus noise".
    with pytest.raises(ParseError, match="expected a 96-byte signature"):
        NvidiaAttestationReport.from_bytes(REPORT + b"\x00")
    with pytest.raises(ParseError, match="expected a 96-byte signature"):
        NvidiaAttestationReport.from_bytes(REPORT[:-1])
    # A different algorithm's signature size is a parameter, and must fit exactly too.
    with pytest.raises(ParseError, match="expected a 64-byte signature"):
        NvidiaAttestationReport.from_bytes(REPORT, signature_size=64)


def test_opaque_length_is_honoured() -> None:
    report = NvidiaAttestationReport.from_bytes(REPORT)
    # Grow the opaque data by an extra field: the signature must still be found after it.
    extra = OpaqueField(0x7777, b"hello")
    opaque = report.response.opaque_data + encode_opaque_data((extra,))
    resp = report.response.to_bytes()
    cut = len(resp) - len(report.response.opaque_data) - 2
    forged = (
        report.request.to_bytes() + resp[:cut] + len(opaque).to_bytes(2, "little") + opaque + report.signature
    )
    parsed = NvidiaAttestationReport.from_bytes(forged)
    assert parsed.response.opaque_fields[-1] == extra
    assert parsed.response.opaque_fields[-1].name == "type_30583"
    assert parsed.signature == report.signature


def test_request_and_response_codes_are_checked() -> None:
    bad = bytearray(REPORT)
    bad[1] = 0xE1
    with pytest.raises(ParseError, match="GET_MEASUREMENTS") as info:
        NvidiaAttestationReport.from_bytes(bytes(bad))
    assert info.value.field == "RequestResponseCode"
    assert info.value.offset == 1
    bad = bytearray(REPORT)
    bad[REQUEST_SIZE + 1] = 0x61
    with pytest.raises(ParseError, match="MEASUREMENTS"):
        NvidiaAttestationReport.from_bytes(bytes(bad))


def test_unsigned_request_is_refused() -> None:
    bad = bytearray(REPORT)
    bad[2] = 0x00
    with pytest.raises(ParseError):
        NvidiaAttestationReport.from_bytes(bytes(bad))


def test_block_count_and_record_length_must_agree() -> None:
    bad = bytearray(REPORT)
    bad[REQUEST_SIZE + 4] = 63  # NumberOfBlocks one short: record has bytes left over
    with pytest.raises(ParseError, match="MeasurementRecord"):
        NvidiaAttestationReport.from_bytes(bytes(bad))


def test_truncation_everywhere_is_a_parse_error() -> None:
    for n in range(0, len(REPORT), 7):
        with pytest.raises(ParseError):
            NvidiaAttestationReport.from_bytes(REPORT[:n])


def test_opaque_tlv_rules() -> None:
    with pytest.raises(ParseError, match="twice"):
        parse_opaque_data(encode_opaque_data((OpaqueField(3, b"a"), OpaqueField(3, b"b"))))
    with pytest.raises(ParseError, match="multiple of 4"):
        parse_opaque_data(encode_opaque_data((OpaqueField(OpaqueFieldType.MSRSCNT, b"abc"),)))
    with pytest.raises(ParseError, match="truncated"):
        parse_opaque_data(b"\x03\x00\x05\x00abc")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        NvidiaAttestationReport.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(REPORT) - 1), st.integers(1, 255), st.integers(0, 64))
def test_mutated_reports_only_raise_parse_error(pos: int, xor: int, cut: int) -> None:
    data = bytearray(REPORT)
    data[pos] ^= xor
    try:
        parsed = NvidiaAttestationReport.from_bytes(bytes(data[: len(data) - cut]))
    except ParseError:
        return
    assert parsed.to_bytes() == bytes(data[: len(data) - cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_opaque_parser_only_raises_parse_error(data: bytes) -> None:
    try:
        fields = parse_opaque_data(data)
    except ParseError:
        return
    assert encode_opaque_data(fields) == data


# --- RIMs -------------------------------------------------------------------------------------


def test_parses_driver_and_vbios_rims() -> None:
    driver = ReferenceManifest.from_bytes((ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes())
    vbios_path = ASSETS / "1010_0200_882_96005E0001_test_no_gpu.swidtag"
    vbios = ReferenceManifest.from_bytes(vbios_path.read_bytes())
    assert driver.version == "545.00"
    assert vbios.version == "96.00.5E.00.01"
    assert sorted(driver.active) == [7, *range(21, 41)]
    assert sorted(vbios.active) == [*range(0, 7), *range(8, 13)]
    assert len(vbios.active[12].alternatives) == 4
    assert all(len(a) == 48 for m in driver.measurements for a in m.alternatives)


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd">&x;</SoftwareIdentity>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd">&b;</SoftwareIdentity>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS, b"<a>", b"", b"<x/>", b"\xff\xfe"])
def test_hostile_or_wrong_xml_is_a_parse_error(doc: bytes) -> None:
    with pytest.raises(ParseError):
        ReferenceManifest.from_bytes(doc)


def test_rim_hash_count_must_match_alternatives() -> None:
    text = (ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
    broken = text.replace(b'alternatives="2"', b'alternatives="3"', 1)
    with pytest.raises(ParseError, match="alternatives=3"):
        ReferenceManifest.from_bytes(broken)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_rim_parser_only_raises_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        ReferenceManifest.from_bytes(data)


@pytest.mark.parametrize("version", [0x10, 0x12, 0x13])
def test_only_spdm_1_1_is_read(version: int) -> None:
    # DSP0274 1.1 is what this parser and the verifier implement: a 1.0 GET_MEASUREMENTS request
    # has no SlotIDParam (added in 1.1), and from 1.2 on the signature covers the combined SPDM
    # prefix and the transcript's hash (DSP0274 1.2 §15), not the transcript. Either must be
    # refused as an unsupported version, not parsed (and its signature checked) as 1.1.
    bad = bytearray(REPORT)
    bad[0] = bad[REQUEST_SIZE] = version
    with pytest.raises(ParseError, match=r"SPDM 1\.1") as info:
        NvidiaAttestationReport.from_bytes(bytes(bad))
    assert info.value.field == "SPDMVersion" and info.value.offset == 0

"""``confide.evidence.azure_vtpm``: the HCL report, the runtime claims and trustee's containers."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.evidence.azure_vtpm import (
    HCL_SIGNATURE,
    VAR_DATA_OFFSET,
    HclHashType,
    HclReport,
    HclReportType,
    RuntimeClaims,
    TdReportStruct,
    parse_evidence,
    parse_tpm_quote_json,
)

ASSETS = Path(__file__).parent.parent / "assets" / "tpm"
SNP = ASSETS / "trustee-az-snp-vtpm"
TDX = ASSETS / "trustee-az-tdx-vtpm"
SNP_HCL = (SNP / "hcl-report.bin").read_bytes()
TDX_HCL = (TDX / "hcl-report.bin").read_bytes()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def with_var_data(hcl: bytes, var_data: bytes) -> bytes:
    """``hcl`` with its variable data replaced (sizes fixed up)."""
    out = bytearray(hcl[:VAR_DATA_OFFSET]) + var_data
    struct.pack_into("<I", out, 8, VAR_DATA_OFFSET + len(var_data))
    struct.pack_into("<I", out, 0x4C0, 20 + len(var_data))
    struct.pack_into("<I", out, 0x4D0, len(var_data))
    return bytes(out)


# --- the real reports -------------------------------------------------------------------------


def test_snp_hcl_report_layout() -> None:
    hcl = HclReport.from_bytes(SNP_HCL)
    assert hcl.report_type is HclReportType.SNP
    assert hcl.hash_type is HclHashType.SHA256
    assert (hcl.header_version, hcl.report_size, hcl.request_version) == (1, 2346, 1)
    assert len(hcl.hw_report) == 1184 and hcl.hw_report == SNP_HCL[32:1216]
    assert len(hcl.var_data) == 1110
    # REPORT_DATA is at 0x50 of the SNP report.
    assert hcl.var_data_digest() == hcl.hw_report[0x50 : 0x50 + 32]


def test_tdx_hcl_report_layout() -> None:
    hcl = HclReport.from_bytes(TDX_HCL)
    assert hcl.report_type is HclReportType.TDX
    assert hcl.header_version == 2 and len(hcl.hw_report) == 1024 and len(hcl.var_data) == 1201
    td = TdReportStruct.from_bytes(hcl.hw_report)
    assert td.report_type == bytes.fromhex("81000000")  # TDX, subtype 0, version 0
    assert td.report_data[:32] == hcl.var_data_digest()
    assert hashlib.sha384(td.td_info).digest() == td.tee_info_hash


def test_runtime_claims() -> None:
    claims = HclReport.from_bytes(SNP_HCL).runtime_claims()
    assert claims.key_ids == ("HCLAkPub", "HCLEkPub")
    assert claims.ak_public_key.key_size == 2048
    assert claims.vm_configuration["secure-boot"] is True
    assert claims.vm_configuration["tpm-enabled"] is True
    assert claims.user_data == bytes(64)


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json", "evidence-v2.json"])
def test_snp_containers(name: str) -> None:
    ev = parse_evidence((SNP / name).read_bytes(), HclReportType.SNP)
    assert ev.version == int(name[-6])
    assert ev.vcek is not None and ev.td_quote is None
    assert len(ev.tpm_quote.pcrs) == 24 and len(ev.tpm_quote.signature) == 256
    assert ev.hcl_report.report_type is HclReportType.SNP


def test_v2_user_data_is_the_report_data() -> None:
    ev = parse_evidence((SNP / "evidence-v2.json").read_bytes(), HclReportType.SNP)
    user_data = ev.hcl_report.runtime_claims().user_data
    assert user_data is not None and user_data.hex().startswith("982f5c6e") and user_data[48:] == bytes(16)


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_tdx_containers(name: str) -> None:
    ev = parse_evidence((TDX / name).read_bytes(), HclReportType.TDX)
    assert ev.td_quote is not None and len(ev.td_quote) == 5006
    assert ev.tpm_quote.pcrs[0].hex() == "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"


def test_tpm_quote_json() -> None:
    blob = parse_tpm_quote_json((SNP / "tpm-quote-v1.json").read_bytes())
    assert blob.pcrs[0].hex().startswith("f3a7e99a") and blob.message[:4] == bytes.fromhex("ff544347")


def test_the_wrong_kind_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="unknown keys"):
        parse_evidence((SNP / "evidence-v1.json").read_bytes(), HclReportType.TDX)
    doc = json.loads((TDX / "evidence-v1.json").read_text())
    doc["vcek"] = doc.pop("td_quote")
    with pytest.raises(ParseError, match="holds a TDX report, expected SNP"):
        parse_evidence(json.dumps(doc).encode(), HclReportType.SNP)


# --- malformed HCL reports --------------------------------------------------------------------


def _patch(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, 0x41414141, "header.signature"),
        (4, 3, "header.version"),
        (8, 2347, "header.report_size"),
        (0x4C0, 1129, "request.data_size"),
        (0x4C4, 2, "request.version"),
        (0x4C8, 1, "request.report_type"),
        (0x4CC, 0, "request.report_data_hash_type"),
        (0x4CC, 4, "request.report_data_hash_type"),
        (0x4D0, 2600, "request.data_size"),
    ],
)
def test_malformed_header_fields(offset: int, value: int, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        HclReport.from_bytes(_patch(SNP_HCL, offset, value))


def test_variable_data_past_the_end() -> None:
    big = 2600 - VAR_DATA_OFFSET + 1
    data = _patch(_patch(_patch(SNP_HCL, 0x4D0, big), 0x4C0, 20 + big), 8, VAR_DATA_OFFSET + big)
    with pytest.raises(ParseError, match=r"variable_data.*truncated"):
        HclReport.from_bytes(data)


@pytest.mark.parametrize("size", [0, 3, 31, 32, 1000, 1216, 1235, 1236, 2345])
def test_truncated_hcl_report(size: int) -> None:
    with pytest.raises(ParseError):
        HclReport.from_bytes(SNP_HCL[:size])


def test_padding_after_report_size_is_ignored() -> None:
    assert HclReport.from_bytes(SNP_HCL[:2346]).var_data == HclReport.from_bytes(SNP_HCL).var_data


def test_hash_types() -> None:
    data = _patch(SNP_HCL, 0x4CC, 2)
    hcl = HclReport.from_bytes(data)
    assert (
        hcl.hash_type is HclHashType.SHA384 and hcl.var_data_digest() == hashlib.sha384(hcl.var_data).digest()
    )


# --- malformed runtime claims -----------------------------------------------------------------


def _claims_doc() -> dict[str, Any]:
    doc = json.loads(HclReport.from_bytes(SNP_HCL).var_data)
    assert isinstance(doc, dict)
    return doc


def _ak(doc: dict[str, Any]) -> dict[str, Any]:
    return next(k for k in doc["keys"] if k["kid"] == "HCLAkPub")


def _bad_claims(mutate: Any) -> bytes:
    doc = _claims_doc()
    mutate(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("var_data", "match"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"keys": [], "keys": []}', "duplicate key"),
        (b'{"keys": [{"kid": "HCLAkPub", "n": 1.5}]}', "not an integer"),
        (b'{"keys": NaN}', "NaN is not JSON"),
        (b"[" * 30000 + b"]" * 30000, "nested too deeply"),
        (_bad_claims(lambda d: d.pop("keys")), "keys"),
        (_bad_claims(lambda d: d["keys"].pop(0)), "got 0 keys with kid 'HCLAkPub'"),
        (_bad_claims(lambda d: d["keys"].append(_ak(d))), "got 2 keys with kid 'HCLAkPub'"),
        (_bad_claims(lambda d: _ak(d).update(kty="EC")), "kty"),
        (_bad_claims(lambda d: _ak(d).update(n="a+b/")), "base64url"),
        (_bad_claims(lambda d: _ak(d).update(n=7)), "base64url"),
        (_bad_claims(lambda d: _ak(d).update(n=b64url(b"\x81" * 64))), "512-bit modulus"),
        (_bad_claims(lambda d: _ak(d).update(e=b64url(b"\x02"))), "exponent"),
        (_bad_claims(lambda d: d.update({"vm-configuration": []})), "vm-configuration"),
        (_bad_claims(lambda d: d.update({"user-data": "abc"})), "user-data"),
        (_bad_claims(lambda d: d.update({"user-data": "zz"})), "user-data"),
    ],
)
def test_malformed_runtime_claims(var_data: bytes, match: str) -> None:
    hcl = HclReport.from_bytes(with_var_data(SNP_HCL, var_data))
    with pytest.raises(ParseError, match=match):
        hcl.runtime_claims()


def test_claims_without_user_data() -> None:
    claims = RuntimeClaims.from_json(_bad_claims(lambda d: d.pop("user-data")))
    assert claims.user_data is None


# --- malformed containers ---------------------------------------------------------------------


def _v1(mutate: Any, source: Path = SNP / "evidence-v1.json") -> bytes:
    doc = json.loads(source.read_text())
    mutate(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (b" " * (1 << 20) + b"{}", "at most"),
        (_v1(lambda d: d.update(version=3)), "version"),
        (_v1(lambda d: d.update(version="1")), "version"),
        (_v1(lambda d: d.update(version=True)), "version"),
        (_v1(lambda d: d.update(extra=1)), "unknown keys"),
        (_v1(lambda d: d.pop("vcek")), "missing keys"),
        (_v1(lambda d: d.update(hcl_report=d["hcl_report"] + "!")), "base64url"),
        (_v1(lambda d: d.update(hcl_report=d["hcl_report"][:100])), "HCL report"),
        (_v1(lambda d: d["tpm_quote"].update(message="0g")), "hex"),
        (_v1(lambda d: d["tpm_quote"].update(message="0 1")), "hex"),
        (_v1(lambda d: d["tpm_quote"].update(signature="")), "empty"),
        (_v1(lambda d: d["tpm_quote"].update(pcrs=[])), "PCR values"),
        (_v1(lambda d: d["tpm_quote"].update(pcrs=["00"] * 25)), "PCR values"),
        (_v1(lambda d: d["tpm_quote"]["pcrs"].__setitem__(3, "00" * 31)), r"pcrs\[3\]"),
        (_v1(lambda d: d["tpm_quote"].update(extra="")), "unknown keys"),
        (_v1(lambda d: d.update(tpm_quote=[])), "expected a JSON object"),
    ],
)
def test_malformed_snp_container(data: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_evidence(data, HclReportType.SNP)


def _v0(mutate: Any, source: Path = SNP / "evidence-v0.json") -> bytes:
    return _v1(mutate, source)


@pytest.mark.parametrize(
    ("data", "kind", "match"),
    [
        (_v0(lambda d: d["report"].__setitem__(5, 256)), HclReportType.SNP, "integers 0..255"),
        (_v0(lambda d: d["report"].__setitem__(5, True)), HclReportType.SNP, "integers 0..255"),
        (_v0(lambda d: d["report"].__setitem__(5, -1)), HclReportType.SNP, "integers 0..255"),
        (_v0(lambda d: d.update(vcek=5)), HclReportType.SNP, "PEM"),
        (_v0(lambda d: d["quote"].update(pcrs="x")), HclReportType.SNP, "PCR values"),
        (_v0(lambda d: d.pop("td_quote"), TDX / "evidence-v0.json"), HclReportType.TDX, "missing keys"),
        (_v0(lambda d: d.update(td_quote="ab"), TDX / "evidence-v0.json"), HclReportType.TDX, "integers"),
        (_v1(lambda d: d.update(version=2), TDX / "evidence-v1.json"), HclReportType.TDX, "version"),
    ],
)
def test_malformed_v0_and_tdx_containers(data: bytes, kind: HclReportType, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_evidence(data, kind)


def test_truncated_container_json() -> None:
    raw = (SNP / "evidence-v1.json").read_bytes().rstrip()
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        with pytest.raises(ParseError):
            parse_evidence(raw[:cut], HclReportType.SNP)


# --- fuzzing ----------------------------------------------------------------------------------


def _parse_all(data: bytes) -> None:
    try:
        hcl = HclReport.from_bytes(data)
    except ParseError:
        return
    try:
        hcl.runtime_claims()
    except ParseError:
        pass
    if hcl.report_type is HclReportType.TDX:
        TdReportStruct.from_bytes(hcl.hw_report)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2700), st.booleans())
def test_fuzz_hcl_random_bytes(data: bytes, signed: bool) -> None:
    _parse_all(HCL_SIGNATURE + data if signed else data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=5, max_size=5), st.binary(max_size=64))
def test_fuzz_hcl_request_fields(fields: list[int], var_data: bytes) -> None:
    """Random IGVM request data (sizes, version, type, hash type) over a real header and report."""
    _parse_all(SNP_HCL[:0x4C0] + struct.pack("<5I", *fields) + var_data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([SNP_HCL, TDX_HCL]), st.integers(0, 2599), st.integers(1, 255), st.integers(0, 2600))
def test_fuzz_hcl_mutations(base: bytes, offset: int, delta: int, cut: int) -> None:
    out = bytearray(base)
    out[offset] = (out[offset] + delta) % 256
    _parse_all(bytes(out[:cut]) if cut < 2600 else bytes(out))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_runtime_claims(var_data: bytes) -> None:
    try:
        RuntimeClaims.from_json(var_data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 7938), st.integers(1, 255), st.sampled_from([HclReportType.SNP, HclReportType.TDX]))
def test_fuzz_container_mutations(offset: int, delta: int, kind: HclReportType) -> None:
    raw = bytearray((SNP / "evidence-v1.json").read_bytes())
    raw[offset] = (raw[offset] + delta) % 256
    try:
        parse_evidence(bytes(raw), kind)
    except ParseError:
        pass

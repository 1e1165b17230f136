"""Parsing of real DCAP quotes: byte-exact round trips, typed errors on any malformed input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide.errors import ParseError
from confide.evidence._reader import decode_evidence_text
from confide.evidence.dcap import BodyType, EnclaveReport, Quote, TdReport
from confide.evidence.dcap_collateral import DcapCollateral, EnclaveIdentity, TcbInfo, split_pcs_response
from confide.evidence.pck import parse_pck_extension
from confide.evidence.pem import parse_pem_chain
from dcap_cases import ASSETS, QUOTES

SGX_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def _raw(name: str) -> bytes:
    return decode_evidence_text((ASSETS / name).read_bytes())


@pytest.mark.parametrize("name", QUOTES)
def test_round_trip_byte_for_byte(name: str) -> None:
    raw = _raw(name)
    quote = Quote.from_bytes(raw)
    assert quote.to_bytes() == raw
    assert quote.signature_data.qe.qe_report.to_bytes() == quote.signature_data.qe.qe_report_raw
    assert quote.report.to_bytes() == quote.body_raw


def test_versions_and_body_types() -> None:
    kinds = {(Quote.from_bytes(_raw(n)).header.version, Quote.from_bytes(_raw(n)).body_type) for n in QUOTES}
    assert (3, BodyType.SGX_ENCLAVE_REPORT) in kinds
    assert (4, BodyType.TD_REPORT10) in kinds
    assert (5, BodyType.TD_REPORT15) in kinds


def test_hex_text_with_and_without_prefix() -> None:
    text = (ASSETS / "tdx/phala-dcap-qvl/tdx-quote.hex").read_bytes()
    assert text.startswith(b"0x")
    assert (
        decode_evidence_text(text)
        == decode_evidence_text(text[2:])
        == bytes.fromhex(text[2:].decode().strip())
    )
    binary = (ASSETS / "tdx/phala-dcap-qvl/tdx_quote").read_bytes()
    assert decode_evidence_text(binary) == binary


def test_pck_extension_of_spr_e4() -> None:
    """Values asserted by go-tdx-guest's TestPckCertificateExtensions."""
    quote = Quote.from_bytes(_raw("tdx/google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat"))
    leaf = x509.load_der_x509_certificate(parse_pem_chain(quote.signature_data.qe.certification.data)[0])
    ext = parse_pck_extension(leaf.extensions.get_extension_for_oid(SGX_OID).value.value)  # type: ignore[attr-defined]
    assert ext.ppid.hex() == "089ddfdb9c0359c82a3bc7719239574e"
    assert ext.pce_svn == 11
    assert ext.cpu_svn.hex() == "03030202020100020000000000000000"
    assert ext.fmspc.hex() == "50806f000000"
    assert ext.sgx_type_name == "Scalable"
    assert ext.dynamic_platform is not None


def test_every_truncation_is_a_parse_error() -> None:
    raw = _raw("sgx/phala-dcap-qvl/sgx_quote")
    q = Quote.from_bytes(raw)
    for n in range(len(raw) - len(q.trailing)):
        with pytest.raises(ParseError):
            Quote.from_bytes(raw[:n])


def test_oversized_input() -> None:
    with pytest.raises(ParseError, match="at most"):
        Quote.from_bytes(bytes(2 << 20))


def test_error_names_field_and_offset() -> None:
    raw = bytearray(_raw("tdx/google-go-tdx-guest/quote_v5_sample.dat"))
    raw[48] = 9  # body descriptor type
    with pytest.raises(ParseError) as info:
        Quote.from_bytes(bytes(raw))
    assert info.value.field == "body.type" and info.value.offset == 48


def test_unsupported_key_type_and_tee() -> None:
    raw = bytearray(_raw("sgx/phala-dcap-qvl/sgx_quote"))
    raw[2] = 3
    with pytest.raises(ParseError, match="attestation key type"):
        Quote.from_bytes(bytes(raw))
    raw = bytearray(_raw("tdx/phala-dcap-qvl/tdx_quote"))
    raw[4] = 0x80
    with pytest.raises(ParseError, match="TEE type"):
        Quote.from_bytes(bytes(raw))


def test_a_tdx_quote_made_version_3_is_told_tdx_needs_version_4_or_5() -> None:
    """go-tdx-guest's TestNegativeVerification sets byte 0 of its TDX quote to 3 (MANIFEST.md
    2b): the TEE type 0x81 is TDX, which a version 3 quote cannot be. The message said "got TEE
    type 0x81, expected ... or 0x81", naming as expected the value it refused."""
    raw = bytearray(_raw("tdx/google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat"))
    raw[0] = 3
    with pytest.raises(ParseError) as info:
        Quote.from_bytes(bytes(raw))
    assert info.value.field == "header.tee_type" and info.value.offset == 4
    assert "0x81 in a version 3 quote" in str(info.value) and "version 4 or 5 quote only" in str(info.value)


def test_pem_chain_is_strict() -> None:
    raw = _raw("sgx/phala-dcap-qvl/sgx_quote")
    data = Quote.from_bytes(raw).signature_data.qe.certification.data
    assert len(parse_pem_chain(data)) == 3
    for bad in (
        data.replace(b"\n", b"\r\n", 1),
        data.rstrip(b"\x00") + b"x",
        data[:-40],
        b"",
        data.replace(b"-", b"=", 1),
    ):
        with pytest.raises(ParseError):
            parse_pem_chain(bad)


def test_collateral_models() -> None:
    body = (ASSETS / "sgx/automata-dcap-attestation/sgx_tcbinfov3_00606a000000.json").read_bytes()
    text, sig = split_pcs_response(body, "tcbInfo")
    info = TcbInfo.from_json_text(text)
    assert info.version == 3 and info.fmspc.hex() == "00606a000000" and len(sig) == 64
    v2 = TcbInfo.from_json_text(
        split_pcs_response((ASSETS / "sgx/automata-dcap-rs/tcbinfov2.json").read_bytes(), "tcbInfo")[0]
    )
    assert v2.version == 2 and len(v2.tcb_levels[0].sgx_components) == 16
    ident = EnclaveIdentity.from_json_text(
        split_pcs_response(
            (ASSETS / "sgx/automata-dcap-rs/qeidentityv2.json").read_bytes(), "enclaveIdentity"
        )[0]
    )
    assert ident.id == "QE" and ident.isv_prod_id == 1
    bundle = DcapCollateral.from_dcap_qvl_json(
        (ASSETS / "sgx/phala-dcap-qvl/sgx_quote_collateral.json").read_bytes()
    )
    again = DcapCollateral.from_dcap_qvl_json(bundle.to_dcap_qvl_json().encode())
    assert again == bundle


def test_a_pcs_response_giving_a_key_twice_is_refused_before_its_signature_is_checked() -> None:
    """Intel signs the exact bytes of ``tcbInfo``; a response that gives a key twice (inside
    the signed part or beside it) is refused when it is split, before any signature check:
    another reader would take the first value (confide.jsonstrict)."""
    body = (ASSETS / "sgx/automata-dcap-attestation/sgx_tcbinfov3_00606a000000.json").read_bytes()
    split_pcs_response(body, "tcbInfo")
    for doubled, key in (
        (body.replace(b'"tcbStatus":', b'"tcbStatus":"UpToDate","tcbStatus":', 1), "tcbStatus"),
        (body.replace(b'"fmspc":', b'"fmspc":"00906ed50000","\\u0066mspc":', 1), "fmspc"),
        (body.replace(b'{"tcbInfo":', b'{"signature":"00","tcbInfo":', 1), "signature"),
    ):
        assert doubled != body
        with pytest.raises(ParseError, match=f"duplicate key '{key}'"):
            split_pcs_response(doubled, "tcbInfo")
        text = doubled[doubled.index(b"{", 1) : doubled.rindex(b',"signature"')]
        if key != "signature":
            with pytest.raises(ParseError, match=f"duplicate key '{key}'"):
                TcbInfo.from_json_text(text)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b"[]",
        b'{"version":4}',
        b'{"version":3,"id":"SGX"}',
        b'{"version":2,"tcbType":0,"tcbLevels":[{}]}',
    ],
)
def test_bad_tcb_info(text: bytes) -> None:
    with pytest.raises(ParseError):
        TcbInfo.from_json_text(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        Quote.from_bytes(data)
    except ParseError:
        pass


_BASE = _raw("tdx/google-go-tdx-guest/quote_v5_sample.dat")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_real_quotes_only_raise_parse_error(edits: list[tuple[int, int]]) -> None:
    raw = bytearray(_BASE)
    for at, value in edits:
        raw[at] = value
    try:
        q = Quote.from_bytes(bytes(raw))
    except ParseError:
        return
    assert q.to_bytes() == bytes(raw)
    assert isinstance(q.report, (TdReport, EnclaveReport))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_pck_extension_parser_only_raises_parse_error(data: bytes) -> None:
    try:
        parse_pck_extension(data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_collateral_parsers_only_raise_parse_error(data: bytes) -> None:
    for fn in (TcbInfo.from_json_text, EnclaveIdentity.from_json_text, DcapCollateral.from_dcap_qvl_json):
        try:
            fn(data)
        except ParseError:
            pass
    try:
        split_pcs_response(data, "tcbInfo")
    except ParseError:
        pass

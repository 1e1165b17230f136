"""Hostile review of 2026-12-07: a hostile structured report (fields 8 / 9 of a GCE attestation) at the integer
boundaries where a rebuild could wrap (a value read as 2^32 + v written as v would make the
signed bytes say v while the proto says otherwise), field counts and versions the rebuild must
not guess, and a bounded structure-aware fuzz: nothing but the project's errors, and nothing
rebuilt from a proto that differs from the real report verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gce_tee import SNP_FIELDS, TDX_PB, TDX_QUOTE, _snp_pb, _tdx_replace

from confide.errors import ConfideError, ParseError
from confide.evidence._protobuf import encode_field
from confide.evidence.gce_tee import (
    _REPORT_FIELDS,
    encode_sev_snp_attestation,
    encode_tdx_quote,
    parse_sev_snp_attestation,
    parse_tdx_quote,
)
from confide.evidence.gce_tpm import parse_gce_attestation

ASSETS = Path(__file__).parent.parent / "assets"
SNP_REPORT = (ASSETS / "sev-snp" / "google-go-sev-guest" / "attestation.bin").read_bytes()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize("number", [n for n, (_, kind, _) in _REPORT_FIELDS.items() if kind == "u32"])
def test_a_u32_report_field_at_2_32_is_refused_not_wrapped(number: int) -> None:
    value = SNP_FIELDS.get(number, 0)
    assert isinstance(value, int)
    with pytest.raises(ParseError, match="32-bit value"):
        parse_sev_snp_attestation(_snp_pb({**SNP_FIELDS, number: (1 << 32) + value}))


def test_a_u64_report_field_beyond_2_64_is_refused() -> None:
    # 2^64 - 1 is a u64 (rebuilt, then the signature fails); 2^64 needs a 10-byte varint past 64 bits
    att = parse_sev_snp_attestation(_snp_pb({**SNP_FIELDS, 3: (1 << 64) - 1}))
    assert att.report[8:16] == b"\xff" * 8
    body = b"".join(encode_field(n, v) for n, v in sorted(SNP_FIELDS.items()) if n != 3)
    body += b"\x18" + _varint(1 << 64)  # field 3, varint
    with pytest.raises(ParseError):
        parse_sev_snp_attestation(encode_field(1, body))


@pytest.mark.parametrize(("version", "fields"), [(4, {}), (1, {}), (3, {30: 1}), (2, {31: 1})])
def test_report_versions_the_rebuild_cannot_place_are_refused(version: int, fields: dict[int, int]) -> None:
    pb = _snp_pb({**SNP_FIELDS, 1: version, 29: 0, **fields})
    with pytest.raises(ParseError):
        parse_sev_snp_attestation(pb)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((1, 1), (1 << 16) + 4),  # header version read as a u16: 4 + 2^16 is not 4
        ((1, 3), (1 << 32) + 0x81),  # TEE type
        ((4, 3, 1), (1 << 16) + 6),  # certification data type
    ],
)
def test_tdx_integers_beyond_their_width_are_refused(path: tuple[int, ...], value: int) -> None:
    with pytest.raises(ParseError):
        parse_tdx_quote(_tdx_replace(TDX_PB, path, 0, value))


def _with_rtmrs(count: int) -> bytes:
    """TDX_PB with ``count`` RTMRs in its TD quote body (the real one has 4)."""
    from confide.evidence._protobuf import _records

    out = b""
    for f in _records(TDX_PB, "t", 0):
        if f.number != 2:
            out += encode_field(f.number, f.value)
            continue
        assert isinstance(f.value, bytes)
        body = [(g.number, g.value) for g in _records(f.value, "t", 0)]
        rtmrs = [v for n, v in body if n == 11]
        others = [(n, v) for n, v in body if n != 11]
        rtmrs = (rtmrs * 2)[:count]
        out += encode_field(2, b"".join(encode_field(n, v) for n, v in [*others, *((11, r) for r in rtmrs)]))
    return out


@pytest.mark.parametrize("count", [0, 3, 5, 8])
def test_tdx_rtmrs_must_be_exactly_four(count: int) -> None:
    assert parse_tdx_quote(_with_rtmrs(4)).quote == TDX_QUOTE  # field order inside the body is free
    with pytest.raises(ParseError, match="RTMRs"):
        parse_tdx_quote(_with_rtmrs(count))


def test_a_field_8_given_twice_is_refused() -> None:
    snp = encode_field(8, encode_sev_snp_attestation(SNP_REPORT))
    with pytest.raises(ParseError):
        parse_gce_attestation(snp + snp)


_INTS = st.sampled_from([0, 1, 2, 3, 5, 0xF, 0xFF, 0x100, 0xFFFF, 1 << 16, 1 << 31, (1 << 32) - 1, 1 << 32,
                         1 << 63, (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(sorted(_REPORT_FIELDS)), _INTS | st.binary(max_size=600), max_size=31))
def test_any_structured_report_raises_only_project_errors(fields: dict[int, int | bytes]) -> None:
    body = b"".join(encode_field(n, v) for n, v in sorted(fields.items()))
    try:
        att = parse_sev_snp_attestation(encode_field(1, body))
    except ConfideError:
        return
    assert len(att.report) == len(SNP_REPORT)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_mutated_tdx_proto_raises_only_project_errors(data: st.DataObject) -> None:
    b = bytearray(TDX_PB)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(b) - 1))
        if data.draw(st.booleans()):
            b[at] = data.draw(st.integers(0, 255))
        else:
            b[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        got = parse_tdx_quote(bytes(b)).quote
    except ConfideError:
        return
    # a proto that parses rebuilds the quote it describes: encoding that quote gives a proto that
    # rebuilds it again (no two readings of one proto)
    assert parse_tdx_quote(encode_tdx_quote(got)).quote == got

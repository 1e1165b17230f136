from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.evidence.sim import (
    MAGIC,
    MARKER,
    SIGNED_SIZE,
    SIM_EVIDENCE_SIZE,
    SimEvidence,
)


def _sample(**overrides: object) -> SimEvidence:
    fields: dict[str, object] = {
        "debug": True,
        "svn": 0x01020304,
        "timestamp": 0x1122334455667788,
        "measurement": hashlib.sha384(b"m").digest(),
        "report_data": bytes(range(64)),
        "platform_key_id": hashlib.sha256(b"k").digest(),
        "signature": bytes(range(100, 164)),
    }
    fields.update(overrides)
    return SimEvidence(**fields)  # type: ignore[arg-type]


def test_layout_matches_the_documented_offsets() -> None:
    ev = _sample()
    raw = ev.to_bytes()
    assert len(raw) == SIM_EVIDENCE_SIZE == 268
    assert raw[0x000:0x00B] == MAGIC == b"CONFIDE-SIM"
    assert raw[0x00B] == 1
    assert raw[0x00C:0x02C] == MARKER
    assert b"SIMULATED" in MARKER
    assert raw[0x02C:0x030] == (1).to_bytes(4, "little")
    assert raw[0x030:0x034] == bytes.fromhex("04030201")
    assert raw[0x034:0x03C] == bytes.fromhex("8877665544332211")
    assert raw[0x03C:0x06C] == ev.measurement
    assert raw[0x06C:0x0AC] == ev.report_data
    assert raw[0x0AC:0x0CC] == ev.platform_key_id
    assert raw[0x0CC:0x10C] == ev.signature
    assert ev.signed_bytes() == raw[:SIGNED_SIZE]


@pytest.mark.parametrize("version", [1, 2])
def test_both_versions_share_the_layout_and_round_trip(version: int) -> None:
    ev = _sample(version=version)
    raw = ev.to_bytes()
    assert len(raw) == SIM_EVIDENCE_SIZE
    assert raw[0x00B] == version
    assert raw[:0x00B] + raw[0x00C:] == (r := _sample().to_bytes())[:0x00B] + r[0x00C:]
    parsed = SimEvidence.from_bytes(raw)
    assert parsed == ev and parsed.version == version
    assert parsed.to_bytes() == raw


def test_round_trip_is_byte_exact() -> None:
    raw = _sample().to_bytes()
    parsed = SimEvidence.from_bytes(raw)
    assert parsed == _sample()
    assert parsed.to_bytes() == raw


def test_debug_flag_clear_round_trips() -> None:
    raw = _sample(debug=False).to_bytes()
    assert raw[0x02C:0x030] == bytes(4)
    assert SimEvidence.from_bytes(raw).debug is False


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0x000, b"X", "magic"),
        (0x00B, b"\x00", "version"),
        (0x00B, b"\x03", "version"),
        (0x00B, b"\xff", "version"),
        (0x00C, b"s", "marker"),  # the loud marker cannot be altered
        (0x02C, b"\x02", "flags"),  # reserved flag bit
        (0x02F, b"\x80", "flags"),
    ],
)
def test_bad_fields_are_parse_errors_naming_the_field(offset: int, value: bytes, field: str) -> None:
    raw = bytearray(_sample().to_bytes())
    raw[offset : offset + len(value)] = value
    with pytest.raises(ParseError) as info:
        SimEvidence.from_bytes(bytes(raw))
    assert info.value.field == field
    assert info.value.offset == (offset if field != "flags" else 0x02C)


@pytest.mark.parametrize("length", [0, 1, 11, 267, 269, 1000])
def test_wrong_length_is_a_parse_error(length: int) -> None:
    raw = (_sample().to_bytes() * 4)[:length]
    with pytest.raises(ParseError, match=r"268|magic"):
        SimEvidence.from_bytes(raw)


def test_wrong_magic_is_named_even_for_a_wrong_length() -> None:
    with pytest.raises(ParseError) as info:
        SimEvidence.from_bytes(b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(600))
    assert info.value.field == "magic"


@pytest.mark.parametrize(
    "overrides",
    [
        {"measurement": bytes(32)},
        {"report_data": bytes(63)},
        {"platform_key_id": bytes(33)},
        {"signature": b""},
        {"svn": -1},
        {"svn": 1 << 32},
        {"timestamp": -1},
        {"version": 0},
        {"version": 3},
    ],
)
def test_constructor_rejects_bad_widths(overrides: dict[str, object]) -> None:
    with pytest.raises(ParseError):
        _sample(**overrides)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        parsed = SimEvidence.from_bytes(data)
    except ParseError:
        return
    assert parsed.to_bytes() == data


@settings(max_examples=300)
@given(st.integers(0, SIM_EVIDENCE_SIZE - 1), st.binary(min_size=1, max_size=8), st.booleans())
def test_mutated_evidence_raises_only_parse_error_or_round_trips(pos: int, patch: bytes, cut: bool) -> None:
    raw = bytearray(_sample(version=1 + pos % 2).to_bytes())
    raw[pos : pos + len(patch)] = patch
    data = bytes(raw[:pos]) if cut else bytes(raw)
    try:
        parsed = SimEvidence.from_bytes(data)
    except ParseError:
        return
    assert parsed.to_bytes() == data


@given(
    debug=st.booleans(),
    svn=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**64 - 1),
    measurement=st.binary(min_size=48, max_size=48),
    report_data=st.binary(min_size=64, max_size=64),
)
def test_any_valid_evidence_round_trips(
    debug: bool, svn: int, timestamp: int, measurement: bytes, report_data: bytes
) -> None:
    ev = _sample(debug=debug, svn=svn, timestamp=timestamp, measurement=measurement, report_data=report_data)
    assert SimEvidence.from_bytes(ev.to_bytes()) == ev


def _reference_from_bytes(data: bytes) -> SimEvidence:
    """``SimEvidence.from_bytes`` as it was before it unpacked the fixed layout in one struct
    call (field by field through ``Reader``): the new parser must accept and refuse exactly as
    this one, with the same message, field and offset."""
    from confide.evidence import sim
    from confide.evidence._reader import Reader

    r = Reader(bytes(data), sim.STRUCTURE)
    if len(data) != SIM_EVIDENCE_SIZE:
        if len(data) >= sim.MAGIC_SIZE and bytes(data[: sim.MAGIC_SIZE]) != MAGIC:
            raise r.error(f"got {bytes(data[: sim.MAGIC_SIZE])!r}, expected {MAGIC!r}", "magic", 0)
        raise r.error(f"got {len(data)} bytes, expected exactly {SIM_EVIDENCE_SIZE}", "length", 0)
    magic = r.take(sim.MAGIC_SIZE, "magic")
    if magic != MAGIC:
        raise r.error(f"got {magic!r}, expected {MAGIC!r}", "magic", 0)
    version_pos = r.pos
    version = r.u8("version")
    if version not in (1, 2):  # version 2 (ECDSA P-256) has the same layout as version 1
        raise r.error(f"got version {version}, expected 1 or 2", "version", version_pos)
    marker_pos = r.pos
    marker = r.take(sim.MARKER_SIZE, "marker")
    if marker != MARKER:
        raise r.error(f"got {marker!r}, expected {MARKER!r}", "marker", marker_pos)
    flags_pos = r.pos
    flags = r.u32("flags")
    if flags & ~sim.FLAG_DEBUG:
        raise r.error(f"got reserved flag bits {flags & ~sim.FLAG_DEBUG:#x}, expected 0", "flags", flags_pos)
    svn, timestamp = r.u32("svn"), r.u64("timestamp")
    measurement = r.take(sim.MEASUREMENT_SIZE, "measurement")
    report_data = r.take(sim.REPORT_DATA_SIZE, "report_data")
    platform_key_id = r.take(sim.PLATFORM_KEY_ID_SIZE, "platform_key_id")
    signature = r.take(sim.SIGNATURE_SIZE, "signature")
    r.expect_end()
    return SimEvidence(
        debug=bool(flags & sim.FLAG_DEBUG), svn=svn, timestamp=timestamp, measurement=measurement,
        report_data=report_data, platform_key_id=platform_key_id, signature=signature, version=version,
    )  # fmt: skip


def _outcome(parse: object, data: bytes) -> object:
    try:
        return parse(data)  # type: ignore[operator]
    except ParseError as exc:
        return ("refused", exc.message, exc.structure, exc.field, exc.offset)


@settings(max_examples=400)
@given(
    st.integers(0, SIM_EVIDENCE_SIZE - 1),
    st.binary(min_size=1, max_size=8),
    st.sampled_from(["keep", "cut", "pad"]),
    st.booleans(),
)
def test_the_struct_parser_accepts_and_refuses_exactly_as_the_field_reader(
    pos: int, patch: bytes, shape: str, debug: bool
) -> None:
    raw = bytearray(_sample(debug=debug, version=2 if pos % 2 else 1).to_bytes())
    raw[pos : pos + len(patch)] = patch
    data = {"keep": bytes(raw), "cut": bytes(raw[:pos]), "pad": bytes(raw) + patch}[shape]
    assert _outcome(SimEvidence.from_bytes, data) == _outcome(_reference_from_bytes, data)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("length", [*range(0, 20), 43, 44, 48, 203, 204, 267, 269, 536])
def test_every_truncation_and_padding_is_refused_as_before(length: int, version: int) -> None:
    data = (_sample(version=version).to_bytes() * 2)[:length]
    assert _outcome(SimEvidence.from_bytes, data) == _outcome(_reference_from_bytes, data)
    assert isinstance(_outcome(SimEvidence.from_bytes, data), tuple)


def test_a_bytearray_or_memoryview_parses_as_bytes() -> None:
    raw = _sample().to_bytes()
    assert SimEvidence.from_bytes(bytearray(raw)) == SimEvidence.from_bytes(memoryview(raw)) == _sample()


@given(
    debug=st.booleans(),
    svn=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**64 - 1),
    measurement=st.binary(min_size=48, max_size=48),
    report_data=st.binary(min_size=64, max_size=64),
    version=st.sampled_from([1, 2]),
)
def test_signed_bytes_are_the_documented_fields_in_order(
    debug: bool, svn: int, timestamp: int, measurement: bytes, report_data: bytes, version: int
) -> None:
    ev = _sample(
        debug=debug,
        svn=svn,
        timestamp=timestamp,
        measurement=measurement,
        report_data=report_data,
        version=version,
    )
    assert ev.signed_bytes() == b"".join(
        (
            MAGIC,
            bytes([version]),
            MARKER,
            (1 if debug else 0).to_bytes(4, "little"),
            svn.to_bytes(4, "little"),
            timestamp.to_bytes(8, "little"),
            measurement,
            report_data,
            ev.platform_key_id,
        )
    )


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("pos", [0, 5, 10, 11, 12, 20, 43, 44, 45, 47, 48, 52, 60, 203, 204, 267])
@pytest.mark.parametrize("value", [0x00, 0x01, 0x02, 0x03, 0x80, 0xFF])
@pytest.mark.parametrize("length", [None, 10, 11, 12, 200, 268, 269])
def test_each_checked_field_is_refused_as_before(
    pos: int, value: int, length: int | None, version: int
) -> None:
    raw = bytearray(_sample(version=version).to_bytes() + bytes(8))
    raw[pos] = value
    data = bytes(raw[: SIM_EVIDENCE_SIZE if length is None else length])
    assert _outcome(SimEvidence.from_bytes, data) == _outcome(_reference_from_bytes, data)

"""CCEL ACPI table and TCG crypto-agile event log parsing (confide.evidence.ccel)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confide.evidence.ccel as ccel
from confide.errors import ParseError
from confide.evidence.ccel import CcelTable, EventLog, SpecIdEvent
from confide.evidence.tcg_events import decode_event, device_path_text, format_guid

ASSETS = Path(__file__).parent.parent / "assets" / "tdx-eventlog"
TABLE = (ASSETS / "ccel_table.dat").read_bytes()
DATA = (ASSETS / "ccel_data.dat").read_bytes()
LOG_LENGTH = 18101  # where the 0xFF padding starts (checked independently below)


def _with_checksum(table: bytearray) -> bytes:
    table[9] = 0
    table[9] = (-sum(table)) & 0xFF
    return bytes(table)


# --- CCEL table ----------------------------------------------------------------------------


def test_ccel_table_fields() -> None:
    t = CcelTable.from_bytes(TABLE)
    assert t.signature == b"CCEL"
    assert t.length == 56
    assert t.revision == 1
    assert t.oem_id == b"INTEL "
    assert t.oem_table_id == b"EDK2    "
    assert t.cc_type == 2
    assert t.cc_type_name == "Intel TDX"
    assert t.cc_subtype == 0
    assert t.log_area_minimum_length == 0x40000 == len(DATA)
    assert t.log_area_start_address == 0xBEDBF000
    assert t.to_bytes() == TABLE


def test_ccel_table_bad_checksum_is_rejected() -> None:
    bad = bytearray(TABLE)
    bad[9] ^= 0x01
    with pytest.raises(ParseError) as info:
        CcelTable.from_bytes(bytes(bad))
    assert info.value.field == "checksum"
    assert f"expected {TABLE[9]:#04x}" in str(info.value)


def test_ccel_table_changed_field_breaks_checksum() -> None:
    bad = bytearray(TABLE)
    bad[36] = 1  # CC type SEV, checksum not updated
    with pytest.raises(ParseError, match="checksum"):
        CcelTable.from_bytes(bytes(bad))


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [(0, ord("X"), "signature"), (4, 57, "length")],
)
def test_ccel_table_bad_header_fields(offset: int, value: int, field: str) -> None:
    bad = bytearray(TABLE)
    bad[offset] = value
    with pytest.raises(ParseError) as info:
        CcelTable.from_bytes(_with_checksum(bad))
    assert info.value.field == field


def test_ccel_table_truncated_and_extended() -> None:
    with pytest.raises(ParseError):
        CcelTable.from_bytes(TABLE[:40])
    with pytest.raises(ParseError, match="length"):
        CcelTable.from_bytes(TABLE + b"\x00")


# --- event log structure -------------------------------------------------------------------


def test_log_structure_and_round_trip() -> None:
    log = EventLog.from_bytes(DATA, table=CcelTable.from_bytes(TABLE))
    assert log.spec_id.algorithms == ((0x000C, 48),)
    assert (log.spec_id.spec_version_major, log.spec_id.spec_version_minor) == (2, 0)
    assert len(log.events) == 43
    assert [e.number for e in log.events] == list(range(1, 44))
    assert log.log_length == LOG_LENGTH
    assert DATA[LOG_LENGTH:] == b"\xff" * (len(DATA) - LOG_LENGTH)
    assert DATA[LOG_LENGTH - 1] != 0xFF
    assert log.trailing_is_padding
    assert log.to_bytes() == DATA
    first = log.events[0]
    assert first.offset == log.header_length
    assert first.mr_index == 1
    assert first.mr_name == "rtmr0"
    assert {e.mr_name for e in log.events} == {"rtmr0", "rtmr1", "rtmr2"}
    assert all(len(e.digests) == 1 and len(e.digests[0][1]) == 48 for e in log.events)


@pytest.mark.parametrize("padding", [b"", b"\x00" * 4096, b"\xff" * 3, b"\x00" * 5])
def test_log_end_with_other_paddings(padding: bytes) -> None:
    reference = EventLog.from_bytes(DATA)
    log = EventLog.from_bytes(DATA[:LOG_LENGTH] + padding)
    assert log.events == reference.events
    assert log.trailing == padding
    assert log.to_bytes() == DATA[:LOG_LENGTH] + padding


def test_log_end_marker_index_only() -> None:
    # go-eventlog's end condition: an MR index of 0xFFFFFFFF, whatever follows.
    tail = b"\xff\xff\xff\xff" + b"\x01\x00\x00\x00" + b"junk"
    log = EventLog.from_bytes(DATA[:LOG_LENGTH] + tail)
    assert len(log.events) == 43
    assert not log.trailing_is_padding


def test_truncated_log_is_a_parse_error_with_offset() -> None:
    log = EventLog.from_bytes(DATA)
    last = log.events[-1]
    cut = LOG_LENGTH - 10  # inside the last event's data
    with pytest.raises(ParseError) as info:
        EventLog.from_bytes(DATA[:cut])
    assert info.value.field == "event[43].eventSize"
    assert info.value.offset == last.offset + 8 + 4 + 2 + 48


@pytest.mark.parametrize("cut", [3, 20, 30, 60])
def test_truncated_header_is_a_parse_error(cut: int) -> None:
    with pytest.raises(ParseError):
        EventLog.from_bytes(DATA[:cut])


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_digest_count_overflow() -> None:
    first = EventLog.from_bytes(DATA).events[0]
    bad = _patch(DATA, first.offset + 8, (0xFFFFFFFF).to_bytes(4, "little"))
    with pytest.raises(ParseError) as info:
        EventLog.from_bytes(bad)
    assert info.value.field == "event[1].digests.count"
    assert info.value.offset == first.offset + 8


def test_event_size_overflow() -> None:
    first = EventLog.from_bytes(DATA).events[0]
    size_at = first.offset + 8 + 4 + 2 + 48
    bad = _patch(DATA, size_at, (0xFFFFFFF0).to_bytes(4, "little"))
    with pytest.raises(ParseError, match="exceeds") as info:
        EventLog.from_bytes(bad)
    assert info.value.offset == size_at


def test_undeclared_digest_algorithm() -> None:
    first = EventLog.from_bytes(DATA).events[0]
    bad = _patch(DATA, first.offset + 12, (0x000B).to_bytes(2, "little"))  # SHA-256 not declared
    with pytest.raises(ParseError, match="not declared"):
        EventLog.from_bytes(bad)


def test_too_many_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccel, "MAX_EVENTS", 42)
    with pytest.raises(ParseError, match="more than 42 events"):
        EventLog.from_bytes(DATA)


def test_log_larger_than_laml() -> None:
    table = CcelTable.from_bytes(TABLE)
    with pytest.raises(ParseError, match="LAML"):
        EventLog.from_bytes(DATA + b"\xff", table=table)


def test_not_crypto_agile() -> None:
    bad = _patch(DATA, 4, (0x00000004).to_bytes(4, "little"))  # first event type EV_SEPARATOR
    with pytest.raises(ParseError, match="crypto-agile"):
        EventLog.from_bytes(bad)


def test_bad_spec_id_signature() -> None:
    bad = _patch(DATA, 32, b"Spec ID Event02\x00")
    with pytest.raises(ParseError) as info:
        EventLog.from_bytes(bad)
    assert info.value.structure == "TCG_EfiSpecIdEvent"
    assert info.value.offset == 32


def test_spec_id_wrong_digest_size() -> None:
    spec = EventLog.from_bytes(DATA).spec_id
    wrong = dataclasses.replace(spec, algorithms=((0x000C, 32),))
    with pytest.raises(ParseError, match="expected 48"):
        SpecIdEvent.from_bytes(wrong.to_bytes())
    twice = dataclasses.replace(spec, algorithms=((0x000C, 48), (0x000C, 48)))
    with pytest.raises(ParseError, match="twice"):
        SpecIdEvent.from_bytes(twice.to_bytes())


# --- decoders --------------------------------------------------------------------------------


def test_decoders_on_real_events() -> None:
    events = EventLog.from_bytes(DATA).events
    assert decode_event(events[1]) == {
        "description": "Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0)",
        "blob_base": 0xFFE00000,
        "blob_length": 0x20000,
    }
    secure_boot = decode_event(events[2])
    assert secure_boot["variable_name"] == "SecureBoot"
    assert secure_boot["variable_guid"] == "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert secure_boot["value"] == 0
    assert decode_event(events[11])["boot_order"] == ["Boot0001", "Boot0000"]
    boot1 = decode_event(events[12])
    assert boot1["description"] == "UEFI nvme_card-pd"
    assert str(boot1["device_path"]).startswith("PciRoot(0x0)/Pci(0x4,0x0)/NVMe(0x1,")
    assert decode_event(events[23])["device_path"] == "\\EFI\\BOOT\\grub-lakitu.efi"
    assert decode_event(events[14]) == {"string": "Calling EFI Application from Boot Option"}
    assert decode_event(events[7]) == {"separator": "normal"}
    gpt = decode_event(events[16])
    assert "STATE" in [p["name"] for p in gpt["partitions"]]  # type: ignore[index, union-attr]
    assert decode_event(events[20])["value_text"] == "sbat,1,2021030218\n"
    cmdline = decode_event(events[40])
    assert str(cmdline["kernel_cmdline"]).startswith("/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd")


def test_decoder_errors_stay_in_the_event() -> None:
    event = EventLog.from_bytes(DATA).events[1]  # EV_EFI_PLATFORM_FIRMWARE_BLOB2
    broken = dataclasses.replace(event, data=b"\x40short")
    assert "decode_error" in decode_event(broken)


def test_format_guid() -> None:
    raw = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
    assert format_guid(raw) == "8be4df61-93ca-11d2-aa0d-00e098032b8c"


# --- property tests: arbitrary bytes raise only ParseError ----------------------------------

_HEADER = DATA[: EventLog.from_bytes(DATA).header_length]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=128))
def test_table_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        CcelTable.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_log_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        EventLog.from_bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_events_after_valid_header(data: bytes) -> None:
    try:
        log = EventLog.from_bytes(_HEADER + data)
    except ParseError:
        return
    assert log.to_bytes() == _HEADER + data
    for event in log.events:
        assert isinstance(decode_event(event), dict)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=LOG_LENGTH - 1), st.integers(min_value=1, max_value=255))
def test_flipped_byte_in_real_log(offset: int, xor: int) -> None:
    data = bytearray(DATA[:LOG_LENGTH])
    data[offset] ^= xor
    try:
        log = EventLog.from_bytes(bytes(data))
    except ParseError:
        return
    for event in log.events:
        assert isinstance(decode_event(event), dict)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EventLog.from_bytes(DATA).events), st.binary(max_size=200))
def test_decoders_arbitrary_data(event: ccel.Event, data: bytes) -> None:
    assert isinstance(decode_event(dataclasses.replace(event, data=data)), dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_device_path_arbitrary(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        device_path_text(data)

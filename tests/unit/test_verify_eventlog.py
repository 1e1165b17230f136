"""RTMR replay and event-log claims (confide.verify.eventlog)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import MeasurementError, ParseError
from confide.evidence.ccel import CcelTable, Event, EventLog, HeaderEvent, SpecIdEvent
from confide.verify.eventlog import compare_rtmrs, replay, verify_event_log

ASSETS = Path(__file__).parent.parent / "assets" / "tdx-eventlog"
TABLE = CcelTable.from_bytes((ASSETS / "ccel_table.dat").read_bytes())
DATA = (ASSETS / "ccel_data.dat").read_bytes()

# Intel TDX DCAP quote v4: 48-byte header, then the TD report body (TDX DCAP Quote Generation
# Library, A.3.2): tee_tcb_svn 16, mr_seam 48, mr_signer_seam 48, seam_attributes 8,
# td_attributes 8, xfam 8, mr_td 48, mr_config_id 48, mr_owner 48, mr_owner_config 48 = 0x148,
# then RTMR0..RTMR3 (48 each) and report_data 64 at 0x208.
QUOTE_HEADER_SIZE = 48
BODY_RTMR0 = 16 + 48 + 48 + 8 + 8 + 8 + 48 + 48 + 48 + 48
assert BODY_RTMR0 == 0x148


def quote_rtmrs(path: Path) -> list[bytes]:
    quote = path.read_bytes()
    assert int.from_bytes(quote[0:2], "little") == 4  # version
    assert int.from_bytes(quote[4:8], "little") == 0x81  # TEE type TDX
    start = QUOTE_HEADER_SIZE + BODY_RTMR0
    return [quote[start + 48 * i : start + 48 * (i + 1)] for i in range(4)]


RTMRS = quote_rtmrs(ASSETS / "cos-113-tdx-quote.dat")
GRUB_CMDLINE_START = "/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd rootwait ro noresume loglevel=7"


def _log() -> EventLog:
    return EventLog.from_bytes(DATA, table=TABLE)


def _with_events(log: EventLog, events: list[Event]) -> EventLog:
    """Re-serialise with other events and parse again (so offsets and numbers are real)."""
    body = log.header.to_bytes() + b"".join(e.to_bytes() for e in events)
    padded = body + b"\xff" * (len(DATA) - len(body))
    return EventLog.from_bytes(padded, table=log.table)


# --- the real GCE log against its quote -----------------------------------------------------


def test_replay_equals_the_quote_rtmrs() -> None:
    assert list(replay(_log())) == RTMRS
    assert RTMRS[3] == bytes(48)  # this TD never extended RTMR3
    assert compare_rtmrs(_log(), RTMRS) == {"rtmr0": True, "rtmr1": True, "rtmr2": True, "rtmr3": True}


def test_verify_event_log_claims() -> None:
    claims = verify_event_log(_log(), RTMRS)
    assert claims.rtmrs == tuple(v.hex() for v in RTMRS)
    assert all(claims.matches.values())
    assert claims.event_count == 43
    assert claims.cc_type == 2
    assert claims.kernel_cmdline is not None
    assert claims.kernel_cmdline.startswith(GRUB_CMDLINE_START)
    assert "dm-mod.create=vroot" in claims.kernel_cmdline
    out = claims.to_json()
    json.dumps(out)  # JSON-shaped
    events = out["events"]
    assert isinstance(events, list)
    first = events[0]
    assert isinstance(first, dict)
    assert first["mr"] == "rtmr0"
    assert first["type_name"] == "EV_EFI_HANDOFF_TABLES2"
    assert first["digest"] == _log().events[0].digests[0][1].hex()
    by_type = {}
    for e in events:
        assert isinstance(e, dict)
        by_type.setdefault(e["type_name"], []).append(e)
    # Spec-mandated digest-of-data events all match here.
    for name in ("EV_SEPARATOR", "EV_EFI_ACTION", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_GPT_EVENT"):
        assert all(e["digest_matches_event"] for e in by_type[name]), name
    assert not any(e["digest_matches_event"] for e in by_type["EV_EFI_BOOT_SERVICES_APPLICATION"])
    grub = [e for e in by_type["EV_IPL"] if "grub_cmd" in e["details"]]
    assert len(grub) == 14
    assert all(e["details"]["text_bound"] for e in grub)


def test_flipped_digest_in_every_event_names_its_rtmr() -> None:
    log = _log()
    for i, event in enumerate(log.events):
        alg, digest = event.digests[0]
        flipped = dataclasses.replace(event, digests=((alg, bytes([digest[0] ^ 1]) + digest[1:]),))
        events = list(log.events)
        events[i] = flipped
        tampered = _with_events(log, events)
        rtmr = event.mr_index - 1
        with pytest.raises(MeasurementError) as info:
            verify_event_log(tampered, RTMRS)
        message = str(info.value)
        assert message.startswith(f"RTMR{rtmr} replayed from the event log does not match the quote")
        assert f"expected {RTMRS[rtmr].hex()}" in message
        assert f"rtmr{rtmr} differs" in message
        others = {0, 1, 2, 3} - {rtmr}
        assert all(f"rtmr{o} matches" in message for o in others)


def test_flipped_quote_rtmr_is_rejected() -> None:
    for i in range(4):
        rtmrs = list(RTMRS)
        rtmrs[i] = rtmrs[i][:47] + bytes([rtmrs[i][47] ^ 0x80])
        with pytest.raises(MeasurementError, match=f"RTMR{i} replayed"):
            verify_event_log(_log(), rtmrs)


def test_dropped_and_reordered_events_are_rejected() -> None:
    log = _log()
    events = list(log.events)
    with pytest.raises(MeasurementError, match="RTMR2"):
        verify_event_log(_with_events(log, events[:-3] + events[-2:]), RTMRS)  # drop kernel_cmdline
    swapped = list(events)
    swapped[2], swapped[3] = swapped[3], swapped[2]  # two RTMR0 variable events
    with pytest.raises(MeasurementError, match="RTMR0"):
        verify_event_log(_with_events(log, swapped), RTMRS)
    moved = list(events)
    moved[40] = dataclasses.replace(moved[40], mr_index=4)  # kernel_cmdline into RTMR3
    with pytest.raises(MeasurementError, match="RTMR2"):
        verify_event_log(_with_events(log, moved), RTMRS)


def test_events_cannot_hide_after_the_end_marker() -> None:
    # A log truncated before an event ends (end marker written over it) does not replay.
    log = _log()
    raw = DATA[: log.events[-1].offset] + b"\xff" * (len(DATA) - log.events[-1].offset)
    shortened = EventLog.from_bytes(raw, table=TABLE)
    assert len(shortened.events) == 42
    with pytest.raises(MeasurementError, match="RTMR1"):
        verify_event_log(shortened, RTMRS)


def test_tampered_cmdline_text_keeps_replay_but_loses_the_claim() -> None:
    log = _log()
    events = list(log.events)
    event = events[40]
    assert event.data.startswith(b"kernel_cmdline: ")
    events[40] = dataclasses.replace(event, data=event.data.replace(b"loglevel=7", b"loglevel=0"))
    tampered = _with_events(log, events)
    claims = verify_event_log(tampered, RTMRS)  # the digests still replay
    assert claims.kernel_cmdline is None
    details = claims.events[40]["details"]
    assert isinstance(details, dict)
    assert details["text_bound"] is False
    assert "loglevel=0" in str(details["kernel_cmdline"])


def test_unchecked_rtmr_events_are_not_vouched_for() -> None:
    rtmrs = list(RTMRS)
    rtmrs[2] = bytes(48)  # pretend RTMR2 is not comparable
    with pytest.raises(MeasurementError, match="RTMR2"):
        verify_event_log(_log(), rtmrs)
    claims = verify_event_log(_log(), rtmrs, check=(0, 1, 3))
    assert claims.checked == ("rtmr0", "rtmr1", "rtmr3")
    assert claims.matches["rtmr2"] is False
    assert claims.kernel_cmdline is None  # it lives in RTMR2
    assert all(not e["verified"] for e in claims.events if e["mr"] == "rtmr2")
    assert all(e["verified"] for e in claims.events if e["mr"] == "rtmr0")


def test_event_for_mrtd_cannot_be_replayed() -> None:
    log = _log()
    events = list(log.events)
    events[0] = dataclasses.replace(events[0], mr_index=0)
    with pytest.raises(MeasurementError, match=r"MR index 0 \(mrtd\)"):
        replay(_with_events(log, events))
    events[0] = dataclasses.replace(events[0], mr_index=5)
    with pytest.raises(MeasurementError, match="MR index 5"):
        replay(_with_events(log, events))


def test_no_action_events_are_not_extended() -> None:
    log = _log()
    locality = Event(0, 0, 0, 0x3, ((0x000C, bytes(48)),), b"StartupLocality\x00\x03")
    with_no_action = _with_events(log, [locality, *log.events])
    claims = verify_event_log(with_no_action, RTMRS)
    assert claims.events[0]["type_name"] == "EV_NO_ACTION"
    assert claims.events[0]["verified"] is False


def test_wrong_cc_type_and_wrong_rtmr_shapes() -> None:
    sev = dataclasses.replace(TABLE, cc_type=1)
    with pytest.raises(MeasurementError, match=r"CC type got 1 \(AMD SEV\), expected 2"):
        verify_event_log(dataclasses.replace(_log(), table=sev), RTMRS)
    with pytest.raises(MeasurementError, match="expected 4 values of 48 bytes"):
        verify_event_log(_log(), RTMRS[:3])
    with pytest.raises(MeasurementError, match="expected 4 values of 48 bytes"):
        verify_event_log(_log(), [*RTMRS[:3], b"\x00" * 32])
    with pytest.raises(MeasurementError, match="subset"):
        verify_event_log(_log(), RTMRS, check=(4,))


def test_table_free_log_verifies() -> None:
    claims = verify_event_log(EventLog.from_bytes(DATA[:18101]), RTMRS)
    assert claims.cc_type is None
    assert claims.trailing_is_padding


# --- trustee's td-shim events (independent parser output) ------------------------------------

TRUSTEE = json.loads((ASSETS / "trustee_parse_tdx_claims_expected.json").read_text())


def _trustee_log() -> EventLog:
    spec = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, ((0x000C, 48),), b"")
    header = HeaderEvent(0, 0x3, bytes(20), spec.to_bytes())
    events = []
    for number, e in enumerate(TRUSTEE["uefi_event_logs"], start=1):
        assert e["digests"][0]["alg"] == "SHA-384"
        digest = bytes.fromhex(e["digests"][0]["digest"])
        data = base64.b64decode(e["event"])
        type_code = {
            "EV_PLATFORM_CONFIG_FLAGS": 0xA,
            "EV_SEPARATOR": 0x4,
            "EV_EFI_PLATFORM_FIRMWARE_BLOB2": 0x8000000A,
        }[e["type_name"]]
        events.append(Event(number, 0, e["index"], type_code, ((0x000C, digest),), data))
    raw = header.to_bytes() + b"".join(ev.to_bytes() for ev in events)
    return EventLog.from_bytes(raw)


def test_trustee_events_decode_like_trustee() -> None:
    log = _trustee_log()
    claims = verify_event_log(log, list(replay(log)))  # self-consistent: tests decoding only
    for ours, theirs in zip(claims.events, TRUSTEE["uefi_event_logs"], strict=True):
        assert ours["type_name"] == theirs["type_name"]
        assert ours["index"] == theirs["index"]
        assert ours["digest"] == theirs["digests"][0]["digest"]
        assert ours["digest_matches_event"] == theirs["digest_matches_event"]
    details = [e["details"] for e in claims.events]
    assert details[0] == {"descriptor": "td_hob", "info_length": 5248, "text_bound": True}
    assert details[3]["description"] == "td_payload"  # type: ignore[index]
    assert details[4]["kernel_cmdline"] == "root=/dev/vda1 console=hvc0 rw"  # type: ignore[index]
    assert claims.kernel_cmdline == "root=/dev/vda1 console=hvc0 rw"


def test_trustee_tampered_td_shim_cmdline_is_not_claimed() -> None:
    log = _trustee_log()
    events = list(log.events)
    events[4] = dataclasses.replace(events[4], data=events[4].data.replace(b"console=hvc0", b"console=ttyS"))
    tampered = EventLog.from_bytes(log.header.to_bytes() + b"".join(e.to_bytes() for e in events))
    claims = verify_event_log(tampered, list(replay(tampered)))
    assert claims.kernel_cmdline is None
    assert claims.events[4]["details"]["text_bound"] is False  # type: ignore[index]


def test_log_of_another_td_does_not_match_its_quote() -> None:
    rtmrs = quote_rtmrs(ASSETS / "trustee_tdx_quote_4.dat")
    assert rtmrs[0].hex() == TRUSTEE["quote"]["body"]["rtmr_0"]
    assert rtmrs[1].hex() == TRUSTEE["quote"]["body"]["rtmr_1"]
    with pytest.raises(MeasurementError, match="RTMR0 replayed") as info:
        verify_event_log(_trustee_log(), rtmrs)
    assert "rtmr2 matches, rtmr3 matches" in str(info.value)
    # and the independent replay: SHA-384 extend by hand for RTMR0
    value = bytes(48)
    for e in TRUSTEE["uefi_event_logs"]:
        if e["index"] == 1:
            value = hashlib.sha384(value + bytes.fromhex(e["digests"][0]["digest"])).digest()
    assert replay(_trustee_log())[0] == value


# --- property test: a corrupted log gives only ParseError or MeasurementError ---------------


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=18100), st.integers(min_value=1, max_value=255))
def test_corrupted_log_never_verifies_silently(offset: int, xor: int) -> None:
    raw = bytearray(DATA)
    raw[offset] ^= xor
    try:
        log = EventLog.from_bytes(bytes(raw), table=TABLE)
        claims = verify_event_log(log, RTMRS)
    except (ParseError, MeasurementError):
        return
    # It verified: then no digest, MR index or event type that matters was changed, and any
    # bound kernel command line is still the genuine one.
    assert list(replay(log)) == RTMRS
    if claims.kernel_cmdline is not None:
        assert claims.kernel_cmdline.startswith(GRUB_CMDLINE_START)
        assert claims.kernel_cmdline == verify_event_log(_log(), RTMRS).kernel_cmdline


def test_td_shim_info_length_cannot_shorten_the_claimed_cmdline() -> None:
    # td-shim's TD_SHIM_PLATFORM_CONFIG_INFO: Descriptor[16], InfoLength u32, Info (td-shim
    # spec Table 3.5-4); the digest covers Info. A log whose InfoLength is lowered still
    # replays (the digest is unchanged) but must not claim the shortened prefix of the
    # measured command line ("root=/dev/vda1" of "root=/dev/vda1 console=hvc0 rw").
    log = _trustee_log()
    events = list(log.events)
    data = events[4].data
    assert data[:16] == b"td_payload_info\x00"
    assert int.from_bytes(data[16:20], "little") == len(data) - 20
    shortened = data[:16] + len(b"root=/dev/vda1").to_bytes(4, "little") + data[20:]
    events[4] = dataclasses.replace(events[4], data=shortened)
    tampered = EventLog.from_bytes(log.header.to_bytes() + b"".join(e.to_bytes() for e in events))
    claims = verify_event_log(tampered, list(replay(tampered)))  # the digests still replay
    assert claims.kernel_cmdline is None
    details = claims.events[4]["details"]
    assert isinstance(details, dict)
    assert details.get("text_bound") is not True
    assert details.get("kernel_cmdline") != "root=/dev/vda1"

"""Replay of a TDX CC event log into RTMRs, and comparison with a quote's RTMRs.

An RTMR starts at 48 zero bytes and is extended by ``RTMR := SHA-384(RTMR || digest)``
(Intel TDX Module spec, TDG.MR.RTMR.EXTEND; TDX GHCI 1.5, 4.3.3). Replaying the SHA-384
digests of the log's events per MR index (1..4 = RTMR0..RTMR3) must reproduce the RTMR values
of a *verified* quote; only then do the events say anything. Events of type EV_NO_ACTION are
not extended (TCG PFP 10.4.1).

What a passing replay proves, and what it does not:

* every event digest replayed into a checked RTMR is genuine, in that order;
* the event *data* is not covered by the replay. Where the PFP spec defines the digest as the
  hash of the data, ``digest_matches_event`` tells whether the data is the measured one (as
  trustee reports it); ``kernel_cmdline`` is reported only when its text is bound to the
  digest of its event (GRUB's ``kernel_cmdline:`` event hashes the command line after the
  prefix; td-shim's ``td_payload_info`` hashes the whole info block).

No I/O, no clock: pure functions over parsed structures.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from confide.errors import MeasurementError
from confide.evidence.ccel import CC_TYPE_TDX, EV_NO_ACTION, TPM_ALG_SHA384, Event, EventLog
from confide.evidence.tcg_events import (
    DATA_DIGEST_TYPES,
    EV_IPL,
    EV_PLATFORM_CONFIG_FLAGS,
    GRUB_CMD_PREFIX,
    GRUB_KERNEL_CMDLINE_PREFIX,
    TD_SHIM_DESCRIPTOR_SIZE,
    decode_event,
    event_type_name,
)
from confide.verify.result import ClaimValue

__all__ = ["RTMR_COUNT", "RTMR_SIZE", "EventLogClaims", "compare_rtmrs", "replay", "verify_event_log"]

RTMR_COUNT = 4
RTMR_SIZE = 48  # SHA-384
FIRST_RTMR_MR_INDEX = 1  # CC MR index 1 = RTMR0 (0 is MRTD, which a log cannot extend)


def _rtmr_slot(event: Event) -> int:
    """The RTMR number (0..3) an event extends; MeasurementError if it names no RTMR."""
    slot = event.mr_index - FIRST_RTMR_MR_INDEX
    if not 0 <= slot < RTMR_COUNT:
        raise MeasurementError(
            f"event {event.number} ({event_type_name(event.event_type)}) at offset {event.offset:#x} "
            f"names MR index {event.mr_index} ({event.mr_name}), expected 1..4 (RTMR0..RTMR3): "
            "it cannot be replayed"
        )
    return slot


def _sha384_digest(event: Event) -> bytes:
    digest = event.digest(TPM_ALG_SHA384)
    if digest is None:
        raise MeasurementError(
            f"event {event.number} at offset {event.offset:#x} has no SHA-384 digest: "
            "RTMRs cannot be replayed"
        )
    return digest


def replay(log: EventLog) -> tuple[bytes, bytes, bytes, bytes]:
    """The RTMR0..RTMR3 values the log's events extend to, from 48 zero bytes each."""
    rtmrs = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        slot = _rtmr_slot(event)
        rtmrs[slot] = hashlib.sha384(rtmrs[slot] + _sha384_digest(event)).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def _check_rtmr_values(rtmrs: Sequence[bytes]) -> None:
    if len(rtmrs) != RTMR_COUNT or any(len(v) != RTMR_SIZE for v in rtmrs):
        sizes = [len(v) for v in rtmrs]
        raise MeasurementError(
            f"got RTMR values of sizes {sizes}, expected {RTMR_COUNT} values of {RTMR_SIZE} bytes"
        )


def compare_rtmrs(log: EventLog, rtmrs: Sequence[bytes]) -> dict[str, bool]:
    """``{"rtmr0": True, ...}``: whether each replayed RTMR equals the given (quote) value."""
    _check_rtmr_values(rtmrs)
    replayed = replay(log)
    return {f"rtmr{i}": hmac.compare_digest(replayed[i], rtmrs[i]) for i in range(RTMR_COUNT)}


def _text_bound(event: Event) -> bool | None:
    """Whether the text an event's details show is what its SHA-384 digest covers.

    ``None`` where the event is not one of the text-carrying kinds handled here: GRUB's
    ``grub_cmd:`` / ``kernel_cmdline:`` EV_IPL events (the digest covers the text after the
    prefix, without the NUL) and td-shim's ``TD_SHIM_PLATFORM_CONFIG_INFO`` (the digest covers
    the info block).
    """
    digest = event.digest(TPM_ALG_SHA384)
    if digest is None:
        return None
    if event.event_type == EV_IPL:
        for prefix in (GRUB_KERNEL_CMDLINE_PREFIX, GRUB_CMD_PREFIX):
            if event.data.startswith(prefix):
                text = event.data[len(prefix) :]
                candidates = (text, text.rstrip(b"\x00"))
                return any(hmac.compare_digest(hashlib.sha384(c).digest(), digest) for c in candidates)
        return None
    if event.event_type == EV_PLATFORM_CONFIG_FLAGS and len(event.data) >= TD_SHIM_DESCRIPTOR_SIZE + 4:
        # td-shim Table 3.5-4: the digest covers Info, InfoLength bytes after the u32 length.
        # The details show Info as InfoLength says, so the text is bound only when InfoLength
        # spans exactly the rest of the record: a lowered InfoLength would show a prefix of
        # the measured text as if it were all of it.
        length = int.from_bytes(event.data[TD_SHIM_DESCRIPTOR_SIZE : TD_SHIM_DESCRIPTOR_SIZE + 4], "little")
        info = event.data[TD_SHIM_DESCRIPTOR_SIZE + 4 :]
        if length != len(info):
            return False
        return hmac.compare_digest(hashlib.sha384(info).digest(), digest)
    return None


@dataclass(frozen=True, slots=True)
class EventLogClaims:
    """The result of a successful replay: JSON-shaped, ready to be put into claims."""

    rtmrs: tuple[str, str, str, str]
    """Replayed RTMR0..RTMR3, lower-case hex (equal to the quote's for every checked RTMR)."""
    checked: tuple[str, ...]
    """The RTMRs compared with the quote (all four unless the caller chose fewer)."""
    matches: dict[str, bool]
    events: tuple[dict[str, ClaimValue], ...]
    kernel_cmdline: str | None
    """The last kernel command line of a verified event whose text is bound to its digest."""
    event_count: int
    log_length: int
    trailing_is_padding: bool
    cc_type: int | None

    def to_json(self) -> dict[str, ClaimValue]:
        return {
            "rtmrs": list(self.rtmrs),
            "checked": list(self.checked),
            "matches": dict(self.matches),
            "kernel_cmdline": self.kernel_cmdline,
            "event_count": self.event_count,
            "log_length": self.log_length,
            "trailing_is_padding": self.trailing_is_padding,
            "cc_type": self.cc_type,
            "events": list(self.events),
        }


def _event_claim(event: Event, verified: bool) -> dict[str, ClaimValue]:
    digest = event.digest(TPM_ALG_SHA384)
    matches = digest is not None and hmac.compare_digest(hashlib.sha384(event.data).digest(), digest)
    return {
        "number": event.number,
        "index": event.mr_index,
        "mr": event.mr_name,
        "type": event.event_type,
        "type_name": event_type_name(event.event_type),
        "digest": digest.hex() if digest is not None else None,
        "digests": [{"alg": alg, "digest": value.hex()} for alg, value in event.digests],
        "data_length": len(event.data),
        "verified": verified,
        "digest_matches_event": matches,
        "digest_of_data_required": event.event_type in DATA_DIGEST_TYPES,
        "details": decode_event(event),
    }


def verify_event_log(
    log: EventLog, rtmrs: Sequence[bytes], *, check: Sequence[int] = (0, 1, 2, 3)
) -> EventLogClaims:
    """Replay ``log`` and require the RTMRs numbered in ``check`` to equal ``rtmrs``.

    ``rtmrs`` are RTMR0..RTMR3 from a quote whose signature was verified. Raises
    :class:`MeasurementError` naming the first RTMR that differs (got the replayed value,
    expected the quote's) and saying which RTMRs match. ``check`` lets a caller leave out an
    RTMR extended after boot by the OS (usually RTMR3), whose events the CCEL does not hold.
    """
    _check_rtmr_values(rtmrs)
    if not check or any(i not in range(RTMR_COUNT) for i in check):
        raise MeasurementError(f"got RTMRs to check {list(check)}, expected a non-empty subset of 0..3")
    # 1. The table, if given, must describe a TDX log.
    if log.table is not None and log.table.cc_type != CC_TYPE_TDX:
        raise MeasurementError(
            f"CCEL CC type got {log.table.cc_type} ({log.table.cc_type_name}), "
            f"expected {CC_TYPE_TDX} (Intel TDX)"
        )
    # 2. Replay and compare every checked RTMR.
    replayed = replay(log)
    matches = {f"rtmr{i}": hmac.compare_digest(replayed[i], rtmrs[i]) for i in range(RTMR_COUNT)}
    for i in sorted(set(check)):
        if not matches[f"rtmr{i}"]:
            summary = ", ".join(f"{name} {'matches' if ok else 'differs'}" for name, ok in matches.items())
            raise MeasurementError(
                f"RTMR{i} replayed from the event log does not match the quote: got {replayed[i].hex()}, "
                f"expected {rtmrs[i].hex()} ({summary})"
            )
    # 3. Claims: events with decoded details; the kernel command line where it is bound.
    events: list[dict[str, ClaimValue]] = []
    kernel_cmdline: str | None = None
    checked_mr_indexes = {i + FIRST_RTMR_MR_INDEX for i in check}
    for event in log.events:
        # An event is vouched for only if it was extended into an RTMR that was checked.
        verified = event.event_type != EV_NO_ACTION and event.mr_index in checked_mr_indexes
        claim = _event_claim(event, verified)
        details = claim["details"]
        if isinstance(details, dict) and details and "decode_error" not in details:
            bound = _text_bound(event)
            if bound is not None:
                details["text_bound"] = bound
            cmdline = details.get("kernel_cmdline")
            if verified and bound and isinstance(cmdline, str):
                kernel_cmdline = cmdline
        events.append(claim)
    return EventLogClaims(
        rtmrs=(replayed[0].hex(), replayed[1].hex(), replayed[2].hex(), replayed[3].hex()),
        checked=tuple(f"rtmr{i}" for i in sorted(set(check))),
        matches=matches,
        events=tuple(events),
        kernel_cmdline=kernel_cmdline,
        event_count=len(log.events),
        log_length=log.log_length,
        trailing_is_padding=log.trailing_is_padding,
        cc_type=log.table.cc_type if log.table is not None else None,
    )

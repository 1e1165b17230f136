"""Freshness of a cosigned checkpoint: ``ledger verify --witness VKEY --max-age DURATION``.

A tlog-cosignature ``cosignature/v1`` signs a timestamp with the checkpoint: "as of the
specified time, the consistent tree head with the largest size the cosigner has observed for the
log [...] has the specified root hash" (c2sp.org/tlog-cosignature). A verifier that does not
compare that time with its own clock can be kept on an old checkpoint with its old cosignatures
forever: the log hides every later entry without forking (a frozen view). :func:`check_fresh`
requires, of each required witness, a cosignature at most ``max_age`` old at ``now``, and refuses
one dated more than ``skew`` after ``now`` (tlog-cosignature: "verifiers MAY reject cosignatures
with timestamps in the future"): both are a :class:`~confide.errors.FreshnessError` (exit 69).

Pure: ``now`` is given (the CLI and the SDK read the clock, never this module). A log whose tree
does not grow stays fresh only when it has its unchanged checkpoint cosigned again: a witness
(c2sp.org/tlog-witness, confide's :class:`~confide.ledger.witness.Witness` included) cosigns a
checkpoint of the size and root it cosigned last with a new timestamp; the CAS asks its witnesses
again at least every :data:`~confide.cas.witness_quorum.RECOSIGN_SECONDS` (docs/ledger.md
"Freshness").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from confide.errors import FreshnessError, UnknownKeyError, UsageError
from confide.ledger.note import TIMESTAMP_SIZE, Note, NoteVerifier

__all__ = [
    "MAX_AGE_RANGE",
    "MAX_SKEW",
    "NO_WITNESS",
    "Freshness",
    "check_fresh",
    "cosignature_times",
    "freshness_for",
    "parse_max_age",
]

NO_WITNESS = "--max-age goes with --witness VKEY: only a witness's cosignature carries a time"


def not_cosigned(size: int, vkey: str) -> str:
    """The refusal of a checkpoint a required witness did not cosign (``UnknownKeyError``), with
    what to look at: the log asks its witnesses after it signs, a failed witness again later."""
    return (
        f"checkpoint {size} has no cosignature by witness {vkey}: that witness has not cosigned it"
        " (not asked yet, down, or not a witness of this log: a CAS asks its --witness witnesses"
        " within a second of a new checkpoint, and one that failed again after 60 s); run again"
        " later, and check the witness and the log's --witness list if it persists"
    )


MAX_SKEW = timedelta(seconds=60)
"""How far in the future a cosignature's timestamp may be (the witness's clock ahead of the
verifier's); beyond it the cosignature is refused."""

MAX_AGE_RANGE = (60, 366 * 86400)
"""``--max-age``: from one minute (the CAS has a quiet log cosigned again every
:data:`~confide.cas.witness_quorum.RECOSIGN_SECONDS`) to a year, in whole seconds."""


@dataclass(frozen=True)
class Freshness:
    """What a cosignature must show: made at most ``max_age`` before ``now`` and at most
    ``skew`` after it. ``now``: an aware datetime, the verifier's time. ``clock`` (the CLI's and
    the SDK's, when no ``now`` is given): read again for each checkpoint right after it is fetched
    (:meth:`renewed`, by the auditor's I/O layer), so that a checkpoint is judged at the time it was
    read, not at the audit's start: a wait for the state file's lock or a long ``--full``
    listing before the fetch would otherwise make a cosignature made meanwhile look dated in the
    future (refused), or let a slow log stretch ``max_age`` by its delay."""

    now: datetime
    max_age: timedelta
    skew: timedelta = MAX_SKEW
    clock: Callable[[], datetime] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("now: an aware datetime")
        if self.max_age <= timedelta(0) or self.skew < timedelta(0):
            raise ValueError("max_age: positive; skew: not negative")

    def renewed(self) -> Freshness:
        """This freshness at the time the ``clock`` reads now (itself without a clock)."""
        if self.clock is None:
            return self
        return replace(self, now=self.clock())


def cosignature_times(note: Note, witness: NoteVerifier) -> list[int]:
    """The timestamps (POSIX seconds) of ``witness``'s cosignature lines on ``note`` (name and key
    ID of the key; each line is verified: :func:`~confide.ledger.note.open_note` has refused a
    note with any failing one before this is asked)."""
    return [
        int.from_bytes(sig.signature[:TIMESTAMP_SIZE], "big")
        for sig in note.signatures
        if (sig.name, sig.key_id) == (witness.name, witness.key_id)
        and len(sig.signature) > TIMESTAMP_SIZE
        and witness.verify(note.text, sig.signature)
    ]


def check_fresh(note: Note, size: int, witnesses: Sequence[NoteVerifier], freshness: Freshness) -> None:
    """Each of ``witnesses`` must have cosigned ``note`` (the checkpoint of ``size``) within
    ``freshness``: its newest valid cosignature at most ``max_age`` old at ``now`` (an age of
    exactly ``max_age`` passes), none more than ``skew`` in the future (exactly ``skew`` passes).
    Else :class:`FreshnessError`; a witness with no valid cosignature at all is an
    :class:`UnknownKeyError`, as without ``--max-age``."""
    if not witnesses:
        raise UsageError(NO_WITNESS)
    now = freshness.now.timestamp()
    for witness in witnesses:
        times = cosignature_times(note, witness)
        if not times:
            raise UnknownKeyError(not_cosigned(size, witness.vkey))
        newest = max(times)
        if newest - now > freshness.skew.total_seconds():
            raise FreshnessError(
                f"witness {witness.name} dated its cosignature of checkpoint {size} {_when(newest)}, "
                f"{_span(newest - now)} after now ({_when(now)}), more than the "
                f"{_span(freshness.skew.total_seconds())} of clock skew allowed: its clock or this one is "
                "wrong, or the cosignature was made to outlive its time"
            )
        age = now - newest
        if age > freshness.max_age.total_seconds():
            raise FreshnessError(
                f"checkpoint {size}: the newest cosignature by witness {witness.name} is of {_when(newest)}, "
                f"{_span(age)} old, more than --max-age {_span(freshness.max_age.total_seconds())}: the log "
                "shows an old checkpoint (frozen: it may hide every later entry), or its witness was not "
                "asked again"
            )


def parse_max_age(text: str, option: str = "--max-age") -> timedelta:
    """``--max-age DURATION``: a duration as in policies and ``cas serve --crl-validity``
    (``1h``, ``30 minutes``, ``2d``), from one minute to a year (:data:`MAX_AGE_RANGE`)."""
    from confide.policy._types import option_duration  # noqa: PLC0415 - the policies' duration syntax

    low, high = MAX_AGE_RANGE
    return timedelta(seconds=option_duration(text, option, low, high, "'1h', '30 minutes'"))


def freshness_for(
    max_age: str | timedelta | None,
    witnesses: Sequence[NoteVerifier],
    clock: Callable[[], datetime],
    *,
    now: datetime | None = None,
    option: str = "--max-age",
    no_witness: str = NO_WITNESS,
) -> Freshness | None:
    """The :class:`Freshness` of ``--max-age`` (``ledger verify``, ``history``, ``accesses``) and
    of the SDK's ``max_age`` (``Cas.verify_log``, ``history``, ``accesses``): ``None`` without
    ``max_age``; else it needs ``witnesses`` (a :class:`UsageError` ``no_witness`` otherwise),
    and is a duration as :func:`parse_max_age` reads it, or a ``timedelta`` in
    :data:`MAX_AGE_RANGE`. Judged at ``now`` when given (an aware datetime: every checkpoint at
    that time), else at ``clock()``, read again as each checkpoint is fetched
    (:meth:`Freshness.renewed`). The clock is the caller's: this module reads none."""
    if max_age is None:
        return None
    if not witnesses:
        raise UsageError(no_witness)
    if isinstance(max_age, timedelta):
        low, high = MAX_AGE_RANGE
        if not low <= max_age.total_seconds() <= high:
            raise UsageError(f"{option}: got {max_age}, expected {low} seconds to {high // 86400} days")
        age = max_age
    elif isinstance(max_age, str):
        age = parse_max_age(max_age, option)
    else:
        raise UsageError(f"{option}: got {type(max_age).__name__}, expected a duration string or timedelta")
    if now is not None:
        if now.tzinfo is None:
            raise UsageError("now: expected an aware datetime")
        return Freshness(now, age)
    return Freshness(clock(), age, clock=clock)


def _when(posix: float) -> str:
    try:
        return datetime.fromtimestamp(int(posix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # a timestamp past year 9999
        return f"time {int(posix)}"


def _span(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    if whole < 172800:
        return f"{whole // 3600} h"
    return f"{whole // 86400} days"

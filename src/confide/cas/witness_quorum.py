"""``cas serve --witness-quorum N``: the CAS checks its own database against its witnesses
(docs/cas.md "Witness quorum", docs/adr/0005-witness-quorum.md).

:class:`WitnessQuorum` is the configuration (the ``--witness URL=VKEY`` witnesses, the quorum
and the optional ``--witness-max-lag``); its :meth:`~WitnessQuorum.attested` keys and quorum are
bound into the CAS's report data (:func:`confide.cas.pin.cas_binding`, v2).

:class:`WitnessGuard` holds what the witnesses said. A round for a signed checkpoint starts with
:meth:`WitnessGuard.begin` (its time: a quorum's age is counted from there, before any witness
is asked); :meth:`WitnessGuard.ask` has one witness cosign it (c2sp.org/tlog-witness
``add-checkpoint``, through :func:`~confide.ledger.witness_http.request_cosignatures`); once a
quorum of the round's witnesses did, :meth:`WitnessGuard.reached` makes that checkpoint the
newest one cosigned by a quorum. ``cas serve`` runs the witnesses of a round concurrently, off
its signer's thread (:class:`confide.cas.witness_rounds.WitnessRounds`);
:meth:`WitnessGuard.round` runs them one after the other on the caller's thread. A witness that
answers that it cosigned a larger tree, or another tree (a 409 or a refused consistency proof:
:class:`~confide.errors.LogRollbackError`), halts the guard for good (until the process
restarts): :meth:`WitnessGuard.refusal` then gives the reason every release and change is
refused for. A witness that cannot be reached or answers anything else is a failure, counted
per witness; the checkpoint is sent again (:meth:`WitnessGuard.due`). With ``max_lag``,
:meth:`refusal` also refuses while the newest quorum is older than that (measured on the
monotonic clock), and recovers with the next quorum. Time is injected (``monotonic``,
``wall``), so tests drive it without sleeping.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from confide.cas.pin import AttestedWitnesses
from confide.errors import ConfideError, LogRollbackError, NetworkError, ParseError, UsageError
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteVerifier, parse_note
from confide.ledger.witness_http import request_cosignatures

__all__ = [
    "MAX_LAG_RANGE",
    "RECOSIGN_SECONDS",
    "RETRY_SECONDS",
    "START_ATTEMPTS",
    "START_DELAYS",
    "Round",
    "WitnessGuard",
    "WitnessQuorum",
    "parse_max_lag",
]

START_ATTEMPTS = 3
"""Rounds at startup before the CAS gives up on a quorum (1 s, then 2 s between them)."""
START_DELAYS = (1.0, 2.0)
RETRY_SECONDS = 5.0
"""While running, a checkpoint not yet cosigned by a quorum is sent again after this long."""
RECOSIGN_SECONDS = 60.0
"""A log that does not grow has its checkpoint cosigned again after this long (with
``--witness-max-lag``, after half the bound if that is sooner): a tlog-cosignature's timestamp
says the witness saw no larger tree as of then, and verifiers with ``ledger verify --max-age``
refuse a checkpoint whose cosignatures are old (a frozen log looks so). tlog-witness: a witness
cosigns a checkpoint of the size and root it cosigned last again, with a new timestamp."""
MAX_LAG_RANGE = (10, 30 * 86400)
"""``--witness-max-lag``: whole seconds, at least 10 (twenty checkpoint intervals and a few
witness round trips), at most 30 days."""

log = logging.getLogger("confide.cas")


def parse_max_lag(text: str) -> int:
    """``--witness-max-lag SECONDS``: whole seconds in :data:`MAX_LAG_RANGE`."""
    low, high = MAX_LAG_RANGE
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12 or not low <= int(value) <= high:
        raise UsageError(f"--witness-max-lag: got {text[:40]!r}, expected whole seconds from {low} to {high}")
    return int(value)


@dataclass(frozen=True)
class WitnessQuorum:
    """``--witness URL=VKEY``... ``--witness-quorum N`` [``--witness-max-lag SECONDS``]."""

    witnesses: tuple[tuple[str, NoteVerifier], ...]
    quorum: int
    max_lag: float | None = None

    def __post_init__(self) -> None:
        if not self.witnesses:
            raise UsageError("--witness-quorum needs --witness URL=VKEY (at least one)")
        if not 1 <= self.quorum <= len(self.witnesses):
            raise UsageError(
                f"--witness-quorum: got {self.quorum}, expected 1 to {len(self.witnesses)}"
                " (the number of --witness)"
            )
        seen: dict[bytes, str] = {}
        for _, key in self.witnesses:
            if key.sig_type != SIG_TYPE_COSIGNATURE_V1:
                raise UsageError(f"--witness: {key.vkey[:60]!r} is not a cosignature/v1 witness key")
            if key.public_key in seen:  # under any name: one witness would count twice
                raise UsageError(
                    f"--witness: the key of {key.name!r} is given twice (also as {seen[key.public_key]!r});"
                    " each witness counts once towards --witness-quorum"
                )
            seen[key.public_key] = key.name
        if self.max_lag is not None and not (math.isfinite(self.max_lag) and self.max_lag > 0):
            raise UsageError(
                f"--witness-max-lag: got {self.max_lag!r}, expected a positive number of seconds"
            )
        try:
            self.attested()
        except ParseError as exc:  # e.g. more witnesses than a document may name
            raise UsageError(f"--witness: {exc.message}") from None

    def attested(self) -> AttestedWitnesses:
        """The witness keys and quorum the CAS binds into its report data."""
        return AttestedWitnesses(self.quorum, tuple(sorted(k.vkey for _, k in self.witnesses)))


@dataclass
class _Witness:
    url: str
    key: NoteVerifier
    size: int = 0  # the size it last cosigned for us (sent as old size first)
    stamp: int = -1  # the timestamp of that cosignature (tlog-cosignature "time")
    cosignatures: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Round:
    """One round's outcome: the checkpoint's size, the cosignatures got, the failures (witness
    name, error class, message)."""

    size: int
    cosigned: int
    failures: tuple[tuple[str, str, str], ...] = ()


class WitnessGuard:
    """What the witnesses said (module docstring). ``monotonic`` and ``wall``: the clocks."""

    def __init__(
        self,
        config: WitnessQuorum,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.monotonic, self.wall = config, monotonic, wall
        self.halted: str | None = None  # why releases stopped for good (a rollback or fork answer)
        self.quorum_size = -1  # the newest checkpoint cosigned by a quorum (-1: none yet)
        self.quorum_at: float | None = None  # when (monotonic)
        self.quorum_wall: float | None = None  # when (POSIX time, for /metrics)
        self.attempted_at: float | None = None  # the last round (monotonic)
        self.attempted_size = -1
        self.rounds = 0
        self._witnesses = [_Witness(url, key) for url, key in config.witnesses]
        self._lock = threading.Lock()  # the round counters and the quorum, set from several threads

    @property
    def witnesses(self) -> tuple[tuple[str, int, int], ...]:
        """(key name, cosignatures, failures) per witness, for ``/metrics``."""
        return tuple((w.key.name, w.cosignatures, w.failures) for w in self._witnesses)

    def refusal(self) -> ConfideError | None:
        """Why a release or change is refused now: the halt (:class:`LogRollbackError`), or with
        ``max_lag`` a newest quorum older than that (a :class:`NetworkError`, recoverable: the
        next quorum ends it); ``None`` when releases may go on."""
        halted = self.halted
        if halted is not None:
            return LogRollbackError(halted)
        lag = self.config.max_lag
        if lag is not None:
            at = self.quorum_at
            age = math.inf if at is None else self.monotonic() - at
            if age > lag:
                shown = "none yet" if at is None else f"the newest is {int(age)} s old"
                return NetworkError(
                    f"no checkpoint cosigned by a quorum of {self.config.quorum} witnesses within"
                    f" --witness-max-lag {int(lag)} s ({shown}): releases and changes wait for the witnesses"
                )
        return None

    def age(self) -> float | None:
        """Seconds since the newest checkpoint cosigned by a quorum (``None``: none yet)."""
        at = self.quorum_at
        return None if at is None else max(self.monotonic() - at, 0.0)

    def due(self, size: int) -> bool:
        """Whether a round is due for the current checkpoint of ``size``: one not yet cosigned by
        a quorum (at once for a size not yet sent, else every :data:`RETRY_SECONDS`), or, for a
        quiet log, when the newest quorum is :data:`RECOSIGN_SECONDS` old (with ``max_lag``, half
        that bound if sooner): its checkpoint is cosigned again, with new timestamps."""
        if self.halted is not None:
            return False
        now = self.monotonic()
        retry = self.attempted_at is None or now - self.attempted_at >= RETRY_SECONDS
        if size > self.quorum_size:
            return retry or self.attempted_size < size
        lag = self.config.max_lag
        every = RECOSIGN_SECONDS if lag is None else min(lag / 2, RECOSIGN_SECONDS)
        return self.quorum_at is not None and now - self.quorum_at >= every and retry

    def begin(self, size: int) -> tuple[float, float]:
        """A round for the checkpoint of ``size`` starts (before any witness is asked): the
        attempt is noted for :meth:`due`, and its start (monotonic, POSIX) returned; a quorum of
        its cosignatures is counted from there (:meth:`reached`): no cosignature of the round
        is older."""
        with self._lock:
            self.rounds += 1
            started, started_wall = self.monotonic(), self.wall()
            self.attempted_at, self.attempted_size = started, size
            return started, started_wall

    def ask(
        self,
        index: int,
        conn: Conn,
        note: bytes,
        size: int,
        client: httpx2.Client | None = None,
        trace: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> int:
        """Have witness ``index`` cosign ``note`` (the checkpoint of ``size``): returns once it
        did, with its cosignature's timestamp (POSIX seconds). A rollback or fork answer halts
        the guard and raises :class:`LogRollbackError` (after one JSON log line, for the first
        such answer only); any other failure is counted for the witness and raised (a
        :class:`ConfideError`). One witness is asked by one thread at a time
        (:class:`~confide.cas.witness_rounds.WitnessRounds`, or :meth:`round`)."""
        witness = self._witnesses[index]
        try:
            sig = request_cosignatures(
                conn, witness.url, witness.key, client=client, note=note, old_size=witness.size, trace=trace
            )
        except LogRollbackError as exc:
            with self._lock:  # witnesses asked at once may all answer so: the first one halts
                first = self.halted is None
                if first:
                    self.halted = exc.message
            if not first:
                raise
            log.error(
                json.dumps(
                    {
                        "event": "witness-rollback",
                        "witness": witness.key.name,
                        "size": size,
                        "detail": exc.message[:400],
                        "releases": "halted until restart",
                    }
                )
            )
            raise
        except ConfideError:
            witness.failures += 1
            raise
        # tlog-cosignature: the cosignature/v1 signature starts with its 8-byte big-endian
        # timestamp. The same checkpoint sent again (a retry, a quiet log re-cosigned for
        # --witness-max-lag) has the same text, so an earlier answer of the witness verifies
        # again: replayed by whoever is on the path to it, it would count as the witness's
        # word now. A new cosignature of a checkpoint the witness cosigned before must be
        # later than that one (rounds on one size are at least 1 s apart).
        stamp = int.from_bytes(sig.signature[:8], "big")
        if size == witness.size and stamp <= witness.stamp:
            witness.failures += 1
            raise NetworkError(
                f"its cosignature of size {size} has time {stamp}, not later than the"
                f" {witness.stamp} of its cosignature of that checkpoint before: not a fresh one"
            )
        witness.size, witness.stamp = size, stamp
        witness.cosignatures += 1
        return stamp

    def reached(self, size: int, started: float, started_wall: float) -> None:
        """A quorum cosigned the checkpoint of ``size`` in the round that :meth:`begin` started
        at ``started``: it is the newest cosigned by a quorum unless a larger one is, or the same
        one in a later round (rounds may end out of order)."""
        with self._lock:
            if size > self.quorum_size or (
                size == self.quorum_size and (self.quorum_at is None or started >= self.quorum_at)
            ):
                self.quorum_size, self.quorum_at, self.quorum_wall = size, started, started_wall

    def round(self, conn: Conn, note: bytes, client: httpx2.Client | None = None) -> Round:
        """Send the signed checkpoint ``note`` to every witness, one after the other, on this
        thread; a quorum of cosignatures makes it the newest cosigned by a quorum. A rollback or
        fork answer halts the guard and raises :class:`LogRollbackError`; other failures are
        counted and returned. (``cas serve`` asks its witnesses concurrently, off the signer's
        thread: :class:`~confide.cas.witness_rounds.WitnessRounds`.)"""
        size = Checkpoint.from_text(parse_note(note).text).size
        started, started_wall = self.begin(size)
        cosigned = 0
        failures: list[tuple[str, str, str]] = []
        for index, witness in enumerate(self._witnesses):
            try:
                self.ask(index, conn, note, size, client)
            except LogRollbackError:
                raise
            except ConfideError as exc:
                failures.append((witness.key.name, exc.kind, exc.message[:200]))
                continue
            cosigned += 1
        if cosigned >= self.config.quorum:
            self.reached(size, started, started_wall)
        return Round(size, cosigned, tuple(failures))

"""The CAS's witness rounds, off the signer's thread (docs/ledger.md "Witnesses of a CAS").

The checkpointer (:class:`confide.cas.server.Checkpointer`) signs a checkpoint and hands it to
:meth:`WitnessRounds.submit`, which returns at once: the witnesses are asked by worker threads,
at most :data:`MAX_CONCURRENT` at once, so a slow or hanging witness delays neither the signing
of the next checkpoint nor the other witnesses' cosignatures. Each witness is asked by one
thread at a time, in the order of the checkpoints; while it is being asked, the newest
checkpoint submitted since waits for it, and a newer one replaces an older one still waiting
(it is never asked to go back to a smaller tree: one smaller than the last it was sent is
dropped; with a guard, one of the size the witness just cosigned, with a timestamp no earlier
than its round's start, takes that cosignature instead of asking again). Each witness's whole
answer to one checkpoint (its requests, heads and bodies) has :data:`ANSWER_TIME` seconds
(:class:`~confide.httpbody.AnswerDeadline` shuts the connection down then), and
:meth:`WitnessRounds.stop` shuts down every connection in flight and joins the threads.

Every submission is a round (a :class:`Tally`): with a :class:`~confide.cas.witness_quorum.WitnessGuard`
(``--witness-quorum``), started by :meth:`~confide.cas.witness_quorum.WitnessGuard.begin` (whose
time a quorum's age is counted from) and counted when a quorum of its witnesses cosigned
(:meth:`~confide.cas.witness_quorum.WitnessGuard.reached`), not when the last one answered. A
round ends when each witness answered or was left for a newer checkpoint; ``on_round`` is then
called with its :class:`~confide.cas.witness_quorum.Round`. Without a guard each witness's
failure is logged (``checkpoint-failed``) as it comes. Time is injected (``monotonic``, ``wall``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from confide.cas.witness_quorum import Round, WitnessGuard
from confide.errors import ConfideError, LogRollbackError, NetworkError, StorageError
from confide.httpbody import AnswerDeadline, answer_client
from confide.ledger.db import Conn
from confide.ledger.note import NoteVerifier
from confide.ledger.witness_http import request_cosignatures

__all__ = ["ANSWER_TIME", "CONNECT_TIMEOUT", "MAX_CONCURRENT", "Tally", "WitnessRounds"]

MAX_CONCURRENT = 8
"""Witnesses asked at once (a CAS names at most 32, :data:`confide.cas.pin.MAX_WITNESSES`)."""
ANSWER_TIME = 30.0
"""Seconds a witness's whole answer to one checkpoint may take (up to three requests: a 409
tells the size it knows), heads and bodies included; then it is a failure, and the witness is
asked the newest checkpoint waiting for it."""
CONNECT_TIMEOUT = 5.0
"""Seconds a connection to a witness may take to be made (a connection being made is the one
wait :meth:`WitnessRounds.stop` cannot cut short)."""
READ_TIMEOUT = 10.0

log = logging.getLogger("confide.cas")


@dataclass(eq=False)
class Tally:
    """One round: the checkpoint of ``size`` sent to every witness, from ``started`` (monotonic;
    ``started_wall``: POSIX). ``cosigned``: the witnesses that cosigned it; ``failures``: (witness
    name, error class, message) of those that failed; ``left``: those asked a newer checkpoint
    instead; ``halted``: a witness's rollback or fork answer. :meth:`wait` for the end (every
    witness answered or left), :meth:`settle` until the quorum too."""

    size: int
    started: float
    started_wall: float
    witnesses: int
    quorum: int | None = None
    cosigned: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    left: int = 0
    halted: LogRollbackError | None = None
    errors: dict[int, ConfideError] = field(default_factory=dict, repr=False)
    """The failures' errors, by witness index (in the order given)."""
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)
    _settled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def open(self) -> int:
        """Witnesses yet to answer."""
        return self.witnesses - self.cosigned - len(self.failures) - self.left

    def wait(self, timeout: float | None = None) -> bool:
        """Until every witness answered or was left (``False``: not within ``timeout``)."""
        return self._ended.wait(timeout)

    def settle(self, timeout: float | None = None) -> bool:
        """Until a quorum cosigned, a witness halted the guard, or the round ended."""
        return self._settled.wait(timeout)

    def outcome(self) -> Round:
        return Round(self.size, self.cosigned, tuple(self.failures))

    def first_error(self) -> ConfideError | None:
        """The error of the first witness (in the order given) that failed, if one did."""
        return self.errors[min(self.errors)] if self.errors else None


@dataclass(eq=False)
class _Slot:
    """One witness: what waits for it (the newest checkpoint submitted while it was busy), whether
    a thread is asking it, the largest size sent to it, and (without a guard) the size it
    cosigned last (sent as the old size first)."""

    index: int
    url: str
    key: NoteVerifier
    pending: tuple[bytes, Tally] | None = None
    busy: bool = False
    queued: bool = False
    sent: int = -1
    cosigned: int = 0
    stamped: tuple[int, int] | None = None
    """With a guard: the size and timestamp of the witness's last cosignature."""


class WitnessRounds:
    """Asks ``witnesses`` (URL, verifier key) to cosign the checkpoints :meth:`submit` is given,
    on up to ``concurrency`` threads (module docstring). ``connect``: a ledger connection to the
    CAS's database (each thread opens its own, kept while it runs); ``guard``: with
    ``--witness-quorum``; ``tls``: trust for ``https://`` witnesses (``None``: the system's);
    ``on_round``: called with each round's outcome when it ends (on a worker thread);
    ``answer_time``: :data:`ANSWER_TIME`."""

    def __init__(
        self,
        witnesses: tuple[tuple[str, NoteVerifier], ...],
        connect: Callable[[], Conn],
        *,
        guard: WitnessGuard | None = None,
        tls: ssl.SSLContext | None = None,
        concurrency: int = MAX_CONCURRENT,
        answer_time: float = ANSWER_TIME,
        on_round: Callable[[Round], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if guard is not None and witnesses != guard.config.witnesses:
            raise ValueError("witnesses: the guard's")
        self.guard, self.tls, self.answer_time = guard, tls, answer_time
        self.on_round, self.monotonic, self.wall = on_round, monotonic, wall
        self._connect = connect
        self._slots = [_Slot(i, url, key) for i, (url, key) in enumerate(witnesses)]
        self._concurrency = max(1, min(concurrency, len(self._slots)))
        self._cond = threading.Condition()
        self._ready: deque[_Slot] = deque()
        self._threads: list[threading.Thread] = []
        self._deadlines: set[AnswerDeadline] = set()
        self._stopping = False

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The worker threads started (for tests: none is alive after :meth:`stop`)."""
        return tuple(self._threads)

    def submit(self, note: bytes, size: int) -> Tally:
        """Have every witness cosign ``note`` (the signed checkpoint of ``size``); returns at once.
        A round still waiting for a busy witness leaves it for this one."""
        with self._cond:
            if self.guard is not None:
                started, started_wall = self.guard.begin(size)
            else:
                started, started_wall = self.monotonic(), self.wall()
            quorum = None if self.guard is None else self.guard.config.quorum
            tally = Tally(size, started, started_wall, len(self._slots), quorum)
            if self._stopping or (self.guard is not None and self.guard.halted is not None):
                tally.left = tally.witnesses
                self._check(tally)
                return tally
            for slot in self._slots:
                if slot.pending is not None:
                    _, older = slot.pending
                    older.left += 1
                    self._check(older)
                slot.pending = (note, tally)
                if not slot.busy and not slot.queued:
                    slot.queued = True
                    self._ready.append(slot)
            while len(self._threads) < min(self._concurrency, len(self._ready) + self._busy()):
                thread = threading.Thread(
                    target=self._work, name=f"witness-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify_all()
            self._check(tally)
        return tally

    def stop(self, timeout: float = CONNECT_TIMEOUT + 1.0) -> None:
        """No more rounds: the waiting ones are left, the connections in flight shut down, the
        threads joined (within ``timeout`` seconds in all)."""
        with self._cond:
            self._stopping = True
            for slot in self._slots:
                if slot.pending is not None:
                    slot.pending[1].left += 1
                    self._check(slot.pending[1])
                    slot.pending = None
            self._ready.clear()
            deadlines = list(self._deadlines)
            self._cond.notify_all()
        for deadline in deadlines:
            deadline.abort()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(end - time.monotonic(), 0.0))

    def _busy(self) -> int:
        return sum(1 for s in self._slots if s.busy)

    def _check(self, tally: Tally) -> None:
        """Called with the lock held after ``tally`` changed: settled, ended, reported."""
        if tally.halted is not None or (tally.quorum is not None and tally.cosigned >= tally.quorum):
            tally._settled.set()
        if tally.open == 0 and not tally._ended.is_set():
            tally._settled.set()
            tally._ended.set()
            # (a round a witness halted was reported by the guard: witness-rollback)
            if self.on_round is not None and not self._stopping and tally.halted is None:
                self.on_round(tally.outcome())

    def _work(self) -> None:
        conn: Conn | None = None
        http: httpx2.Client | None = None
        try:
            while True:
                with self._cond:
                    while not self._ready and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    slot = self._ready.popleft()
                    slot.queued = False
                    assert slot.pending is not None
                    note, tally = slot.pending
                    slot.pending = None
                    halted = self.guard is not None and self.guard.halted is not None
                    if tally.size < slot.sent or halted:  # never backwards; nothing after a halt
                        tally.left += 1
                        self._check(tally)
                        continue
                    if self._answered(slot, tally):
                        self._record(slot, tally, None)
                        continue
                    slot.busy, slot.sent = True, tally.size
                    deadline = AnswerDeadline(self.answer_time)
                    self._deadlines.add(deadline)
                failure: ConfideError | None = None
                stamp: int | None = None
                try:
                    if conn is None:
                        conn = self._connect()
                    if http is None:
                        http = self._client()
                    with deadline:
                        stamp = self._ask(slot, conn, http, note, tally.size, deadline)
                except ConfideError as exc:
                    failure = exc
                    if deadline.expired and not isinstance(exc, LogRollbackError):
                        failure = NetworkError(
                            f"witness {slot.url}: no whole answer within {self.answer_time:g} s"
                        )
                except Exception as exc:  # the database: a new connection for the next one
                    failure = StorageError(
                        f"witness {slot.url}: the ledger database: {type(exc).__name__}: {str(exc)[:200]}"
                    )
                    if conn is not None:
                        _close(conn)
                        conn = None
                with self._cond:
                    self._deadlines.discard(deadline)
                    slot.busy = False
                    if failure is None and stamp is not None:
                        slot.stamped = (tally.size, stamp)
                    self._record(slot, tally, failure)
                    if slot.pending is not None and not self._stopping:
                        slot.queued = True
                        self._ready.append(slot)
                        self._cond.notify()
        finally:
            if conn is not None:
                _close(conn)
            if http is not None:
                http.close()

    def _answered(self, slot: _Slot, tally: Tally) -> bool:
        """Whether the witness cosigned ``tally``'s checkpoint while the round waited for it,
        dated no earlier than the round's start and not ahead of the guard's clock: that
        cosignature is the round's. Asked again at once, the witness would answer with the same
        timestamp (whole seconds), which the guard refuses as not a fresh one. (A witness whose
        clock runs ahead is asked again, as before.)"""
        if self.guard is None or slot.stamped is None or slot.stamped[0] != tally.size:
            return False
        return int(tally.started_wall) <= slot.stamped[1] <= self.guard.wall() + 1

    def _client(self) -> httpx2.Client:
        # No connection kept alive: each answer's AnswerDeadline must see its connection made.
        timeout = httpx2.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        if self.tls is None:
            return answer_client(timeout=timeout)
        return answer_client(verify=self.tls, timeout=timeout)

    def _ask(
        self, slot: _Slot, conn: Conn, http: httpx2.Client, note: bytes, size: int, deadline: AnswerDeadline
    ) -> int | None:
        """The witness's cosignature of ``note``: with a guard, its timestamp."""
        if self.guard is not None:
            return self.guard.ask(slot.index, conn, note, size, http, deadline.trace)
        request_cosignatures(
            conn, slot.url, slot.key, client=http, note=note, old_size=slot.cosigned, trace=deadline.trace
        )
        slot.cosigned = size
        return None

    def _record(self, slot: _Slot, tally: Tally, failure: ConfideError | None) -> None:
        """With the lock held: the witness's answer counted in its round."""
        if failure is None:
            tally.cosigned += 1
            if self.guard is not None and tally.quorum is not None and tally.cosigned == tally.quorum:
                self.guard.reached(tally.size, tally.started, tally.started_wall)
        else:
            tally.failures.append((slot.key.name, failure.kind, failure.message[:200]))
            tally.errors[slot.index] = failure
            if isinstance(failure, LogRollbackError) and self.guard is not None:
                tally.halted = failure  # the guard halted releases and logged it (witness-rollback)
            elif self.guard is None and not self._stopping:
                # (without a guard a witness's rollback or fork answer is reported here too)
                log.error(
                    json.dumps(
                        {
                            "event": "checkpoint-failed",
                            "error": failure.kind,
                            "detail": failure.message[:200],
                        }
                    )
                )
        self._check(tally)


def _close(conn: Conn) -> None:
    with contextlib.suppress(Exception):  # a broken connection is dropped either way
        conn.close()

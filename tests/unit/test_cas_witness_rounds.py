"""The CAS's witness rounds off the signer's thread (``confide.cas.witness_rounds``, through the
``Checkpointer`` of ``cas serve --witness``): real witness servers (``WitnessServer``) on
127.0.0.1, one of which hangs in the middle of its answer (held on an event the test releases).
Checkpoints are signed on time whatever it does; the others' cosignatures arrive and make the
quorum; it is asked the newest checkpoint waiting for it, never one it was left for; its answer
is bounded in time; the rounds stop at once with a request in flight and leave no thread. The
monotonic clock is injected; nothing sleeps: the test waits for the rounds' own events."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest

from confide import errors
from confide.cas.db import raw_connection
from confide.cas.server import Checkpointer, prepare
from confide.cas.witness_quorum import RETRY_SECONDS, WitnessGuard, WitnessQuorum
from confide.ledger.note import NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from confide.ledger.witness_http import request_cosignatures
from witness_servers import Witnesses

WAIT = 30.0  # seconds an event may take to come on a loaded machine (never reached when it works)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hang:
    """Holds witness ``witness``'s answers (inside its HTTP server, after the request was read)
    until :attr:`release` is set; counts the checkpoints it was asked (their sizes)."""

    def __init__(self, witness: Witness) -> None:
        self.release = threading.Event()
        self.asked: list[int] = []
        self._changed = threading.Condition()
        answer = witness.add_checkpoint

        def held(old_size: int, proof: list[bytes], checkpoint: bytes, *, at: Any) -> Any:
            with self._changed:
                self.asked.append(int(checkpoint.split(b"\n")[1]))
                self._changed.notify_all()
            self.release.wait(120)
            return answer(old_size, proof, checkpoint, at=at)

        witness.add_checkpoint = held  # type: ignore[method-assign]

    def wait_asked(self, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.asked) >= n, WAIT), self.asked


@pytest.fixture
def dev_cas(tmp_path: Path) -> Iterator[tuple[Any, NoteSigner]]:
    cas, _evidence, _key, _cert, _env, signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    try:
        yield cas, signer
    finally:
        cas.db.dispose()


@pytest.fixture
def witnesses(tmp_path: Path, dev_cas: tuple[Any, NoteSigner]) -> Iterator[tuple[Witnesses, Hang]]:
    found = Witnesses(tmp_path, dev_cas[1].verifier, 3)
    hang = Hang(found.witnesses[2])
    try:
        yield found, hang
    finally:
        hang.release.set()  # the witness server's thread ends its answer, then shuts down
        found.close()


def _grow(cas: Any, n: int = 1) -> None:
    with cas.db.write() as conn:
        Ledger().append_batch(raw_connection(conn), [f"entry-{i}".encode() for i in range(n)])


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"the quorum was waited for {seconds} s: it should have come at once")


def test_signing_goes_on_while_a_witness_hangs_and_the_others_cosign(
    dev_cas: tuple[Any, NoteSigner], witnesses: tuple[Witnesses, Hang], caplog: pytest.LogCaptureFixture
) -> None:
    cas, signer = dev_cas
    servers, hang = witnesses
    clock = Monotonic()
    guard = WitnessGuard(WitnessQuorum(servers.specs, 2, max_lag=60), monotonic=clock)
    cp = Checkpointer(cas, signer, guard=guard, sleep=_no_sleep, monotonic=clock, answer_time=300)
    try:
        # Startup: the quorum of w0 and w1 is enough; w2 is still answering.
        cp.start_with_quorum()
        start = cp.signed_size
        hang.wait_asked(1)
        assert guard.quorum_size == start and guard.refusal() is None
        assert servers.size(2) == 0  # w2 has cosigned nothing yet

        # The log grows three times: each checkpoint is signed at once, and w0 and w1 cosign
        # it; w2 is busy, the newest checkpoint waits for it and replaces the one before.
        tallies = []
        for _ in range(3):
            _grow(cas)
            before = cp.signed_size
            tally = cp.tick()
            assert cp.signed_size == before + 1  # signed, without waiting for any witness
            assert tally is not None and tally.settle(WAIT)
            assert (tally.size, tally.cosigned, tally.halted) == (cp.signed_size, 2, None)
            assert guard.quorum_size == cp.signed_size and guard.refusal() is None
            tallies.append(tally)
        assert servers.size(0) == servers.size(1) == cp.signed_size
        # The first two rounds ended: w2 was left for a newer checkpoint (reported as a round
        # without failures); the last one waits for w2.
        assert all(t.wait(WAIT) and t.left == 1 and not t.failures for t in tallies[:2])
        assert not tallies[2].wait(0) and tallies[2].open == 1
        assert hang.asked == [start]

        # --witness-max-lag keeps its meaning: counted from the round's start, on the injected clock.
        clock.now += 61
        refusal = guard.refusal()
        assert isinstance(refusal, errors.NetworkError) and "the newest is 61 s old" in refusal.message
        _grow(cas)
        newest = cp.tick()
        assert newest is not None and newest.settle(WAIT) and newest.cosigned == 2
        assert guard.refusal() is None and guard.age() == 0.0
        assert tallies[2].wait(WAIT) and tallies[2].left == 1  # left for the newest

        # w2 answers at last: the checkpoint of the start, then only the newest one.
        hang.release.set()
        assert newest.wait(WAIT) and newest.cosigned == 3 and not newest.failures
        assert hang.asked == [start, cp.signed_size]
        assert servers.size(2) == cp.signed_size
        conn = _conn(cas)
        stored = Ledger.latest_checkpoint(conn)
        conn.close()
        assert stored is not None and len(parse_note(stored).signatures) == 4  # the log's, every witness's
    finally:
        cp.stop()
    assert not any(t.is_alive() for t in _threads(cp))
    assert not [r for r in caplog.records if "witness-quorum-missed" in r.getMessage()]


def test_a_hanging_witness_is_bounded_and_stopping_leaves_no_thread(
    dev_cas: tuple[Any, NoteSigner], witnesses: tuple[Witnesses, Hang], caplog: pytest.LogCaptureFixture
) -> None:
    cas, signer = dev_cas
    servers, hang = witnesses
    specs = (servers.specs[0], servers.specs[2])  # w0 answers, w2 hangs
    # Without --witness-quorum: each witness's failure is one checkpoint-failed line.
    cp = Checkpointer(cas, signer, witnesses=specs, answer_time=0.5)
    try:
        with caplog.at_level("ERROR", logger="confide.cas"):
            tally = cp.tick()
            assert tally is not None and tally.wait(WAIT)
        assert tally.cosigned == 1 and [(n, k) for n, k, _ in tally.failures] == [
            ("w2.example", "NetworkError")
        ]
        assert "no whole answer within 0.5 s" in tally.failures[0][2]
        logged = [json.loads(r.getMessage()) for r in caplog.records if "checkpoint-failed" in r.getMessage()]
        assert [line["error"] for line in logged] == ["NetworkError"]
        assert "w2" not in servers.specs[0][1].name and servers.size(0) == cp.signed_size
    finally:
        cp.stop()
    assert not any(t.is_alive() for t in _threads(cp))

    # A request in flight when the CAS stops (an answer time, and a read timeout, that would
    # hold it for seconds more than stop() joins for): stop() shuts its connection down and
    # joins every thread; the aborted answer is not reported as the witness's failure.
    cp = Checkpointer(cas, signer, witnesses=specs, answer_time=600)
    _grow(cas)
    asked = len(hang.asked)
    caplog.clear()
    with caplog.at_level("ERROR", logger="confide.cas"):
        tally = cp.tick()
        assert tally is not None
        hang.wait_asked(asked + 1)
        assert not tally.wait(0)  # w2 is still answering
        cp.stop()
    assert _threads(cp) and not any(t.is_alive() for t in _threads(cp))
    assert tally.wait(0)
    assert not [r for r in caplog.records if "checkpoint-failed" in r.getMessage()]


def test_a_rollback_answer_while_another_witness_hangs_halts_the_guard(
    dev_cas: tuple[Any, NoteSigner], witnesses: tuple[Witnesses, Hang]
) -> None:
    """A witness's rollback answer halts releases as soon as it comes, while another witness
    still hangs; nothing is sent after it."""
    cas, signer = dev_cas
    servers, _ = witnesses  # w2 hangs
    clock = Monotonic()
    guard = WitnessGuard(WitnessQuorum(servers.specs, 2), monotonic=clock)
    cp = Checkpointer(cas, signer, guard=guard, sleep=_no_sleep, monotonic=clock, answer_time=300)
    copy = None
    try:
        cp.start_with_quorum()
        start = cp.signed_size
        # A copy of the database grows further and w0 cosigns it: the CAS's own database is
        # then older than what w0 saw (as after a rollback).
        path = Path(cas.db.url.split("sqlite:///", 1)[1])
        with sqlite3.connect(path) as src, sqlite3.connect(path.with_name("copy.db")) as target:
            src.backup(target)
        src.close()
        target.close()
        copy = connect(path.with_name("copy.db"))
        with write_transaction(copy):
            Ledger().append_batch(copy, [f"copy-{i}".encode() for i in range(5)])
        url, key = servers.specs[0]
        request_cosignatures(copy, url, key, note=Ledger().sign_checkpoint(copy, signer), old_size=start)
        _grow(cas)
        tally = cp.tick()
        assert tally is not None and tally.settle(WAIT)
        assert tally.halted is not None and f"cosigned size {start + 5}" in tally.halted.message
        assert not tally.wait(0) and tally.open >= 1  # w2 still hangs: the halt did not wait for it
        assert isinstance(guard.refusal(), errors.LogRollbackError) and not guard.due(cp.signed_size + 1)
    finally:
        cp.stop()
        if copy is not None:
            copy.close()


def _threads(cp: Checkpointer) -> tuple[threading.Thread, ...]:
    assert cp.rounds is not None
    return cp.rounds.threads


def _conn(cas: Any) -> Any:
    return connect(Path(cas.db.url.split("sqlite:///", 1)[1]))


class FrozenWall:
    """The witness server's clock (``datetime.now`` in confide.ledger.witness_http) and the
    guard's wall clock: one time the test moves (whole seconds: a cosignature's timestamp)."""

    now = 1_800_000_000.0
    ahead = 0.0  # the witness's clock ahead of the guard's

    def __call__(self) -> float:
        return self.now


def test_a_slow_answer_counts_for_the_round_of_the_same_checkpoint_waiting_for_it(
    dev_cas: tuple[Any, NoteSigner], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A witness still answering when the same checkpoint is sent again (no quorum yet after
    RETRY_SECONDS) was asked it again at once: its new cosignature had the same timestamp
    (whole seconds) and was refused as not a fresh one, a failure of a witness that answered
    twice. The cosignature it answered with, dated no earlier than the waiting round's start,
    now counts for that round too; the witness is not asked again."""
    cas, signer = dev_cas
    wall = FrozenWall()

    class WitnessTime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> WitnessTime:
            return cls.fromtimestamp(wall.now + wall.ahead, tz)

    monkeypatch.setattr("confide.ledger.witness_http.datetime", WitnessTime)
    servers = Witnesses(tmp_path, signer.verifier, 1)
    witness = servers.witnesses[0]
    answer = witness.add_checkpoint
    hold, held, release = threading.Event(), threading.Event(), threading.Event()
    asked: list[int] = []

    def slow(old_size: int, proof: list[bytes], checkpoint: bytes, *, at: Any) -> Any:
        asked.append(int(checkpoint.split(b"\n")[1]))
        if hold.is_set():
            hold.clear()
            held.set()
            release.wait(WAIT)
        # a witness signs when it answers: its clock as of then
        return answer(old_size, proof, checkpoint, at=WitnessTime.now(UTC))

    witness.add_checkpoint = slow  # type: ignore[method-assign]
    clock = Monotonic()
    guard = WitnessGuard(WitnessQuorum(servers.specs, 1), monotonic=clock, wall=wall)
    cp = Checkpointer(cas, signer, guard=guard, sleep=_no_sleep, monotonic=clock, answer_time=300)
    try:
        cp.start_with_quorum()
        _grow(cas)
        hold.set()
        first = cp.tick()
        assert first is not None and held.wait(WAIT)
        # No quorum for the new size after RETRY_SECONDS: the same checkpoint is sent again.
        clock.now += RETRY_SECONDS
        wall.now += RETRY_SECONDS
        again = cp.tick()
        assert again is not None and again.size == first.size and not again.wait(0)
        release.set()  # the witness answers the first round, now (the second round's time)
        assert first.wait(WAIT) and first.cosigned == 1
        assert again.wait(WAIT)
        assert (again.cosigned, again.failures) == (1, []), again.failures
        assert asked.count(first.size) == 1
        assert guard.witnesses[0][2] == 0  # no failure counted for the witness
        assert guard.quorum_size == first.size and guard.quorum_at == clock.now  # the later round's

        # A witness whose clock runs ahead: its cosignature is no evidence of the waiting round's
        # time, so it is asked again (and, its clock frozen here, answers the same timestamp).
        wall.ahead = 3600
        _grow(cas)
        held.clear()
        release.clear()
        hold.set()
        first = cp.tick()
        assert first is not None and held.wait(WAIT)
        clock.now += RETRY_SECONDS
        wall.now += RETRY_SECONDS
        again = cp.tick()
        assert again is not None and again.size == first.size
        release.set()
        assert first.wait(WAIT) and first.cosigned == 1 and again.wait(WAIT)
        assert asked.count(first.size) == 2 and again.cosigned == 0
        assert "not a fresh one" in again.failures[0][2]
    finally:
        cp.stop()
        servers.close()

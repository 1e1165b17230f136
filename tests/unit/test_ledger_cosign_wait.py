"""A reader that requires witnesses waits, a bounded time, for the log's newest checkpoint to be
cosigned (:class:`confide.ledger.auditor.CosignWait`): on a growing log the newest checkpoint is
signed a witness round trip before its cosignatures come. Over a real ledger database and a real
:class:`~confide.ledger.witness.Witness`, with an injected clock and sleep (the witness answers
during a sleep, or never): a state file holding the newer, not yet cosigned checkpoint is no
rollback and is never lowered; a witness that does not answer fails in the bound; a rollback, a
fork or a stale cosignature is not waited for."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from confide.errors import (
    ConsistencyError,
    FreshnessError,
    RollbackError,
    UnknownKeyError,
)
from confide.ledger.auditor import (
    COSIGN_POLL,
    COSIGN_WAIT,
    Auditor,
    AuditorState,
    CosignWait,
    LocalLogClient,
    NotCosignedError,
    audit_once,
    verify_log,
)
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn
from confide.ledger.freshness import Freshness
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness

ORIGIN = "cas.example/ledger"
AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock that only sleeps advance; ``on_sleep`` runs at each sleep (the witness
    answering meanwhile)."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda _n: None) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))

    def wait(self, seconds: float = COSIGN_WAIT) -> CosignWait:
        return CosignWait(seconds, monotonic=self.monotonic, sleep=self.sleep)


class Log:
    """A ledger database, its log key and one witness that cosigns on request (stored with the
    checkpoint, as the CAS's witness rounds store it)."""

    def __init__(self, tmp: Path) -> None:
        self.key = NoteSigner.generate(ORIGIN)
        self.witness = Witness(NoteSigner.generate("witness.example/w1", SIG_TYPE_COSIGNATURE_V1),
                               tmp / "w.json", {ORIGIN: self.key.verifier})  # fmt: skip
        self.conn: Conn = connect(tmp / "log.db")
        Ledger.init_schema(self.conn)
        self.count = 0

    def grow(self, n: int) -> int:
        """Append ``n`` entries and sign a checkpoint of them (not cosigned): its size."""
        with write_transaction(self.conn):
            Ledger().append_batch(self.conn, [f"e{self.count + i}".encode() for i in range(n)])
        self.count += n
        Ledger().sign_checkpoint(self.conn, self.key)
        return self.count

    def cosign(self, size: int) -> None:
        note = Ledger.checkpoint_note(self.conn, size)
        assert note is not None
        latest = self.witness.latest(ORIGIN)
        old = 0 if latest is None else latest.size
        proof = Ledger().consistency_proof(self.conn, old, size) if old else []
        sig = self.witness.add_checkpoint(old, proof, note, at=AT)
        with write_transaction(self.conn):
            Ledger.store_checkpoint_note(self.conn, size, note + sig.line().encode())


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path)


def _state_size(path: Path) -> int:
    note = json.loads(path.read_text())["checkpoint"].encode()
    return Checkpoint.from_text(parse_note(note).text).size


def test_the_newest_checkpoint_is_waited_for_and_a_newer_state_file_is_no_rollback(
    log: Log, tmp_path: Path
) -> None:
    log.cosign(log.grow(10))
    newest = log.grow(5)  # signed, its cosignature not yet there
    state = tmp_path / "state.json"
    # An audit without witnesses remembered the newest checkpoint, newer than the cosigned one.
    verify_log(LocalLogClient(log.conn), log.key.verifier, state)
    assert _state_size(state) == newest
    clock = Clock(on_sleep=lambda n: log.cosign(newest) if n == 3 else None)  # answers on the 3rd sleep
    checked = verify_log(LocalLogClient(log.conn), log.key.verifier, state, witnesses=[log.witness.verifier],
                         wait=clock.wait())  # fmt: skip
    assert (checked.size, checked.previous_size) == (newest, newest)
    assert clock.sleeps == [COSIGN_POLL] * 3 and _state_size(state) == newest


def test_a_witness_that_does_not_answer_fails_in_the_bound_and_the_state_is_kept(
    log: Log, tmp_path: Path
) -> None:
    log.cosign(log.grow(10))
    newest = log.grow(5)
    state = AuditorState(tmp_path / "state.json")
    audit_once(LocalLogClient(log.conn), log.key.verifier, state)  # remembers the newest, uncosigned
    before = state.path.read_bytes()
    clock = Clock()
    with pytest.raises(NotCosignedError, match=f"checkpoint {newest} has no cosignature by witness") as exc:
        audit_once(LocalLogClient(log.conn), log.key.verifier, state, witnesses=[log.witness.verifier],
                   wait=clock.wait(2.0))  # fmt: skip
    # to every caller the UnknownKeyError it was before: exit 65, the same class name
    assert isinstance(exc.value, UnknownKeyError) and exc.value.exit_code == 65
    assert exc.value.diagnostics().startswith("UnknownKeyError: checkpoint ")
    assert sum(clock.sleeps) == pytest.approx(2.0) and clock.now == pytest.approx(102.0)
    assert len(clock.sleeps) == 10  # 2 s in reads 0.2 s apart, then no more
    assert state.path.read_bytes() == before  # never the older, cosigned checkpoint
    # Without a wait: one read, the same error.
    with pytest.raises(NotCosignedError):
        audit_once(LocalLogClient(log.conn), log.key.verifier, state, witnesses=[log.witness.verifier])


class _Shrunk:
    """A log that serves an older checkpoint (cosigned) than the one a reader remembers."""

    def __init__(self, real: LocalLogClient, checkpoint: bytes) -> None:
        self.real, self.checkpoint = real, checkpoint

    def fetch(self, path: str) -> bytes | None:
        return self.checkpoint if path == "checkpoint" else self.real.fetch(path)


def test_a_rollback_a_fork_and_a_stale_cosignature_are_not_waited_for(log: Log, tmp_path: Path) -> None:
    cosigned = log.grow(10)
    log.cosign(cosigned)
    old_note = Ledger.checkpoint_note(log.conn, cosigned)
    assert old_note is not None
    newest = log.grow(5)
    remembered = Auditor(LocalLogClient(log.conn), log.key.verifier).update(None).checkpoint
    assert remembered.size == newest
    clock = Clock()
    shrunk = Auditor(_Shrunk(LocalLogClient(log.conn), old_note), log.key.verifier,
                     witnesses=[log.witness.verifier], wait=clock.wait())  # fmt: skip
    with pytest.raises(RollbackError, match=f"size {newest} was seen before"):
        shrunk.update(remembered)
    # A tree of the same size with another root: a fork, named before the missing cosignature.
    forked = Checkpoint(ORIGIN, newest, bytes(32))
    with pytest.raises(ConsistencyError, match="fork"):
        Auditor(LocalLogClient(log.conn), log.key.verifier, witnesses=[log.witness.verifier],
                wait=clock.wait()).update(forked)  # fmt: skip
    # Cosigned, but long ago (--max-age): refused at once, not waited on.
    log.cosign(newest)
    stale = Freshness(AT + timedelta(hours=2), timedelta(hours=1))
    with pytest.raises(FreshnessError):
        Auditor(LocalLogClient(log.conn), log.key.verifier, witnesses=[log.witness.verifier],
                freshness=stale, wait=clock.wait()).update(remembered)  # fmt: skip
    assert clock.sleeps == []


def test_cosign_wait_bounds() -> None:
    for seconds, poll in ((-1.0, 0.2), (61.0, 0.2), (5.0, 0.0)):
        with pytest.raises(ValueError, match="seconds"):
            CosignWait(seconds, poll)
    clock = Clock()
    calls: list[int] = []

    def never() -> int:
        calls.append(1)
        raise NotCosignedError("not yet")

    with pytest.raises(NotCosignedError):
        clock.wait(0.0).run(never)
    assert calls == [1] and clock.sleeps == []
    # A bound not a multiple of the poll: the last sleep is what is left.
    with pytest.raises(NotCosignedError):
        clock.wait(0.5).run(never)
    assert clock.sleeps == pytest.approx([0.2, 0.2, 0.1]) and len(calls) == 5


def test_the_ledger_commands_take_the_wait_from_witness_wait(log: Log, tmp_path: Path) -> None:
    """``--witness-wait SECONDS`` (0 to 60) bounds the commands' wait: a witness that never
    answers fails ``ledger verify`` in that bound (a short one here, well under the default),
    exit 65; a bad value, or the option without ``--witness``, is a usage error (exit 2)."""
    import time

    from click.testing import CliRunner

    from confide.ledger.cli import ledger

    log.cosign(log.grow(10))
    newest = log.grow(5)
    (tmp_path / "w.vkey").write_text(log.witness.verifier.vkey + "\n")
    base = ["verify", "--log-db", str(tmp_path / "log.db"), "--key", log.key.verifier.vkey]
    runner = CliRunner()
    started = time.monotonic()
    r = runner.invoke(ledger, [*base, "--witness", str(tmp_path / "w.vkey"), "--witness-wait", "0.4"])
    took = time.monotonic() - started
    assert r.exit_code == 65 and f"checkpoint {newest} has no cosignature by witness" in r.output, r.output
    assert 0.4 <= took < COSIGN_WAIT, took
    for value in ("61", "-1", "nan", "inf", "soon"):
        r = runner.invoke(ledger, [*base, "--witness", str(tmp_path / "w.vkey"), "--witness-wait", value])
        assert r.exit_code == 2 and "expected a number of seconds from 0 to 60" in r.output, (value, r.output)
    r = runner.invoke(ledger, [*base, "--witness-wait", "1"])
    assert r.exit_code == 2 and "--witness-wait goes with --witness" in r.output, r.output

"""The CAS's group commit (``WriteBatcher``), the two-phase attestation and the expiry sweep,
in process on a real SQLite database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

import confide.cas.db
from confide.cas.core import Cas, decrypt_release
from confide.cas.db import SCHEMA_VERSION, Database, WriteBatcher, raw_execute
from confide.cas.ledger_sink import ENTRY_TYPES
from confide.errors import BindingError, StorageError, UsageError
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import Clock, InProcessCas


@pytest.fixture
def setup(tmp_path: Path) -> tuple[InProcessCas, Clock[float]]:
    env = InProcessCas.start(tmp_path / "cas")
    clock = Clock(time.time())
    env.cas.clock = clock
    return env, clock


def count(cas: Cas, table: str) -> int:
    with cas.db.read() as conn:
        return int(raw_execute(conn, f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def ledger_size(cas: Cas) -> int:
    with cas.db.read() as conn:
        return Ledger.size(conn.connection.driver_connection)  # type: ignore[arg-type]


def events_match_the_ledger(cas: Cas) -> None:
    """Every events row is the ledger entry at its seq (the same payload), in order."""
    with cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT seq, type, payload FROM events ORDER BY seq").fetchall()
        raw = conn.connection.driver_connection
        for seq, type_, payload in rows:
            data = Ledger.entry(raw, seq - 1)  # type: ignore[arg-type]
            assert data is not None
            entry = Entry.from_bytes(data)
            assert entry.type is ENTRY_TYPES[type_] and entry.payload == json.loads(payload)
        assert [r[0] for r in rows] == list(range(1, Ledger.size(raw) + 1))  # type: ignore[arg-type]


def holding(gate: threading.Event, running: threading.Event) -> Callable[[Connection], bool]:
    """A job that holds the writer until ``gate`` is set, and sets ``running`` when it runs. A
    test waits for ``running`` before it submits more: the job is then alone in its batch, the
    jobs submitted meanwhile queue behind it. (Without the wait, a writer thread that a loaded
    machine had not scheduled yet took the jobs submitted next into the same batch.)"""

    def job(conn: Connection) -> bool:
        running.set()
        return gate.wait(30)

    return job


def batcher_of(cas: Cas, batched: bool) -> WriteBatcher:
    """The group commit as the API makes it (batched: one ledger append per transaction, through
    LedgerEventSink.batched), or appending per attestation."""
    return WriteBatcher(cas.db, around=cas.events.batched if batched else None)  # type: ignore[attr-defined]


@pytest.mark.parametrize("batched", [False, True])
def test_one_batch_commits_many_attestations(setup: tuple[InProcessCas, Clock[float]], batched: bool) -> None:
    env, _ = setup
    cas = env.cas
    batcher = batcher_of(cas, batched)
    gate, running = threading.Event(), threading.Event()
    try:
        blocker = batcher.submit(holding(gate, running))  # holds the writer
        assert running.wait(30)
        requests = [env.request() for _ in range(20)]
        pendings = [cas.attest_begin(body) for body, _ in requests]
        before = ledger_size(cas)
        futures = [batcher.submit(p.commit) for p in pendings]
        gate.set()
        blocker.result(30)
        for f in futures:
            f.result(30)
        assert batcher.commits == 2  # the blocker's batch, then all twenty together
        for p, (body, key) in zip(pendings, requests, strict=True):
            assert p.accepted
            config = decrypt_release(key, p.result(), bytes.fromhex(body["nonce"]))
            assert config["command"][0] == "svc"
        assert ledger_size(cas) == before + 40  # attestation + secret-release each
        assert count(cas, "sessions") == 20
        events_match_the_ledger(cas)
    finally:
        batcher.close()


def test_the_same_nonce_twice_in_one_batch_is_refused_once(setup: tuple[InProcessCas, Clock[float]]) -> None:
    env, _ = setup
    cas = env.cas
    nonce = cas.new_nonce()
    first = cas.attest_begin(env.request(nonce)[0])
    second = cas.attest_begin(env.request(nonce)[0])
    with cas.db.write() as conn:
        first.commit(conn)
        second.commit(conn)
    assert first.accepted
    assert not second.accepted
    with pytest.raises(BindingError, match="already used"):
        second.result()


@pytest.mark.parametrize("batched", [False, True])
def test_a_failing_job_does_not_fail_or_lose_the_others(
    setup: tuple[InProcessCas, Clock[float]], batched: bool
) -> None:
    env, _ = setup
    cas = env.cas
    batcher = batcher_of(cas, batched)
    gate, running = threading.Event(), threading.Event()
    try:
        blocker = batcher.submit(holding(gate, running))
        assert running.wait(30)
        pendings = [cas.attest_begin(env.request()[0]) for _ in range(4)]

        def broken(conn: Connection) -> None:
            raw_execute(conn, "INSERT INTO meta (key, value) VALUES ('half-done', 'x')")
            raise RuntimeError("a bug in a job")

        futures = [batcher.submit(p.commit) for p in pendings[:2]]
        bad = batcher.submit(broken)
        futures += [batcher.submit(p.commit) for p in pendings[2:]]
        gate.set()
        blocker.result(30)
        with pytest.raises(RuntimeError, match="a bug in a job"):
            bad.result(30)
        for f in futures:
            f.result(30)
        assert all(p.accepted for p in pendings)
        assert count(cas, "sessions") == 4
        with cas.db.read() as conn:  # the broken job's own write was rolled back
            assert raw_execute(conn, "SELECT 1 FROM meta WHERE key = 'half-done'").fetchone() is None
        events_match_the_ledger(cas)  # nothing of the rolled-back batch, each retried job once
        assert count(cas, "events") == ledger_size(cas)
    finally:
        batcher.close()
    with pytest.raises(StorageError, match="shutting down"):
        batcher.submit(lambda conn: None)


def test_a_refusal_in_phase_one_spends_the_nonce(setup: tuple[InProcessCas, Clock[float]]) -> None:
    env, _ = setup
    cas = env.cas
    body, _ = env.request()
    body["service"] = "nope"
    pending = cas.attest_begin(body)
    with pytest.raises(UsageError):
        pending.result()  # not committed yet
    with cas.db.write() as conn:
        pending.commit(conn)
    with pytest.raises(Exception, match="has no service nope"):
        pending.result()
    body["service"] = "svc"  # the same nonce and evidence again: spent
    with pytest.raises(BindingError, match="already used"):
        cas.attest(body)


def test_expired_nonces_sessions_and_evidence_are_swept(setup: tuple[InProcessCas, Clock[float]]) -> None:
    env, clock = setup
    cas = env.cas
    for _ in range(3):
        cas.attest(env.request()[0])
    assert (count(cas, "nonces"), count(cas, "sessions"), count(cas, "evidence_seen")) == (3, 3, 3)
    clock.now += 2 * 24 * 3600  # past every TTL
    cas.attest(env.request()[0])
    assert (count(cas, "nonces"), count(cas, "sessions"), count(cas, "evidence_seen")) == (1, 1, 1)


def test_migration_from_schema_1_adds_the_sweep_indexes_and_revocation_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cas.db'}"
    db = Database(url)
    assert db.migrate() == SCHEMA_VERSION
    with db.write() as conn:  # back to what a version-1 CAS left
        for name in ("nonces_expires_at", "sessions_expires_at", "evidence_seen_seen_at",
                     "runtime_certificates_not_after", "runtime_certificates_name"):  # fmt: skip
            conn.execute(text(f"DROP INDEX {name}"))
        for table in ("revoked_certificates", "crls", "session_volumes", "runtime_certificates",
                      "revocation_requests", "successor_board", "successor_approvals",
                      "successor_withdrawals", "successor_board_approvals", "successor_retired",
                      "successor_retirement_approvals"):  # fmt: skip
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("ALTER TABLE sessions DROP COLUMN volumes_frozen"))
        conn.execute(
            text("INSERT INTO policy_heads (name, hash, creator, updated_at) VALUES ('p', 'h', 'c', 0)")
        )
        conn.execute(text("ALTER TABLE policy_heads DROP COLUMN revision"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    db.dispose()
    db = Database(url)
    assert db.migrate() == SCHEMA_VERSION
    db.dispose()
    with sqlite3.connect(tmp_path / "cas.db") as raw:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        columns = {r[1] for r in raw.execute("PRAGMA table_info(sessions)")}
        revision = raw.execute("SELECT revision FROM policy_heads WHERE name = 'p'").fetchone()[0]
    assert revision == 0  # schema 5: an existing head gets the column, at 0
    assert {"nonces_expires_at", "sessions_expires_at", "evidence_seen_seen_at",
            "runtime_certificates_not_after", "runtime_certificates_name", "crls_distribution_id"} <= names  # fmt: skip
    assert {"revoked_certificates", "crls", "session_volumes", "runtime_certificates",
            "revocation_requests", "successor_board", "successor_approvals",
            "successor_withdrawals", "successor_board_approvals", "successor_retired",
            "successor_retirement_approvals"} <= tables  # fmt: skip
    assert "volumes_frozen" in columns
    assert version == str(SCHEMA_VERSION)


def test_a_refusal_for_a_policy_that_does_not_exist_is_not_filed_under_its_name(
    setup: tuple[InProcessCas, Clock[float]],
) -> None:
    env, _ = setup
    cas = env.cas
    body, _ = env.request(policy="ghost")
    with pytest.raises(Exception, match="no policy ghost"):
        cas.attest(body)
    with cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT policy, payload FROM events WHERE type = 'attestation'").fetchall()
    assert len(rows) == 1
    assert rows[0][0] is None  # recorded, but under no policy
    assert json.loads(rows[0][1])["verdict"] == "refused"


class _HeldSleep:
    """``confide.cas.db``'s ``time`` for a test: the writer's wait before a batch (the rest of
    ``WriteBatcher.interval`` after its last commit) is recorded and lasts until the test
    releases it, however slow the machine."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.release = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        assert self.release.wait(30)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_jobs_arriving_soon_after_a_commit_share_the_next_one(
    setup: tuple[InProcessCas, Clock[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _ = setup
    cas = env.cas
    held = _HeldSleep()
    monkeypatch.setattr(confide.cas.db, "time", held)
    batcher = WriteBatcher(cas.db, interval=2.0)
    try:
        pendings = [cas.attest_begin(env.request()[0]) for _ in range(3)]
        batcher.submit(cas.attest_begin(env.request()[0]).commit).result(30)  # idle: at once
        assert batcher.commits == 1 and held.waits == []
        futures = [batcher.submit(pendings[0].commit)]  # within 2 s of that commit: it waits
        deadline = time.monotonic() + 30
        while not held.waits:  # (a writer that did not wait would commit it alone)
            assert time.monotonic() < deadline and not futures[0].done()
            time.sleep(0.01)
        assert 0 < held.waits[0] <= 2.0
        futures += [batcher.submit(p.commit) for p in pendings[1:]]  # while it waits
        held.release.set()
        for f in futures:
            f.result(30)
        assert (batcher.commits, batcher.committed_jobs) == (2, 4)
        assert all(p.accepted for p in pendings)
        assert count(cas, "sessions") == 4
    finally:
        held.release.set()
        batcher.close()


def test_a_lost_connection_is_replaced_and_the_batch_committed(
    setup: tuple[InProcessCas, Clock[float]],
) -> None:
    env, _ = setup
    cas = env.cas
    batcher = WriteBatcher(cas.db, interval=0.0)
    try:
        batcher.submit(cas.attest_begin(env.request()[0]).commit).result(30)
        kept = batcher._conn
        assert kept is not None

        def lose(conn: Connection) -> None:
            conn.invalidate()  # what SQLAlchemy does when the server went away
            raise StorageError("database error: the connection was lost")

        attempts: list[int] = []

        def job(conn: Connection) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                lose(conn)
            raw_execute(conn, "INSERT INTO meta (key, value) VALUES ('after-loss', 'x')")
            return "done"

        assert batcher.submit(job).result(30) == "done"
        assert len(attempts) == 2  # on the kept connection, then on a fresh one
        assert batcher._conn is not None and batcher._conn is not kept
        with cas.db.read() as conn:
            assert raw_execute(conn, "SELECT value FROM meta WHERE key = 'after-loss'").fetchone() == ("x",)
    finally:
        batcher.close()


def test_sqlite_reads_reuse_one_connection_and_take_a_pooled_one_when_it_is_busy(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cas.db'}")
    db.migrate()
    try:
        with db.read() as first:
            with db.read() as second:  # the kept connection is in use: one from the pool
                assert second is not first
                assert raw_execute(second, "SELECT COUNT(*) FROM meta").fetchone()[0] >= 1
            assert raw_execute(first, "SELECT COUNT(*) FROM meta").fetchone()[0] >= 1
        with db.read() as again:
            assert again is first
        with pytest.raises(sqlite3.OperationalError), db.read() as conn:  # ends the read, not the connection
            raw_execute(conn, "SELECT * FROM no_such_table")
        with db.write() as conn:
            raw_execute(conn, "INSERT INTO meta (key, value) VALUES ('seen', 'yes')")
        with db.read() as conn:  # a new transaction sees the commit made since
            assert conn is first
            assert raw_execute(conn, "SELECT value FROM meta WHERE key = 'seen'").fetchone() == ("yes",)
    finally:
        db.dispose()


def test_async_submissions_resolve_after_their_commit_in_one_batch(
    setup: tuple[InProcessCas, Clock[float]],
) -> None:
    env, _ = setup
    cas = env.cas
    batcher = WriteBatcher(cas.db)
    gate, running = threading.Event(), threading.Event()

    def fails(conn: Connection) -> None:
        raise StorageError("this job fails")

    async def main() -> None:
        blocker = batcher.submit_async(holding(gate, running))  # holds the writer
        assert await asyncio.to_thread(running.wait, 30)
        pendings = [cas.attest_begin(env.request()[0]) for _ in range(5)]
        futures = [batcher.submit_async(p.commit) for p in pendings]
        failing = batcher.submit_async(fails)
        cancelled = batcher.submit_async(lambda conn: raw_execute(conn, "INSERT INTO meta VALUES ('c', 'x')"))
        cancelled.cancel()
        assert not any(f.done() for f in futures)
        gate.set()
        assert await blocker is True
        await asyncio.gather(*futures)
        with pytest.raises(StorageError, match="this job fails"):
            await failing
        assert all(p.accepted for p in pendings)

    try:
        asyncio.run(main())
        # the blocker; the batch of six failed as a whole, so each job ran again alone
        assert batcher.committed_jobs == 6
        assert count(cas, "sessions") == 5
        with cas.db.read() as conn:
            assert raw_execute(conn, "SELECT 1 FROM meta WHERE key = 'c'").fetchone() is None
    finally:
        batcher.close()

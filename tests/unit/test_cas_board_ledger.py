"""The successor board's rows judged against the ledger's board entries (confide.cas.board_ledger;
docs/cas.md "What the successor board rests on"), in process on a ``--dev`` CAS with a board of
two of alice, bob and carol, on SQLite and PostgreSQL: an operator who writes the board row back
to before a board change, deletes a retirement (the board row written back to match, or deleted
with it) or deletes a withdrawal (the board row written back to match) gets a
``BoardRolledBack`` from every decision on the board (a hand-over, an approval, a change, a
retirement check at start and at release), from a running process and a fresh one, also when
an older genuine snapshot is written back; restored, all is well. The genuine paths (change,
retire, withdraw, hand-over, a replica whose index is behind) are never refused; a schema-17
database is upgraded by one full scan; an appended board entry only ever refuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cas_key_release import Joiner, Releaser
from test_cas_successor_release import NEW, people
from test_cas_successor_retire import OTHER, _sim_own

from asgi_call import call
from confide import errors
from confide.cas.app import create_app
from confide.cas.board_change import CHANGE_TYPE
from confide.cas.board_ledger import BoardMarks, BoardRolledBack, Mark
from confide.cas.core import Cas, sign_document
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement
from confide.cas.key_release import KeyReleaser
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.retirement import RETIREMENT_TYPE
from confide.cas.server import prepare
from confide.cas.successor import APPROVAL_TYPE, WITHDRAWAL_TYPE, Successors
from confide.cas.successor_board import Board, board_from_json
from confide.identity import Identity
from confide.runtime.quote import SimQuoteProvider
from confide.sim.platform import SimPlatform

__all__ = ["people"]  # a fixture, re-used

ROLLED_BACK = "the successor board's rows are older than the ledger"


class Env:
    """A dev CAS with a board (``r``) on its data directory and database, restartable."""

    def __init__(self, data: Path, db_url: str | None, board: Board) -> None:
        self.data, self.db_url = data, db_url
        self.r = self._start(board)

    def _start(self, board: Board | None = None) -> Releaser:
        cas, evidence, *_ = prepare(
            self.data, host="127.0.0.1", dev=True, db_url=self.db_url, collateral=None, successor_board=board
        )
        assert cas.key_release is not None and evidence is not None
        return Releaser(cas, cas.key_release, SimPlatform.load(self.data / "sim"), self.data)

    def restart(self) -> None:
        self.r.cas.db.dispose()
        self.r = self._start()

    @property
    def cas(self) -> Cas:
        return self.r.cas

    @property
    def s(self) -> Successors:
        assert self.r.releaser.successors is not None
        return self.r.releaser.successors

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self.cas.db.write() as conn:
            cur = raw_execute(conn, statement, params)
            return (
                [tuple(r) for r in cur.fetchall()] if statement.lstrip().upper().startswith("SELECT") else []
            )

    def board_row(self) -> tuple[Any, ...]:
        [row] = self.sql("SELECT record, key_id, mac FROM successor_board")
        return row

    def set_board_row(self, row: tuple[Any, ...]) -> None:
        self.sql("UPDATE successor_board SET record = ?, key_id = ?, mac = ?", row)

    def sign(self, who: Identity, body: dict[str, Any]) -> dict[str, Any]:
        body = {"master_key_id": self.cas.sealer.sealing_key_id, "expires": int(time.time()) + 600, **body}
        return sign_document(body, who.sign, who.public.public_base64)

    def approve(self, who: Identity, generation: int = 0) -> dict[str, Any]:
        body = {"type": APPROVAL_TYPE, "platform": "sim", "claims": {"measurement": NEW.hex()},
                **({"generation": generation} if generation else {})}  # fmt: skip
        return self.s.approve(self.sign(who, body))

    def change(self, who: Identity, board: Board, generation: int = 0) -> dict[str, Any]:
        body = {"type": CHANGE_TYPE, "generation": generation, "board": board.to_json()}
        return self.s.board_changes.approve(self.sign(who, body))

    def retire(self, who: Identity, generation: int = 0) -> dict[str, Any]:
        body = {"type": RETIREMENT_TYPE, "generation": generation, "platform": "sim",
                "code": {"measurement": OTHER.hex()}}  # fmt: skip
        return self.s.retirements.approve(self.sign(who, body))

    def withdraw(self, who: Identity, digest: str) -> dict[str, Any]:
        body = {"type": WITHDRAWAL_TYPE, "approval": digest, "master_key_id": self.cas.sealer.sealing_key_id,
                "time": int(time.time())}  # fmt: skip
        return self.s.withdraw(sign_document(body, who.sign, who.public.public_base64))

    def release_to(self, measurement: bytes, releaser: KeyReleaser | None = None) -> None:
        """A CAS of ``measurement`` asks for the key (released by ``releaser``, the dev CAS by
        default): raises unless released."""
        by = releaser or self.r.releaser
        joiner = Joiner(by.new_nonce())
        evidence = SimQuoteProvider(self.r.sim, measurement).get_evidence(joiner.binding)
        joiner.open(by.release(joiner.request("sim", evidence.raw)))

    def as_version(self, measurement: bytes) -> KeyReleaser:
        """A CAS of the version ``measurement`` on the same database (another version holding the key)."""
        return KeyReleaser(self.cas, _sim_own(self.r, measurement), successors=self.s)

    def store_snapshot(self) -> tuple[Any, ...]:
        index = self.cas.policy_auth.index
        with self.cas.db.read() as conn:
            index.refresh(conn)
        with self.cas.db.write() as conn:
            index.store(conn, 0.0)
        [row] = self.sql(
            "SELECT size, heads, board, updated_at, key_id, mac, secrets FROM policy_head_anchor"
        )
        return row

    def set_snapshot(self, row: tuple[Any, ...]) -> None:
        self.sql("DELETE FROM policy_head_anchor")
        self.sql("INSERT INTO policy_head_anchor (id, size, heads, board, updated_at, key_id, mac, secrets) "
                 "VALUES (1, ?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path, people: list[Identity]) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    out = Env(
        tmp_path / "cas", db_url, board_from_json({"require-at-least-2": [p.fingerprint for p in people]})
    )
    try:
        yield out
    finally:
        out.cas.db.dispose()


def _refused_everywhere(env: Env, people: list[Identity], generation: int) -> None:
    """Every read of the board refuses: show, an approval, a change, a retirement, a hand-over."""
    alice, _bob, carol = people
    with pytest.raises(BoardRolledBack, match=ROLLED_BACK):
        env.s.show()
    with pytest.raises(BoardRolledBack):
        env.approve(alice, generation)
    with pytest.raises(BoardRolledBack):
        env.change(alice, board_from_json({"require-all": [carol.fingerprint]}), generation)
    with pytest.raises(BoardRolledBack):
        env.retire(alice, generation)
    with pytest.raises(BoardRolledBack):
        env.release_to(NEW)
    with pytest.raises(BoardRolledBack):  # the retirement check of every release
        env.release_to(cas_dev_measurement())


def test_the_board_row_written_back_to_before_a_change_is_refused(
    env: Env, people: list[Identity], caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, carol = people
    before = env.board_row()
    snapshot = env.store_snapshot()  # a genuine snapshot from before the change
    new = board_from_json({"require-all": [alice.fingerprint, carol.fingerprint]})
    env.change(alice, new)
    assert env.change(bob, new)["applied"] is True
    after = env.board_row()
    env.set_board_row(before)  # authenticates: a genuine earlier row
    refusals = env.cas.policy_auth.index.board_refusals
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        _refused_everywhere(env, people, 0)  # the running process
    assert any("successor-board-rolled-back" in r.getMessage() for r in caplog.records)
    assert env.cas.policy_auth.index.board_refusals == refusals + 6
    status, body = call(create_app(env.cas), "/metrics", [b""], method="GET")
    assert (
        status == 200 and f"confide_cas_successor_board_rolled_back_total {refusals + 6:.1f}" in body.decode()
    )
    with pytest.raises(BoardRolledBack, match=r"generation 0, ledger entry \d+ \(successor.board-changed\)"):
        env.restart()  # a fresh process: the retirement check at its start
    env.set_snapshot(snapshot)  # an older genuine snapshot gives the same answer
    with pytest.raises(BoardRolledBack):
        env.restart()
    env.set_board_row(after)
    env.restart()
    assert env.s.show()["generation"] == 1 and env.s.show()["board_sha256"] == new.sha256


def test_a_deleted_retirement_is_refused(env: Env, people: list[Identity]) -> None:
    """OTHER retired by the board; the retirement row deleted and the board row written back to
    its MAC from before (or deleted with it): OTHER neither starts nor releases nor gets the
    key, and no other decision is taken; restored, OTHER is retired again."""
    alice, bob, _carol = people
    before = env.board_row()
    env.retire(alice)
    assert env.retire(bob)["applied"] is True
    after = env.board_row()
    [retired] = env.sql("SELECT * FROM successor_retired")
    env.sql("DELETE FROM successor_retired")
    env.set_board_row(before)
    other = env.as_version(OTHER)
    with pytest.raises(BoardRolledBack, match=r"retired .* is not among the retired ones"):
        env.s.refuse_retired_start(_sim_own(env.r, OTHER))
    with pytest.raises(BoardRolledBack):
        env.release_to(OTHER, other)  # OTHER releasing to its own version
    with pytest.raises(BoardRolledBack):
        env.release_to(OTHER)  # the dev CAS releasing to OTHER
    _refused_everywhere(env, people, 0)
    # the board row deleted with the retirements: as refused (it was no hand-over only before)
    env.sql("DELETE FROM successor_board")
    with pytest.raises(BoardRolledBack, match="there is no board row, ledger entry"):
        env.s.refuse_retired_start(_sim_own(env.r, OTHER))
    with pytest.raises(BoardRolledBack):
        env.release_to(OTHER, other)
    with pytest.raises(BoardRolledBack):
        env.restart()
    env.sql("INSERT INTO successor_board (id, record, key_id, mac) VALUES (1, ?, ?, ?)", after)
    env.sql("INSERT INTO successor_retired VALUES (" + ", ".join("?" for _ in retired) + ")", retired)
    env.restart()
    with pytest.raises(errors.AppraisalError, match="was retired"):
        env.s.refuse_retired_start(_sim_own(env.r, OTHER))


def test_a_deleted_withdrawal_is_refused(env: Env, people: list[Identity]) -> None:
    """alice and bob approve NEW, alice withdraws; the withdrawal deleted and the board row
    written back to its MAC from before: the hand-over is refused, not authorised by alice's
    approval counting again."""
    alice, bob, _carol = people
    first = env.approve(alice)
    assert env.approve(bob)["authorised"] is True
    before = env.board_row()
    env.withdraw(alice, first["digest"])
    env.sql("DELETE FROM successor_withdrawals")
    env.set_board_row(before)
    with pytest.raises(BoardRolledBack, match=r"withdrew .* is not withdrawn"):
        env.release_to(NEW)
    with pytest.raises(BoardRolledBack):
        env.restart()
    # a board row deleted on its own (no retirement in the ledger) is what it was: no hand-over
    env.sql("DELETE FROM successor_board")
    env.restart()
    with pytest.raises(errors.UsageError, match="no successor board"):
        env.s.show()
    with pytest.raises(errors.AppraisalError, match="no successor board"):
        env.release_to(NEW)


def test_the_genuine_paths_are_never_refused(env: Env, people: list[Identity]) -> None:
    """A change, a withdrawal, a retirement and a hand-over, each through this process and
    through a replica whose index has not scanned the others' entries yet (its rows newer than
    its index): nothing refused."""
    alice, bob, carol = people
    replica = Cas(Database(env.cas.db.url), env.cas.sealer, env.cas.verifier, events=LedgerEventSink(),
                  tls_spki_sha256=env.cas.tls_spki_sha256)  # fmt: skip
    try:
        theirs = Successors(replica, own=_sim_own(env.r, cas_dev_measurement()))
        assert theirs.show()["generation"] == 0  # its index loaded now, then left behind
        new = board_from_json({"require-at-least-2": [alice.fingerprint, bob.fingerprint, carol.fingerprint]})
        env.change(alice, board_from_json({"require-all": [alice.fingerprint, bob.fingerprint]}))
        env.change(bob, board_from_json({"require-all": [alice.fingerprint, bob.fingerprint]}))
        theirs.board_changes.approve(
            env.sign(alice, {"type": CHANGE_TYPE, "generation": 1, "board": new.to_json()})
        )
        assert env.change(bob, new, 1)["applied"] is True
        first = env.approve(alice, 2)
        theirs.withdraw(
            sign_document(
                {"type": WITHDRAWAL_TYPE, "approval": first["digest"], "time": int(time.time()),
                 "master_key_id": env.cas.sealer.sealing_key_id},
                alice.sign, alice.public.public_base64,
            )
        )  # fmt: skip
        env.retire(alice, 2)
        assert env.retire(bob, 2)["applied"] is True
        with pytest.raises(errors.AppraisalError, match="was retired"):
            theirs.refuse_retired_start(_sim_own(env.r, OTHER))
        env.approve(bob, 2)
        env.approve(carol, 2)
        env.release_to(NEW)  # the hand-over
        assert theirs.show()["generation"] == 2
        assert replica.policy_auth.index.board_refusals == 0
        assert env.cas.policy_auth.index.board_refusals == 0
    finally:
        replica.db.dispose()
    env.restart()
    assert env.s.show()["generation"] == 2


def test_a_schema_17_database_is_upgraded_by_one_full_scan(env: Env, people: list[Identity]) -> None:
    alice, bob, carol = people
    before = env.board_row()
    new = board_from_json({"require-all": [carol.fingerprint]})
    env.change(alice, new)
    env.change(bob, new)
    after = env.board_row()
    env.store_snapshot()
    # schema 17: the snapshot without the board's entries
    env.sql("ALTER TABLE policy_head_anchor DROP COLUMN board")
    env.sql("UPDATE meta SET value = '17' WHERE key = 'schema_version'")  # a past schema: its number
    env.restart()
    assert env.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    [(size, board)] = env.sql("SELECT size, board FROM policy_head_anchor")
    [(ledger_size,)] = env.sql("SELECT size FROM ledger_head WHERE id = 1")
    assert size == ledger_size
    marks = BoardMarks.decode(board, AssertionError).marks
    assert [(m.kind, m.generation, m.value) for m in marks] == [
        ("board", 0, board_from_json({"require-at-least-2": [p.fingerprint for p in people]}).sha256),
        ("board", 1, new.sha256),
    ]
    env.set_board_row(before)
    with pytest.raises(BoardRolledBack):
        env.restart()
    env.set_board_row(after)
    env.restart()


def test_an_appended_board_entry_only_refuses(env: Env, people: list[Identity]) -> None:
    """The ledger is append-only, not append-proof: a well-formed ``successor.board-changed``
    entry appended by the operator (a generation ahead) makes the CAS refuse, never accept."""
    with env.cas.db.write() as conn:
        LedgerEventSink().record(
            conn, "successor-board-changed", None, {"generation": 7, "board_sha256": "ab" * 32}
        )
    with pytest.raises(BoardRolledBack, match="generation 0, ledger entry"):
        env.s.show()


def test_marks_beyond_a_readers_ledger_size_are_not_held_against_it() -> None:
    """A reader whose transaction sees fewer entries than the index scanned is judged as of its
    own size; rows newer than the marks (a change whose entry the index has not scanned yet)
    are never refused."""
    marks = BoardMarks(
        (Mark(1, "board", "aa" * 32, 0), Mark(5, "withdrawn", "bb" * 32, 0), Mark(9, "board", "cc" * 32, 1))
    )
    refused: list[int] = []
    marks.as_of(9, lambda: refused.append(1)).check(0, "aa" * 32, [], ["bb" * 32])
    marks.as_of(5, lambda: refused.append(1)).check(0, "aa" * 32, [], [])
    marks.as_of(20, lambda: refused.append(1)).check(2, "dd" * 32, ["ee" * 32], ["bb" * 32, "ff" * 32])
    assert refused == []
    with pytest.raises(BoardRolledBack, match="is not withdrawn"):
        marks.as_of(6, lambda: refused.append(1)).check(0, "aa" * 32, [], [])
    with pytest.raises(BoardRolledBack, match="not the one ledger entry 9 names"):
        marks.as_of(10, lambda: refused.append(1)).check(1, "dd" * 32, [], ["bb" * 32])
    assert refused == [1, 1]

"""Changing the successor board with the current board's quorum (confide.cas.board_change), in
process: a change is applied only when the approvals of the current board's members meet its
rule, atomically; the new board is authenticated under the master key like the old one;
forged, tampered, stale and replayed changes are refused (and recorded once the signature
verified); withdrawals; a restart between approvals; approvals of successors signed under the
old board no longer count. The end-to-end run over TLS is tests/integration/test_cas_successor.py."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_cas_successor_board import _board, _start, _stored, _successors

from confide.cas import successor_board
from confide.cas.board_change import CHANGE_TYPE, change_id, parse_change_approval
from confide.cas.core import Cas, sign_document
from confide.cas.db import Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.rotation import rotate_master_key
from confide.cas.successor import APPROVAL_TYPE, WITHDRAWAL_TYPE, target_of
from confide.cas.successor_board import Board, board_from_json
from confide.errors import (
    AccessDeniedError,
    ConflictError,
    ParseError,
    SignatureError,
    StorageError,
    UsageError,
)
from confide.identity import Identity, fingerprint_of
from confide.policy.canonical import jcs

MEASUREMENT = "ab" * 48


@pytest.fixture
def people() -> list[Identity]:
    return [Identity.generate(n) for n in ("alice", "bob", "carol", "dave", "erin")]


def _change(who: Identity, key_id: str, board: Board, generation: int = 0, **changes: Any) -> dict[str, Any]:
    body = {"type": CHANGE_TYPE, "master_key_id": key_id, "generation": generation, "board": board.to_json(),
            "expires": int(time.time()) + 3600, **changes}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _approval(who: Identity, key_id: str, generation: int = 0, **changes: Any) -> dict[str, Any]:
    body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim",
            "claims": {"measurement": MEASUREMENT}, "expires": int(time.time()) + 3600,
            **({"generation": generation} if generation else {}), **changes}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _events(cas: Cas, kind: str) -> list[dict[str, Any]]:
    with cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def _count(cas: Cas, table: str) -> int:
    with cas.db.read() as conn:
        return int(raw_execute(conn, f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_a_change_applies_at_the_current_boards_quorum(tmp_path: Path, people: list[Identity]) -> None:
    alice, bob, carol, dave, erin = people
    old = _board([alice, bob, carol])
    new = _board([carol, dave, erin], "require-all")
    cas = _start(tmp_path / "cas", old)
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    # A pending successor approval under the old board (alice's): it will not survive the change.
    s.approve(_approval(alice, key_id))

    first = s.board_changes.approve(_change(alice, key_id, new))
    change = change_id(key_id, 0, new)
    assert (
        first["change"] == change and first["applied"] is False and first["approvers"] == [alice.fingerprint]
    )
    # Too few approvals: one of two; the board is unchanged, the change is pending and listed.
    assert _stored(cas) == old
    (listed,) = s.board_changes.show()["changes"]
    assert listed["change"] == change and listed["board"] == new.to_json() and listed["generation"] == 0
    assert [a["signer"] for a in listed["approvers"]] == [alice.fingerprint]
    # A member of the *new* board only (dave) does not count towards the change.
    with pytest.raises(AccessDeniedError, match="not on the successor board"):
        s.board_changes.approve(_change(dave, key_id, new))
    # bob's approval meets the old board's rule: applied in the same transaction.
    second = s.board_changes.approve(_change(bob, key_id, new))
    assert second["applied"] is True and second["generation"] == 1
    stored = _stored(cas)
    assert stored == Board(new.rule, 1)
    shown = s.show()
    assert shown["generation"] == 1 and shown["board_sha256"] == new.sha256 and shown["approvals"] == []
    assert s.board_changes.show()["changes"] == []
    assert _count(cas, "successor_approvals") == 0 and _count(cas, "successor_board_approvals") == 0
    (changed,) = _events(cas, "successor-board-changed")
    assert changed["change"] == change and changed["generation"] == 1 and changed["previous_generation"] == 0
    assert changed["board_sha256"] == new.sha256 and changed["previous_board_sha256"] == old.sha256
    assert changed["approvers"] == sorted([alice.fingerprint, bob.fingerprint])
    assert changed["approvals"] == sorted([first["digest"], second["digest"]])
    assert changed["voided_successor_approvals"] == 1
    approved = _events(cas, "successor-board-change-approved")
    assert [e["authorised"] for e in approved] == [False, True]
    (refused,) = _events(cas, "successor-board-change-refused")
    assert refused["signer"] == dave.fingerprint and refused["reason_class"] == "AccessDeniedError"
    # Now only the new board approves: alice is no member any more; carol, dave and erin are.
    with pytest.raises(AccessDeniedError):
        s.approve(_approval(alice, key_id, 1))
    assert s.approve(_approval(carol, key_id, 1))["authorised"] is False
    assert s.approve(_approval(dave, key_id, 1))["authorised"] is False
    assert s.approve(_approval(erin, key_id, 1))["authorised"] is True
    cas.db.dispose()


def test_approvals_signed_under_the_old_board_no_longer_count(tmp_path: Path, people: list[Identity]) -> None:
    """Stale: a successor approval of generation 0 after the change is refused; one stored
    before it and written back by the operator does not count (another target)."""
    alice, bob, carol, *_ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    kept = _approval(alice, key_id)
    s.approve(kept)
    with cas.db.read() as conn:
        (row,) = raw_execute(
            conn, "SELECT target, signer, document, expires_at, created_at FROM successor_approvals"
        )
    # The new board: alice or bob alone (1 of 2) — an old approval carried over would suffice.
    new = _board([alice, bob], "require-at-least-1")
    s.board_changes.approve(_change(alice, key_id, new))
    assert s.board_changes.approve(_change(carol, key_id, new))["applied"] is True
    with pytest.raises(ConflictError, match="generation: got 0, expected 1"):
        s.approve(_approval(bob, key_id))
    with cas.db.write() as conn:  # the operator writes alice's old approval back
        raw_execute(conn, "INSERT INTO successor_approvals VALUES (?, ?, ?, ?, ?)", tuple(row))
    assert row[0] == target_of(key_id, "sim", {"measurement": MEASUREMENT})
    assert s.show()["approvals"] == []
    with pytest.raises(ConflictError):  # and submitting it again is refused as stale
        s.approve(kept)
    # The same claims under generation 1: another target, and it counts.
    result = s.approve(_approval(bob, key_id, 1))
    assert result["authorised"] is True
    assert result["target"] == target_of(key_id, "sim", {"measurement": MEASUREMENT}, 1) != row[0]
    cas.db.dispose()


def test_competing_changes_and_replays_are_stale(tmp_path: Path, people: list[Identity]) -> None:
    alice, bob, carol, dave, erin = people
    original = _board([alice, bob, carol])
    cas = _start(tmp_path / "cas", original)
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    to_dave, to_erin = _board([alice, bob, dave]), _board([alice, bob, erin])
    # Two changes race for generation 0: carol backs the one to erin, alice and bob the one to dave.
    s.board_changes.approve(_change(carol, key_id, to_erin))
    old_alice = _change(alice, key_id, to_dave)
    s.board_changes.approve(old_alice)
    assert s.board_changes.approve(_change(bob, key_id, to_dave))["applied"] is True
    # The losing change was voided; approving it now is stale.
    with pytest.raises(ConflictError, match="generation: got 0, expected 1"):
        s.board_changes.approve(_change(alice, key_id, to_erin))
    # Back to the original board at generation 1 (alice and dave) ...
    s.board_changes.approve(_change(alice, key_id, original, 1))
    assert s.board_changes.approve(_change(dave, key_id, original, 1))["applied"] is True
    assert _stored(cas) == Board(original.rule, 2)
    # ... and a replay of the first change's approval (the ledger has it) applies nothing.
    with pytest.raises(ConflictError, match="stale, or replayed"):
        s.board_changes.approve(old_alice)
    assert _stored(cas) == Board(original.rule, 2)
    refused = _events(cas, "successor-board-change-refused")
    assert [r["reason_class"] for r in refused] == ["ConflictError", "ConflictError"]
    cas.db.dispose()


def test_board_change_refusals(tmp_path: Path, people: list[Identity]) -> None:
    alice, bob, carol, dave, _ = people
    board = _board([alice, bob, carol])
    cas = _start(tmp_path / "cas", board)
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    new = _board([alice, dave])
    now = int(time.time())
    refusals: list[tuple[dict[str, Any], type[Exception], str]] = [
        (_change(alice, "00" * 16, new), UsageError, "expected " + key_id),
        (_change(alice, key_id, new, 3), ConflictError, "generation: got 3, expected 0"),
        (_change(alice, key_id, new, expires=now - 1), UsageError, "expired already"),
        (_change(alice, key_id, new, expires=now + 91 * 86400), UsageError, "at most 90 days"),
        (_change(dave, key_id, new), AccessDeniedError, "not on the successor board"),
        (_change(alice, key_id, board), UsageError, "is the current successor board"),
    ]
    for doc, error, text in refusals:
        with pytest.raises(error, match=text):
            s.board_changes.approve(doc)
    refused = _events(cas, "successor-board-change-refused")
    assert [r["reason_class"] for r in refused] == [e.__name__ for _, e, _ in refusals]
    assert _count(cas, "successor_board_approvals") == 0 and _stored(cas) == board
    cas.db.dispose()


def test_forged_and_malformed_change_documents(people: list[Identity]) -> None:
    alice, bob, *_ = people
    new = _board([alice, bob])
    good = _change(alice, "ab" * 16, new)
    assert parse_change_approval(good).change == change_id("ab" * 16, 0, new)
    with pytest.raises(SignatureError):  # another board under alice's signature
        parse_change_approval({**good, "board": {"require-all": [bob.fingerprint]}})
    with pytest.raises(SignatureError):  # alice's signature, bob named as the signer
        parse_change_approval({**good, "signer": bob.public.public_base64})
    with pytest.raises(SignatureError):
        parse_change_approval({**good, "generation": 1})
    bad = [
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "generation"},
        {**good, "type": APPROVAL_TYPE},
    ]
    for doc in bad:
        with pytest.raises(ParseError):
            parse_change_approval(doc)
    for field, value in [("generation", -1), ("generation", True), ("expires", "soon"),
                         ("master_key_id", "AB" * 16), ("board", {"require-at-least-3": [alice.fingerprint]}),
                         ("board", {"ANY": []}), ("board", {"require-all": [alice.fingerprint] * 2})]:  # fmt: skip
        body = {k: v for k, v in good.items() if k not in ("signature", "signer")}
        with pytest.raises(ParseError):
            parse_change_approval(
                sign_document({**body, field: value}, alice.sign, alice.public.public_base64)
            )


# The identity point (y = 1): with R the identity and S = 0, [S]B = R + [k]A holds for every
# message, so anyone "signs" as this key without a private key (RFC 8032 §5.1.7 does not
# exclude small-order keys; OpenSSL's verify accepts them).
_SMALL_ORDER_KEY = bytes([1]) + bytes(31)
_FORGED = bytes([1]) + bytes(63)


def test_a_small_order_member_key_signs_nothing(tmp_path: Path, people: list[Identity]) -> None:
    """A sub-quorum member proposes a board that lists a fingerprint of a small-order key (the
    other members see only a fingerprint) and the quorum applies it: approvals "signed" by that
    key, forged by anyone (the operator), must not verify, or one real member would hand the
    key over with them."""
    alice, bob, carol, *_ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    nobody = fingerprint_of(_SMALL_ORDER_KEY)
    new = board_from_json({"require-at-least-2": [alice.fingerprint, bob.fingerprint, nobody]})
    s.board_changes.approve(_change(alice, key_id, new))
    assert s.board_changes.approve(_change(bob, key_id, new))["applied"] is True
    assert s.approve(_approval(alice, key_id, 1))["authorised"] is False
    body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim",
            "claims": {"measurement": MEASUREMENT}, "expires": int(time.time()) + 3600, "generation": 1}  # fmt: skip
    forged = sign_document(body, lambda _message: _FORGED, base64.b64encode(_SMALL_ORDER_KEY).decode())
    with pytest.raises(SignatureError, match="small order"):
        s.approve(forged)
    assert s.show()["approvals"][0]["authorised"] is False
    cas.db.dispose()


def test_operator_rows_and_an_edited_board(tmp_path: Path, people: list[Identity]) -> None:
    """Rows the operator writes (a non-member's signed approval, a copy under another change id)
    do not count; an edited generation or board after a change does not authenticate."""
    alice, bob, carol, dave, _ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    new = _board([alice, dave])
    change = change_id(key_id, 0, new)
    s.board_changes.approve(_change(alice, key_id, new))
    forged = _change(dave, key_id, new)
    other = _change(bob, key_id, _board([bob, dave]))  # bob's approval of another change
    with cas.db.write() as conn:
        for signer, doc in ((dave, forged), (bob, other)):
            raw_execute(
                conn, "INSERT INTO successor_board_approvals VALUES (?, ?, ?, ?, ?)",
                (change, signer.fingerprint, json.dumps(doc), time.time() + 3600, time.time()),
            )  # fmt: skip
    (listed,) = s.board_changes.show()["changes"]
    assert [a["signer"] for a in listed["approvers"]] == [alice.fingerprint]
    assert s.board_changes.approve(_change(carol, key_id, new))["applied"] is True
    (changed,) = _events(cas, "successor-board-changed")
    assert changed["approvers"] == sorted([alice.fingerprint, carol.fingerprint])
    with cas.db.write() as conn:
        (record,) = raw_execute(conn, "SELECT record FROM successor_board").fetchone()
        edited = json.loads(record)
        edited["generation"] = 0  # to make the old approvals fresh again
        raw_execute(conn, "UPDATE successor_board SET record = ?", (json.dumps(edited),))
    with pytest.raises(StorageError, match="database was altered"):
        s.show()
    with pytest.raises(StorageError):
        s.board_changes.approve(_change(alice, key_id, _board([alice, bob]), 1))
    cas.db.dispose()


def test_a_changed_board_is_a_record_code_before_schema_9_refuses(
    tmp_path: Path, people: list[Identity]
) -> None:
    """Code from before schema 9 (a CAS of the old version still running on the migrated
    database) authenticates the record, checks its ``type`` and reads ``board``, ignoring
    ``generation``: a changed board in a record of the type it reads would be taken as the
    board of the approvals signed before the change (no generation in their target), which the
    operator can write back, and its new rule applied to them. A changed board is therefore a
    ``confide/successor-board/v2`` record (``generation`` 1 or more), which that code refuses."""
    alice, bob, carol, dave, _ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]

    def record() -> dict[str, Any]:
        with cas.db.read() as conn:
            return dict(json.loads(raw_execute(conn, "SELECT record FROM successor_board").fetchone()[0]))

    assert record()["type"] == "confide/successor-board/v1" and "generation" not in record()
    new = _board([alice, dave], "require-at-least-1")
    s.board_changes.approve(_change(bob, key_id, new))
    assert s.board_changes.approve(_change(carol, key_id, new))["applied"] is True
    changed = record()
    assert changed["type"] == "confide/successor-board/v2" and changed["generation"] == 1
    # Records the CAS itself would authenticate: v2 needs a generation of 1 or more; v1 none.
    for edited in ({**changed, "generation": 0}, {k: v for k, v in changed.items() if k != "generation"},
                   {**changed, "type": "confide/successor-board/v1"}):  # fmt: skip
        with cas.db.write() as conn:
            text = jcs(edited).decode()
            row = raw_execute(conn, "SELECT key_id FROM successor_board").fetchone()
            mac = successor_board._mac(
                successor_board._board_key(cas.sealer, row[0]), row[0], text, successor_board._bound(conn)
            )
            raw_execute(conn, "UPDATE successor_board SET record = ?, mac = ?", (text, mac))
        with pytest.raises(StorageError, match="database was altered"):
            _stored(cas)
    cas.db.dispose()


def _withdrawal(who: Identity, key_id: str, approval: str) -> dict[str, Any]:
    body = {"type": WITHDRAWAL_TYPE, "approval": approval, "master_key_id": key_id, "time": int(time.time())}
    return sign_document(body, who.sign, who.public.public_base64)


def test_a_board_change_approval_is_withdrawn_like_a_successor_approval(
    tmp_path: Path, people: list[Identity]
) -> None:
    alice, bob, carol, dave, _ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    new = _board([alice, dave])
    change = change_id(key_id, 0, new)
    mine = _change(alice, key_id, new)
    a = s.board_changes.approve(mine)
    with pytest.raises(AccessDeniedError, match="only its signer"):
        s.withdraw(_withdrawal(bob, key_id, a["digest"]))
    w = s.withdraw(_withdrawal(alice, key_id, a["digest"]))
    assert w["target"] == change and w["approvers"] == [] and w["authorised"] is False
    with pytest.raises(ConflictError, match="withdrawn already"):
        s.withdraw(_withdrawal(alice, key_id, a["digest"]))
    with pytest.raises(ConflictError, match="was withdrawn"):  # the same document, replayed
        s.board_changes.approve(mine)
    # bob alone: one of two, not applied; listed with alice's withdrawn approval.
    assert s.board_changes.approve(_change(bob, key_id, new))["applied"] is False
    (listed,) = s.board_changes.show()["changes"]
    assert [x["approval"] for x in listed["withdrawn"]] == [a["digest"]]
    (withdrawn,) = _events(cas, "successor-withdrawn")
    assert withdrawn["change"] == change and withdrawn["board"] == new.to_json()
    # The operator deletes the withdrawal to make alice's approval count again: the board fails.
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_withdrawals")
    with pytest.raises(StorageError):
        s.board_changes.approve(_change(carol, key_id, new))
    cas.db.dispose()


def test_a_restart_between_approvals_keeps_the_pending_change(tmp_path: Path, people: list[Identity]) -> None:
    alice, bob, carol, dave, _ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    key_id = _successors(cas).show()["master_key_id"]
    new = _board([alice, dave], "require-all")
    _successors(cas).board_changes.approve(_change(alice, key_id, new))
    cas.db.dispose()
    cas = _start(tmp_path / "cas")  # a restart: the approval is stored, the board unchanged
    assert _stored(cas) == _board([alice, bob, carol])
    assert _successors(cas).board_changes.approve(_change(carol, key_id, new))["applied"] is True
    cas.db.dispose()
    cas = _start(tmp_path / "cas")  # and again: generation 1, authenticated
    assert _stored(cas) == Board(new.rule, 1)
    # A later start still cannot set a board by itself.
    cas.db.dispose()
    with pytest.raises(UsageError, match="only when the CAS is initialised"):
        _start(tmp_path / "cas", _board([dave], "require-all"))


def test_a_rotation_keeps_the_generation_and_voids_pending_changes(
    tmp_path: Path, people: list[Identity]
) -> None:
    alice, bob, carol, dave, _ = people
    cas = _start(tmp_path / "cas", _board([alice, bob, carol]))
    s = _successors(cas)
    key_id = s.show()["master_key_id"]
    first = _board([alice, bob, dave])
    s.board_changes.approve(_change(alice, key_id, first))
    s.board_changes.approve(_change(bob, key_id, first))
    second = _board([alice, dave])
    s.board_changes.approve(_change(alice, key_id, second, 1))  # pending under the old key
    cas.db.dispose()
    db = Database(f"sqlite:///{tmp_path / 'cas' / 'cas.db'}")
    rotate_master_key(tmp_path / "cas", db, seal=None, to_seal=None, events=LedgerEventSink())
    db.dispose()
    cas = _start(tmp_path / "cas")
    s = _successors(cas)
    new_key = s.show()["master_key_id"]
    assert new_key != key_id and _stored(cas) == Board(first.rule, 1)
    assert s.board_changes.show()["changes"] == []  # alice's names the old key id: it counts no more
    with pytest.raises(UsageError, match="expected " + new_key):
        s.board_changes.approve(_change(dave, key_id, second, 1))
    s.board_changes.approve(_change(alice, new_key, second, 1))
    assert s.board_changes.approve(_change(dave, new_key, second, 1))["applied"] is True
    assert _stored(cas) == Board(second.rule, 2)
    cas.db.dispose()


def test_board_change_routes_have_their_own_rate_limit_label() -> None:
    from confide.cas.app import _write_route

    assert _write_route("/v1/cas/successor/board/approvals") == "/v1/cas/successor/board/approvals"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["propose", "--board", "BOARD", "--expires", "7d"], "require-at-least-3"),
        (["propose", "--board", "GOOD", "--expires", "100d"], "at most 90 days"),
        (["propose", "--board", "GOOD", "--expires", "2020-01-01T00:00:00Z"], "a time ahead"),
        (["approve", "--change", "xyz", "--expires", "7d"], "expected the change id"),
    ],
)
def test_board_commands_refuse_bad_arguments_before_contacting_the_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, people: list[Identity], args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from confide.cas.cli import cas as cas_group
    from confide.errors import ConfideError

    monkeypatch.setenv("CONFIDE_CAS_URL", "https://127.0.0.1:1")  # nothing listens there
    (tmp_path / "bad.yaml").write_text(f"require-at-least-3:\n  - {people[0].fingerprint}\n")
    (tmp_path / "good.yaml").write_text(f"require-all:\n  - {people[0].fingerprint}\n")
    identity = tmp_path / "a.id"
    people[0].save(identity)
    args = [str(tmp_path / "bad.yaml") if a == "BOARD" else str(tmp_path / "good.yaml") if a == "GOOD" else a
            for a in args]  # fmt: skip
    result = CliRunner().invoke(cas_group, ["successor", "board", *args, "--identity", str(identity)])
    assert isinstance(result.exception, ConfideError) and message in result.exception.message

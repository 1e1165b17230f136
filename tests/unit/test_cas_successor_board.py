"""The successor board and approvals (confide.cas.successor_board, confide.cas.successor),
in process: the board is set only when the CAS is initialised, authenticated under the master
key (an edited, moved or foreign row is a StorageError, a deleted one means no hand-over),
re-authenticated by offline and online master-key rotation; board files and approval documents
are read strictly; refusals of approvals are recorded. Withdrawals: only the signer, once,
within the time window, before expiry; refusals recorded, nothing marked withdrawn; a withdrawn
approval is never accepted again. The hand-over itself, over TLS between two
CAS processes, is tests/integration/test_cas_successor.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from confide.cas.core import Cas, sign_document
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.join import join_cas
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import master_key_id, rotate_master_key
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.cas.successor import (
    APPROVAL_TYPE,
    MAX_LIFETIME,
    WITHDRAWAL_TYPE,
    Successors,
    claim_text,
    identity_digest,
    parse_approval,
    parse_withdrawal,
)
from confide.cas.successor_board import Board, bind_state, board_from_json, load_board, parse_board_file
from confide.errors import (
    AccessDeniedError,
    ConflictError,
    ParseError,
    SignatureError,
    StorageError,
    UsageError,
)
from confide.identity import Identity

MEASUREMENT = "ab" * 48


@pytest.fixture
def people() -> list[Identity]:
    return [Identity.generate(n) for n in ("alice", "bob", "carol")]


def _board(people: list[Identity], rule: str = "require-at-least-2") -> Board:
    return board_from_json({rule: [p.fingerprint for p in people]})


def _start(data: Path, board: Board | None = None) -> Cas:
    cas, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None, successor_board=board)
    return cas


def _successors(cas: Cas) -> Successors:
    assert cas.key_release is not None and cas.key_release.successors is not None
    return cas.key_release.successors


def _stored(cas: Cas) -> Board | None:
    with cas.db.read() as conn:
        return load_board(conn, cas.sealer)


def _approval(who: Identity, key_id: str, **changes: Any) -> dict[str, Any]:
    body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim",
            "claims": {"measurement": MEASUREMENT}, "expires": int(time.time()) + 3600, **changes}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _events(cas: Cas, kind: str) -> list[dict[str, Any]]:
    with cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def test_the_board_is_set_only_when_the_cas_is_initialised(tmp_path: Path, people: list[Identity]) -> None:
    board = _board(people)
    cas = _start(tmp_path / "cas", board)
    assert _stored(cas) == board
    (event,) = _events(cas, "successor-board-set")
    assert event["board_sha256"] == board.sha256 and event["master_key_id"] == master_key_id(
        cas.sealer.export_key(cas.sealer.sealing_key_id)
    )
    cas.db.dispose()
    # A later start cannot set (or replace) it, even after the row was deleted.
    other = _board(people[:1], "require-all")
    with pytest.raises(UsageError, match="only when the CAS is initialised"):
        _start(tmp_path / "cas", other)
    db = Database(f"sqlite:///{tmp_path / 'cas' / 'cas.db'}")
    with db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_board")
    db.dispose()
    with pytest.raises(UsageError, match="only when the CAS is initialised"):
        _start(tmp_path / "cas", other)
    cas = _start(tmp_path / "cas")
    assert _stored(cas) is None  # deleted: no hand-over at all
    with pytest.raises(UsageError, match="no successor board"):
        _successors(cas).show()
    cas.db.dispose()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("mac", "00" * 32),
        ("key_id", "11" * 16),
        (
            "record",
            '{"board":{"require-all":["' + "cd" * 32 + '"]},"set_at":0,"type":"confide/successor-board/v1"}',
        ),
    ],
)
def test_an_edited_board_row_is_a_storage_error(
    tmp_path: Path, people: list[Identity], column: str, value: str
) -> None:
    cas = _start(tmp_path / "cas", _board(people))
    with cas.db.write() as conn:
        raw_execute(conn, f"UPDATE successor_board SET {column} = ?", (value,))
    with pytest.raises(StorageError, match=r"database was altered|does not hold"):
        _stored(cas)
    with pytest.raises(StorageError):
        _successors(cas).approve(_approval(people[0], cas.sealer.sealing_key_id))
    cas.db.dispose()


def test_a_board_row_of_another_cas_does_not_authenticate(tmp_path: Path, people: list[Identity]) -> None:
    a, b = _start(tmp_path / "a", _board(people)), _start(tmp_path / "b", _board(people[:2]))
    with a.db.read() as conn:
        row = raw_execute(conn, "SELECT record, key_id, mac FROM successor_board").fetchone()
    with b.db.write() as conn:
        raw_execute(conn, "UPDATE successor_board SET record = ?, key_id = ?, mac = ?", tuple(row))
    with pytest.raises(StorageError):
        _stored(b)
    a.db.dispose()
    b.db.dispose()


def test_offline_rotation_re_authenticates_the_board(tmp_path: Path, people: list[Identity]) -> None:
    data = tmp_path / "cas"
    cas = _start(data, _board(people))
    old = Sealer(load_master_key(data, None))
    cas.db.dispose()
    db = Database(f"sqlite:///{data / 'cas.db'}")
    result = rotate_master_key(data, db, seal=None, to_seal=None, events=LedgerEventSink())
    new = Sealer(load_master_key(data, None))
    assert master_key_id(new.export_key(new.sealing_key_id)) == result.new_key_id
    with db.read() as conn:
        assert load_board(conn, new) == _board(people)
        with pytest.raises(StorageError):
            load_board(conn, old)
        (payload,) = [json.loads(r[0]) for r in raw_execute(
            conn, "SELECT payload FROM events WHERE type = 'master-key-rotated'").fetchall()]  # fmt: skip
    assert payload["successor_board"] == "re-authenticated"
    db.dispose()
    cas = _start(data)  # and a start on the new key uses it
    assert _stored(cas) == _board(people)
    cas.db.dispose()


def test_online_rotation_re_authenticates_the_board(tmp_path: Path, people: list[Identity]) -> None:
    data = tmp_path / "cas"
    cas = _start(data, _board(people))
    old = Sealer(cas.sealer.export_key(cas.sealer.sealing_key_id))
    status = OnlineRotation(data, cas.db, cas.sealer, None, cas.events, None).run()  # type: ignore[arg-type]
    assert status.state == "done" and status.new_key_id is not None
    with cas.db.read() as conn:
        assert load_board(conn, cas.sealer) == _board(people)  # the running CAS, on the new key
        assert raw_execute(conn, "SELECT key_id FROM successor_board").fetchone()[0] == status.new_key_id
        with pytest.raises(StorageError):
            load_board(conn, old)
    cas.db.dispose()


def test_show_does_not_count_approvals_a_rotation_voided(tmp_path: Path, people: list[Identity]) -> None:
    """After a master-key rotation the approvals signed for the old key id count for nothing (the
    release refuses them); ``cas successor show`` listed them as approvers of a target it said was
    ``authorised``, so an approver saw a hand-over ready that the CAS would refuse."""
    data = tmp_path / "cas"
    cas = _start(data, _board(people))
    old_id = _successors(cas).show()["master_key_id"]
    for who in people[:2]:
        _successors(cas).approve(_approval(who, old_id))
    assert [e["authorised"] for e in _successors(cas).show()["approvals"]] == [True]
    cas.db.dispose()
    db = Database(f"sqlite:///{data / 'cas.db'}")
    rotate_master_key(data, db, seal=None, to_seal=None, events=LedgerEventSink())
    db.dispose()
    cas = _start(data)
    shown = _successors(cas).show()
    assert shown["master_key_id"] != old_id
    assert shown["approvals"] == []  # void: another key id, as board changes and retirements show
    cas.db.dispose()


def test_approvals_are_refused_and_recorded(tmp_path: Path, people: list[Identity]) -> None:
    cas = _start(tmp_path / "cas", _board(people))
    successors = _successors(cas)
    key_id = successors.show()["master_key_id"]
    outsider = Identity.generate("mallory")
    with pytest.raises(AccessDeniedError, match="not on the successor board"):
        successors.approve(_approval(outsider, key_id))
    with pytest.raises(UsageError, match="expected " + key_id):
        successors.approve(_approval(people[0], "00" * 16))
    with pytest.raises(UsageError, match="expired already"):
        successors.approve(_approval(people[0], key_id, expires=int(time.time()) - 1))
    with pytest.raises(UsageError, match="at most 90 days"):
        successors.approve(_approval(people[0], key_id, expires=int(time.time()) + MAX_LIFETIME + 60))
    refused = _events(cas, "successor-approval-refused")
    assert [r["reason_class"] for r in refused] == [
        "AccessDeniedError",
        "UsageError",
        "UsageError",
        "UsageError",
    ]
    assert _events(cas, "successor-approved") == []
    first = successors.approve(_approval(people[0], key_id))
    assert first["authorised"] is False and first["needed"] == 2
    again = successors.approve(_approval(people[0], key_id, expires=int(time.time()) + 7200))
    assert again["approvers"] == [people[0].fingerprint]  # the same member counts once
    done = successors.approve(_approval(people[2], key_id))
    assert done["authorised"] is True and done["target"] == first["target"]
    (shown,) = successors.show()["approvals"]
    assert shown["authorised"] is True and shown["claims"] == {"measurement": MEASUREMENT}
    cas.db.dispose()


def test_approval_documents_are_read_strictly(people: list[Identity]) -> None:
    who, key_id = people[0], "ab" * 16
    good = _approval(who, key_id)
    assert parse_approval(good).claims == {"measurement": MEASUREMENT}
    bad_bodies: list[dict[str, Any]] = [
        {"claims": {"measurement": MEASUREMENT.upper()}},
        {"claims": {"measurement": MEASUREMENT, "extra": "1"}},
        {"claims": {}},
        {"claims": {"measurement": 5}},
        {"platform": "az-snp-vtpm"},
        {"platform": "nope"},
        {"expires": True},
        {"expires": 1.5},
        {"expires": 2**60},
        {"master_key_id": "AB" * 16},
        {"master_key_id": "ab"},
    ]
    for changes in bad_bodies:
        with pytest.raises(ParseError):
            parse_approval(_approval(who, key_id, **changes))
    with pytest.raises(ParseError):
        parse_approval({**good, "comment": "x"})
    with pytest.raises(SignatureError):
        parse_approval({**good, "expires": good["expires"] + 1})
    with pytest.raises(ParseError):
        parse_approval([good])
    assert [claim_text(v) for v in ("AbC", 7, True, False)] == ["abc", "7", "true", "false"]


def test_board_files_are_read_strictly(tmp_path: Path, people: list[Identity]) -> None:
    fps = [p.fingerprint for p in people]
    path = tmp_path / "board.yaml"
    path.write_text("require-at-least-2:\n" + "".join(f"  - {p.public.public_base64}\n" for p in people))
    assert parse_board_file(path) == _board(people)
    for text in (
        "require-at-least-4:\n" + "".join(f"  - {f}\n" for f in fps),  # more than the members
        "require-at-least-0:\n  - " + fps[0] + "\n",
        "require-all:\n  - CREATOR\n",
        "require-all:\n  - " + fps[0] + "\n  - " + fps[0] + "\n",  # one member twice
        "require-all: []\n",
        "anyone:\n  - " + fps[0] + "\n",
        "a: &x [1]\nb: *x\n",  # aliases are refused by the policy loader's YAML
        "require-all:\n  - " + fps[0] + "\nrequire-at-least-1:\n  - " + fps[1] + "\n",
        "- " + fps[0] + "\n",
    ):
        path.write_text(text)
        with pytest.raises(ParseError):
            parse_board_file(path)
    with pytest.raises(UsageError):
        parse_board_file(tmp_path / "absent.yaml")


def test_join_options_are_checked_before_anything_is_written(tmp_path: Path, people: list[Identity]) -> None:
    with pytest.raises(UsageError, match="--join-as-successor needs --join"):
        prepare(
            tmp_path / "a", host="127.0.0.1", dev=True, db_url=None, collateral=None, join_as_successor=True
        )
    assert not list((tmp_path / "a").glob("master.key*"))
    # A joiner never sets a board: the key it gets is an existing CAS's.
    with pytest.raises(UsageError, match="only when the CAS is initialised"):
        prepare(tmp_path / "b", host="127.0.0.1", dev=True, db_url=None, collateral=None,
                join="https://127.0.0.1:1", successor_board=_board(people))  # fmt: skip
    assert not list((tmp_path / "b").glob("master.key*"))


def test_a_successor_joins_only_a_database_that_names_its_key() -> None:
    def never(_report_data: bytes) -> Any:
        raise AssertionError("no evidence is obtained")

    with pytest.raises(UsageError, match="needs a database that names its master key"):
        join_cas("https://127.0.0.1:1", obtain=never, verifier=None, sim_key_pem=None, collateral=None,  # type: ignore[arg-type]
                 expected_key_id=None, successor=True)  # fmt: skip


def _withdrawal(who: Identity, key_id: str, approval: str, **changes: Any) -> dict[str, Any]:
    body = {"type": WITHDRAWAL_TYPE, "approval": approval, "master_key_id": key_id,
            "time": int(time.time()), **changes}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def _withdrawn_rows(cas: Cas) -> list[tuple[str, str]]:
    with cas.db.read() as conn:
        return [tuple(r) for r in raw_execute(conn, "SELECT approval, signer FROM successor_withdrawals")]


def test_a_member_withdraws_their_own_approval(tmp_path: Path, people: list[Identity]) -> None:
    alice, bob, carol = people
    cas = _start(tmp_path / "cas", _board(people))
    successors = _successors(cas)
    key_id = successors.show()["master_key_id"]
    a_doc = _approval(alice, key_id)
    a = successors.approve(a_doc)
    b = successors.approve(_approval(bob, key_id))
    assert b["authorised"] is True and a["digest"] == parse_approval(a_doc).digest
    (shown,) = successors.show()["approvals"]
    assert {x["approval"] for x in shown["approvers"]} == {a["digest"], b["digest"]}

    # Refused, recorded (the signature verified), nothing withdrawn.
    now = int(time.time())
    refusals: list[tuple[dict[str, Any], type[Exception], str]] = [
        (_withdrawal(carol, key_id, a["digest"]), AccessDeniedError, "only its signer can withdraw it"),
        (_withdrawal(alice, key_id, "00" * 32), UsageError, "no stored approval has the digest"),
        (_withdrawal(alice, key_id, a["digest"], time=now - 400), AccessDeniedError, "from the CAS clock"),
        (_withdrawal(alice, key_id, a["digest"], time=now + 400), AccessDeniedError, "from the CAS clock"),
        (_withdrawal(alice, "00" * 16, a["digest"]), UsageError, "expected " + key_id),
    ]
    for doc, error, text in refusals:
        with pytest.raises(error, match=text):
            successors.withdraw(doc)
    refused = _events(cas, "successor-withdrawal-refused")
    assert [(r["signer"], r["reason_class"]) for r in refused] == [
        (carol.fingerprint, "AccessDeniedError"),
        (alice.fingerprint, "UsageError"),
        (alice.fingerprint, "AccessDeniedError"),
        (alice.fingerprint, "AccessDeniedError"),
        (alice.fingerprint, "UsageError"),
    ]
    assert refused[0]["target"] == a["target"]
    # A bad signature or a malformed document: refused, not recorded.
    good = _withdrawal(alice, key_id, a["digest"])
    with pytest.raises(SignatureError):
        successors.withdraw({**good, "time": good["time"] + 1})
    with pytest.raises(ParseError):
        successors.withdraw({**good, "note": "x"})
    assert len(_events(cas, "successor-withdrawal-refused")) == len(refusals)
    assert _withdrawn_rows(cas) == [] and _events(cas, "successor-withdrawn") == []
    assert successors.show()["approvals"][0]["authorised"] is True

    # alice withdraws her own: recorded with the withdrawal, the target is no longer authorised.
    done = successors.withdraw(good)
    assert done == {"approval": a["digest"], "target": a["target"], "approvers": [bob.fingerprint],
                    "needed": 2, "authorised": False}  # fmt: skip
    (event,) = _events(cas, "successor-withdrawn")
    assert event["approval"] == a["digest"] and event["signer"] == alice.fingerprint
    assert json.loads(event["withdrawal"]) == good and event["authorised"] is False
    assert _withdrawn_rows(cas) == [(a["digest"], alice.fingerprint)]
    (shown,) = successors.show()["approvals"]
    assert shown["authorised"] is False and [x["signer"] for x in shown["approvers"]] == [bob.fingerprint]
    (gone,) = shown["withdrawn"]
    assert gone["signer"] == alice.fingerprint and gone["approval"] == a["digest"]

    # Twice: refused; the same approval again (a replay, or the ledger's copy): refused.
    with pytest.raises(ConflictError, match="withdrawn already"):
        successors.withdraw(_withdrawal(alice, key_id, a["digest"]))
    with pytest.raises(ConflictError, match="never accepted again"):
        successors.approve(a_doc)
    assert _events(cas, "successor-approval-refused")[-1]["reason_class"] == "ConflictError"
    assert len(_withdrawn_rows(cas)) == 1
    # A new approval by alice (another document) counts again.
    again = successors.approve(_approval(alice, key_id, expires=int(time.time()) + 7200))
    assert again["authorised"] is True and again["digest"] != a["digest"]
    cas.db.dispose()


def test_an_expired_approval_cannot_be_withdrawn(tmp_path: Path, people: list[Identity]) -> None:
    cas = _start(tmp_path / "cas", _board(people))
    successors = _successors(cas)
    key_id = successors.show()["master_key_id"]
    start = time.time()
    a = successors.approve(_approval(people[0], key_id, expires=int(start) + 60))
    successors.clock = lambda: start + 120
    with pytest.raises(UsageError, match="expired already"):
        successors.withdraw(_withdrawal(people[0], key_id, a["digest"], time=int(start) + 120))
    assert _withdrawn_rows(cas) == []
    cas.db.dispose()


def test_withdrawal_documents_are_read_strictly(people: list[Identity]) -> None:
    who, key_id, digest = people[0], "ab" * 16, "cd" * 32
    good = _withdrawal(who, key_id, digest)
    assert parse_withdrawal(good).approval == digest
    bad: list[dict[str, Any]] = [
        {"approval": digest.upper()},
        {"approval": digest[:-2]},
        {"approval": 5},
        {"master_key_id": "AB" * 16},
        {"time": True},
        {"time": 1.5},
        {"time": -1},
        {"time": "1700000000"},
    ]
    for changes in bad:
        body = {k: v for k, v in good.items() if k not in ("signer", "signature")} | changes
        with pytest.raises(ParseError):
            parse_withdrawal(sign_document(body, who.sign, who.public.public_base64))
    with pytest.raises(ParseError):
        parse_withdrawal({k: v for k, v in good.items() if k != "time"})
    with pytest.raises(ParseError):
        parse_withdrawal({**good, "type": APPROVAL_TYPE})
    with pytest.raises(SignatureError):
        parse_withdrawal({**good, "approval": "ef" * 32})


def test_schema_8_adds_the_withdrawals_table(tmp_path: Path, people: list[Identity]) -> None:
    cas = _start(tmp_path / "cas", _board(people))
    with cas.db.write() as conn:  # back to what a schema-7 CAS left
        raw_execute(conn, "DROP TABLE successor_withdrawals")
        raw_execute(conn, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    assert cas.db.migrate() == SCHEMA_VERSION
    assert _withdrawn_rows(cas) == []
    cas.db.dispose()


def test_schema_9_adds_the_board_change_and_retirement_tables(tmp_path: Path, people: list[Identity]) -> None:
    board = _board(people)
    cas = _start(tmp_path / "cas", board)
    with cas.db.write() as conn:  # back to what a schema-8 CAS left
        raw_execute(conn, "DROP TABLE successor_board_approvals")
        raw_execute(conn, "DROP TABLE successor_retired")
        raw_execute(conn, "UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    assert cas.db.migrate() == SCHEMA_VERSION
    stored = _stored(cas)  # a board stored before schema 9 is generation 0, and still authenticates
    assert stored == board and stored is not None and stored.generation == 0
    assert _successors(cas).board_changes.show()["changes"] == []
    cas.db.dispose()


def test_the_board_authenticates_the_withdrawals(tmp_path: Path, people: list[Identity]) -> None:
    """A withdrawal the operator deletes (to make its approval count again) or adds: the board no
    longer authenticates. A rotation keeps them bound under the new key."""
    alice, bob, _carol = people
    cas = _start(tmp_path / "cas", _board(people))
    successors = _successors(cas)
    key_id = successors.show()["master_key_id"]
    a = successors.approve(_approval(alice, key_id))
    b = successors.approve(_approval(bob, key_id))
    successors.withdraw(_withdrawal(alice, key_id, a["digest"]))
    assert _stored(cas) == _board(people)
    with cas.db.read() as conn:
        (saved,) = raw_execute(conn, "SELECT approval, signer, target, document, created_at "
                               "FROM successor_withdrawals").fetchall()  # fmt: skip
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_withdrawals")
    with pytest.raises(StorageError, match="database was altered"):
        successors.show()
    with pytest.raises(StorageError):
        successors.approve(_approval(alice, key_id, expires=int(time.time()) + 7200))
    with cas.db.write() as conn:
        raw_execute(conn, "INSERT INTO successor_withdrawals VALUES (?, ?, ?, ?, ?)", tuple(saved))
        raw_execute(conn, "INSERT INTO successor_withdrawals VALUES (?, ?, ?, ?, ?)",
                    (b["digest"], bob.fingerprint, b["target"], "{}", 0.0))  # fmt: skip
    with pytest.raises(StorageError):
        _stored(cas)
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_withdrawals WHERE approval = ?", (b["digest"],))
    assert _stored(cas) == _board(people)  # as the CAS left it
    status = OnlineRotation(tmp_path / "cas", cas.db, cas.sealer, None, cas.events, None).run()  # type: ignore[arg-type]
    assert status.state == "done"
    # The approvals name the old key id: void, not listed; the withdrawal is still bound, under
    # the new key (deleting it does not authenticate).
    assert successors.show()["approvals"] == []
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_withdrawals")
    with pytest.raises(StorageError):
        successors.show()
    cas.db.dispose()


def test_merged_withdrawal_rows_do_not_authenticate(tmp_path: Path, people: list[Identity]) -> None:
    """The MAC covers the withdrawn digests one a line: the operator who replaces two withdrawal
    rows by one whose key is both digests joined by a newline (SQLite does not enforce
    ``String(64)``) must not keep the MAC valid while neither approval reads as withdrawn."""
    alice, bob, _carol = people
    cas = _start(tmp_path / "cas", _board(people))
    successors = _successors(cas)
    key_id = successors.show()["master_key_id"]
    a = successors.approve(_approval(alice, key_id))
    b = successors.approve(_approval(bob, key_id))
    successors.withdraw(_withdrawal(alice, key_id, a["digest"]))
    successors.withdraw(_withdrawal(bob, key_id, b["digest"]))
    merged = "\n".join(sorted([a["digest"], b["digest"]]))
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_withdrawals")
        raw_execute(conn, "INSERT INTO successor_withdrawals VALUES (?, ?, ?, ?, ?)",
                    (merged, alice.fingerprint, a["target"], "{}", 0.0))  # fmt: skip
    with pytest.raises(StorageError, match="database was altered"):
        _stored(cas)
    with pytest.raises(StorageError):
        successors.approve(_approval(alice, key_id, expires=int(time.time()) + 7200))
    cas.db.dispose()


def test_merged_retirement_rows_do_not_authenticate(tmp_path: Path, people: list[Identity]) -> None:
    """As for withdrawals: two retired versions (written as ``Successors.retire`` writes them,
    the board authenticated over both) merged by the operator into one row whose identity is
    both digests joined by a newline would un-retire both."""
    cas = _start(tmp_path / "cas", _board(people))
    identities = sorted(identity_digest("sim", {"measurement": m * 48}) for m in ("aa", "bb"))
    with cas.db.write() as conn:
        assert load_board(conn, cas.sealer) is not None
        for identity in identities:
            raw_execute(conn, "INSERT INTO successor_retired (identity, platform, claims, successor, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (identity, "sim", "{}", "00" * 32, 0.0))  # fmt: skip
        bind_state(conn, cas.sealer)
    assert _stored(cas) == _board(people)
    with cas.db.write() as conn:
        raw_execute(conn, "DELETE FROM successor_retired")
        raw_execute(conn, "INSERT INTO successor_retired (identity, platform, claims, successor, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                    ("\n".join(identities), "sim", "{}", "00" * 32, 0.0))  # fmt: skip
    with pytest.raises(StorageError, match="database was altered"):
        _stored(cas)
    cas.db.dispose()


def test_withdrawals_have_their_own_rate_limit_label() -> None:
    from confide.cas.app import _write_route

    assert _write_route("/v1/cas/successor/withdrawals") == "/v1/cas/successor/withdrawals"
    assert _write_route("/v1/cas/successor/withdrawals/x") == "unmatched"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platform", "nope", "--claim", "measurement=ab", "--expires", "7d"], "--platform: got 'nope'"),
        (["--platform", "sim", "--claim", "mr_td=ab", "--expires", "7d"], "sim needs exactly measurement"),
        (["--platform", "sim", "--claim", "measurement=ab", "--expires", "soon"], "--expires: got 'soon'"),
        (["--platform", "sim", "--claim", "measurement", "--expires", "7d"], "expected NAME=VALUE"),
        (["--platform", "sim", "--claim", "measurement=a b", "--expires", "7d"], "--claim: measurement="),
        (["--platform", "sim", "--claim", "measurement=", "--expires", "7d"], "--claim: measurement="),
        (
            ["--platform", "sim", "--claim", "measurement=" + "a" * 257, "--expires", "7d"],
            "--claim: measurement=",
        ),
        (
            [
                "--platform",
                "sim",
                "--claim",
                "measurement=ab",
                "--retire-claim",
                "measurement=c/d",
                "--expires",
                "7d",
            ],
            "--retire-claim: measurement=",
        ),
    ],
)
def test_approve_refuses_bad_arguments_before_contacting_the_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    # No CAS is reachable (nothing listens there): the arguments are refused first.
    from click.testing import CliRunner

    from confide.cas.cli import cas as cas_group

    monkeypatch.setenv("CONFIDE_CAS_URL", "https://127.0.0.1:1")
    identity = tmp_path / "a.id"
    Identity.generate().save(identity)
    result = CliRunner().invoke(cas_group, ["successor", "approve", *args, "--identity", str(identity)])
    assert isinstance(result.exception, UsageError) and message in result.exception.message

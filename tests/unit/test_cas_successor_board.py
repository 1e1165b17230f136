"""The successor board and approvals (confide.cas.successor_board, confide.cas.successor),
in process: the board is set only when the CAS is initialised, authenticated under the master
key (an edited, moved or foreign row is a StorageError, a deleted one means no hand-over),
re-authenticated by offline and online master-key rotation; board files and approval documents
are read strictly; refusals of approvals are recorded. The hand-over itself, over TLS between two
CAS processes, is tests/integration/test_cas_successor.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from confide.cas.core import Cas, sign_document
from confide.cas.db import Database, raw_execute
from confide.cas.join import join_cas
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import master_key_id, rotate_master_key
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.cas.successor import APPROVAL_TYPE, MAX_LIFETIME, Successors, claim_text, parse_approval
from confide.cas.successor_board import Board, board_from_json, load_board, parse_board_file
from confide.errors import AccessDeniedError, ParseError, SignatureError, StorageError, UsageError
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

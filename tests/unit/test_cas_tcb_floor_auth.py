"""The DCAP TCB evaluation floor file authenticated under the master key (confide.cas.tcb_floor;
docs/cas.md "What the floor rests on"): a file edited down, with a missing or foreign MAC,
replayed from a backup, deleted, or of an earlier version is never a lower floor; the CAS logs
it, records it in the ledger and keeps the larger of the file's and the ledger's numbers;
master-key rotations (offline and online) leave a file that verifies under the key the database
names, at every step. Units, then the real in-process CAS (``server.prepare``) on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import InProcessCas
from confide.cas.core import Cas
from confide.cas.db import Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import PLAIN_NAME, load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import PENDING_SUFFIX, rotate_master_key
from confide.cas.secrets import Sealer
from confide.cas.tcb_floor import (
    EVENT_ALTERED,
    EVENT_BOUND,
    EVENT_FROM_LEDGER,
    EVENT_RAISED,
    FLOOR_FILE,
    LEDGER_META,
    TcbEvaluationFloor,
    floor_mac,
    ledger_floor,
    rebind_floor_file,
)
from confide.errors import CollateralOutdatedError
from confide.verify.result import Platform, TcbEvaluation, VerifiedEvidence

K0, K1 = Sealer(bytes(32)), Sealer(bytes(range(32)))
FMSPC = "b0c06f000000"
TDX = "tdx:" + FMSPC


def evidence(tcb_info: int, qe_identity: int, fmspc: str = FMSPC) -> VerifiedEvidence:
    return VerifiedEvidence(
        Platform.TDX, {"fmspc": fmspc}, 0.0, "00" * 32, tcb_evaluation=TcbEvaluation(tcb_info, qe_identity)
    )


def authenticated(path: Path, sealer: Sealer = K0, recorded: object = None) -> TcbEvaluationFloor:
    floor = TcbEvaluationFloor(path)
    floor.authenticate(sealer, recorded)  # type: ignore[arg-type]
    return floor


def raised_file(path: Path, tcb_info: int = 18, qe_identity: int = 17) -> None:
    authenticated(path).judge(evidence(tcb_info, qe_identity), raise_floor=True)


def edit(path: Path, **members: object) -> None:
    doc = json.loads(path.read_bytes())
    doc.update(members)
    path.write_text(json.dumps(doc))


def verifies(path: Path, sealer: Sealer) -> bool:
    """Whether the file on disk carries a valid MAC under ``sealer``'s key (computed here)."""
    doc = json.loads(path.read_bytes())
    kid = sealer.sealing_key_id
    mac = floor_mac(sealer, kid, doc["tcb_info"], doc["qe_identity"])
    return doc["v"] == 2 and doc.get("macs", {}).get(kid) == mac


# --- units: the file and what authenticate decides ---------------------------------------------------


def test_an_intact_file_authenticates_and_a_restart_keeps_its_floor(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    raised_file(path)
    doc = json.loads(path.read_bytes())
    assert doc["v"] == 2 and doc["macs"] == {
        K0.sealing_key_id: floor_mac(K0, K0.sealing_key_id, {TDX: 18}, {"tdx": 17})
    }
    recorded = ({TDX: 18}, {"tdx": 17})
    floor = TcbEvaluationFloor(path)
    assert floor.authenticate(K0, recorded) is None
    assert floor.floors("tdx", FMSPC) == (18, 17)


def test_a_file_edited_down_is_restored_from_the_ledger_logged_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FLOOR_FILE
    raised_file(path)
    edit(path, tcb_info={TDX: 10})  # the MAC kept: it no longer matches
    floor = TcbEvaluationFloor(path)
    assert floor.floors("tdx", FMSPC) == (10, 17)  # unchecked until the master key is open
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        event = floor.authenticate(K0, ({TDX: 18}, {"tdx": 17}))
    assert event is not None and event[0] == EVENT_ALTERED
    assert event[1] == {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}, "check": "mac",
                        "restored_from_ledger": True}  # fmt: skip
    assert floor.floors("tdx", FMSPC) == (18, 17)
    with pytest.raises(CollateralOutdatedError):
        floor.judge(evidence(17, 17), raise_floor=True)
    warned = [json.loads(r.getMessage()) for r in caplog.records if EVENT_ALTERED in r.getMessage()]
    assert warned and warned[0]["check"] == "mac" and "restore" in warned[0]["action"]
    assert verifies(path, K0)  # written back MAC'd: the next start does not report it again
    assert TcbEvaluationFloor(path).floors("tdx", FMSPC) == (18, 17)


@pytest.mark.parametrize(
    ("members", "check"),
    [
        ({"macs": {}}, "mac"),  # the MAC removed
        ({"macs": {K1.sealing_key_id: "ab" * 32}}, "mac"),  # under a key the CAS does not hold
        ({"macs": {K0.sealing_key_id: "ab" * 32}}, "mac"),  # forged
    ],
)
def test_a_missing_or_foreign_mac_never_lowers_the_floor(
    tmp_path: Path, members: dict[str, object], check: str
) -> None:
    path = tmp_path / FLOOR_FILE
    raised_file(path)
    path.write_text(json.dumps({**json.loads(path.read_bytes()), "tcb_info": {TDX: 1}, **members}))
    floor = TcbEvaluationFloor(path)
    event = floor.authenticate(K0, ({TDX: 18}, {"tdx": 17}))
    assert event is not None and event[0] == EVENT_ALTERED and event[1]["check"] == check
    assert floor.floors("tdx", FMSPC) == (18, 17)


def test_without_a_ledger_floor_an_altered_file_is_never_lowered(tmp_path: Path) -> None:
    """Nothing proves the old numbers: the file's are kept (an edit up too: fail closed)."""
    path = tmp_path / FLOOR_FILE
    raised_file(path)
    edit(path, tcb_info={TDX: 30})
    floor = TcbEvaluationFloor(path)
    event = floor.authenticate(K0, None)
    assert event is not None and event[1]["check"] == "mac" and event[1]["restored_from_ledger"] is False
    assert floor.floors("tdx", FMSPC) == (30, 17)


def test_a_backup_with_a_valid_mac_behind_the_ledger_is_restored(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    raised_file(path, 16, 16)
    backup = path.read_bytes()
    authenticated(path).judge(evidence(18, 17), raise_floor=True)
    path.write_bytes(backup)  # an older file, MAC'd by this CAS
    floor = TcbEvaluationFloor(path)
    assert floor.authenticate(K0, ({TDX: 18}, {"tdx": 17})) is None  # the ledger holds these already
    assert floor.floors("tdx", FMSPC) == (18, 17)
    assert json.loads(path.read_bytes())["tcb_info"] == {TDX: 18} and verifies(path, K0)


def test_a_deleted_file_or_a_new_replica_takes_the_ledgers_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FLOOR_FILE
    floor = TcbEvaluationFloor(path)
    with caplog.at_level(logging.INFO, logger="confide.cas"):
        assert floor.authenticate(K0, ({TDX: 18}, {"tdx": 17})) is None
    assert floor.floors("tdx", FMSPC) == (18, 17) and verifies(path, K0)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if EVENT_FROM_LEDGER in r.getMessage()]
    assert line["check"] == "missing"
    assert TcbEvaluationFloor(tmp_path / "other").authenticate(K0, None) is None  # a fresh CAS


def test_a_file_of_before_the_mac_is_bound_once(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    path.write_text(json.dumps({"v": 1, "tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}}))
    floor = TcbEvaluationFloor(path)
    assert floor.authenticate(K0, None) == (
        EVENT_BOUND,
        {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}, "restored_from_ledger": False},
    )
    assert verifies(path, K0) and not verifies(path, K1)
    assert TcbEvaluationFloor(path).authenticate(K0, ({TDX: 18}, {"tdx": 17})) is None  # once


def test_a_mac_stripped_to_pass_as_an_old_file_lowers_nothing_the_ledger_holds(tmp_path: Path) -> None:
    """Also a replica upgraded after another on a shared database (the ledger's floor is there)."""
    path = tmp_path / FLOOR_FILE
    path.write_text(json.dumps({"v": 1, "tcb_info": {TDX: 12}, "qe_identity": {"tdx": 17}}))
    floor = TcbEvaluationFloor(path)
    event = floor.authenticate(K0, ({TDX: 18}, {"tdx": 16}))
    assert event == (
        EVENT_BOUND,
        {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}, "restored_from_ledger": True},
    )
    assert floor.floors("tdx", FMSPC) == (18, 17) and verifies(path, K0)


def test_a_floor_ahead_of_the_ledger_is_recorded_at_the_start(tmp_path: Path) -> None:
    """A raise whose ledger entry was lost (a crash before its thread wrote it)."""
    path = tmp_path / FLOOR_FILE
    raised_file(path)
    assert TcbEvaluationFloor(path).authenticate(K0, ({TDX: 16}, {"tdx": 17})) == (
        EVENT_RAISED,
        {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}},
    )


def test_a_raise_before_the_master_key_is_open_is_written_once_it_is(tmp_path: Path) -> None:
    """A joining CAS verifies its peer before it has the master key: nothing to MAC under yet."""
    path = tmp_path / FLOOR_FILE
    floor = TcbEvaluationFloor(path)
    floor.judge(evidence(18, 17), raise_floor=True)
    assert floor.floors("tdx", FMSPC) == (18, 17) and not path.exists()
    assert floor.authenticate(K0, None) == (EVENT_RAISED, {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}})
    assert verifies(path, K0) and json.loads(path.read_bytes())["tcb_info"] == {TDX: 18}


def test_rebind_for_an_offline_rotation_verifies_under_either_key(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    assert rebind_floor_file(tmp_path, bytes(32), bytes(range(32))) is None
    raised_file(path)
    assert rebind_floor_file(tmp_path, bytes(32), bytes(range(32))) == "re-authenticated"
    assert verifies(path, K0) and verifies(path, K1)
    assert not verifies(path, Sealer(bytes([7]) * 32))
    edit(path, tcb_info={TDX: 1})
    assert rebind_floor_file(tmp_path, bytes(32), bytes(range(32))) == "unverified"
    assert not verifies(path, K1)  # left as it is: the next start judges it


# --- the in-process CAS ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None  # type: ignore[no-any-return]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "cas"


def floor_of(cas: Cas) -> TcbEvaluationFloor:
    floor = cas.verifier.tcb_floor  # type: ignore[attr-defined]
    assert isinstance(floor, TcbEvaluationFloor)
    return floor


def events(cas: Cas, type_: str) -> list[dict[str, object]]:
    with cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def wait_for(cas: Cas, type_: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    while len(found := events(cas, type_)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


@pytest.fixture
def started(data_dir: Path, db_url: str | None) -> Iterator[Cas]:
    cas = InProcessCas.start(data_dir, "", db_url=db_url).cas
    try:
        yield cas
    finally:
        cas.db.dispose()


def restart(data_dir: Path, db_url: str | None) -> Cas:
    return InProcessCas.start(data_dir, "", db_url=db_url).cas


def test_a_raise_is_a_ledger_entry_and_an_edit_down_is_undone_at_the_next_start(
    started: Cas, data_dir: Path, db_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with started.db.read() as conn:  # the start scanned the events once and kept the (empty) result
        (kept,) = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (LEDGER_META,)).fetchone()
    assert json.loads(kept) == {"tcb_info": {}, "qe_identity": {}}
    floor_of(started).judge(evidence(17, 17), raise_floor=True)
    floor_of(started).judge(evidence(18, 17), raise_floor=True)
    raised = wait_for(started, EVENT_RAISED, 2)
    assert raised[-1] == {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}}
    started.db.dispose()
    edit(data_dir / FLOOR_FILE, tcb_info={TDX: 12})
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        again = restart(data_dir, db_url)
    try:
        assert floor_of(again).floors("tdx", FMSPC) == (18, 17)
        (altered,) = events(again, EVENT_ALTERED)
        assert altered["check"] == "mac" and altered["restored_from_ledger"] is True
        assert altered["tcb_info"] == {TDX: 18}
        assert any(EVENT_ALTERED in r.getMessage() for r in caplog.records)
        with pytest.raises(CollateralOutdatedError):
            floor_of(again).judge(evidence(12, 17), raise_floor=False)
    finally:
        again.db.dispose()
    third = restart(data_dir, db_url)  # written back MAC'd: reported once
    try:
        assert len(events(third, EVENT_ALTERED)) == 1 and floor_of(third).floors("tdx", FMSPC) == (18, 17)
    finally:
        third.db.dispose()


def test_a_file_of_an_earlier_version_is_bound_at_the_first_start(data_dir: Path, db_url: str | None) -> None:
    data_dir.mkdir()
    (data_dir / FLOOR_FILE).write_text(
        json.dumps({"v": 1, "tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}})
    )
    cas = restart(data_dir, db_url)
    try:
        (bound,) = events(cas, EVENT_BOUND)
        assert bound == {"tcb_info": {TDX: 18}, "qe_identity": {"tdx": 17}, "restored_from_ledger": False}
        assert verifies(data_dir / FLOOR_FILE, Sealer(load_master_key(data_dir, None)))
    finally:
        cas.db.dispose()


def test_offline_rotation_re_macs_the_file(started: Cas, data_dir: Path, db_url: str | None) -> None:
    floor_of(started).judge(evidence(18, 17), raise_floor=True)
    wait_for(started, EVENT_RAISED, 1)
    started.db.dispose()
    old = Sealer(load_master_key(data_dir, None))
    steps: dict[str, tuple[bool, bool]] = {}

    def step(name: str) -> None:  # at each step, the file verifies under the key a crash would keep
        steps[name] = (verifies(data_dir / FLOOR_FILE, old), verifies(data_dir / FLOOR_FILE, new))

    db = Database(db_url or f"sqlite:///{data_dir / 'cas.db'}")
    new = Sealer(bytes(32))  # replaced once the rotation wrote its key
    try:

        def spy(name: str) -> None:
            nonlocal new
            if name == "key-written":
                new = Sealer(load_master_key_pending(data_dir))
            step(name)

        result = rotate_master_key(data_dir, db, seal=None, to_seal=None, events=LedgerEventSink(), step=spy)
    finally:
        db.dispose()
    assert steps["files-written"] == (True, True) and steps["committed"] == (True, True)
    assert Sealer(load_master_key(data_dir, None)).sealing_key_id == result.new_key_id
    again = restart(data_dir, db_url)
    try:
        assert not events(again, EVENT_ALTERED) and floor_of(again).floors("tdx", FMSPC) == (18, 17)
        (rotated,) = events(again, "master-key-rotated")
        assert rotated["tcb_floor"] == "re-authenticated"
    finally:
        again.db.dispose()
    assert not verifies(data_dir / FLOOR_FILE, old)  # the start left MACs of the held key only


def load_master_key_pending(data_dir: Path) -> bytes:
    return (data_dir / (PLAIN_NAME + PENDING_SUFFIX)).read_bytes()  # --seal file: the key in plain


def test_online_rotation_re_macs_the_file_before_the_database_names_the_new_key(
    started: Cas, data_dir: Path
) -> None:
    floor = floor_of(started)
    floor.judge(evidence(18, 17), raise_floor=True)
    old = Sealer(started.sealer.export_key(started.sealer.sealing_key_id))
    seen: dict[str, bool] = {}

    def step(name: str) -> None:
        if name == "begun":  # the database names the new key as pending: a crash keeps either
            new = Sealer(started.sealer.export_key(started.sealer.sealing_key_id))
            seen["old"], seen["new"] = (
                verifies(data_dir / FLOOR_FILE, old),
                verifies(data_dir / FLOOR_FILE, new),
            )

    rotation = OnlineRotation(
        data_dir, started.db, started.sealer, None, started.events, None, step=step, floor=floor
    )
    status = rotation.run()
    assert status.state == "done" and seen == {"old": True, "new": True}
    new = Sealer(started.sealer.export_key(status.new_key_id or ""))
    assert verifies(data_dir / FLOOR_FILE, new)
    floor.judge(evidence(19, 17), raise_floor=True)  # raised after the rotation: MAC'd under it
    assert verifies(data_dir / FLOOR_FILE, new)
    assert wait_for(started, EVENT_RAISED, 2)[-1]["tcb_info"] == {TDX: 19}  # (its entry's thread done)


def test_replicas_on_one_database_take_each_others_floor_at_start(tmp_path: Path, postgres: object) -> None:
    """A replica with its own data directory (the same master key) on the shared PostgreSQL
    database: at its start it takes the floor another replica raised (from the ledger)."""
    db_url = postgres.new_database()  # type: ignore[attr-defined]
    first = InProcessCas.start(tmp_path / "a", "", db_url=db_url).cas
    try:
        floor_of(first).judge(evidence(18, 17), raise_floor=True)
        wait_for(first, EVENT_RAISED, 1)
        (tmp_path / "b").mkdir(mode=0o700)
        (tmp_path / "b" / PLAIN_NAME).write_bytes((tmp_path / "a" / PLAIN_NAME).read_bytes())
        second = InProcessCas.start(tmp_path / "b", "", db_url=db_url).cas
        try:
            assert floor_of(second).floors("tdx", FMSPC) == (18, 17)
            assert not events(second, EVENT_ALTERED)
            with pytest.raises(CollateralOutdatedError):
                floor_of(second).judge(evidence(17, 17), raise_floor=True)
            # The first raises another platform; the second's later raise is recorded merged
            # with it (each entry is the ledger's whole floor), so a third replica gets both.
            floor_of(first).judge(evidence(20, 17, fmspc="00806f050000"), raise_floor=True)
            wait_for(first, EVENT_RAISED, 2)
            floor_of(second).judge(evidence(19, 17), raise_floor=True)
            latest = wait_for(second, EVENT_RAISED, 3)[-1]
            assert latest["tcb_info"] == {TDX: 19, "tdx:00806f050000": 20}
            with second.db.read() as conn:
                assert ledger_floor(conn) == ({TDX: 19, "tdx:00806f050000": 20}, {"tdx": 17})
            with second.db.write() as conn:  # without the meta row: the entries themselves
                raw_execute(conn, "DELETE FROM meta WHERE key = ?", (LEDGER_META,))
            with second.db.read() as conn:
                assert ledger_floor(conn) == ({TDX: 19, "tdx:00806f050000": 20}, {"tdx": 17})
        finally:
            second.db.dispose()
    finally:
        first.db.dispose()

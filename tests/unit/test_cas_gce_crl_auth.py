"""The rollback memory of ``cas serve --gce-crl fetch`` (``DATA_DIR/gce-crl-newest.json``)
authenticated under the master key and recorded in the ledger (confide.cas.gce_crl,
confide.cas.state_auth; docs/gce-tpm.md "Rollback memory"), as the DCAP TCB evaluation floor is:
a file edited down, with a missing or foreign MAC, deleted, replayed from a backup, or of the
version before the MAC is never a lower memory; the CAS logs it, records it in the ledger and
keeps the merge of the file's and the ledger's; master-key rotations (offline and online) leave
a file that verifies. Units, then the real in-process CAS (``server.prepare``) on SQLite and
PostgreSQL, where an older CRL of Google's (signed, still current) is what a lowered memory
would let through."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from test_cas_gce_crl_fetch import AT, CHAIN, GOOGLE, INT_URL, Points, _der
from test_cas_tcb_floor_auth import events, wait_for

from confide import errors
from confide.cas.core import Cas
from confide.cas.db import Database, raw_execute
from confide.cas.gce_crl import (
    CACHE_DIR_NAME,
    LEDGER_META,
    NEWEST_ENTRIES,
    STATE_INFO,
    STATE_NAME,
    GceCrlFetcher,
    HttpCrlSource,
    Newest,
    RollbackMemory,
    crl_scope,
)
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import rotate_master_key
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.cas.state_auth import ledger_state, rebind_state_file

K0, K1 = Sealer(bytes(32)), Sealer(bytes(range(32)))
RAISED, ALTERED, BOUND = RollbackMemory.EVENT_RAISED, RollbackMemory.EVENT_ALTERED, RollbackMemory.EVENT_BOUND
NEWER = GOOGLE.crl(this_update=AT - timedelta(days=1), next_update=AT + timedelta(days=1), number=7)
OLDER = GOOGLE.crl(this_update=AT - timedelta(days=2), next_update=AT + timedelta(days=30), number=6)
SCOPE = crl_scope(NEWER, GOOGLE.intermediate)


def verifies(path: Path, sealer: Sealer) -> bool:
    """Whether the file carries a valid MAC under ``sealer``'s key, computed here: HMAC-SHA256
    under HKDF-SHA256(master key, info STATE_INFO) of the info, a zero byte and the JSON list of
    the key id and the ``crls`` member."""
    doc = json.loads(path.read_bytes())
    kid = sealer.sealing_key_id
    message = json.dumps([kid, doc["crls"]], sort_keys=True, separators=(",", ":")).encode()
    mac = hmac.new(sealer.derive_key(STATE_INFO), STATE_INFO + b"\x00" + message, "sha256").hexdigest()
    return doc["v"] == 2 and hmac.compare_digest(doc.get("macs", {}).get(kid, ""), mac)


def memory_with(path: Path, *crls: object, sealer: Sealer = K0) -> RollbackMemory:
    memory = RollbackMemory(path)
    memory.authenticate(sealer, None)
    for crl in crls:
        memory.admit(crl, GOOGLE.intermediate, "t")  # type: ignore[arg-type]
    return memory


def state_of(path: Path) -> dict[str, Newest]:
    state = RollbackMemory.from_members(json.loads(path.read_bytes()))
    assert state is not None
    return state


def edit(path: Path, **members: object) -> None:
    doc = json.loads(path.read_bytes())
    doc.update(members)
    path.write_text(json.dumps(doc))


def lowered(path: Path) -> None:
    """The intermediate's entry edited down to OLDER's (the MAC kept: it no longer matches)."""
    doc = json.loads(path.read_bytes())
    doc["crls"][SCOPE] = {
        "this_update": (AT - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "crl_number": "6",
    }
    path.write_text(json.dumps(doc))


# --- units: the file and what authenticate decides ---------------------------------------------------


def test_a_change_is_written_macd_recorded_and_verifies_at_a_restart(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    memory = RollbackMemory(path)
    assert memory.authenticate(K0, None) is None and not path.exists()
    raised: list[dict[str, object]] = []
    memory.on_raise = raised.append
    memory.admit(NEWER, GOOGLE.intermediate, "t")
    memory.admit(NEWER, GOOGLE.intermediate, "t")  # no change: neither written nor recorded
    assert verifies(path, K0) and not verifies(path, K1)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert raised == [{"issuer": GOOGLE.intermediate.subject.rfc4514_string(), "scope": SCOPE}]
    assert memory.payload() == {
        "crls": {
            SCOPE: {"this_update": (AT - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "crl_number": "7"}
        }
    }
    again = RollbackMemory(path)
    assert again.authenticate(K0, state_of(path)) is None
    with pytest.raises(errors.CollateralError, match="older than that of a CRL of this issuer"):
        again.admit(OLDER, GOOGLE.intermediate, "t")


@pytest.mark.parametrize("damage", ["edited", "mac-removed", "forged", "foreign-key"])
def test_an_altered_file_is_merged_with_the_ledger_logged_and_recorded(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STATE_NAME
    memory_with(path, NEWER)
    ledger = state_of(path)
    lowered(path)
    edit(path, **{
        "edited": {},
        "mac-removed": {"macs": {}},
        "forged": {"macs": {K0.sealing_key_id: "ab" * 32}},
        "foreign-key": {"macs": {K1.sealing_key_id: "ab" * 32}},
    }[damage])  # fmt: skip
    memory = RollbackMemory(path)
    assert memory.get(SCOPE) == Newest(AT - timedelta(days=2), 6)  # unchecked until the key is open
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        event = memory.authenticate(K0, ledger)
    assert event == (
        ALTERED,
        {**RollbackMemory.members(ledger), "check": "mac", "restored_from_ledger": True},
    )
    assert memory.get(SCOPE) == ledger[SCOPE]
    with pytest.raises(errors.CollateralError, match="a rollback, refused"):
        memory.admit(OLDER, GOOGLE.intermediate, "t")
    warned = [json.loads(r.getMessage()) for r in caplog.records if ALTERED in r.getMessage()]
    assert warned and warned[0]["check"] == "mac" and "restore" in warned[0]["action"]
    assert verifies(path, K0) and state_of(path) == ledger  # written back MAC'd: reported once
    assert RollbackMemory(path).authenticate(K0, ledger) is None


def test_without_a_ledger_an_altered_file_is_kept_as_found(tmp_path: Path) -> None:
    """Nothing proves the old memory: the file's is kept (an edit up too: fail closed), MAC'd."""
    path = tmp_path / STATE_NAME
    memory_with(path, OLDER)
    edit(path, crls={SCOPE: {"this_update": "2030-01-01T00:00:00Z", "crl_number": "ff"}})
    memory = RollbackMemory(path)
    event = memory.authenticate(K0, None)
    assert event is not None and event[0] == ALTERED and event[1]["restored_from_ledger"] is False
    assert memory.get(SCOPE) == Newest(datetime(2030, 1, 1, tzinfo=UTC), 0xFF) and verifies(path, K0)


def test_a_deleted_file_takes_the_ledgers_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / STATE_NAME
    memory_with(path, NEWER)
    ledger = state_of(path)
    path.unlink()
    memory = RollbackMemory(path)
    with caplog.at_level(logging.INFO, logger="confide.cas"):
        assert memory.authenticate(K0, ledger) is None  # the ledger holds it: no entry
    assert any(RollbackMemory.EVENT_FROM_LEDGER in r.getMessage() for r in caplog.records)
    assert verifies(path, K0) and state_of(path) == ledger
    with pytest.raises(errors.CollateralError, match="a rollback, refused"):
        memory.admit(OLDER, GOOGLE.intermediate, "t")


def test_a_file_behind_the_ledger_with_a_valid_mac_is_raised_to_it(tmp_path: Path) -> None:
    """A backup of the file (its MAC valid, its CRLs older) restored: the ledger's are taken."""
    path = tmp_path / STATE_NAME
    memory_with(path, OLDER)
    backup = path.read_bytes()
    memory_with(path, NEWER)
    ledger = state_of(path)
    path.write_bytes(backup)
    memory = RollbackMemory(path)
    assert memory.authenticate(K0, ledger) is None and memory.get(SCOPE) == ledger[SCOPE]
    assert state_of(path) == ledger and verifies(path, K0)


def test_a_file_of_version_1_is_bound_as_found(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    memory_with(path, OLDER)
    doc = json.loads(path.read_bytes())
    path.write_text(json.dumps({"v": 1, "crls": doc["crls"]}))
    memory = RollbackMemory(path)
    assert memory.authenticate(K0, None) == (BOUND, {"crls": doc["crls"], "restored_from_ledger": False})
    assert verifies(path, K0)
    assert RollbackMemory(path).authenticate(K0, state_of(path)) is None  # once


def test_a_verified_file_ahead_of_the_ledger_is_recorded(tmp_path: Path) -> None:
    """A change whose ledger entry a crash lost: recorded at the next start."""
    path = tmp_path / STATE_NAME
    memory_with(path, OLDER)
    older = state_of(path)
    memory_with(path, NEWER)
    event = RollbackMemory(path).authenticate(K0, older)
    assert event == (RAISED, RollbackMemory.members(state_of(path)))


def test_a_change_before_the_master_key_is_open_is_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    memory = RollbackMemory(path)
    memory.admit(NEWER, GOOGLE.intermediate, "t")
    assert not path.exists() and memory.get(SCOPE) is not None
    assert memory.authenticate(K0, None) == (RAISED, memory.payload())
    assert verifies(path, K0)


def test_rebind_for_an_offline_rotation_verifies_under_either_key(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    assert rebind_state_file(RollbackMemory, path, bytes(32), bytes(range(32))) is None
    memory_with(path, NEWER)
    assert rebind_state_file(RollbackMemory, path, bytes(32), bytes(range(32))) == "re-authenticated"
    assert verifies(path, K0) and verifies(path, K1)
    lowered(path)
    assert rebind_state_file(RollbackMemory, path, bytes(32), bytes(range(32))) == "unverified"
    assert not verifies(path, K1)  # left as it is: the next start judges it


def test_past_the_bound_the_scopes_whose_crl_is_oldest_are_forgotten() -> None:
    """The file's memory and the ledger's merge keep the same scopes, so a full memory is not
    always behind the ledger."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    full = {format(i, "064x"): Newest(base + timedelta(minutes=i), i) for i in range(NEWEST_ENTRIES)}
    older = {format(NEWEST_ENTRIES, "064x"): Newest(base - timedelta(days=1), None)}
    newer = {format(NEWEST_ENTRIES, "064x"): Newest(base + timedelta(days=1), None)}
    assert RollbackMemory.merge(full, older) == full and not RollbackMemory.below(full, older)
    merged = RollbackMemory.merge(full, newer)
    assert (
        len(merged) == NEWEST_ENTRIES
        and format(0, "064x") not in merged
        and RollbackMemory.below(full, newer)
    )
    # per scope: the later thisUpdate and the higher number, whichever holds them
    a = {"s": Newest(base, 9)}
    b = {"s": Newest(base + timedelta(hours=1), 3)}
    assert RollbackMemory.merge(a, b) == {"s": Newest(base + timedelta(hours=1), 9)}
    assert RollbackMemory.below(a, b) and RollbackMemory.below(b, a)


# --- the in-process CAS ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None  # type: ignore[no-any-return]


def start(data_dir: Path, db_url: str | None = None) -> Cas:
    cas, *_ = prepare(data_dir, host="127.0.0.1", dev=True, db_url=db_url, collateral=None, gce_crl="fetch")
    return cas


def fetcher_of(cas: Cas) -> GceCrlFetcher:
    fetcher = cas.verifier.gce_crl  # type: ignore[attr-defined]
    assert isinstance(fetcher, GceCrlFetcher)
    return fetcher


def take(cas: Cas, intermediate: object, at: datetime = AT) -> None:
    """The CRLs at the points (the intermediate's given) taken by the CAS's fetcher."""
    points = Points(at)
    points.answers[INT_URL] = (200, _der(intermediate))  # type: ignore[arg-type]
    fetcher = fetcher_of(cas)
    fetcher.source = HttpCrlSource(transport=httpx2.MockTransport(points.handler))
    fetcher.crls(CHAIN, at)


def restarted_takes_older(data_dir: Path, db_url: str | None) -> Cas:
    """A restart whose cache was emptied, then the points answer the older CRL (signed by the
    issuer, still current): a rollback to before a revocation, refused."""
    for path in (data_dir / CACHE_DIR_NAME).glob("*.crl"):
        path.unlink()
    cas = start(data_dir, db_url)
    try:
        with pytest.raises(errors.CollateralError, match="a rollback, refused"):
            take(cas, OLDER, AT + timedelta(hours=1))
    except BaseException:
        cas.db.dispose()
        raise
    return cas


def take_newer(data_dir: Path, db_url: str | None) -> None:
    """A CAS that took NEWER (and the root's CRL), its ledger entries written, stopped."""
    cas = start(data_dir, db_url)
    try:
        take(cas, NEWER)
        entries = wait_for(cas, RAISED, 2)  # the intermediate's and the root's CRL
        assert (
            len(entries) == 2
            and entries[-1]["crls"] == json.loads((data_dir / STATE_NAME).read_bytes())["crls"]
        )
        assert {e["issuer"] for e in entries} == {c.subject.rfc4514_string() for c in CHAIN[1:]}
        with cas.db.read() as conn:
            assert ledger_state(conn, RollbackMemory) == state_of(data_dir / STATE_NAME)
    finally:
        cas.db.dispose()


@pytest.fixture
def taken(tmp_path: Path, db_url: str | None) -> tuple[Path, str | None]:
    take_newer(tmp_path / "cas", db_url)
    return tmp_path / "cas", db_url


def test_an_edited_file_is_undone_at_the_next_start(
    taken: tuple[Path, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, db_url = taken
    lowered(data_dir / STATE_NAME)
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        cas = restarted_takes_older(data_dir, db_url)
    try:
        (altered,) = events(cas, ALTERED)
        assert altered["check"] == "mac" and altered["restored_from_ledger"] is True
        assert any(ALTERED in r.getMessage() for r in caplog.records)
    finally:
        cas.db.dispose()
    again = restarted_takes_older(data_dir, db_url)  # written back MAC'd: reported once
    try:
        assert len(events(again, ALTERED)) == 1
    finally:
        again.db.dispose()


def test_a_deleted_file_is_restored_from_the_ledger(taken: tuple[Path, str | None]) -> None:
    """No longer trust on first use once the CAS took a CRL: the ledger remembers it."""
    data_dir, db_url = taken
    (data_dir / STATE_NAME).unlink()
    cas = restarted_takes_older(data_dir, db_url)
    try:
        assert not events(cas, ALTERED) and verifies(
            data_dir / STATE_NAME, Sealer(load_master_key(data_dir, None))
        )
    finally:
        cas.db.dispose()


def test_a_file_restored_from_a_backup_is_caught_by_the_ledger(tmp_path: Path) -> None:
    """The file of before NEWER (its MAC valid) put back: the ledger's newer memory wins."""
    data_dir = tmp_path / "cas"
    cas = start(data_dir)
    try:
        take(cas, OLDER, AT - timedelta(hours=12))
        wait_for(cas, RAISED, 2)
    finally:
        cas.db.dispose()
    backup = (data_dir / STATE_NAME).read_bytes()
    for path in (data_dir / CACHE_DIR_NAME).glob("*.crl"):
        path.unlink()
    cas = start(data_dir)
    try:
        take(cas, NEWER)  # and the root's newer CRL
        wait_for(cas, RAISED, 4)
    finally:
        cas.db.dispose()
    (data_dir / STATE_NAME).write_bytes(backup)
    restarted_takes_older(data_dir, None).db.dispose()


def test_offline_rotation_keeps_the_memory_verifying(tmp_path: Path) -> None:
    data_dir = tmp_path / "cas"
    take_newer(data_dir, None)
    db = Database(f"sqlite:///{data_dir / 'cas.db'}")
    try:
        result = rotate_master_key(data_dir, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    new = Sealer(load_master_key(data_dir, None))
    assert new.sealing_key_id == result.new_key_id and verifies(data_dir / STATE_NAME, new)
    cas = restarted_takes_older(data_dir, None)
    try:
        assert not events(cas, ALTERED)
        (rotated,) = events(cas, "master-key-rotated")
        assert rotated["gce_crl_newest"] == "re-authenticated"
    finally:
        cas.db.dispose()


def test_online_rotation_keeps_the_memory_verifying(tmp_path: Path) -> None:
    data_dir = tmp_path / "cas"
    cas = start(data_dir)
    try:
        take(cas, NEWER)
        old = Sealer(cas.sealer.export_key(cas.sealer.sealing_key_id))
        seen: dict[str, bool] = {}

        def step(name: str) -> None:
            if name == "begun":  # the database names the new key as pending: a crash keeps either
                new = Sealer(cas.sealer.export_key(cas.sealer.sealing_key_id))
                seen["old"] = verifies(data_dir / STATE_NAME, old)
                seen["new"] = verifies(data_dir / STATE_NAME, new)

        memory = fetcher_of(cas).newest
        status = OnlineRotation(
            data_dir, cas.db, cas.sealer, None, cas.events, None, step=step, rollback_memory=memory
        ).run()
        assert status.state == "done" and seen == {"old": True, "new": True}
        assert verifies(data_dir / STATE_NAME, Sealer(cas.sealer.export_key(status.new_key_id or "")))
        wait_for(cas, RAISED, 2)
    finally:
        cas.db.dispose()
    again = restarted_takes_older(data_dir, None)
    try:
        assert not events(again, ALTERED)
        with again.db.read() as conn:
            (row,) = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (LEDGER_META,)).fetchone()
        assert RollbackMemory.from_members(json.loads(row)) == state_of(data_dir / STATE_NAME)
    finally:
        again.db.dispose()

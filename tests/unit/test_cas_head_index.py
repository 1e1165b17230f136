"""A policy's current version anchored in the ledger's entries (confide.cas.head_index; docs/cas.md
"What a policy's current version rests on"): an operator who rolls one policy's head and version
rows back to a genuine earlier state and deletes or edits the later ``policy-updated`` events rows
is refused by a fresh process and by a running one (at once on a cache miss, after its next scan
otherwise); an older genuine snapshot written back gives the same answer; an entry whose bytes
do not hash to its stored leaf, an edited snapshot and a snapshot larger than the ledger are
refused; replicas on one database see each other's updates; a schema-16 database is upgraded by
one full scan. The real in-process CAS on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from asgi_call import call
from cas_inproc import MEASUREMENT, DbEnv, InProcessCas, sim_policy, submission
from confide.cas import core
from confide.cas.app import create_app
from confide.cas.core import READ_TYPE, Cas, EventsAltered, sign_document
from confide.cas.db import SCHEMA_VERSION, Database
from confide.cas.head_index import HeadAnchorAltered, HeadIndexRefresher, LedgerEntriesAltered
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.policy_auth import PolicyRowsAltered
from confide.identity import Identity

OTHER = "cd" * 48
THIRD = "ef" * 48
HEAD_COLUMNS = "hash, revision, creator, key_id, mac"
VERSION_COLUMNS = "state, key_id, mac"
ROLLED_BACK = r"not the one its latest ledger entry names\) of policy 'app'"


def policy(measurement: str = MEASUREMENT, predecessor: str | None = None, name: str = "app") -> str:
    return sim_policy(name, measurement=measurement, predecessor=predecessor)


@dataclass
class Env(DbEnv):
    def replica(self) -> Cas:
        """A second CAS on the same database (another replica: its own caches and index)."""
        return Cas(
            Database(self.cas.db.url), self.cas.sealer, self.cas.verifier, events=LedgerEventSink(),
            tls_spki_sha256=self.cas.tls_spki_sha256,
        )  # fmt: skip

    def apply(self, text: str, cas: Cas | None = None) -> str:
        return str((cas or self.cas).apply(submission(cas or self.cas, text, self.owner)).hash)

    def attest(self, measurement: str = MEASUREMENT, cas: Cas | None = None) -> dict[str, Any]:
        request, _key = self.ipc.request(policy="app", measurement=measurement)
        return (cas or self.cas).attest(request)

    def show(self, cas: Cas | None = None) -> dict[str, Any]:
        return (cas or self.cas).show(self.read("show", cas))

    def show_other(self) -> None:
        body = {"type": READ_TYPE, "name": "other", "nonce": self.cas.new_read_nonce("other", "show"),
                "cas": self.cas.tls_spki_sha256, "route": "show"}  # fmt: skip
        assert (
            self.cas.show(sign_document(body, self.owner.sign, self.owner.public.public_base64))["name"]
            == "other"
        )

    def read(self, route: str, cas: Cas | None = None) -> dict[str, Any]:
        c = cas or self.cas
        body = {"type": READ_TYPE, "name": "app", "nonce": c.new_read_nonce("app", route),
                "cas": c.tls_spki_sha256, "route": route}  # fmt: skip
        return sign_document(body, self.owner.sign, self.owner.public.public_base64)

    def rows(self, digest: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        [head] = self.sql(f"SELECT {HEAD_COLUMNS} FROM policy_heads WHERE name = 'app'")
        [version] = self.sql(
            f"SELECT {VERSION_COLUMNS} FROM policies WHERE name = 'app' AND hash = ?", (digest,)
        )
        return head, version

    def set_rows(self, digest: str, rows: tuple[tuple[Any, ...], tuple[Any, ...]]) -> None:
        head, version = rows
        self.sql("UPDATE policy_heads SET hash = ?, revision = ?, creator = ?, key_id = ?, mac = ? "
                 "WHERE name = 'app'", (*head, ))  # fmt: skip
        self.sql("UPDATE policies SET state = ?, key_id = ?, mac = ? WHERE name = 'app' AND hash = ?",
                 (*version, digest))  # fmt: skip

    def anchor(self) -> tuple[Any, ...] | None:
        rows = self.sql(
            "SELECT size, heads, updated_at, key_id, mac, board, secrets FROM policy_head_anchor WHERE id = 1"
        )
        return rows[0] if rows else None

    def set_anchor(self, row: tuple[Any, ...]) -> None:
        self.sql("DELETE FROM policy_head_anchor")
        self.sql("INSERT INTO policy_head_anchor (id, size, heads, updated_at, key_id, mac, board, secrets) "
                 "VALUES (1, ?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip

    def store(self, cas: Cas | None = None) -> None:
        c = cas or self.cas
        with c.db.read() as conn:
            c.policy_auth.index.refresh(conn)
        with c.db.write() as conn:
            assert c.policy_auth.index.store(conn, 0.0)

    def scan(self, cas: Cas | None = None) -> None:
        c = cas or self.cas
        with c.db.read() as conn:
            c.policy_auth.index.refresh(conn)


def anchored(row: tuple[Any, ...]) -> dict[str, Any]:
    """The snapshot's map of a ``policy_head_anchor`` row: name → latest accepted and held."""
    value = json.loads(row[1])
    assert isinstance(value, dict)
    return value


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    data = tmp_path / "cas"
    out = Env(data, db_url, InProcessCas.start(data, "", db_url=db_url), Identity.generate())
    try:
        yield out
    finally:
        out.cas.db.dispose()


def updated(env: Env) -> tuple[str, str, tuple[Any, ...], tuple[Any, ...]]:
    """``app`` created at v1 (its rows saved, genuine), then updated to v2 (and ``other``, so
    the ledger goes on). Returns v1, v2, the v1 rows and the v2 rows."""
    v1 = env.apply(policy())
    env.apply(policy(name="other"))
    env.attest(MEASUREMENT)
    before = env.rows(v1)
    v2 = env.apply(policy(OTHER, v1))
    env.attest(OTHER)
    return v1, v2, before, env.rows(v1)


def drop_events(env: Env, v2: str, how: str) -> None:
    """The later ``policy-updated`` events row deleted, or edited to name v1 again."""
    where = "policy = 'app' AND type = 'policy-updated'"
    if how == "deleted":
        env.sql(f"DELETE FROM events WHERE {where}")
    else:
        [(seq, payload)] = env.sql(f"SELECT seq, payload FROM events WHERE {where}")
        edited = json.loads(payload)
        assert edited["hash"] == v2
        edited["hash"] = edited["predecessor"]
        env.sql("UPDATE events SET payload = ? WHERE seq = ?", (json.dumps(edited), seq))


@pytest.mark.parametrize("how", ["deleted", "edited"])
def test_rows_rolled_back_with_the_events_rows_are_refused(env: Env, how: str) -> None:
    """The attack of docs/limitations.md (schema 16): head and version rows rolled back to their
    genuine v1 state, the later events row deleted or edited. The ledger keeps the later entry:
    refused by the running process (a cache miss: it scans) and a fresh one; the events listing
    is refused too; restored, all is served again."""
    v1, v2, before, after = updated(env)
    env.set_rows(v1, before)
    drop_events(env, v2, how)
    for process in ("running", "fresh"):
        if process == "fresh":
            env.restart()
        with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
            env.attest(MEASUREMENT)
        with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
            env.show()
        with pytest.raises(PolicyRowsAltered):  # an update from the rolled-back version too
            env.apply(policy(THIRD, v1))
    env.set_rows(v1, after)
    with pytest.raises(EventsAltered, match="policy 'app'"):  # the events rows still lack entry
        env.cas.events_for(env.read("events"))
    assert env.show()["hash"] == v2
    env.attest(OTHER)


def test_deleted_events_rows_alone_change_nothing(env: Env) -> None:
    """The events rows are an index only: with every head event row of ``app`` deleted the head
    is still judged by the ledger (served), and the listing of its events is refused."""
    _v1, v2, _before, _after = updated(env)
    env.sql("DELETE FROM events WHERE policy = 'app' AND type IN ('policy-created', 'policy-updated')")
    env.restart()
    assert env.show()["hash"] == v2
    env.attest(OTHER)
    with pytest.raises(EventsAltered, match="leave out ledger entry"):
        env.cas.events_for(env.read("events"))


def test_an_events_row_that_differs_from_its_entry_is_not_listed(env: Env) -> None:
    """``policy events`` lists the events rows with their entries: a row whose type, policy or
    payload is not its entry's is refused by the CAS (the client would refuse it too)."""
    updated(env)
    assert env.cas.events_for(env.read("events"))["events"]
    [(seq, payload)] = env.sql(
        "SELECT seq, payload FROM events WHERE policy = 'app' AND type = 'policy-created'"
    )
    edited = {**json.loads(payload), "submitter": "00" * 32}
    env.sql("UPDATE events SET payload = ? WHERE seq = ?", (json.dumps(edited), seq))
    with pytest.raises(EventsAltered, match=f"events row {seq} of policy 'app' does not say what"):
        env.cas.events_for(env.read("events"))
    env.sql("UPDATE events SET payload = ? WHERE seq = ?", (payload, seq))
    assert env.cas.events_for(env.read("events"))["events"]


def test_a_running_process_with_the_old_row_cached_refuses_after_its_next_scan(env: Env) -> None:
    """Replica A verified (and cached) the v1 head; replica B updates to v2; the operator writes
    the v1 rows back exactly as A cached them and deletes the events row. A serves v1 from its
    cache until its next scan of the ledger (docs/limitations.md: the window), then refuses;
    B, whose cache holds v2, refuses at once (a miss)."""
    v1 = env.apply(policy())
    env.attest(MEASUREMENT)  # A: v1 verified and cached
    before = env.rows(v1)
    b = env.replica()
    try:
        env.show(b)
        v2 = env.apply(policy(OTHER, v1), b)
        env.attest(OTHER, b)
        env.set_rows(v1, before)
        drop_events(env, v2, "deleted")
        env.attest(MEASUREMENT)  # A's cached row: not scanned
        with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
            env.attest(MEASUREMENT, b)
        HeadIndexRefresher(env.cas.policy_auth.index, env.cas.db).tick()  # cas serve's periodic scan
        with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
            env.attest(MEASUREMENT)
    finally:
        b.db.dispose()


def test_replicas_see_each_others_updates(env: Env) -> None:
    """Two CAS on one database: each update by one is accepted by the other (its index scans
    the other's entries), in both directions, with the heads cached before."""
    v1 = env.apply(policy())
    b = env.replica()
    try:
        env.attest(MEASUREMENT)
        env.attest(MEASUREMENT, b)
        v2 = env.apply(policy(OTHER, v1), b)
        assert env.show()["hash"] == v2
        env.attest(OTHER)
        v3 = env.apply(policy(THIRD, v2))
        assert env.show(b)["hash"] == v3
        env.attest(THIRD, b)
    finally:
        b.db.dispose()


def test_a_cached_head_costs_no_scan(env: Env) -> None:
    """The attestation path reads no ledger entry for a head it has verified: the index scans
    only on a miss (and in cas serve's periodic scan)."""
    env.apply(policy())
    env.attest(MEASUREMENT)
    index = env.cas.policy_auth.index
    scanned, size = index.scanned, index.size
    for _ in range(3):
        env.attest(MEASUREMENT)
    assert (index.scanned, index.size) == (scanned, size)
    env.scan()
    assert index.scanned > scanned  # the attestations' entries, at the periodic scan


def test_an_older_genuine_snapshot_gives_the_same_answer(env: Env) -> None:
    """A snapshot stored before the update, written back: the scan from it finds the update,
    so the rolled-back rows are refused and the genuine ones served."""
    v1 = env.apply(policy())
    env.apply(policy(name="other"))
    env.attest(MEASUREMENT)
    before = env.rows(v1)
    env.store()
    old = env.anchor()
    assert old is not None and anchored(old)["app"]["latest"][1] == v1
    v2 = env.apply(policy(OTHER, v1))
    env.attest(OTHER)
    after = env.rows(v1)
    env.store()
    new = env.anchor()
    assert new is not None and new[0] > old[0] and anchored(new)["app"]["latest"][1] == v2
    env.set_anchor(old)
    env.set_rows(v1, before)
    drop_events(env, v2, "deleted")
    env.restart()
    with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
        env.attest(MEASUREMENT)
    env.set_rows(v1, after)
    assert env.show()["hash"] == v2
    env.attest(OTHER)


@pytest.mark.parametrize(
    "edit", ["heads", "size", "mac", "key_id", "board", "board-null", "secrets", "secrets-null"]
)
def test_an_edited_snapshot_is_refused(env: Env, edit: str, caplog: pytest.LogCaptureFixture) -> None:
    """The snapshot row edited (its map, its size, its MAC, its key id): the CAS does not start
    on it (no head could be judged); deleted, it is rebuilt from the ledger's entries."""
    v1 = env.apply(policy())
    env.store()
    row = env.anchor()
    assert row is not None
    size, heads, at, key_id, mac, board, secrets = row
    if edit == "heads":
        heads = json.dumps({"app": {"held": [], "latest": [0, v1, None, True]}}, separators=(",", ":"))
    elif edit == "size":
        size -= 1
    elif edit == "mac":
        mac = ("0" if mac[0] != "0" else "1") + mac[1:]
    elif edit == "key_id":
        key_id = "ab" * 16
    elif edit == "board":  # the successor board's entries (schema 18) are under the same MAC
        board = json.dumps([[0, "board", "ab" * 32, 0]], separators=(",", ":"))
    elif edit == "board-null":  # a schema-17 snapshot (no board entries) written back
        board = None
    elif edit == "secrets":  # the secrets' versions (schema 20) are under the same MAC
        secrets = json.dumps({"bound": None, "versions": [["app", "k", 0, 9]]}, separators=(",", ":"))
    else:  # a schema-19 snapshot (no secrets' versions) written back
        secrets = None
    env.set_anchor((size, heads, at, key_id, mac, board, secrets))
    with caplog.at_level(logging.WARNING, logger="confide.cas"), pytest.raises(HeadAnchorAltered):
        env.restart()
    assert any("policy-head-anchor-altered" in r.getMessage() for r in caplog.records)
    env.sql("DELETE FROM policy_head_anchor")  # through the stopped CAS's database
    env.restart()
    assert env.show()["hash"] == v1
    rebuilt = env.anchor()
    assert rebuilt is not None and anchored(rebuilt)["app"]["latest"][1] == v1


def test_a_snapshot_larger_than_the_ledger_is_refused(env: Env) -> None:
    """A genuine snapshot of a longer ledger (the ledger's last entry taken away under it): a
    process starting from it refuses to judge any head."""
    env.apply(policy())
    env.store()
    row = env.anchor()
    assert row is not None
    env.sql("DELETE FROM ledger_entries WHERE idx = ?", (row[0] - 1,))
    env.sql("UPDATE ledger_head SET size = ? WHERE id = 1", (row[0] - 1,))
    b = env.replica()
    try:
        with pytest.raises(HeadAnchorAltered, match=r"covers \d+ ledger entries, the ledger has"):
            env.show(b)
    finally:
        b.db.dispose()


def test_a_newer_snapshot_stored_during_the_first_load_is_not_tampering(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A process loading its index read the ledger's size, then another replica appended
    entries and stored a newer snapshot, then the process read the snapshot: on PostgreSQL
    (READ COMMITTED) the snapshot was larger than the size it had read, refused as a rolled-back
    ledger (``policy-head-anchor-altered`` logged, the request refused). The ledger's size is
    read again before judging: the newer snapshot is loaded. On SQLite the read transaction
    sees one snapshot: the older one, and the scan from it (nothing changed)."""
    v1 = env.apply(policy())
    other = env.apply(policy(name="other"))
    env.store()
    old = env.anchor()
    assert old is not None
    fresh = env.replica()  # its index is loaded on its first head read
    try:
        index = fresh.policy_auth.index
        genuine = index._load
        raced: list[tuple[int, str]] = []

        def racing(raw: Any, ledger_size: int) -> int:
            # between this process's read of the ledger's size and its read of the snapshot
            if not raced:
                updated = env.apply(policy(OTHER, other, name="other"))
                env.attest(MEASUREMENT)
                env.store()
                new = env.anchor()
                assert new is not None and new[0] > ledger_size >= old[0]
                raced.append((new[0], updated))
            return genuine(raw, ledger_size)

        index._load = racing  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="confide.cas"):
            assert env.show(fresh)["hash"] == v1
        assert raced
        assert "policy-head-anchor-altered" not in caplog.text
        assert index.refusals == 0
        [(stored, updated)] = raced
        assert index.size is not None
        if env.db_url is not None:  # the newer snapshot loaded, after the size was read again
            assert index.size >= stored
        else:  # the older one, in the read transaction's snapshot, and the scan from it
            assert index.size < stored
        env.attest(MEASUREMENT, fresh)
        body = {"type": READ_TYPE, "name": "other", "nonce": fresh.new_read_nonce("other", "show"),
                "cas": fresh.tls_spki_sha256, "route": "show"}  # fmt: skip
        shown = fresh.show(sign_document(body, env.owner.sign, env.owner.public.public_base64))
        assert shown["hash"] == updated
    finally:
        fresh.db.dispose()


def test_an_entry_that_does_not_hash_to_its_leaf_fails_closed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The later ``policy.updated`` entry's bytes edited to name v1 (its leaf hash, in the tiles
    and every signed checkpoint, left as it is): the scan refuses it, at a start and in a
    running process's scan; restored, all is well."""
    v1, v2, before, after = updated(env)
    where = "policy = 'app' AND type = 'policy-updated'"
    [(seq,)] = env.sql(f"SELECT seq FROM events WHERE {where}")
    [(data,)] = env.sql("SELECT data FROM ledger_entries WHERE idx = ?", (seq - 1,))
    genuine = bytes(data)
    assert v2.encode() in genuine
    # a fresh replica whose index has not scanned that entry yet (it starts from the snapshot
    # stored before the update)
    env.sql(
        "UPDATE ledger_entries SET data = ? WHERE idx = ?",
        (genuine.replace(v2.encode(), v1.encode()), seq - 1),
    )
    env.set_rows(v1, before)
    with caplog.at_level(logging.WARNING, logger="confide.cas"), pytest.raises(LedgerEntriesAltered,
                                                                                 match=f"entry {seq - 1} does not hash"):  # fmt: skip
        env.restart()
    assert any("ledger-entries-altered" in r.getMessage() for r in caplog.records)
    env.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (genuine, seq - 1))
    env.restart()
    with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
        env.attest(MEASUREMENT)
    env.set_rows(v1, after)
    env.attest(OTHER)
    # a running process: an entry appended by a replica, then edited, fails its next scan
    b = env.replica()
    try:
        env.apply(policy(THIRD, v2), b)
        [(seq,)] = env.sql(f"SELECT MAX(seq) FROM events WHERE {where}")
        [(data,)] = env.sql("SELECT data FROM ledger_entries WHERE idx = ?", (seq - 1,))
        env.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (bytes(data) + b" ", seq - 1))
        with pytest.raises(LedgerEntriesAltered):
            env.scan()
        assert not HeadIndexRefresher(env.cas.policy_auth.index, env.cas.db).tick()
        with pytest.raises(LedgerEntriesAltered):  # a head read that misses scans: refused
            env.show()
        env.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (bytes(data), seq - 1))
        env.attest(THIRD)
    finally:
        b.db.dispose()


def test_a_missing_entry_fails_closed(env: Env) -> None:
    """An entry deleted from ``ledger_entries`` (its tile kept): refused as missing."""
    env.apply(policy())
    env.store()
    env.apply(policy(name="other"))
    [(seq,)] = env.sql("SELECT seq FROM events WHERE policy = 'other' AND type = 'policy-created'")
    env.sql("DELETE FROM ledger_entries WHERE idx = ?", (seq - 1,))
    with pytest.raises(LedgerEntriesAltered, match=f"entry {seq - 1} is missing"):
        env.restart()


def test_a_schema_16_database_is_upgraded_by_one_full_scan(env: Env) -> None:
    """A database of schema 16 (no snapshot table): the migration adds it, the next start scans
    the whole ledger once and stores the first snapshot; the attack is refused from then on."""
    v1, v2, before, _after = updated(env)
    env.sql("DROP TABLE policy_head_anchor")
    env.sql("UPDATE meta SET value = '16' WHERE key = 'schema_version'")
    env.restart()
    [(version,)] = env.sql("SELECT value FROM meta WHERE key = 'schema_version'")
    assert int(version) == SCHEMA_VERSION
    row = env.anchor()
    [(size,)] = env.sql("SELECT size FROM ledger_head WHERE id = 1")
    assert row is not None and row[0] == size and anchored(row)["app"]["latest"][1] == v2
    assert env.show()["hash"] == v2
    env.set_rows(v1, before)
    drop_events(env, v2, "deleted")
    env.restart()
    with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
        env.attest(MEASUREMENT)


def append_entry(env: Env, type_: str, payload: dict[str, Any], name: str = "app") -> int:
    """What an operator who writes the database can do with the ledger's own code: append a
    well-formed entry (its leaf hash in the tiles, an events row). Returns its index."""
    with env.cas.db.write() as conn:
        return LedgerEventSink().record(conn, type_, name, payload) - 1


@pytest.mark.parametrize("forged", ["back-to-v1", "v1-replayed", "creation-replayed"])
def test_an_appended_head_entry_does_not_make_an_old_version_current(env: Env, forged: str) -> None:
    """The ledger is append-only, not append-proof: an operator can append a well-formed
    ``policy.updated`` entry. One naming v1 as the successor of v2 continues the chain but
    v1's authenticated row names no predecessor: held, and the policy is refused (never v1
    current); a copy of v1's genuine creation entry, or of its update entry, does not continue
    the chain: ignored (logged). Other policies are not affected."""
    v1, v2, before, _after = updated(env)
    if forged == "back-to-v1":
        at = append_entry(env, "policy-updated", {"hash": v1, "predecessor": v2})
    else:
        kind = "policy-created" if forged == "creation-replayed" else "policy-updated"
        [(seq,)] = env.sql("SELECT seq FROM events WHERE policy = 'app' AND type = ?", (kind,))
        [(data,)] = env.sql("SELECT data FROM ledger_entries WHERE idx = ?", (seq - 1,))
        entry = json.loads(bytes(data))
        at = append_entry(env, kind, entry["payload"])
    env.set_rows(v1, before)
    drop_events(env, v2, "deleted")
    for process in ("running", "fresh"):
        if process == "fresh":
            env.restart()
        with pytest.raises(PolicyRowsAltered, match="policy 'app'") as refused:
            env.attest(MEASUREMENT)
        if forged == "back-to-v1":
            assert f"its ledger entry {at} names a version that does not authenticate" in str(refused.value)
        else:
            assert "not the one its latest ledger entry names" in str(refused.value)
        env.show_other()
    index = env.cas.policy_auth.index
    if forged == "back-to-v1":
        assert index.ignored == 0
    else:
        assert index.ignored >= 1


def test_a_held_entry_is_accepted_once_its_version_row_is_restored(env: Env) -> None:
    """The rows rolled back to v1 and v2's version row deleted before a fresh process scanned
    v2's entry: the entry is held (not skipped, or the rolled-back rows would pass) and the
    policy refused; v2's row restored, the entry is accepted at the next scan (the rolled-back
    head is then refused as behind the ledger); the head restored, v2 is served."""
    v1 = env.apply(policy())
    env.apply(policy(name="other"))
    before = env.rows(v1)
    v2 = env.apply(policy(OTHER, v1))
    after = env.rows(v1)
    [v2_row] = env.sql("SELECT * FROM policies WHERE name = 'app' AND hash = ?", (v2,))
    env.sql("DELETE FROM policy_head_anchor")  # a fresh process scans the whole ledger
    env.set_rows(v1, before)
    env.sql("DELETE FROM policies WHERE name = 'app' AND hash = ?", (v2,))
    env.restart()
    with pytest.raises(PolicyRowsAltered, match="names a version that does not authenticate"):
        env.show()
    env.show_other()
    env.sql(f"INSERT INTO policies VALUES ({', '.join('?' for _ in v2_row)})", tuple(v2_row))
    with pytest.raises(PolicyRowsAltered, match=ROLLED_BACK):
        env.show()
    env.set_rows(v1, after)
    assert env.show()["hash"] == v2
    env.attest(OTHER)


def test_metrics_count_scans_and_tampering(env: Env) -> None:
    """``/metrics``: the entries the head index scanned, the tampering it met, the head entries
    it ignored and the ledger size it has read up to."""
    v1 = env.apply(policy())
    env.apply(policy(OTHER, v1))
    append_entry(env, "policy-created", {"hash": v1, "predecessor": None})  # out of the chain
    env.scan()
    [(size,)] = env.sql("SELECT size FROM ledger_head WHERE id = 1")
    status, body = call(create_app(env.cas), "/metrics", [b""], method="GET")
    text = body.decode()
    assert status == 200
    assert f"confide_cas_head_index_size {float(size)}" in text
    assert "confide_cas_head_index_ignored_total 1.0" in text
    assert "confide_cas_head_index_altered_total 0.0" in text
    assert "confide_cas_successor_board_rolled_back_total 0.0" in text
    scanned = next(
        line for line in text.splitlines() if line.startswith("confide_cas_head_index_entries_scanned_total")
    )
    assert float(scanned.split()[1]) >= 1


class LostConnection(Exception):
    """What the database driver raises when the connection drops under a statement (not a
    StorageError: raw statements are not mapped)."""


def test_a_database_error_during_a_scan_leaves_the_index_as_it_was(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The scan queued the new head entries on their chains, then a version row's read failed
    (a connection lost): the index kept them while its size stayed behind, so the next scan
    found them again and logged each as an entry that does not continue its chain
    (``policy-head-entry-ignored``, counted in ``head_index_ignored_total``: tampering signals,
    after a plain database error). The scan now changes the index only once it has resolved
    everything it found."""
    v1 = env.apply(policy())
    env.attest(MEASUREMENT)
    v2 = env.apply(policy(OTHER, v1))  # its entry is not in the index yet (the next scan's)
    index = env.cas.policy_auth.index
    genuine = index.validate
    failures = [LostConnection("server closed the connection unexpectedly")]

    def flaky(conn: Any, name: str, digest: str) -> str | None:
        if failures:
            raise failures.pop()
        return genuine(conn, name, digest)

    index.validate = flaky
    size = index.size
    with pytest.raises(LostConnection):
        env.scan()
    assert index.size == size
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        env.scan()
    assert "policy-head-entry-ignored" not in caplog.text
    assert index.ignored == 0
    assert env.show()["hash"] == v2
    env.attest(OTHER)


def test_the_periodic_scan_survives_a_database_error(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """``cas serve``'s periodic scan caught ConfideError only: a database driver's error (raw
    statements are not mapped to StorageError) ended its thread, and with it the scans that
    bound a running process's window (docs/limitations.md) for the rest of its life. It is
    logged and the scan tried again at the next tick, as the other periodic tasks do."""
    v1 = env.apply(policy())
    env.apply(policy(OTHER, v1))
    index = env.cas.policy_auth.index
    genuine = index.refresh
    failures = [LostConnection("server closed the connection unexpectedly")]

    def flaky(conn: Any) -> int:
        if failures:
            raise failures.pop()
        return genuine(conn)

    index.refresh = flaky  # type: ignore[method-assign]
    ticks = iter([False, False, True])  # two ticks, then stop
    refresher = HeadIndexRefresher(index, env.cas.db, wait=lambda _seconds: next(ticks))
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        refresher.run()
    assert '"error": "LostConnection"' in caplog.text
    [(size,)] = env.sql("SELECT size FROM ledger_head WHERE id = 1")
    assert index.size == size  # the second tick scanned


def test_an_update_committed_while_the_events_are_listed_is_not_half_listed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads are READ COMMITTED by default: an update another process commits while
    ``policy events`` is read (after its head and events rows, before its last read of the
    ledger) made the listing refused as altered. The listing reads one snapshot: the head it
    names ends the chain of the version entries it lists, nothing is refused, and the next
    listing has the update. (SQLite: one snapshot already.)"""
    v1 = env.apply(policy())
    env.cas.events_for(env.read("events"))  # the head verified and cached
    listed_entry = core._listed_entry
    done: list[str] = []

    def racing(*args: Any) -> bytes:
        if not done:  # the events rows read; the ledger's latest head entry not yet
            other = InProcessCas.start(env.data, "", db_url=env.db_url)
            try:
                done.append(other.apply(policy(OTHER, v1), env.owner).hash)
            finally:
                other.cas.db.dispose()
        return listed_entry(*args)

    monkeypatch.setattr(core, "_listed_entry", racing)
    listed = env.cas.events_for(env.read("events"))
    assert done
    heads = [
        e["payload"]["hash"] for e in listed["events"] if e["type"] in ("policy-created", "policy-updated")
    ]
    assert listed["head"] == v1 and heads == [v1]
    monkeypatch.undo()
    listed = env.cas.events_for(env.read("events"))
    assert listed["head"] == done[0]
    assert [e["payload"]["hash"] for e in listed["events"] if e["type"] == "policy-updated"] == [done[0]]

"""Authenticated policy heads, version states and approvals (confide.cas.policy_auth; docs/cas.md
"What a policy's current version rests on"): an operator who writes the database cannot make a
pending or stale version current, change a state or a submitter, count a forged or copied
approval, swap two policies' heads or roll a head back; each is refused where it is used (an
attestation, ``policy show``, an update, an approval), and restoring the row brings everything
back. Master-key rotation (offline and online) keeps the rows verifying; a database of schema 14
is bound once, at its first start. The real in-process CAS on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import MEASUREMENT, DbEnv, InProcessCas, sim_policy
from confide.cas.core import APPROVAL_TYPE, READ_TYPE, Cas, sign_document
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.online_rotation import OnlineRotation
from confide.cas.policy_auth import BOUND_META, EVENT_BOUND, PolicyRowsAltered, bind_unbound
from confide.cas.rotation import rotate_master_key
from confide.errors import ConflictError, StorageError
from confide.identity import Identity

OTHER = "cd" * 48
HEAD_COLUMNS = "hash, revision, creator, key_id, mac"


def read_request(cas: Cas, name: str, who: Identity, route: str = "show") -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": name, "nonce": cas.new_read_nonce(name, route),
            "cas": cas.tls_spki_sha256, "route": route}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def approval(cas: Cas, name: str, digest: str, who: Identity) -> dict[str, Any]:
    body = {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": cas.tls_spki_sha256}
    return sign_document(body, who.sign, who.public.public_base64)


def board_policy(name: str, board: list[Identity], *, measurement: str = MEASUREMENT,
                 predecessor: str | None = None) -> str:  # fmt: skip
    """The sim policy ``name``, updated only with every member of ``board``'s approval."""
    text = sim_policy(name, measurement=measurement, predecessor=predecessor)
    rules = "".join(f"\n        - signer: {m.fingerprint}" for m in board)
    return text + f"access_policy:\n  read: [CREATOR]\n  update:\n    - require-all:{rules}\n"


@dataclass
class Env(DbEnv):
    member: Identity
    third: Identity

    def head_row(self, name: str) -> tuple[Any, ...]:
        [row] = self.sql(f"SELECT {HEAD_COLUMNS} FROM policy_heads WHERE name = ?", (name,))
        return row

    def set_head_row(self, name: str, row: tuple[Any, ...]) -> None:
        self.sql(
            "UPDATE policy_heads SET hash = ?, revision = ?, creator = ?, key_id = ?, mac = ? WHERE name = ?",
            (*row, name),
        )

    def show(self, name: str = "app") -> dict[str, Any]:
        return self.cas.show(read_request(self.cas, name, self.owner))

    def attest(self, measurement: str = MEASUREMENT, policy: str = "app") -> dict[str, Any]:
        request, _key = self.ipc.request(policy=policy, measurement=measurement)
        return self.cas.attest(request)

    def url(self) -> str:
        return self.db_url or f"sqlite:///{self.data / 'cas.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    data = tmp_path / "cas"
    ids = [Identity.generate() for _ in range(3)]
    out = Env(data, db_url, InProcessCas.start(data, "", db_url=db_url), *ids)
    try:
        yield out
    finally:
        out.cas.db.dispose()


def with_pending(env: Env) -> tuple[str, str]:
    """``app`` (board: owner and member) active at v1 and a v2 (another measurement) pending the
    member's approval; ``other`` (board: owner, member, third) active. Returns (v1, v2)."""
    board = [env.owner, env.member]
    v1 = env.ipc.apply(board_policy("app", board), env.owner)
    v2 = env.ipc.apply(board_policy("app", board, measurement=OTHER, predecessor=v1.hash), env.owner)
    assert (v1.state, v2.state) == ("active", "pending")
    env.ipc.apply(board_policy("other", [env.owner, env.member, env.third]), env.owner)
    return str(v1.hash), str(v2.hash)


def assert_refused(env: Env, v2: str) -> None:
    """Everything that decides from ``app``'s rows refuses (an integrity failure, a
    StorageError); ``other`` is untouched."""
    with pytest.raises(PolicyRowsAltered, match=r"of policy 'app' does not authenticate"):
        env.attest(OTHER)
    with pytest.raises(PolicyRowsAltered):
        env.attest(MEASUREMENT)
    with pytest.raises(PolicyRowsAltered):
        env.show()
    with pytest.raises(PolicyRowsAltered):
        env.cas.approve(approval(env.cas, "app", v2, env.member))
    assert issubclass(PolicyRowsAltered, StorageError)
    assert env.show("other")["name"] == "other"
    env.attest(MEASUREMENT, policy="other")


def assert_intact(env: Env, v1: str, v2: str) -> None:
    """``app`` at v1, v2 still pending: the member's approval makes v2 current."""
    assert env.show()["hash"] == v1
    env.attest(MEASUREMENT)
    assert env.cas.approve(approval(env.cas, "app", v2, env.member)).state == "active"
    assert env.show()["hash"] == v2
    env.attest(OTHER)


@pytest.mark.parametrize("change", ["head-to-pending", "state-active", "state-and-head", "submitter"])
def test_a_pending_version_is_not_made_current_by_editing_the_database(env: Env, change: str) -> None:
    v1, v2 = with_pending(env)
    env.attest(MEASUREMENT)  # the verified head is cached: an edit is still seen
    saved_head = env.head_row("app")
    [saved_version] = env.sql("SELECT state, submitter, mac FROM policies WHERE hash = ?", (v2,))
    if change in ("head-to-pending", "state-and-head"):
        env.sql("UPDATE policy_heads SET hash = ? WHERE name = 'app'", (v2,))
    if change in ("state-active", "state-and-head"):
        env.sql("UPDATE policies SET state = 'active' WHERE hash = ?", (v2,))
        env.sql("UPDATE policies SET state = 'superseded' WHERE hash = ?", (v1,))
    if change == "submitter":  # the member as its submitter: the submitter counts as approving
        env.sql("UPDATE policies SET submitter = ? WHERE hash = ?", (env.member.fingerprint, v2))
    if change == "submitter":
        with pytest.raises(PolicyRowsAltered, match=f"version {v2[:16]}"):
            env.cas.approve(approval(env.cas, "app", v2, env.third))
        with pytest.raises(PolicyRowsAltered):
            env.show()
    else:
        assert_refused(env, v2)
    env.restart()  # nothing cached: the rows are read
    with pytest.raises(PolicyRowsAltered):
        env.show()
    env.set_head_row("app", saved_head)
    env.sql("UPDATE policies SET state = ?, submitter = ?, mac = ? WHERE hash = ?", (*saved_version, v2))
    env.sql("UPDATE policies SET state = 'active' WHERE hash = ?", (v1,))
    assert_intact(env, v1, v2)


def test_a_stale_version_does_not_come_back(env: Env) -> None:
    board = [env.owner, env.member]
    v1 = env.ipc.apply(board_policy("app", board), env.owner).hash
    v2 = env.ipc.apply(board_policy("app", board, measurement=OTHER, predecessor=v1), env.owner).hash
    v3 = env.ipc.apply(board_policy("app", board, measurement="ef" * 48, predecessor=v1), env.owner).hash
    assert env.cas.approve(approval(env.cas, "app", v3, env.member)).state == "active"
    with pytest.raises(ConflictError, match="changed since"):  # v2 is marked stale
        env.cas.approve(approval(env.cas, "app", v2, env.member))
    [(state,)] = env.sql("SELECT state FROM policies WHERE hash = ?", (v2,))
    assert state == "stale"
    env.sql("UPDATE policies SET state = 'pending', predecessor = ? WHERE hash = ?", (v3, v2))
    with pytest.raises(PolicyRowsAltered, match=f"version {v2[:16]}"):
        env.cas.approve(approval(env.cas, "app", v2, env.member))
    env.sql("UPDATE policy_heads SET hash = ? WHERE name = 'app'", (v2,))
    with pytest.raises(PolicyRowsAltered):
        env.attest(OTHER)


FORGED = ["other-signer", "copied-from-other-policy", "copied-with-its-mac", "garbage", "renamed-signer",
          "for-another-cas"]  # fmt: skip


@pytest.mark.parametrize("forged", FORGED)
def test_an_inserted_or_copied_approval_is_not_counted(env: Env, forged: str) -> None:
    """``other`` needs owner, member and third: the owner submitted v2, a forged row stands for
    the member, the third approves: v2 stays pending. The member's own approval then counts."""
    board = [env.owner, env.member, env.third]
    v1 = env.ipc.apply(board_policy("other", board), env.owner).hash
    v2 = env.ipc.apply(board_policy("other", board, measurement=OTHER, predecessor=v1), env.owner).hash
    # a genuine approval by the member, of another policy's pending version
    a1 = env.ipc.apply(board_policy("app", [env.owner, env.member]), env.owner).hash
    a2 = env.ipc.apply(
        board_policy("app", [env.owner, env.member], measurement=OTHER, predecessor=a1), env.owner
    )
    document: dict[str, Any] | str
    key_id = mac = None
    match forged:
        case "other-signer":  # signed by someone not on the board, in the member's name
            document = approval(env.cas, "other", v2, Identity.generate())
        case "copied-from-other-policy" | "copied-with-its-mac":
            assert env.cas.approve(approval(env.cas, "app", a2.hash, env.member)).state == "active"
            [(text, key_id, mac)] = env.sql("SELECT document, key_id, mac FROM approvals WHERE name = 'app'")
            document = json.loads(text)
            if forged == "copied-from-other-policy":
                key_id = mac = None
        case "garbage":
            document = "{not json"
        case "renamed-signer":  # the third's genuine approval, filed under the member
            document = approval(env.cas, "other", v2, env.third)
        case "for-another-cas":  # the member's genuine approval, signed for another CAS
            document = sign_document(
                {"type": APPROVAL_TYPE, "name": "other", "hash": v2, "cas": "ee" * 32},
                env.member.sign, env.member.public.public_base64,
            )  # fmt: skip
    env.sql(
        "INSERT INTO approvals (name, hash, signer, document, created_at, key_id, mac) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("other", v2, env.member.fingerprint, document if isinstance(document, str) else json.dumps(document),
         time.time(), key_id, mac),
    )  # fmt: skip
    assert env.cas.approve(approval(env.cas, "other", v2, env.third)).state == "pending"
    assert env.show("other")["hash"] == v1
    assert env.cas.approve(approval(env.cas, "other", v2, env.member)).state == "active"
    assert env.show("other")["hash"] == v2


def test_an_approval_accepted_by_another_replica_counts(env: Env) -> None:
    """Replicas share the database and the master key, each with its own TLS key: an approval
    taken by one (naming it) counts when another replica counts the approvals."""
    board = [env.owner, env.member, env.third]
    v1 = env.ipc.apply(board_policy("other", board), env.owner).hash
    v2 = env.ipc.apply(board_policy("other", board, measurement=OTHER, predecessor=v1), env.owner).hash
    assert env.cas.approve(approval(env.cas, "other", v2, env.member)).state == "pending"
    env.cas.tls_spki_sha256 = "ee" * 32  # the other replica's TLS key
    assert env.cas.approve(approval(env.cas, "other", v2, env.third)).state == "active"
    assert env.show("other")["hash"] == v2


def test_swapped_heads_are_refused(env: Env) -> None:
    with_pending(env)
    app, other = env.head_row("app"), env.head_row("other")
    env.set_head_row("app", other)
    env.set_head_row("other", app)
    for name in ("app", "other"):
        with pytest.raises(PolicyRowsAltered, match=f"policy '{name}'"):
            env.show(name)
        with pytest.raises(PolicyRowsAltered):
            env.attest(MEASUREMENT, policy=name)
    env.set_head_row("app", app)
    env.set_head_row("other", other)
    env.show("app")
    env.attest(MEASUREMENT, policy="other")


@pytest.mark.parametrize("how", ["hash-only", "whole-row"])
def test_a_head_rolled_back_to_an_older_version_is_refused(env: Env, how: str) -> None:
    v1 = env.ipc.apply(board_policy("app", [env.owner]), env.owner)
    old_row = env.head_row("app")
    v2 = env.ipc.apply(board_policy("app", [env.owner], measurement=OTHER, predecessor=v1.hash), env.owner)
    assert v2.state == "active"
    env.attest(OTHER)
    current = env.head_row("app")
    if how == "hash-only":
        env.sql("UPDATE policy_heads SET hash = ? WHERE name = 'app'", (v1.hash,))
    else:  # the head row as it was, its MAC too: it names a version now superseded
        env.set_head_row("app", old_row)
    with pytest.raises(PolicyRowsAltered):
        env.attest(MEASUREMENT)
    with pytest.raises(PolicyRowsAltered):
        env.show()
    with pytest.raises(PolicyRowsAltered):  # an update is refused too
        env.ipc.apply(board_policy("app", [env.owner], measurement="ef" * 48, predecessor=v1.hash), env.owner)
    env.set_head_row("app", current)
    assert env.show()["hash"] == v2.hash
    env.attest(OTHER)


VERSION_COLUMNS = "state, key_id, mac"


@pytest.mark.parametrize("later", ["left", "deleted"])
def test_head_and_version_rolled_back_together_are_refused(env: Env, later: str) -> None:
    """The head row and the old version's row written back as they were before an update, each
    with its genuine MAC (the later version left as it is, or deleted): every row verifies, but
    the policy's latest ``policy.updated`` ledger entry names the later version, so the head is
    refused where used, by this process (which had the old head cached) and after a restart
    (the events rows deleted as well: tests/unit/test_cas_head_index.py)."""
    v1 = env.ipc.apply(board_policy("app", [env.owner]), env.owner).hash
    env.ipc.apply(board_policy("other", [env.owner]), env.owner)
    env.attest(MEASUREMENT)  # the v1 head verified and cached
    old_head = env.head_row("app")
    [old_version] = env.sql(f"SELECT {VERSION_COLUMNS} FROM policies WHERE name = 'app' AND hash = ?", (v1,))
    v2 = env.ipc.apply(board_policy("app", [env.owner], measurement=OTHER, predecessor=v1), env.owner).hash
    env.attest(OTHER)
    head = env.head_row("app")
    [version] = env.sql(f"SELECT {VERSION_COLUMNS} FROM policies WHERE name = 'app' AND hash = ?", (v1,))
    [v2_row] = env.sql("SELECT * FROM policies WHERE name = 'app' AND hash = ?", (v2,))
    assert version[0] == "superseded"

    def set_version(row: tuple[Any, ...]) -> None:
        env.sql(
            "UPDATE policies SET state = ?, key_id = ?, mac = ? WHERE name = 'app' AND hash = ?", (*row, v1)
        )

    env.set_head_row("app", old_head)
    set_version(old_version)
    if later == "deleted":
        env.sql("DELETE FROM policies WHERE name = 'app' AND hash = ?", (v2,))
    for cas in ("running", "restarted"):
        if cas == "restarted":
            env.restart()
        # a process that scans the update's entry with v2's row deleted holds it (the entry
        # cannot be checked against its version's row): refused too
        behind = r"(not the one its latest ledger entry names|names a version that does not authenticate)"
        with pytest.raises(PolicyRowsAltered, match=behind + r"\) of policy 'app'"):
            env.attest(MEASUREMENT)
        with pytest.raises(PolicyRowsAltered):
            env.show()
        with pytest.raises(PolicyRowsAltered):  # an update (from the old version) is refused too
            env.ipc.apply(board_policy("app", [env.owner], measurement="ef" * 48, predecessor=v1), env.owner)
        with pytest.raises(PolicyRowsAltered):
            env.cas.events_for(read_request(env.cas, "app", env.owner, "events"))
        assert env.show("other")["name"] == "other"
    # restored: served again, nothing lost
    if later == "deleted":
        columns = ", ".join("?" for _ in v2_row)
        env.sql(f"INSERT INTO policies VALUES ({columns})", tuple(v2_row))
    env.set_head_row("app", head)
    set_version(version)
    assert env.show()["hash"] == v2
    env.attest(OTHER)


def test_rotations_keep_the_rows_verifying_and_old_macs_stop(env: Env) -> None:
    v1, _v2 = with_pending(env)
    before = env.head_row("app")
    o1 = env.show("other")["hash"]  # a pending version of ``other`` with the member's approval
    board = [env.owner, env.member, env.third]
    o2 = env.ipc.apply(board_policy("other", board, measurement=OTHER, predecessor=o1), env.owner).hash
    assert env.cas.approve(approval(env.cas, "other", o2, env.member)).state == "pending"
    # offline
    env.cas.db.dispose()
    db = Database(env.url())
    try:
        result = rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    [payload] = env.sql("SELECT payload FROM events WHERE type = 'master-key-rotated'")
    assert json.loads(payload[0])["policy_rows_authenticated"] == 2 + 4 + 1  # heads, versions, approvals
    # and the snapshot of the head entries (confide.cas.head_index), not counted
    assert env.head_row("app")[3] == result.new_key_id
    assert env.sql("SELECT key_id FROM policy_head_anchor") == [(result.new_key_id,)]
    assert env.show()["hash"] == v1
    env.attest(MEASUREMENT)
    # online
    cas = env.cas
    status = OnlineRotation(
        env.data, cas.db, cas.sealer, None, LedgerEventSink(), None, batch_size=1, pause=0
    ).run()
    assert status.state == "done"
    keys = {row[0] for row in env.sql("SELECT key_id FROM policy_heads UNION SELECT key_id FROM policies "
                                      "UNION SELECT key_id FROM policy_head_anchor")}  # fmt: skip
    assert keys == {status.new_key_id}
    env.attest(MEASUREMENT)  # the same process, the old key dropped
    env.restart()
    assert env.show()["hash"] == v1
    # the approval given before both rotations still counts
    assert env.cas.approve(approval(env.cas, "other", o2, env.third)).state == "active"
    # a head row MAC'd under a key rotated away does not verify
    env.set_head_row("app", before)
    with pytest.raises(PolicyRowsAltered):
        env.show()
    env.sql("UPDATE policy_heads SET key_id = ? WHERE name = 'app'", (status.new_key_id,))
    with pytest.raises(PolicyRowsAltered):
        env.show()


def test_an_owner_revocation_revision_is_authenticated(env: Env) -> None:
    """The head's revision is covered: moving it changes nothing the CAS accepts."""
    with_pending(env)
    env.sql("UPDATE policy_heads SET revision = revision + 1 WHERE name = 'app'")
    with pytest.raises(PolicyRowsAltered):
        env.attest(MEASUREMENT)
    with env.cas.db.write() as conn:
        raw_execute(conn, "UPDATE policy_heads SET revision = revision - 1 WHERE name = 'app'")
        head = env.cas.policy_auth.bump_revision(conn, "app", time.time())
    assert head.revision == 1
    env.attest(MEASUREMENT)


# --- the upgrade from schema 14 ----------------------------------------------------------------


def make_schema_14(env: Env) -> None:
    """Turn the database into one of schema 14 (no ``key_id``/``mac`` columns, no marker) and stop
    the CAS."""
    for table in ("policy_heads", "policies", "approvals"):
        for column in ("key_id", "mac"):
            env.sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    # schema 14: before the MACs (15), the index of the head-changing events (16, dropped again
    # by 17) and the snapshot of the ledger's head entries (17)
    env.sql("DROP TABLE policy_head_anchor")
    env.sql("UPDATE meta SET value = '14' WHERE key = 'schema_version'")  # a past schema: its number
    env.cas.db.dispose()


def test_a_schema_14_database_is_bound_once_at_its_first_start(env: Env) -> None:
    v1, v2 = with_pending(env)
    # an approval stored before: bound with the rest, it still counts after the upgrade
    o1 = env.show("other")["hash"]
    board = [env.owner, env.member, env.third]
    o2 = env.ipc.apply(board_policy("other", board, measurement=OTHER, predecessor=o1), env.owner).hash
    assert env.cas.approve(approval(env.cas, "other", o2, env.member)).state == "pending"
    make_schema_14(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert env.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert env.sql("SELECT value FROM meta WHERE key = ?", (BOUND_META,)) == [("1",)]
    [(payload,)] = env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))
    assert json.loads(payload)["heads"] == 2 and json.loads(payload)["versions"] == 4
    assert json.loads(payload)["approvals"] == 1
    assert env.sql("SELECT COUNT(*) FROM policies WHERE mac IS NULL") == [(0,)]
    with env.cas.db.write() as conn:  # once: a second call does nothing
        assert bind_unbound(conn, env.cas.sealer) is None
    assert_intact(env, v1, v2)
    assert env.cas.approve(approval(env.cas, "other", o2, env.third)).state == "active"


@pytest.mark.parametrize("strip", ["all", "one"])
def test_stripped_macs_are_not_bound_again(env: Env, strip: str, caplog: pytest.LogCaptureFixture) -> None:
    """After the upgrade: an operator who removes the MACs (all of them, or one) and the marker,
    after editing a head, does not get the rows bound as found at the next start."""
    _v1, v2 = with_pending(env)
    make_schema_14(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)  # the upgrade: bound
    env.sql("UPDATE policy_heads SET hash = ? WHERE name = 'app'", (v2,))
    env.sql("UPDATE policies SET state = 'active' WHERE hash = ?", (v2,))
    where = "" if strip == "all" else " WHERE name = 'app'"
    env.sql(f"UPDATE policy_heads SET mac = NULL, key_id = NULL{where}")
    env.sql(f"UPDATE policies SET mac = NULL, key_id = NULL{where}")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    with caplog.at_level("WARNING", logger="confide.cas"):
        env.restart()
    assert any("policy-rows-not-bound" in r.getMessage() for r in caplog.records)
    with pytest.raises(PolicyRowsAltered):
        env.attest(OTHER)
    with pytest.raises(PolicyRowsAltered):
        env.show()


def test_offline_rotation_of_a_schema_14_database_binds_then_rotates(env: Env) -> None:
    v1, v2 = with_pending(env)
    make_schema_14(env)
    db = Database(env.url())
    try:
        db.migrate()
        result = rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert len(env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))) == 1
    keys = {row[0] for row in env.sql("SELECT key_id FROM policy_heads UNION SELECT key_id FROM policies")}
    assert keys == {result.new_key_id}
    assert_intact(env, v1, v2)


def test_an_update_committed_between_the_head_and_the_ledger_is_read_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads are READ COMMITTED: an update another process commits after a read
    transaction read a policy's head row and before it read the ledger's size is, for that
    transaction, in the ledger only; the head is read again, not refused. (SQLite: one
    snapshot, the version read first stands.)"""
    v1 = env.ipc.apply(board_policy("app", [env.owner]), env.owner).hash
    env.restart()  # the head not verified before: the ledger is read
    update = board_policy("app", [env.owner], measurement=OTHER, predecessor=v1)
    done = env.commit_while_judged(monkeypatch, update, scanned=False)
    with env.cas.db.read() as conn:
        head = env.cas.policy_auth.head(conn, "app")
    assert done and head is not None
    assert head.hash == (done[0].hash if env.db_url else v1)


def test_a_head_verified_against_a_view_older_than_a_scan_is_not_cached(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head verified against the ledger as a transaction saw it before an update, while
    another read's scan of the update's entry drops the cached head, is not cached after that
    drop: the head and version rows then written back as they were before the update (each
    with its genuine MAC) are refused, not served from the cache."""
    v1 = env.ipc.apply(board_policy("app", [env.owner]), env.owner).hash
    old_head = env.head_row("app")
    [old_version] = env.sql(f"SELECT {VERSION_COLUMNS} FROM policies WHERE name = 'app' AND hash = ?", (v1,))
    env.restart()  # the head not verified before: the ledger is read
    update = board_policy("app", [env.owner], measurement=OTHER, predecessor=v1)
    done = env.commit_while_judged(monkeypatch, update, scanned=True)
    with env.cas.db.read() as conn:
        head = env.cas.policy_auth.head(conn, "app")
    assert done and head is not None and head.hash == v1  # as of its view: v1 was current
    monkeypatch.undo()
    env.set_head_row("app", old_head)
    env.sql(
        "UPDATE policies SET state = ?, key_id = ?, mac = ? WHERE name = 'app' AND hash = ?",
        (*old_version, v1),
    )
    with pytest.raises(PolicyRowsAltered, match=r"not the one its latest ledger entry names"):
        env.attest(MEASUREMENT)


def test_an_update_committed_again_during_the_second_read_is_not_a_refusal(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL READ COMMITTED: the head is read again after the ledger named a version the
    first read missed; a further update another process commits between that second read of
    the head and its ledger check is not a refusal either (the head read is the version of the
    refusing entry, or a later one: it was current when read). A head written back below the
    refusing entry is still refused (test_head_and_version_rolled_back_together_are_refused)."""
    v1 = env.ipc.apply(board_policy("app", [env.owner]), env.owner).hash
    env.restart()  # the head not verified before: the ledger is read
    index = env.cas.policy_auth.index
    view = index.view
    applied = [v1]

    def racing(conn: Any) -> Any:
        if len(applied) < 3:
            update = board_policy(
                "app", [env.owner], measurement=f"{len(applied):02x}" * 48, predecessor=applied[-1]
            )
            other = InProcessCas.start(env.data, "", db_url=env.db_url)
            try:
                applied.append(str(other.apply(update, env.owner).hash))
            finally:
                other.cas.db.dispose()
        return view(conn)

    monkeypatch.setattr(index, "view", racing)
    with env.cas.db.read() as conn:
        head = env.cas.policy_auth.head(conn, "app")
    assert len(applied) == (3 if env.db_url else 2) and head is not None  # SQLite: no second read
    assert head.hash == (applied[1] if env.db_url else v1)

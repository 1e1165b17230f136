"""Policy documents sealed at rest (confide.cas.policy_rows; docs/cas.md "Policies at rest"): a
policy's explicit secret ``value`` or volume ``fspf_key`` never reaches the database files in
clear (after apply, update, approval, migration, offline and online rotation), a sealed value
moved to another row or column, edited, or replaced by clear text is refused with
:class:`SignatureError`, and an older database is sealed at its first start. The real
in-process CAS on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import InProcessCas
from confide.cas import rotation
from confide.cas.core import APPROVAL_TYPE, READ_TYPE, WITHHELD, Cas, sign_document
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.declaration import declaration
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.policy_rows import PREFIX, SEALED_META, open_column, row_key_ids, seal_clear_rows
from confide.cas.rotation import rotate_master_key
from confide.cas.secrets import Sealer
from confide.errors import SignatureError
from confide.identity import Identity
from confide.policy.canonical import jcs
from confide.policy.secret import Secret

VOLUME_KEY = "5e" * 32
SECRET_VALUE = "an explicit password 7f3a9c"
SECRET_VALUE_2 = "the second explicit password 41b8e2"


def policy(name: str, body: str, *, predecessor: str | None = None, update: str = "[CREATOR]") -> str:
    pred = f"predecessor: {predecessor}\n" if predecessor else ""
    return f"""name: {name}
version: "0.3"
{pred}{body}
access_policy:
  read: [CREATOR]
  update: {update}
"""


EXPLICIT = (
    f"secrets:\n  - name: pw\n    kind: ascii\n    value: {SECRET_VALUE}\n"
    f'volumes:\n  - name: records\n    fspf_key: {VOLUME_KEY}\n    fspf_tag: "{"0c" * 32}"\n'
)
EXPLICIT_2 = EXPLICIT.replace(SECRET_VALUE, SECRET_VALUE_2)
WITH_OTHER = EXPLICIT.replace("volumes:", "  - name: other\n    kind: binary\nvolumes:")
NEEDLES = [SECRET_VALUE, SECRET_VALUE_2, VOLUME_KEY, VOLUME_KEY.upper()]


def read_request(cas: Cas, name: str, who: Identity, route: str = "show") -> dict[str, Any]:
    """A signed read request for ``cas`` and ``route`` (docs/cas.md "Policies and governance")."""
    body = {"type": READ_TYPE, "name": name, "nonce": cas.new_read_nonce(name, route),
            "cas": cas.tls_spki_sha256, "route": route}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


@dataclass
class Env:
    data: Path
    db_url: str | None
    ipc: InProcessCas
    owner: Identity
    pg_data: Path | None

    def restart(self) -> None:
        self.ipc.cas.db.dispose()
        self.ipc = InProcessCas.start(self.data, "", db_url=self.db_url)

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self.ipc.cas.db.write() as conn:
            cur = raw_execute(conn, statement, params)
            return list(cur.fetchall()) if statement.lstrip().upper().startswith("SELECT") else []

    def url(self) -> str:
        return self.db_url or f"sqlite:///{self.data / 'cas.db'}"

    def files(self) -> list[bytes]:
        """The raw bytes of the database's files (PostgreSQL: after a checkpoint, the database's
        directory; its write-ahead log is the server's, outside the CAS's control)."""
        if self.pg_data is None:
            return [p.read_bytes() for p in self.data.glob("cas.db*")]
        (oid,) = self.sql("SELECT oid FROM pg_database WHERE datname = current_database()")[0]
        db = Database(self.url())
        try:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                raw_execute(conn, "CHECKPOINT")
        finally:
            db.dispose()
        return [p.read_bytes() for p in (self.pg_data / "base" / str(oid)).iterdir() if p.is_file()]

    def assert_no_values(self) -> None:
        blobs = self.files()
        assert blobs
        for blob in blobs:
            for needle in NEEDLES:
                assert needle.encode() not in blob
            assert bytes.fromhex(VOLUME_KEY) not in blob
        for document, submission in self.sql("SELECT document, submission FROM policies"):
            assert document.startswith(PREFIX) and submission.startswith(PREFIX)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    pg_data = None
    db_url = None
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres")
        db_url, pg_data = cluster.new_database(), cluster.data
    data = tmp_path / "cas"
    out = Env(data, db_url, InProcessCas.start(data, "", db_url=db_url), Identity.generate(), pg_data)
    try:
        yield out
    finally:
        out.ipc.cas.db.dispose()


def apply_both(env: Env) -> str:
    """``vault`` with explicit values, then updated (new explicit values); returns its head hash."""
    first = env.ipc.apply(policy("vault", EXPLICIT), env.owner)
    second = env.ipc.apply(policy("vault", EXPLICIT_2, predecessor=first.hash), env.owner)
    assert second.state == "active"
    return str(second.hash)


def assert_shown(env: Env, digest: str) -> None:
    shown = env.ipc.cas.show(read_request(env.ipc.cas, "vault", env.owner))
    assert shown["hash"] == digest
    assert [s.get("value") for s in shown["policy"]["secrets"]] == [WITHHELD]
    assert [v.get("fspf_key") for v in shown["policy"]["volumes"]] == [WITHHELD]
    text = json.dumps(shown)
    assert all(needle not in text for needle in NEEDLES)


def test_apply_and_update_keep_explicit_values_out_of_the_database_files(env: Env) -> None:
    digest = apply_both(env)
    assert_shown(env, digest)
    env.assert_no_values()
    env.restart()  # read back from the database, not from the cache
    assert_shown(env, digest)


def test_a_pending_version_and_its_approval_stay_sealed(env: Env) -> None:
    other = Identity.generate()
    board = f"\n    - require-all:\n        - signer: {env.owner.fingerprint}\n        - signer: {other.fingerprint}"
    first = env.ipc.apply(policy("vault", EXPLICIT, update=board), env.owner)
    pending = env.ipc.apply(policy("vault", EXPLICIT_2, predecessor=first.hash, update=board), env.owner)
    assert pending.state == "pending"
    env.assert_no_values()
    approval = sign_document(
        {"type": APPROVAL_TYPE, "name": "vault", "hash": pending.hash, "cas": env.ipc.cas.tls_spki_sha256},
        other.sign,
        other.public.public_base64,
    )
    assert env.ipc.cas.approve(approval).state == "active"
    env.restart()
    assert env.ipc.cas.show(read_request(env.ipc.cas, "vault", env.owner))["hash"] == pending.hash
    env.assert_no_values()


def rows(env: Env) -> dict[tuple[str, str], tuple[str, str]]:
    return {(n, h): (d, s) for n, h, d, s in env.sql("SELECT name, hash, document, submission FROM policies")}


def set_row(env: Env, key: tuple[str, str], document: str, submission: str) -> None:
    env.sql(
        "UPDATE policies SET document = ?, submission = ? WHERE name = ? AND hash = ?",
        (document, submission, *key),
    )


@pytest.mark.parametrize("change", ["other-row", "other-column", "edited", "clear", "garbage"])
def test_a_moved_edited_or_clear_row_is_refused(env: Env, change: str) -> None:
    env.ipc.apply(policy("vault", EXPLICIT), env.owner)
    env.ipc.apply(policy("other", EXPLICIT_2), env.owner)
    stored = rows(env)
    [key] = [k for k in stored if k[0] == "vault"]
    [other] = [k for k in stored if k[0] == "other"]
    document, submission = stored[key]
    clear = open_column(env.ipc.cas.sealer, "document", key[0], key[1], document)
    match change:
        case "other-row":  # another policy's sealed document
            document = stored[other][0]
        case "other-column":  # the row's own submission as its document
            document, submission = submission, document
        case "edited":
            body = document[len(PREFIX) :]
            flipped = "A" if body[40] != "A" else "B"
            document = PREFIX + body[:40] + flipped + body[41:]
        case "clear":  # the right document, hashing to the row's hash, in clear
            document = clear
        case "garbage":
            document = PREFIX + "not base64!"
    set_row(env, key, document, submission)
    env.restart()  # no cached policy: the row is read
    with pytest.raises(SignatureError, match="stored policy vault") as info:
        env.ipc.cas.show(read_request(env.ipc.cas, "vault", env.owner))
    assert SECRET_VALUE not in str(info.value)
    # the start did not take the clear row as a migration: it stays refused
    assert rows(env)[key][0] == document
    env.ipc.cas.show(read_request(env.ipc.cas, "other", env.owner))  # the other policy is untouched


def test_a_clear_row_next_to_sealed_ones_is_never_sealed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Even with the ``meta`` row that records the migration removed: only a database whose
    rows are all clear is sealed at a start."""
    env.ipc.apply(policy("vault", EXPLICIT), env.owner)
    env.ipc.apply(policy("other", EXPLICIT_2), env.owner)
    stored = rows(env)
    [key] = [k for k in stored if k[0] == "vault"]
    document, submission = stored[key]
    clear = open_column(env.ipc.cas.sealer, "document", key[0], key[1], document)
    set_row(env, key, clear, submission)
    env.sql("DELETE FROM meta WHERE key = ?", (SEALED_META,))
    with caplog.at_level("WARNING", logger="confide.cas"):
        env.restart()
    assert any("policy-rows-not-sealed" in r.getMessage() for r in caplog.records)
    assert rows(env)[key][0] == clear
    assert env.sql("SELECT value FROM meta WHERE key = ?", (SEALED_META,)) == [("1",)]
    with pytest.raises(SignatureError, match="is not sealed"):
        env.ipc.cas.show(read_request(env.ipc.cas, "vault", env.owner))
    env.ipc.cas.show(read_request(env.ipc.cas, "other", env.owner))


def make_old(env: Env) -> dict[tuple[str, str], tuple[str, str]]:
    """Turn the database into one of schema 13 (the policy rows in clear, no ``policies_sealed``)
    and stop the CAS; returns the clear rows."""
    sealer = env.ipc.cas.sealer
    clear = {
        (n, h): (open_column(sealer, "document", n, h, d), open_column(sealer, "submission", n, h, s))
        for (n, h), (d, s) in rows(env).items()
    }
    for key, (document, submission) in clear.items():
        set_row(env, key, document, submission)
    env.sql("DELETE FROM meta WHERE key = ?", (SEALED_META,))
    env.sql("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
    assert any(SECRET_VALUE_2.encode() in blob for blob in env.files())  # the test sees clear rows
    env.ipc.cas.db.dispose()
    return clear


def test_an_older_database_is_sealed_at_its_first_start(env: Env) -> None:
    digest = apply_both(env)
    clear = make_old(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert env.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert env.sql("SELECT value FROM meta WHERE key = ?", (SEALED_META,)) == [("1",)]
    sealer = env.ipc.cas.sealer
    for (n, h), (document, submission) in rows(env).items():
        assert open_column(sealer, "document", n, h, document) == clear[(n, h)][0]
        assert open_column(sealer, "submission", n, h, submission) == clear[(n, h)][1]
    assert_shown(env, digest)
    env.assert_no_values()
    with env.ipc.cas.db.write() as conn:  # once: a second call does nothing
        assert seal_clear_rows(conn, sealer) is None


def test_offline_rotation_reseals_the_policy_rows(env: Env) -> None:
    digest = apply_both(env)
    old = env.ipc.cas.sealer
    before = rows(env)
    env.ipc.cas.db.dispose()
    db = Database(env.url())
    try:
        result = rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    after = rows(env)
    assert after.keys() == before.keys()
    for (n, h), (document, submission) in after.items():
        assert row_key_ids(document, submission) == {result.new_key_id}
        with pytest.raises(SignatureError):
            open_column(old, "document", n, h, document)
    assert_shown(env, digest)
    env.assert_no_values()
    [payload] = env.sql("SELECT payload FROM events WHERE type = 'master-key-rotated'")
    assert json.loads(payload[0])["policy_versions"] == len(after)


def test_offline_rotation_of_an_older_database_seals_its_rows(env: Env) -> None:
    digest = apply_both(env)
    make_old(env)
    db = Database(env.url())
    try:
        result = rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    for document, submission in rows(env).values():
        assert row_key_ids(document, submission) == {result.new_key_id}
    assert_shown(env, digest)
    env.assert_no_values()


@pytest.fixture
def pg_env(tmp_path: Path, postgres: Any) -> Iterator[Env]:
    """:func:`env` on PostgreSQL only."""
    db_url = postgres.new_database()
    data = tmp_path / "cas"
    out = Env(data, db_url, InProcessCas.start(data, "", db_url=db_url), Identity.generate(), postgres.data)
    try:
        yield out
    finally:
        out.ipc.cas.db.dispose()


@contextmanager
def old_snapshot(env: Env, table: str = "meta") -> Iterator[Connection]:
    """Another session of the database in a REPEATABLE READ transaction whose snapshot is
    taken now, after reading ``table`` (``meta``: no lock on the re-sealed tables); ended on
    exit if the test did not close it before."""
    other = Database(env.url())
    try:
        with other.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            conn.begin()
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0
            yield conn
    finally:
        other.dispose()


def assert_scrubbed(env: Env, digest: str) -> None:
    """The CAS started again on the rotated database serves the policy, and no clear value is
    left in the database files."""
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert_shown(env, digest)
    env.assert_no_values()


def rotate_offline(env: Env) -> Any:
    db = Database(env.url())
    try:
        return rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()


def test_vacuum_full_waits_for_a_session_older_than_the_resealing(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VACUUM FULL copies the row versions an older snapshot may still see: step 5 waits until
    no session of the database began before the re-sealing commit (here one that ends 1 s into
    the wait), so the clear rows are gone from the files."""
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_ATTEMPTS", 30)
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_WAIT_MS", 200)
    env = pg_env
    digest = apply_both(env)
    make_old(env)
    with old_snapshot(env) as conn:
        ended = threading.Timer(1.0, conn.close)
        ended.start()
        try:
            result = rotate_offline(env)
        finally:
            ended.join()
    assert result.wal_warning is None
    assert_scrubbed(env, digest)


def test_a_session_older_than_the_resealing_is_reported_and_the_next_rotation_scrubs(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that outlasts the wait: the rotation completes and warns (result, log) with
    its pid; the clear rows it may still read are in the files until the next rotation, which
    drops them once the session has ended."""
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_ATTEMPTS", 2)
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_WAIT_MS", 0)
    env = pg_env
    digest = apply_both(env)
    make_old(env)
    with old_snapshot(env) as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with caplog.at_level("WARNING", logger="confide.cas"):
            result = rotate_offline(env)
        assert result.wal_warning is not None and f"pid {pid}" in result.wal_warning
        (logged,) = [
            json.loads(r.getMessage())
            for r in caplog.records
            if rotation.EVENT_OLD_SNAPSHOT in r.getMessage()
        ]
        assert logged == {
            "event": rotation.EVENT_OLD_SNAPSHOT, "pids": [pid], "attempts": 2, "not_rewritten": []
        }  # fmt: skip
        assert any(SECRET_VALUE_2.encode() in blob for blob in env.files())  # kept for that session
        env.ipc.cas.db.dispose()  # files() read through the stopped CAS's pool
    assert rotate_offline(env).wal_warning is None
    assert_scrubbed(env, digest)


def test_a_session_holding_a_table_does_not_block_the_rotation(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session in a transaction that read ``policies`` holds off VACUUM FULL's lock: the wait
    is bounded (``lock_timeout``), the rotation completes and says which table was not
    rewritten; the next rotation rewrites it once the session has ended."""
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_ATTEMPTS", 1)
    monkeypatch.setattr(rotation, "VACUUM_LOCK_TIMEOUT_MS", 300)
    env = pg_env
    digest = apply_both(env)
    make_old(env)
    with old_snapshot(env, "policies"):
        result = rotate_offline(env)
    assert result.wal_warning is not None
    assert "VACUUM FULL of policies could not take its lock within 300 ms" in result.wal_warning
    assert rotate_offline(env).wal_warning is None
    assert_scrubbed(env, digest)


def test_online_rotation_reseals_the_policy_rows(env: Env) -> None:
    digest = apply_both(env)
    env.ipc.apply(policy("other", EXPLICIT), env.owner)
    old_key = load_master_key(env.data, None)
    cas = env.ipc.cas
    status = OnlineRotation(
        env.data, cas.db, cas.sealer, None, LedgerEventSink(), None, batch_size=1, pause=0
    ).run()
    assert status.state == "done" and status.policy_versions == 3
    stored = rows(env)
    for (n, h), (document, submission) in stored.items():
        assert row_key_ids(document, submission) == {status.new_key_id}
        with pytest.raises(SignatureError):
            open_column(Sealer(old_key), "submission", n, h, submission)
    env.restart()
    assert_shown(env, digest)
    env.assert_no_values()


# --- the secrets' declaration fingerprints (secrets.public "spec") -----------------------------


def guess_fingerprint(value: str) -> str:
    """What an operator who reads ``secrets.public`` could compute for a guessed explicit value:
    the SHA-256 of the declaration as the CAS fingerprinted it before 2026-12 (the name and kind
    are in the row's own columns, every other field of an explicit ascii secret is a default)."""
    spec = Secret.model_validate({"name": "pw", "kind": "ascii", "value": value})
    return hashlib.sha256(jcs(declaration(spec))).hexdigest()


def pw_rows(env: Env) -> list[tuple[int, str]]:
    return [
        (int(v), p)
        for v, p in env.sql("SELECT version, public FROM secrets WHERE policy = 'vault' AND name = 'pw'")
    ]


def test_an_explicit_value_cannot_be_confirmed_from_its_declaration_fingerprint(env: Env) -> None:
    """An unsalted hash of the declaration would hold the explicit value: a guessed password
    checked offline against the clear ``public`` column (docs/cas.md "Policies at rest")."""
    apply_both(env)
    publics = [p for _v, p in pw_rows(env)]
    assert len(publics) == 2
    for value in (SECRET_VALUE, SECRET_VALUE_2):
        needle = guess_fingerprint(value)
        assert all(needle not in p for p in publics)
        assert all(needle.encode() not in blob for blob in env.files())
    assert json.loads(publics[0])["spec"] == json.loads(publics[1])["spec"]  # the value is not in it


def test_an_explicit_value_still_decides_whether_a_new_version_is_made(env: Env) -> None:
    first = env.ipc.apply(policy("vault", EXPLICIT), env.owner)
    again = env.ipc.apply(policy("vault", WITH_OTHER, predecessor=first.hash), env.owner)
    assert [v for v, _p in pw_rows(env)] == [1]  # the same value: no new version
    changed = env.ipc.apply(policy("vault", EXPLICIT_2, predecessor=again.hash), env.owner)
    assert changed.state == "active"
    assert [v for v, _p in pw_rows(env)] == [1, 2]  # another value: a new version
    (row,) = env.sql("SELECT policy, name, version, sealed FROM secrets WHERE name = 'pw' AND version = 2")
    value = env.ipc.cas.sealer.unseal(bytes(row[3]), policy="vault", name="pw", version=2)
    assert value.data == SECRET_VALUE_2.encode()


def test_a_fingerprint_stored_before_is_honoured_then_replaced(env: Env) -> None:
    """A row stored with the old fingerprint (the value hashed in) keeps its version at the next
    update that does not change it, and its ``public`` loses the old fingerprint."""
    first = env.ipc.apply(policy("vault", EXPLICIT), env.owner)
    ((version, public),) = pw_rows(env)
    legacy = guess_fingerprint(SECRET_VALUE)
    env.sql(
        "UPDATE secrets SET public = ? WHERE policy = 'vault' AND name = 'pw'",
        (json.dumps({**json.loads(public), "spec": legacy}),),
    )
    env.restart()
    env.ipc.apply(policy("vault", WITH_OTHER, predecessor=first.hash), env.owner)
    ((version_after, public_after),) = pw_rows(env)
    assert version_after == version
    assert legacy not in public_after
    assert json.loads(public_after)["spec"] == json.loads(public)["spec"]

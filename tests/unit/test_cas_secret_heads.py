"""Each secret's current version authenticated (schema 19; confide.cas.secret_heads, docs/cas.md
"What a secret's current version rests on"): the operator (database access, no master key) who
deletes a secret's newest row, or inserts one above it, gets the release refused, never the
previous value, on every path that writes a version (first generation, update, volume key,
renewal, owner's revocation, import resolution); the upgrade from schema 18 writes the heads
once; master-key rotation keeps them verifying. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import MEASUREMENT, DbEnv, InProcessCas
from confide.cas.core import decrypt_release
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.rotation import rotate_master_key
from confide.cas.secret_heads import BOUND_META, EVENT_BOUND, SecretRowsAltered, bind_unbound
from confide.errors import StorageError
from confide.identity import Identity
from crl_env import FILES, T0, policy, started

HEAD_COLUMNS = "version, updated_at, key_id, mac"
VOLUME_KEY_1 = "5e" * 32
VOLUME_KEY_2 = "a7" * 32


def owned(size: int, predecessor: str | None = None, volume_key: str = VOLUME_KEY_1) -> str:
    """Policy ``owned``: password ``pw`` of ``size`` characters in a file, volume ``data`` with
    ``volume_key``, exporting ``pw`` to policy ``reader``."""
    pred = "" if predecessor is None else f"predecessor: {predecessor}\n"
    return f"""name: owned
version: "0.3"
{pred}services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: pw
    kind: ascii
    size: {size}
    export:
      - session: reader
volumes:
  - name: data
    fspf_key: {volume_key}
    fspf_tag: "{"0c" * 32}"
images:
  - name: img
    injection_files:
      - path: /dev/shm/owned/out
        content: "$$SCONE::pw$$"
    volumes:
      - name: data
        path: /data
security:
  attestation:
    tolerate: [simulation]
"""


READER = f"""name: reader
version: "0.3"
services:
  - name: svc
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
  - name: mine
    import:
      session: owned
      secret: pw
images:
  - name: img
    injection_files:
      - path: /dev/shm/reader/out
        content: "$$SCONE::mine$$"
security:
  attestation:
    tolerate: [simulation]
"""


@dataclass
class Env(DbEnv):
    def url(self) -> str:
        return self.db_url or f"sqlite:///{self.data / 'cas.db'}"

    def release(self, name: str = "owned") -> dict[str, Any]:
        body, key = self.ipc.request(policy=name)
        return decrypt_release(key, self.cas.attest(body), bytes.fromhex(body["nonce"]))

    def password(self, name: str = "owned") -> bytes:
        return base64.b64decode(self.release(name)["files"][f"/dev/shm/{name}/out"])

    def head_row(self, name: str, policy: str = "owned") -> tuple[Any, ...]:
        [row] = self.sql(
            f"SELECT {HEAD_COLUMNS} FROM secret_heads WHERE policy = ? AND name = ?", (policy, name)
        )
        return row

    def rows(self, name: str, policy: str = "owned") -> list[tuple[Any, ...]]:
        return self.sql(
            "SELECT policy, name, version, kind, sealed, public, created_at FROM secrets "
            "WHERE policy = ? AND name = ? ORDER BY version",
            (policy, name),
        )

    def delete(self, name: str, version: int, policy: str = "owned") -> tuple[Any, ...]:
        [row] = [r for r in self.rows(name, policy) if r[2] == version]
        self.sql("DELETE FROM secrets WHERE policy = ? AND name = ? AND version = ?", (policy, name, version))
        self.cas._unsealed.clear()
        return row

    def insert(self, row: tuple[Any, ...]) -> None:
        self.sql(
            "INSERT INTO secrets (policy, name, version, kind, sealed, public, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    data = tmp_path / "cas"
    out = Env(data, db_url, InProcessCas.start(data, "", db_url=db_url), Identity.generate())
    try:
        yield out
    finally:
        out.cas.db.dispose()


def refused(env: Env, name: str = "owned", secret: str = "pw") -> SecretRowsAltered:
    with pytest.raises(SecretRowsAltered) as caught:
        env.release(name)
    assert caught.value.name == secret and isinstance(caught.value, StorageError)
    return caught.value


def updated(env: Env) -> tuple[bytes, bytes]:
    """``owned`` created (pw of 20 characters) and updated (21): the two values released."""
    first = env.ipc.apply(owned(20), env.owner)
    old = env.password()
    env.ipc.apply(owned(21, first.hash), env.owner)
    new = env.password()
    assert (len(old), len(new)) == (20, 21)
    return old, new


def test_an_update_s_newest_row_deleted_is_refused_not_rolled_back(env: Env) -> None:
    old, new = updated(env)
    assert env.head_row("pw")[0] == 2
    row = env.delete("pw", 2)
    error = refused(env)
    assert "'pw'" in str(error) and "'owned'" in str(error) and "version 2 is missing" in str(error)
    for value in (old, new):
        assert value.decode() not in str(error)
    # not changed either: an update of the secret's declaration is refused too
    with pytest.raises(SecretRowsAltered):
        env.ipc.apply(
            owned(22, env.sql("SELECT hash FROM policy_heads WHERE name = 'owned'")[0][0]), env.owner
        )
    env.insert(row)  # restored: released again, the current value
    assert env.password() == new


def test_first_generation_deleted_and_a_head_deleted_are_refused(env: Env) -> None:
    env.ipc.apply(owned(20), env.owner)
    value = env.password()
    assert env.head_row("pw")[0] == 1
    row = env.delete("pw", 1)
    assert "version 1 is missing" in str(refused(env))
    env.insert(row)
    assert env.password() == value
    head = env.head_row("pw")
    env.sql("DELETE FROM secret_heads WHERE policy = 'owned' AND name = 'pw'")
    assert "not recorded" in str(refused(env))
    env.sql(
        f"INSERT INTO secret_heads (policy, name, {HEAD_COLUMNS}) VALUES ('owned', 'pw', ?, ?, ?, ?)", head
    )
    assert env.password() == value


def test_a_row_above_the_head_or_an_edited_head_is_refused(env: Env) -> None:
    _old, new = updated(env)
    # the newest row copied as version 3 (no head names it)
    row = env.rows("pw")[-1]
    env.insert((*row[:2], 3, *row[3:]))
    assert "newest row is version 3" in str(refused(env))
    env.sql("DELETE FROM secrets WHERE policy = 'owned' AND name = 'pw' AND version = 3")
    assert env.password() == new
    # the head's version edited down to 1 with the newest row deleted: its MAC no longer verifies
    env.delete("pw", 2)
    env.sql("UPDATE secret_heads SET version = 1 WHERE policy = 'owned' AND name = 'pw'")
    assert "does not authenticate" in str(refused(env))
    # nor a head MAC'd under a key this CAS does not hold
    env.sql("UPDATE secret_heads SET version = 2, key_id = ? WHERE policy = 'owned'", ("0" * 32,))
    with pytest.raises(SecretRowsAltered, match="does not authenticate"):
        env.release()


def test_a_volume_key_s_newest_row_deleted_is_refused(env: Env) -> None:
    first = env.ipc.apply(owned(20), env.owner)
    assert env.release()["volumes"][0]["key"] == VOLUME_KEY_1
    env.ipc.apply(owned(20, first.hash, VOLUME_KEY_2), env.owner)
    assert env.release()["volumes"][0]["key"] == VOLUME_KEY_2
    assert env.head_row("volume/data")[0] == 2
    env.delete("volume/data", 2)
    refused(env, secret="volume/data")


def test_an_import_of_a_secret_whose_newest_row_was_deleted_is_refused(env: Env) -> None:
    _old, new = updated(env)
    env.ipc.apply(READER, Identity.generate())
    assert env.password("reader") == new
    env.delete("pw", 2)
    error = refused(env, "reader")
    assert error.policy == "owned"


def test_a_head_row_written_back_with_the_newest_row_deleted_is_refused(env: Env) -> None:
    """The operator keeps the head row as it was after the first version (its genuine MAC),
    and after the update writes it back and deletes the newest row: the ledger's
    ``secrets.generated`` entry of version 2 refuses it, in this process (its verified head
    no longer matches the row) and in a fresh one."""
    first = env.ipc.apply(owned(20), env.owner)
    env.password()
    saved = env.head_row("pw")
    env.ipc.apply(owned(21, first.hash), env.owner)
    new = env.password()
    row = env.delete("pw", 2)
    head = env.head_row("pw")
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'pw'",
        saved,
    )
    error = refused(env)
    assert "current version is 1" in str(error) and "records version 2" in str(error)
    assert error.deleted_after == 2
    env.restart()
    assert "records version 2" in str(refused(env))
    # restored (row and head): released again, the current value
    env.insert(row)
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'pw'",
        head,
    )
    assert env.password() == new


# --- the upgrade from schema 18 ----------------------------------------------------------------


def make_schema_18(env: Env) -> None:
    """Turn the database into one of schema 18 (no ``secret_heads``, no marker) and stop the CAS."""
    env.sql("DROP TABLE secret_heads")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    env.sql("UPDATE meta SET value = '18' WHERE key = 'schema_version'")  # a past schema: its number
    env.cas.db.dispose()


def test_a_schema_18_database_gets_its_heads_once_at_its_first_start(env: Env) -> None:
    _old, new = updated(env)
    make_schema_18(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert env.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert env.sql("SELECT value FROM meta WHERE key = ?", (BOUND_META,)) == [("1",)]
    [(payload,)] = env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))
    assert json.loads(payload)["secrets"] == 2  # pw and volume/data
    assert env.head_row("pw")[0] == 2 and env.head_row("volume/data")[0] == 1
    with env.cas.db.write() as conn:  # once: a second call does nothing
        assert bind_unbound(conn, env.cas.sealer, 0.0) is None
    assert env.password() == new
    env.delete("pw", 2)
    refused(env)


def test_the_upgrade_binds_the_rows_it_finds_and_the_ledger_refuses_a_deleted_one(env: Env) -> None:
    """A newest row deleted before the first start of schema 19: the binding writes the head
    for the row it finds (version 1), but the ledger's ``secrets.generated`` entry of version 2
    refuses it at the release."""
    updated(env)
    make_schema_18(env)
    db = Database(env.url())
    try:
        with db.write() as conn:
            raw_execute(conn, "DELETE FROM secrets WHERE policy = 'owned' AND name = 'pw' AND version = 2")
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert env.head_row("pw")[0] == 1
    assert "records version 2" in str(refused(env))


def test_a_version_the_ledger_never_recorded_is_trusted_as_found(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust on first migration (docs/cas.md): a volume key's new version written before schema
    20 had no ledger entry (simulated: its ``volume-key`` event dropped); its newest row deleted
    before the heads were bound is not noticed. The versions the ledger records are."""
    first = env.ipc.apply(owned(20), env.owner)
    record = env.cas.events.record

    def without_volume_keys(conn: Any, type_: str, policy: str | None, payload: dict[str, Any]) -> int:
        return 0 if type_ == "volume-key" else record(conn, type_, policy, payload)

    monkeypatch.setattr(env.cas.events, "record", without_volume_keys)
    env.ipc.apply(owned(20, first.hash, VOLUME_KEY_2), env.owner)
    monkeypatch.undo()
    make_schema_18(env)
    db = Database(env.url())
    try:
        with db.write() as conn:
            raw_execute(
                conn, "DELETE FROM secrets WHERE policy = 'owned' AND name = 'volume/data' AND version = 2"
            )
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert env.head_row("volume/data")[0] == 1
    assert env.release()["volumes"][0]["key"] == VOLUME_KEY_1


def test_heads_without_the_marker_are_not_bound_again(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """After the upgrade: an operator who deletes a newest row, the heads of the others and the
    marker does not get the rows taken as found at the next start."""
    updated(env)
    env.delete("pw", 2)
    env.sql("DELETE FROM secret_heads WHERE name = 'pw'")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    with caplog.at_level("WARNING", logger="confide.cas"):
        env.restart()
    assert any("secret-heads-not-bound" in r.getMessage() for r in caplog.records)
    assert "not recorded" in str(refused(env))


def test_heads_bound_once_are_not_bound_again_when_all_are_removed_with_the_marker(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade's binding (its ``secret-heads-bound`` event): an operator who deletes a
    newest row, *every* head and the marker does not get the rows taken as found again at the
    next start (the event says the heads were bound before)."""
    _old, _new = updated(env)
    make_schema_18(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert len(env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))) == 1
    env.delete("pw", 2)
    env.sql("DELETE FROM secret_heads")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    with caplog.at_level("WARNING", logger="confide.cas"):
        env.restart()
    assert any("secret-heads-not-bound" in r.getMessage() for r in caplog.records)
    assert len(env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))) == 1
    with pytest.raises(SecretRowsAltered, match="not recorded"):  # pw's, or the volume key's first
        env.release()


def test_offline_rotation_keeps_the_heads_verifying_and_binds_a_schema_18_database(env: Env) -> None:
    _old, new = updated(env)
    before = env.head_row("pw")
    make_schema_18(env)
    db = Database(env.url())
    try:
        db.migrate()
        result = rotate_master_key(env.data, db, seal=None, to_seal=None, events=LedgerEventSink())
    finally:
        db.dispose()
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    assert len(env.sql("SELECT payload FROM events WHERE type = ?", (EVENT_BOUND,))) == 1
    assert {r[0] for r in env.sql("SELECT key_id FROM secret_heads")} == {result.new_key_id}
    assert env.password() == new
    # the head as MAC'd under the old key, written back: that key is rotated away
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'pw'",
        before,
    )
    assert "does not authenticate" in str(refused(env))


# --- renewal and owner's revocation (the CRL test policy: CA ``ca``, leaf ``srv``) -------------


# the leaf's private key released too
WITH_KEY = policy().replace(
    f"      - path: {FILES}/ca.pem\n",
    f'      - path: {FILES}/srv.key\n        content: "$$SCONE::srv_key$$"\n      - path: {FILES}/ca.pem\n',
)


@pytest.fixture(params=["sqlite", "postgresql"])
def pki(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    with started(tmp_path / "cas", db_url, WITH_KEY) as out:
        yield out


def _serial(files: dict[str, bytes]) -> int:
    return x509.load_pem_x509_certificates(files[f"{FILES}/srv.pem"])[0].serial_number


def _delete_newest(pki: Any, name: str) -> None:
    with pki.cas.db.write() as conn:
        raw_execute(
            conn,
            "DELETE FROM secrets WHERE policy = 'tls' AND name = ? AND version = "
            "(SELECT MAX(version) FROM secrets WHERE policy = 'tls' AND name = ?)",
            (name, name),
        )
    pki.cas._unsealed.clear()


def test_a_renewed_certificate_s_row_deleted_is_refused(pki: Any) -> None:
    first = _serial(pki.release())
    pki.clock.now = T0 + 21 * 86400
    renewed = _serial(pki.release())  # renewed at the release: version 2
    assert renewed != first and [v for v, _ in pki.versions("srv")] == [1, 2]
    _delete_newest(pki, "srv")
    with pytest.raises(SecretRowsAltered, match="'srv'"):
        pki.release()


def test_a_key_regenerated_after_key_compromise_deleted_is_refused(pki: Any) -> None:
    first = _serial(pki.release())
    pki.clock.now += 60
    result = pki.cas.revoke_certificates(pki.revocation(serial=first, reason="keyCompromise"))
    assert {c["name"] for c in result["reissued"]} == {"srv_key", "srv"}
    new_key = pki.release()[f"{FILES}/srv.key"]
    _delete_newest(pki, "srv_key")  # the compromised key back as the newest row
    with pytest.raises(SecretRowsAltered, match="'srv_key'"):
        pki.release()
    _delete_newest(pki, "srv")
    with pytest.raises(SecretRowsAltered):
        pki.release()
    assert new_key


# --- every version a ledger entry names (confide.cas.secret_ledger) ---------------------------


def recorded_everywhere(cas: Any) -> dict[tuple[str, str], int]:
    """Every secret's head names the newest version the ledger's entries record for it (the
    head index's view, read from the entries themselves). Returns the heads."""
    with cas.db.read() as conn:
        heads = {(str(p), str(n)): int(v) for p, n, v in
                 raw_execute(conn, "SELECT policy, name, version FROM secret_heads").fetchall()}  # fmt: skip
        view = cas.policy_auth.index.view(conn)
        ledger = {key: view.secret(*key) for key in heads}
    assert heads and {key: v[0] for key, v in ledger.items() if v is not None} == heads
    return heads


def test_each_write_of_a_version_has_its_ledger_entry(env: Env) -> None:
    """First generation, update, a volume key's first and new version: each version has an
    entry naming policy, secret and version (``volume.key`` for a volume key), never a value."""
    old, new = updated(env)
    head = env.sql("SELECT hash FROM policy_heads WHERE name = 'owned'")[0][0]
    env.ipc.apply(owned(21, head, VOLUME_KEY_2), env.owner)
    assert recorded_everywhere(env.cas) == {("owned", "pw"): 2, ("owned", "volume/data"): 2}
    payloads = [json.loads(p) for (p,) in env.sql("SELECT payload FROM events WHERE type = 'volume-key'")]
    assert [[(k["name"], k["version"], k["source"]) for k in p["keys"]] for p in payloads] == [
        [("volume/data", 1, "declared")],
        [("volume/data", 2, "declared")],
    ]
    entries = env.sql("SELECT data FROM ledger_entries")
    text = b"".join(bytes(d) for (d,) in entries)
    assert b'"type":"volume.key"' in text
    for value in (old, new, VOLUME_KEY_1.encode(), VOLUME_KEY_2.encode()):
        assert value not in text


def test_a_volume_key_s_head_written_back_is_refused(env: Env) -> None:
    first = env.ipc.apply(owned(20), env.owner)
    saved = env.head_row("volume/data")
    env.ipc.apply(owned(20, first.hash, VOLUME_KEY_2), env.owner)
    assert env.release()["volumes"][0]["key"] == VOLUME_KEY_2
    env.delete("volume/data", 2)
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'volume/data'",
        saved,
    )
    assert "records version 2" in str(refused(env, secret="volume/data"))


def test_rows_and_head_deleted_are_refused_when_the_ledger_records_a_version(env: Env) -> None:
    """No row and no head looks like a secret not generated yet: the ledger says otherwise."""
    updated(env)
    rows = env.rows("pw")
    head = env.head_row("pw")
    env.sql("DELETE FROM secrets WHERE policy = 'owned' AND name = 'pw'")
    env.sql("DELETE FROM secret_heads WHERE policy = 'owned' AND name = 'pw'")
    env.cas._unsealed.clear()
    error = refused(env)
    assert "neither rows nor a current version" in str(error) and error.deleted_after == 2
    for row in rows:
        env.insert(row)
    env.sql(
        f"INSERT INTO secret_heads (policy, name, {HEAD_COLUMNS}) VALUES ('owned', 'pw', ?, ?, ?, ?)", head
    )
    assert len(env.password()) == 21


def test_heads_are_not_bound_again_when_the_ledger_records_a_binding(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade's binding: an operator who deletes a newest row, *every* head, the
    marker and the ``secret-heads-bound`` event row does not get the rows bound again: the
    ledger's ``secrets.heads-bound`` entry says the heads were bound before."""
    updated(env)
    make_schema_18(env)
    env.ipc = InProcessCas.start(env.data, "", db_url=env.db_url)
    env.delete("pw", 2)
    env.sql("DELETE FROM secret_heads")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    env.sql("DELETE FROM events WHERE type = ?", (EVENT_BOUND,))
    with caplog.at_level("WARNING", logger="confide.cas"):
        env.restart()
    assert any("secret-heads-not-bound" in r.getMessage() for r in caplog.records)
    assert env.sql("SELECT COUNT(*) FROM secret_heads") == [(0,)]
    with pytest.raises(SecretRowsAltered, match="not recorded"):
        env.release()


def test_heads_bound_again_on_a_database_without_a_binding_are_refused_by_the_ledger(
    env: Env,
) -> None:
    """A database created at schema 19 or later (no ``secrets.heads-bound`` entry) stripped of
    every head and of the marker binds again at its next start, for the rows as found; the
    ledger's entries still refuse the secret whose newest row was deleted."""
    updated(env)
    env.delete("pw", 2)
    env.sql("DELETE FROM secret_heads")
    env.sql("DELETE FROM meta WHERE key = ?", (BOUND_META,))
    env.restart()
    assert env.head_row("pw")[0] == 1  # bound again, as found
    assert "records version 2" in str(refused(env))


def test_a_scan_that_finds_a_newer_version_drops_the_verified_head(env: Env) -> None:
    """This process verified version 1's head; another process (the same database) writes
    version 2; the operator writes version 1's head back and deletes version 2's row before
    this process reads the secret again: its next scan of the ledger drops the verified head,
    so the head written back is checked (and refused)."""
    first = env.ipc.apply(owned(20), env.owner)
    env.password()
    saved = env.head_row("pw")
    other = InProcessCas.start(env.data, "", db_url=env.db_url)
    try:
        other.apply(owned(21, first.hash), env.owner)
    finally:
        other.cas.db.dispose()
    env.delete("pw", 2)
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'pw'",
        saved,
    )
    with env.cas.db.read() as conn:  # cas serve's refresher does this every few seconds
        env.cas.policy_auth.index.refresh(conn)
    assert "records version 2" in str(refused(env))


def test_renewal_and_revocation_record_each_version(pki: Any) -> None:
    first = _serial(pki.release())
    pki.clock.now = T0 + 21 * 86400
    pki.release()  # renewed: certificates.renewed
    recorded_everywhere(pki.cas)
    pki.clock.now += 60
    pki.cas.revoke_certificates(pki.revocation(serial=_serial(pki.release()), reason="keyCompromise"))
    heads = recorded_everywhere(pki.cas)  # re-issued: secrets.generated (cause revocation)
    assert heads[("tls", "srv")] == 3 and heads[("tls", "srv_key")] == 2
    assert first


def test_a_process_starting_from_the_stored_snapshot_refuses_a_head_written_back(env: Env) -> None:
    """The snapshot (``policy_head_anchor.secrets``, under its MAC) keeps each secret's newest
    recorded version: a fresh process that starts from it, scanning only the entries after it,
    refuses the head written back."""
    first = env.ipc.apply(owned(20), env.owner)
    saved = env.head_row("pw")
    env.ipc.apply(owned(21, first.hash), env.owner)
    index = env.cas.policy_auth.index
    with env.cas.db.read() as conn:
        index.refresh(conn)
    with env.cas.db.write() as conn:
        index.store(conn, 0.0)
    [(size, text)] = env.sql("SELECT size, secrets FROM policy_head_anchor")
    assert [r[:2] + r[3:] for r in json.loads(text)["versions"]] == [
        ["owned", "pw", 2],
        ["owned", "volume/data", 1],
    ]
    env.delete("pw", 2)
    env.sql(
        "UPDATE secret_heads SET version = ?, updated_at = ?, key_id = ?, mac = ? WHERE policy = 'owned' "
        "AND name = 'pw'",
        saved,
    )
    env.restart()
    assert env.sql("SELECT size FROM policy_head_anchor")[0][0] >= size
    assert "records version 2" in str(refused(env))


def test_a_schema_19_database_keeps_its_secrets_and_gets_a_new_snapshot(env: Env) -> None:
    """The upgrade from schema 19 deletes the snapshot (its MAC covers no versions); the next
    start scans the ledger and writes one that does; the secrets are released as before."""
    _old, new = updated(env)
    with env.cas.db.read() as conn:
        env.cas.policy_auth.index.refresh(conn)
    with env.cas.db.write() as conn:
        env.cas.policy_auth.index.store(conn, 0.0)
    env.sql("ALTER TABLE policy_head_anchor DROP COLUMN secrets")
    env.sql("UPDATE meta SET value = '19' WHERE key = 'schema_version'")  # a past schema: its number
    env.restart()
    assert env.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    [(text,)] = env.sql("SELECT secrets FROM policy_head_anchor")
    assert ["owned", "pw"] in [r[:2] for r in json.loads(text)["versions"]]
    assert env.password() == new


def test_a_version_committed_between_the_rows_and_the_ledger_is_read_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads are READ COMMITTED: an update another process commits after a read
    transaction read a secret's rows and before it read the ledger's size is, for that
    transaction, in the ledger only; the rows are read again, not refused. (SQLite: one
    snapshot, the version read first stands.)"""
    first = env.ipc.apply(owned(20), env.owner)
    env.password()
    env.cas.secret_heads.forget([("owned", "pw")], 0)  # not verified before: the ledger is read
    done = env.commit_while_judged(monkeypatch, owned(21, first.hash), scanned=False)
    with env.cas.db.read() as conn:
        row = env.cas._latest_secret(conn, "owned", "pw")
    assert done and row is not None
    assert row.version == (2 if env.db_url else 1)


def test_a_version_committed_again_during_the_second_read_is_not_a_refusal(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL READ COMMITTED: the rows are read again after the ledger named a version the
    first read of them missed; a further version another process commits between that second
    read of the rows and its ledger check is not a refusal either (the check is against the
    ledger as of the first read, whose entries were committed before the rows were read again).
    Before 2026-12-07 the second ledger check read the ledger anew: SecretRowsAltered for a
    secret nobody altered. A head written back below the ledger's version is still refused."""
    first = env.ipc.apply(owned(20), env.owner)
    env.password()
    env.cas.secret_heads.forget([("owned", "pw")], 0)  # not verified before: the ledger is read
    index = env.cas.policy_auth.index
    view = index.view
    updates = [owned(21, first.hash)]

    def racing(conn: Any) -> Any:
        if len(updates) < 3:
            other = InProcessCas.start(env.data, "", db_url=env.db_url)
            try:
                updates.append(owned(22 + len(updates), other.apply(updates[-1], env.owner).hash))
            finally:
                other.cas.db.dispose()
        return view(conn)

    monkeypatch.setattr(index, "view", racing)
    with env.cas.db.read() as conn:
        row = env.cas._latest_secret(conn, "owned", "pw")
    assert len(updates) == (3 if env.db_url else 2) and row is not None  # SQLite: no second read
    assert row.version == (2 if env.db_url else 1)


def test_a_head_verified_against_a_view_older_than_a_scan_is_not_cached(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret's head verified against the ledger as a transaction saw it before an update,
    while another read's scan of the update's entry drops the cached head, is not cached after
    that drop: the head written back as it was before the update (its genuine MAC) with the
    newer row deleted is refused, not served from the cache."""
    first = env.ipc.apply(owned(20), env.owner)
    old = env.password()
    old_head = env.head_row("pw")
    env.restart()  # the head not verified before: the ledger is read
    done = env.commit_while_judged(monkeypatch, owned(21, first.hash), scanned=True)
    with env.cas.db.read() as conn:
        row = env.cas._latest_secret(conn, "owned", "pw")
    assert done and row is not None and row.version == 1  # as of its view: version 1 was current
    monkeypatch.undo()
    env.delete("pw", 2)
    env.sql(
        f"UPDATE secret_heads SET ({HEAD_COLUMNS}) = (?, ?, ?, ?) WHERE policy = 'owned' AND name = 'pw'",
        old_head,
    )
    error = refused(env)
    assert "ledger entry" in str(error) and old.decode() not in str(error)

"""Authenticated revocation records (confide.cas.revocation_auth; docs/cas.md "What the revocation
records rest on"): a row of ``revoked_certificates`` deleted, edited or forged by someone who can
write the database but has no master key is detected and never un-revokes a certificate or is
honoured: no new CRL (the last one stays), no ``good`` from the OCSP responder, a revocation that
would build on them refused; the migration of schema-12 rows, and master-key rotation (offline and
online). The real in-process CAS on SQLite and PostgreSQL, injected clock."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from test_cas_ocsp import OCSP, ask, request

from confide.cas.crl import DEFAULT_CRL_VALIDITY
from confide.cas.db import SCHEMA_VERSION, Database, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import load_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.renewal import CertificateRenewer
from confide.cas.revocation_auth import RevocationsAltered, bind_unbound, verified_rows
from confide.cas.rotation import rotate_master_key
from confide.cas.secrets import Sealer
from confide.errors import StorageError
from crl_env import Env, number, policy, revoked, started

S = ocsp.OCSPResponseStatus
C = ocsp.OCSPCertStatus


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    with started(tmp_path / "cas", db_url=db_url, text=policy(ca_extra=OCSP)) as out:
        yield out


def key_id(env: Env) -> str:
    return env.ca_cert().extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def revoke_first(env: Env) -> x509.Certificate:
    """Revoke the current ``srv`` certificate (a new one is issued); returns the revoked one."""
    leaf = env.certificate()
    env.cas.revoke_certificates(env.revocation(serial=leaf.serial_number, reason="keyCompromise"))
    assert leaf.serial_number in revoked(env.crl())
    return leaf


def tamper(env: Env, statement: str, params: tuple[object, ...] = ()) -> None:
    with env.cas.db.write() as conn:
        raw_execute(conn, statement, params)


def events(env: Env, type_: str) -> list[dict[str, object]]:
    with env.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def assert_fails_closed(
    env: Env, caplog: pytest.LogCaptureFixture, check: str, leaf: x509.Certificate
) -> None:
    """The OCSP responder answers ``tryLater`` for the valid current leaf (never ``good``) and
    ``revoked`` for ``leaf``, which the CA's signed CRL lists; the sweep past half the CRL's
    validity signs no new CRL (the last one, listing ``leaf``, stays), warns and records
    ``revocations-altered`` with ``check``, after which the responder gives no successful answer
    (its CRL is due and cannot be re-issued); another revocation is refused and records
    nothing."""
    ca, good = env.ca_cert(), env.certificate()
    with caplog.at_level("WARNING", logger="confide.cas"):
        assert ask(env, request(good, ca, nonce=b"g" * 8)).response_status == S.TRY_LATER
    refused = [
        json.loads(r.getMessage()) for r in caplog.records if "ocsp-revocations-refused" in r.getMessage()
    ]
    assert refused and refused[0]["check"] == check
    answer = ask(env, request(leaf, ca, nonce=b"r" * 8))
    assert answer.certificate_status == C.REVOKED  # from the signed CRL
    before = env.crl()
    env.clock.now += DEFAULT_CRL_VALIDITY * 0.6
    with caplog.at_level("WARNING", logger="confide.cas"):
        CertificateRenewer(env.cas).sweep_once()
    after = env.crl()
    assert number(after) == number(before) and set(revoked(after)) == {leaf.serial_number}
    recorded = events(env, "revocations-altered")
    assert recorded and all(
        e["cas"] == [{"ca": "ca", "policy": "tls", "issuer_key_id": key_id(env), "check": check}]
        for e in recorded
    )
    warned = [json.loads(r.getMessage()) for r in caplog.records if "revocations-altered" in r.getMessage()]
    assert warned and warned[0]["check"] == check
    assert ask(env, request(good, ca, nonce=b"h" * 8)).response_status != S.SUCCESSFUL
    with env.cas.db.read() as conn:
        rows = raw_execute(conn, "SELECT COUNT(*) FROM revoked_certificates").fetchone()[0]
    with pytest.raises(StorageError, match="do not authenticate"):
        env.cas.revoke_certificates(env.revocation(serial=good.serial_number, reason="superseded"))
    with env.cas.db.read() as conn:
        assert raw_execute(conn, "SELECT COUNT(*) FROM revoked_certificates").fetchone()[0] == rows


def test_normal_revocations_verify_and_list(env: Env) -> None:
    leaf = revoke_first(env)
    with env.cas.db.read() as conn:
        (row,) = verified_rows(conn, env.cas.sealer, "tls", key_id(env), env.clock.now)
    assert int(row.serial, 16) == leaf.serial_number and row.reason == "keyCompromise"
    second = env.certificate()
    env.cas.revoke_certificates(env.revocation(serial=second.serial_number, reason="superseded"))
    assert set(revoked(env.crl())) == {leaf.serial_number, second.serial_number}


def test_a_deleted_row_is_detected(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    leaf = revoke_first(env)
    tamper(env, "DELETE FROM revoked_certificates WHERE policy = 'tls'")
    assert_fails_closed(env, caplog, "count", leaf)


def test_a_ca_with_all_its_rows_and_its_record_deleted_is_detected(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    leaf = revoke_first(env)
    tamper(env, "DELETE FROM revoked_certificates WHERE policy = 'tls'")
    tamper(env, "DELETE FROM revocation_sets WHERE policy = 'tls'")
    assert_fails_closed(env, caplog, "anchor", leaf)


@pytest.mark.parametrize(
    ("column", "value"),
    [("reason", "unspecified"), ("serial", "1234"), ("revoked_at", 1.0), ("not_after", 1.0),
     ("expiry_listed_at", 1_900_000_001.0), ("mac", None),
     ("version", 1.5)],  # SQLite keeps 1.5, which was read as 1 (found by fuzz8)
)  # fmt: skip
def test_an_edited_row_is_detected(
    env: Env, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    leaf = revoke_first(env)
    tamper(env, f"UPDATE revoked_certificates SET {column} = ? WHERE policy = 'tls'", (value,))
    assert_fails_closed(env, caplog, "expiry" if column == "expiry_listed_at" else "row", leaf)


def test_a_forged_row_is_not_honoured(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A row added with a made-up MAC (or a copied one): not on a CRL, not ``revoked`` from the
    responder; the CA fails closed instead."""
    leaf = revoke_first(env)
    good = env.certificate()
    with env.cas.db.read() as conn:
        mac = raw_execute(conn, "SELECT mac FROM revoked_certificates").fetchone()[0]
    tamper(
        env,
        "INSERT INTO revoked_certificates (policy, issuer_key_id, serial, name, version, reason, revoked_at, "
        "not_after, mac) VALUES ('tls', ?, ?, 'srv', 9, 'keyCompromise', ?, ?, ?)",
        (key_id(env), format(good.serial_number, "x"), env.clock.now, env.clock.now + 86400 * 90, mac),
    )
    assert ask(env, request(good, env.ca_cert(), nonce=b"f" * 8)).response_status == S.TRY_LATER
    assert_fails_closed(env, caplog, "row", leaf)


def test_an_edited_record_is_detected(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    leaf = revoke_first(env)
    tamper(env, "UPDATE revocation_sets SET entries = 0 WHERE policy = 'tls'")
    assert_fails_closed(env, caplog, "anchor", leaf)


def test_rows_of_schema_12_are_bound_once_at_start(env: Env) -> None:
    """A database of schema 12 (no ``mac`` column, no records) migrates; its rows are MAC'd as
    found by the start's ``bind_unbound`` (once: a second call does nothing), after which CRLs are
    issued again. Rows without a MAC next to records are not bound: they do not authenticate."""
    leaf = revoke_first(env)
    tamper(env, "ALTER TABLE revoked_certificates DROP COLUMN mac")
    tamper(env, "DROP TABLE revocation_sets")
    tamper(env, "UPDATE meta SET value = ? WHERE key = 'schema_version'", ("12",))
    assert env.cas.db.migrate() == SCHEMA_VERSION
    with env.cas.db.read() as conn, pytest.raises(RevocationsAltered):
        verified_rows(conn, env.cas.sealer, "tls", key_id(env), env.clock.now)
    with env.cas.db.write() as conn:
        bound = bind_unbound(conn, env.cas.sealer)
        assert bound is not None and bound["rows"] == 1 and bound["cas"] == 1
        assert bind_unbound(conn, env.cas.sealer) is None
    second = env.certificate()
    env.cas.revoke_certificates(env.revocation(serial=second.serial_number, reason="superseded"))
    assert set(revoked(env.crl())) == {leaf.serial_number, second.serial_number}
    tamper(env, "UPDATE revoked_certificates SET mac = NULL")
    with env.cas.db.write() as conn:
        assert bind_unbound(conn, env.cas.sealer) is None
        with pytest.raises(RevocationsAltered):
            verified_rows(conn, env.cas.sealer, "tls", key_id(env), env.clock.now)


def test_offline_rotation_re_macs_the_rows(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    with started(data) as env:
        leaf = revoke_first(env)
        ski, now = key_id(env), env.clock.now
        old = Sealer(load_master_key(data, None))
    db = Database(f"sqlite:///{data / 'cas.db'}")
    try:
        result = rotate_master_key(data, db, seal=None, to_seal=None, events=LedgerEventSink())
        new = Sealer(load_master_key(data, None))
        with db.read() as conn:
            (row,) = verified_rows(conn, new, "tls", ski, now)
            assert int(row.serial, 16) == leaf.serial_number
            with pytest.raises(RevocationsAltered):
                verified_rows(conn, old, "tls", ski, now)
            keys = {r[0] for r in raw_execute(conn, "SELECT key_id FROM revocation_sets").fetchall()}
            (payload,) = [json.loads(r[0]) for r in raw_execute(
                conn, "SELECT payload FROM events WHERE type = 'master-key-rotated'").fetchall()]  # fmt: skip
        assert keys == {result.new_key_id} and payload["revocations"] == 1
    finally:
        db.dispose()


def test_offline_rotation_refuses_altered_rows_and_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    with started(data) as env:
        revoke_first(env)
        tamper(env, "UPDATE revoked_certificates SET reason = 'unspecified'")
        old_id = env.cas.sealer.sealing_key_id
    db = Database(f"sqlite:///{data / 'cas.db'}")
    try:
        with pytest.raises(RevocationsAltered):
            rotate_master_key(data, db, seal=None, to_seal=None, events=LedgerEventSink())
        assert Sealer(load_master_key(data, None)).sealing_key_id == old_id
        with db.read() as conn:
            assert {r[0] for r in raw_execute(conn, "SELECT key_id FROM revocation_sets").fetchall()} == {
                old_id
            }
    finally:
        db.dispose()


def test_online_rotation_re_macs_the_rows(env: Env, tmp_path: Path) -> None:
    leaf = revoke_first(env)
    old = Sealer(env.cas.sealer.export_key(env.cas.sealer.sealing_key_id))
    rotation = OnlineRotation(tmp_path / "cas", env.cas.db, env.cas.sealer, None, env.cas.events, None)  # type: ignore[arg-type]
    status = rotation.run()
    assert status.state == "done" and status.new_key_id is not None
    with env.cas.db.read() as conn:
        (row,) = verified_rows(conn, env.cas.sealer, "tls", key_id(env), env.clock.now)
        assert int(row.serial, 16) == leaf.serial_number
        with pytest.raises(RevocationsAltered):
            verified_rows(conn, old, "tls", key_id(env), env.clock.now)
    second = env.certificate()  # revocations after it are MAC'd under the new key
    env.cas.revoke_certificates(env.revocation(serial=second.serial_number, reason="superseded"))
    assert set(revoked(env.crl())) == {leaf.serial_number, second.serial_number}

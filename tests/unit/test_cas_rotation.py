"""Master-key rotation (confide.cas.rotation): a crash at every step, and at every file operation
of the switch-over, leaves a CAS that starts with exactly one key and the same secret values;
the old key opens nothing afterwards and no copy of it, nor of the old rows, stays in the data
directory; the key id in the database catches a key file that is not the database's."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cas_sealing import gramine_root

from confide.cas import rotation
from confide.cas.db import Database, raw_connection, raw_execute
from confide.cas.keyfiles import LOG_KEY_NAME, SEALED_LOG_KEY_NAME, TLS_KEY_NAME
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import PLAIN_NAME, SEALED_NAME, seal_master_key, unseal_master_key
from confide.cas.rotation import (
    EVENT_TYPE,
    PENDING_SUFFIX,
    finish_interrupted_rotation,
    master_key_id,
    rotate_master_key,
    stored_master_key_id,
)
from confide.cas.sealing import GramineSealingKeyProvider, SealingKeyProvider
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.errors import SignatureError, UsageError
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger

POLICY = """name: app
version: "0.3"
services:
  - name: svc
    command: svc --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{m}"
secrets:
  - name: token
    kind: ascii
  - name: blob
    kind: binary
    size: 64
  - name: ca-key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca-key
  - name: leaf-key
    kind: private-key
  - name: leaf
    kind: x509
    private_key: leaf-key
    issuer: ca
security:
  attestation:
    tolerate: [simulation]
""".format(m="ab" * 48)

STEPS = ("checked", "key-written", "files-written", "resealed", "committed", "scrubbed", "done")
COMMITTED = {"committed", "scrubbed", "done"}
SRC = Path(__file__).resolve().parents[2] / "src"


class Crash(BaseException):
    """A simulated crash: not an Exception, so no handler of the code under test runs."""


@dataclass
class Setup:
    """A CAS data directory with secrets, stopped; how its key is sealed (``seal``) and what the
    rotation seals the new one with (``to_seal``)."""

    data: Path
    seal: SealingKeyProvider | None
    to_seal: SealingKeyProvider | None
    old_key: bytes
    values: dict[tuple[str, str, int], bytes]
    rows: dict[tuple[str, str, int], bytes]

    @property
    def url(self) -> str:
        return f"sqlite:///{self.data / 'cas.db'}"

    def rotate(self, step: rotation.Step = rotation._no_step) -> rotation.RotationResult:
        db = Database(self.url)
        try:
            return rotate_master_key(
                self.data, db, seal=self.seal, to_seal=self.to_seal, events=LedgerEventSink(), step=step
            )
        finally:
            db.dispose()

    def start(self, seal: SealingKeyProvider | str | None = "target") -> Sealer:
        """Start the CAS as ``cas serve`` would (``prepare``) and return its sealer."""
        provider = self.to_seal if seal == "target" else seal
        assert not isinstance(provider, str)
        cas, *_ = prepare(self.data, host="127.0.0.1", dev=True, db_url=None, collateral=None, seal=provider)
        cas.db.dispose()
        return cas.sealer

    def stored_id(self) -> str | None:
        db = Database(self.url)
        try:
            return stored_master_key_id(db)
        finally:
            db.dispose()


def secret_rows(url: str) -> dict[tuple[str, str, int], bytes]:
    db = Database(url)
    try:
        with db.read() as conn:
            rows = raw_execute(conn, "SELECT policy, name, version, sealed FROM secrets").fetchall()
    finally:
        db.dispose()
    return {(p, n, v): bytes(s) for p, n, v, s in rows}


def opened(sealer: Sealer, rows: dict[tuple[str, str, int], bytes]) -> dict[tuple[str, str, int], bytes]:
    return {k: sealer.unseal(s, policy=k[0], name=k[1], version=k[2]).to_bytes() for k, s in rows.items()}


def make_setup(tmp_path: Path, seal: SealingKeyProvider | None, to_seal: SealingKeyProvider | None) -> Setup:
    from cas_inproc import InProcessCas, submission

    data = tmp_path / "cas"
    if seal is None:
        cas = InProcessCas.start(data, POLICY).cas
    else:
        cas, *_ = prepare(data, host="127.0.0.1", dev=True, db_url=None, collateral=None, seal=seal)
        cas.apply(submission(cas, POLICY))
    cas.db.dispose()
    old_key = (data / PLAIN_NAME).read_bytes() if seal is None else cas.sealer._master
    url = f"sqlite:///{data / 'cas.db'}"
    rows = secret_rows(url)
    assert len(rows) == 6
    return Setup(data, seal, to_seal, old_key, opened(cas.sealer, rows), rows)


def gramine(tmp_path: Path) -> GramineSealingKeyProvider:
    return GramineSealingKeyProvider(gramine_root(tmp_path))


MODES = ("file-file", "gramine-gramine", "file-gramine")


@pytest.fixture(params=MODES)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    seal_name, to_name = request.param.split("-")
    seal = gramine(tmp_path) if seal_name == "gramine" else None
    to_seal = gramine(tmp_path) if to_name == "gramine" else None
    return make_setup(tmp_path, seal, to_seal)


def no_pending(data: Path) -> None:
    names = {p.name for p in data.iterdir()}
    assert not {n for n in names if n.endswith(PENDING_SUFFIX) or n.startswith(".tmp-")}, names


def files_bytes(data: Path) -> Iterator[tuple[Path, bytes]]:
    for path in data.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def assert_old_key_gone(s: Setup) -> None:
    """No file of the data directory holds the old key (nor, in the database, an old row)."""
    for path, data in files_bytes(s.data):
        assert s.old_key not in data, path
        for key, row in s.rows.items():
            assert row[20:80] not in data, (path, key)  # the old wrapped data key (after "CSL2", key id)
            assert row[92:] not in data, (path, key)  # the old body (a fresh data key re-encrypted it)


# --- the complete rotation ---------------------------------------------------------------------


def test_rotation_reseals_everything_and_the_old_key_opens_nothing(setup: Setup) -> None:
    s = setup
    log_before = (s.data / "cas-cert.pem").read_bytes()
    result = s.rotate()
    assert result.old_key_id == master_key_id(s.old_key) and result.new_key_id != result.old_key_id
    assert result.secrets == 6
    no_pending(s.data)
    sealer = s.start()
    assert master_key_id(sealer._master) == result.new_key_id == s.stored_id()
    rows = secret_rows(s.url)
    assert opened(sealer, rows) == s.values
    for k, row in rows.items():
        with pytest.raises(SignatureError):
            Sealer(s.old_key).unseal(row, policy=k[0], name=k[1], version=k[2])
        assert row[4:64] != s.rows[k][4:64]  # a fresh data key, wrapped under the new key
    assert_old_key_gone(s)
    assert (s.data / "cas-cert.pem").read_bytes() == log_before  # the same TLS identity
    sealed = s.to_seal is not None
    assert (s.data / SEALED_NAME).exists() is sealed and (s.data / PLAIN_NAME).exists() is not sealed
    assert (s.data / SEALED_LOG_KEY_NAME).exists() is sealed and (
        s.data / LOG_KEY_NAME
    ).exists() is not sealed
    if sealed:
        assert result.tls_key == "re-protected" and result.log_key == "re-sealed"
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in (s.data / TLS_KEY_NAME).read_bytes()


def test_old_rows_leave_the_database_files_while_another_connection_is_open(tmp_path: Path) -> None:
    """Another connection (a backup tool, an sqlite3 shell) keeps SQLite from checkpointing when
    the rotation closes its own: step 5 checkpoints and truncates the WAL itself."""
    s = make_setup(tmp_path, None, None)
    idle = sqlite3.connect(s.data / "cas.db")
    try:
        idle.execute("SELECT 1 FROM meta").fetchall()
        assert s.rotate().wal_warning is None
        files = [s.data / "cas.db", s.data / "cas.db-wal"]
        contents = b"".join(f.read_bytes() for f in files if f.exists())
        for key, row in s.rows.items():
            assert row[4:64] not in contents, key  # the old wrapped data key
            assert row[76:] not in contents, key  # the old body
    finally:
        idle.close()


def test_a_reader_holding_an_old_snapshot_keeps_the_wal_and_the_rotation_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Step 5 checks what ``PRAGMA wal_checkpoint(TRUNCATE)`` answers: a reader in a transaction
    begun before the re-sealing commit makes it busy; after a bounded number of attempts the
    rotation warns (result, log) that the WAL may still hold rows sealed under the old key, and a
    later checkpoint, once the reader is gone, truncates it."""
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_ATTEMPTS", 2)
    monkeypatch.setattr(rotation, "WAL_TRUNCATE_WAIT_MS", 0)  # busy at once: no waiting on the reader
    s = make_setup(tmp_path, None, None)
    reader = sqlite3.connect(s.data / "cas.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert len(reader.execute("SELECT sealed FROM secrets").fetchall()) == 6  # the snapshot is held
        with caplog.at_level("WARNING", logger="confide.cas"):
            result = s.rotate()
        assert (
            result.wal_warning is not None
            and "could not be truncated after 2 checkpoints" in result.wal_warning
        )
        (logged,) = [
            json.loads(r.getMessage())
            for r in caplog.records
            if rotation.EVENT_WAL_NOT_TRUNCATED in r.getMessage()
        ]
        assert logged["busy"] == 1 and logged["attempts"] == 2 and logged["log_frames"] > 0
        assert (s.data / "cas.db-wal").stat().st_size > 0
        assert opened(s.start(), secret_rows(s.url)) == s.values  # the rotation itself is complete
    finally:
        reader.close()
    db = Database(s.url)
    try:
        assert rotation._scrub(db) is None
        assert (s.data / "cas.db-wal").stat().st_size == 0  # truncated (removed when the last one closes)
    finally:
        db.dispose()
    contents = (s.data / "cas.db").read_bytes()
    for key, row in s.rows.items():
        assert row[76:] not in contents, key  # the old body


def test_the_ledger_records_the_rotation_with_ids_only(tmp_path: Path) -> None:
    s = make_setup(tmp_path, None, None)
    result = s.rotate()
    db = Database(s.url)
    try:
        with db.read() as conn:
            seq, payload = raw_execute(
                conn, "SELECT seq, payload FROM events WHERE type = ?", (EVENT_TYPE,)
            ).fetchone()
            entry = Entry.from_bytes(Ledger.entry(raw_connection(conn), seq - 1) or b"")
    finally:
        db.dispose()
    assert seq == result.event_seq
    assert entry.type == "key.rotated" and entry.payload == json.loads(payload)
    assert entry.payload == {
        "old_key_id": result.old_key_id, "new_key_id": result.new_key_id, "secrets": 6, "policy_versions": 1,
        "policy_rows_authenticated": 2, "secret_heads_authenticated": 6,
        "sealing": {"from": "plain file", "to": "plain file"}, "tls_key": "plain", "log_key": "plain",
    }  # fmt: skip
    new_key = (s.data / PLAIN_NAME).read_bytes()
    for key in (s.old_key, new_key):
        assert key.hex() not in payload and key not in payload.encode()


def test_rotating_twice_and_restarting_in_between(tmp_path: Path) -> None:
    s = make_setup(tmp_path, gramine(tmp_path), gramine(tmp_path))
    first = s.rotate()
    assert opened(s.start(), secret_rows(s.url)) == s.values
    second = s.rotate()
    assert second.old_key_id == first.new_key_id
    assert opened(s.start(), secret_rows(s.url)) == s.values


# --- a crash at each step ----------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_leaves_one_consistent_key(setup: Setup, step: str) -> None:
    s = setup
    old_id = master_key_id(s.old_key)

    def crash(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        s.rotate(crash)
    committed = step in COMMITTED
    assert (s.stored_id() != old_id) is committed
    sealer = s.start()  # the next start finishes (or undoes) the rotation
    no_pending(s.data)
    assert (master_key_id(sealer._master) != old_id) is committed
    assert master_key_id(sealer._master) == s.stored_id()
    assert opened(sealer, secret_rows(s.url)) == s.values
    if committed:
        assert_old_key_gone(s)
    # and the CAS rotates again from there
    s.seal = s.to_seal
    s.rotate()
    assert opened(s.start(), secret_rows(s.url)) == s.values


@pytest.mark.parametrize("step", ["key-written", "files-written", "resealed"])
def test_crash_before_the_commit_with_the_old_seal_starts_with_the_old_key(tmp_path: Path, step: str) -> None:
    s = make_setup(tmp_path, None, gramine(tmp_path))

    def crash(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        s.rotate(crash)
    sealer = s.start(None)  # --seal file, as before the rotation
    assert sealer._master == s.old_key
    no_pending(s.data)
    assert sorted(p.name for p in s.data.glob("master.key*")) == [PLAIN_NAME]
    assert opened(sealer, secret_rows(s.url)) == s.values


def test_crash_after_the_commit_needs_the_new_seal_and_changes_nothing_without_it(tmp_path: Path) -> None:
    s = make_setup(tmp_path, None, gramine(tmp_path))

    def crash(name: str) -> None:
        if name == "committed":
            raise Crash(name)

    with pytest.raises(Crash):
        s.rotate(crash)
    before = {p: b for p, b in files_bytes(s.data) if not p.name.startswith("cas.db")}
    with pytest.raises(UsageError, match=r"start with --seal gramine \(sgx-mrenclave\)"):
        s.start(None)
    assert {p: b for p, b in files_bytes(s.data) if not p.name.startswith("cas.db")} == before
    assert opened(s.start(), secret_rows(s.url)) == s.values


# --- a crash at each file operation of the switch-over -----------------------------------------


def test_crash_at_every_file_operation_of_the_switch_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 6 renames and destroys files one by one: crash before each operation in turn, each
    time on a fresh CAS, until a rotation completes; every crash must start with the new key."""
    real_replace, real_destroy = rotation.os.replace, rotation._destroy
    n = 0
    while True:
        n += 1
        s = make_setup(tmp_path / str(n), None, gramine(tmp_path / str(n)))
        calls = 0
        in_switch = False

        def step(name: str) -> None:
            nonlocal in_switch
            in_switch = name == "scrubbed"

        def counted(real):  # type: ignore[no-untyped-def]
            def op(*args):  # type: ignore[no-untyped-def]
                nonlocal calls
                if in_switch:
                    calls += 1
                    if calls == n:
                        raise Crash(f"file operation {n}")
                return real(*args)

            return op

        monkeypatch.setattr(rotation.os, "replace", counted(real_replace))
        monkeypatch.setattr(rotation, "_destroy", counted(real_destroy))
        try:
            s.rotate(step)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.setattr(rotation.os, "replace", real_replace)
        monkeypatch.setattr(rotation, "_destroy", real_destroy)
        sealer = s.start()
        no_pending(s.data)
        assert master_key_id(sealer._master) == s.stored_id() != master_key_id(s.old_key)
        assert opened(sealer, secret_rows(s.url)) == s.values
        assert_old_key_gone(s)
        assert not (s.data / LOG_KEY_NAME).exists()
        if not crashed:
            break
    assert n > 5  # the switch-over has that many operations: the loop did test each


# --- a real crash: the process dies (os._exit) at a step ---------------------------------------

_KILLED = """
import os, sys
from pathlib import Path
from confide.cas.db import Database
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.rotation import rotate_master_key
data, step = Path(sys.argv[1]), sys.argv[2]
def die(name):
    if name == step:
        os._exit(9)
rotate_master_key(data, Database(f"sqlite:///{data / 'cas.db'}"), seal=None, to_seal=None,
                  events=LedgerEventSink(), step=die)
"""


@pytest.mark.parametrize("step", ["key-written", "resealed", "committed"])
def test_process_killed_at_a_step(tmp_path: Path, step: str) -> None:
    s = make_setup(tmp_path, None, None)
    out = subprocess.run([sys.executable, "-c", _KILLED, str(s.data), step], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 9, out.stderr
    sealer = s.start()
    no_pending(s.data)
    assert (sealer._master == s.old_key) is (step != "committed")
    assert opened(sealer, secret_rows(s.url)) == s.values


# --- failures that are not crashes -------------------------------------------------------------


def test_a_row_that_does_not_open_aborts_and_changes_nothing(tmp_path: Path) -> None:
    s = make_setup(tmp_path, None, gramine(tmp_path))
    db = Database(s.url)
    with db.write() as conn:
        raw_execute(conn, "UPDATE secrets SET sealed = ? WHERE name = 'blob'", (b"CSL1" + bytes(100),))
    db.dispose()
    with pytest.raises(SignatureError, match="app/blob"):
        s.rotate()
    no_pending(s.data)
    assert sorted(p.name for p in s.data.glob("master.key*")) == [PLAIN_NAME]
    assert (s.data / PLAIN_NAME).read_bytes() == s.old_key
    assert s.stored_id() == master_key_id(s.old_key)


def test_sealed_to_plain_is_refused(tmp_path: Path) -> None:
    s = make_setup(tmp_path, gramine(tmp_path), None)
    with pytest.raises(UsageError, match="in plain"):
        s.rotate()
    assert s.start(s.seal)._master == s.old_key


def test_nothing_to_rotate(tmp_path: Path) -> None:
    (tmp_path / "cas").mkdir()
    db = Database(f"sqlite:///{tmp_path / 'cas' / 'cas.db'}")
    with pytest.raises(UsageError, match="no master key"):
        rotate_master_key(tmp_path / "cas", db, seal=None, to_seal=None, events=LedgerEventSink())
    (tmp_path / "cas" / PLAIN_NAME).write_bytes(bytes(32))
    with pytest.raises(UsageError, match="no database"):
        rotate_master_key(tmp_path / "cas", db, seal=None, to_seal=None, events=LedgerEventSink())
    assert sorted(p.name for p in (tmp_path / "cas").iterdir()) == [PLAIN_NAME]


# --- the key id at start -----------------------------------------------------------------------


def test_an_old_key_file_restored_after_a_rotation_does_not_start(tmp_path: Path) -> None:
    s = make_setup(tmp_path, gramine(tmp_path), gramine(tmp_path))
    old_file = (s.data / SEALED_NAME).read_bytes()
    s.rotate()
    new_file = (s.data / SEALED_NAME).read_bytes()
    (s.data / SEALED_NAME).write_bytes(old_file)  # the host rolls the sealed key back
    with pytest.raises(UsageError, match="not the database's key"):
        s.start()
    assert (s.data / SEALED_NAME).read_bytes() == old_file
    (s.data / SEALED_NAME).write_bytes(new_file)
    assert opened(s.start(), secret_rows(s.url)) == s.values


def test_a_missing_key_file_is_not_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    s = make_setup(tmp_path, None, None)
    s.start(None)  # records the key id
    (s.data / PLAIN_NAME).unlink()
    with pytest.raises(UsageError, match="holds no master key"):
        s.start(None)
    assert not (s.data / PLAIN_NAME).exists()


def test_a_database_without_a_key_id_adopts_the_right_key_only(tmp_path: Path) -> None:
    s = make_setup(tmp_path, None, None)
    db = Database(s.url)
    with db.write() as conn:
        raw_execute(conn, "DELETE FROM meta WHERE key = 'master_key_id'")  # as before rotation
    db.dispose()
    assert s.stored_id() is None
    (s.data / PLAIN_NAME).write_bytes(os.urandom(32))
    with pytest.raises(UsageError, match="do not open with this master key"):
        s.start(None)
    assert s.stored_id() is None
    (s.data / PLAIN_NAME).write_bytes(s.old_key)
    s.start(None)
    assert s.stored_id() == master_key_id(s.old_key)


def test_a_pending_key_next_to_a_database_that_names_none_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "cas"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(bytes(range(32)))
    (data / (PLAIN_NAME + PENDING_SUFFIX)).write_bytes(os.urandom(32))
    before = dict(files_bytes(data))
    with pytest.raises(UsageError, match="is --db the database the rotation ran on"):
        finish_interrupted_rotation(data, None, None)
    assert dict(files_bytes(data)) == before


def test_stray_temporaries_and_pending_files_are_destroyed(tmp_path: Path) -> None:
    key = bytes(range(32))
    data = tmp_path / "cas"
    data.mkdir()
    (data / PLAIN_NAME).write_bytes(key)
    (data / f".tmp-{PLAIN_NAME}{PENDING_SUFFIX}-0123456789abcdef").write_bytes(os.urandom(32))
    (data / (TLS_KEY_NAME + PENDING_SUFFIX)).write_bytes(b"x")
    (data / ".tmp-unrelated-0123").write_bytes(b"y")
    assert finish_interrupted_rotation(data, master_key_id(key), None) is None
    assert sorted(p.name for p in data.iterdir()) == [".tmp-unrelated-0123", PLAIN_NAME]


def test_a_rolled_back_pending_key_is_not_left_readable(tmp_path: Path) -> None:
    provider = gramine(tmp_path)
    data = tmp_path / "cas"
    data.mkdir()
    old, new = bytes(range(32)), bytes(range(1, 33))
    (data / SEALED_NAME).write_bytes(seal_master_key(old, provider))
    (data / (SEALED_NAME + PENDING_SUFFIX)).write_bytes(seal_master_key(new, provider))
    assert finish_interrupted_rotation(data, master_key_id(old), provider) == "rolled-back"
    assert [p.name for p in data.iterdir()] == [SEALED_NAME]
    assert unseal_master_key((data / SEALED_NAME).read_bytes(), provider) == old


def test_a_start_that_seals_a_plain_key_advises_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_setup(tmp_path, None, gramine(tmp_path))
    with caplog.at_level("WARNING", logger="confide.cas"):
        assert s.start()._master == s.old_key  # the start-up migration: the same key, now sealed
    (advice,) = [
        json.loads(r.getMessage()) for r in caplog.records if "master-key-was-plain" in r.getMessage()
    ]
    assert "rotate-master-key" in advice["advice"] and s.old_key.hex() not in json.dumps(advice)
    caplog.clear()
    with caplog.at_level("WARNING", logger="confide.cas"):
        s.start()
    assert not [r for r in caplog.records if "master-key-was-plain" in r.getMessage()]

"""``confide ledger verify`` against a real SQLite ledger file, honest and tampered.

Each tampering is done the way an attacker with access to the database (or, for the fork,
to the log key) would do it, and must be detected with its own exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from confide.cas.client import policy_submission
from confide.errors import (
    ConsistencyError,
    EntryMismatchError,
    EntryMissingError,
    RollbackError,
    SignatureError,
    UnknownKeyError,
)
from confide.identity import Identity
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.encoding import SALT_SIZE, Entry, EntryType, format_time
from confide.ledger.note import NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction
from confide.policy import loads_policy, policy_hash
from confide.policy.canonical import jcs

SRC = Path(__file__).resolve().parents[2] / "src"
ORIGIN = "cas.example/ledger"
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _entry(i: int, policy: str = "team/db") -> bytes:
    return Entry.create(
        EntryType.ATTESTATION,
        T0 + timedelta(seconds=i),
        {"service": f"svc-{i % 3}", "platform": "sev-snp", "verdict": "accepted", "measurement": f"{i:096x}"},
        policy=policy,
    ).to_bytes()


def _append(db: Path, entries: list[bytes]) -> None:
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, entries)
    conn.close()


def _checkpoint(db: Path, key_file: Path) -> None:
    res = _cli("checkpoint", "--log-db", str(db), "--signing-key", str(key_file))
    assert res.returncode == 0, res.stderr


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``confide ledger ARGS``; the client.env variables of the log only from ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIDE_LOG_URL", "CONFIDE_LOG_KEY")}
    env.update({"PYTHONPATH": str(SRC), **(env_extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "confide", "ledger", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@dataclass
class Log:
    db: Path
    state: Path
    key_file: Path
    vkey: str
    signer: NoteSigner
    backup20: Path

    def verify(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return _cli(
            "verify", "--log-db", str(self.db), "--state", str(self.state), "--key", self.vkey, *extra
        )


@pytest.fixture
def log(tmp_path: Path) -> Log:
    key_file = tmp_path / "log.key"
    res = _cli("keygen", "--name", ORIGIN, "--out", str(key_file))
    assert res.returncode == 0, res.stderr
    vkey = res.stdout.strip()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    signer = NoteSigner.from_skey(key_file.read_text())
    db = tmp_path / "cas.db"
    _append(db, [_entry(i) for i in range(20)])
    _checkpoint(db, key_file)
    backup = tmp_path / "cas-at-20.db"
    shutil.copyfile(db, backup)  # SQLite WAL: the copy is consistent after the checkpointing close
    lg = Log(db, tmp_path / "state.json", key_file, vkey, signer, backup)
    first = lg.verify("--full")
    assert first.returncode == 0, first.stderr
    _append(db, [_entry(i) for i in range(20, 300)])
    _checkpoint(db, key_file)
    second = lg.verify("--full", "--json")
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert (out["size"], out["previous_size"], out["entries_checked"]) == (300, 20, 300)
    return lg


def _sql(db: Path, stmt: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(db)
    conn.execute(stmt, params)
    conn.commit()
    conn.close()


def test_honest_log_verifies_again_and_state_is_kept(log: Log) -> None:
    res = log.verify()
    assert res.returncode == 0, res.stderr
    assert "consistent with the last seen size 300" in res.stdout
    state = json.loads(log.state.read_text())
    assert state["version"] == 1 and "\n300\n" in state["checkpoint"]


def test_entry_edited(log: Log) -> None:
    _sql(log.db, "UPDATE ledger_entries SET data = ? WHERE idx = 7", (_entry(7, policy="team/other"),))
    assert log.verify().returncode == 0  # negative twin: without --full entries are not read
    res = log.verify("--full")
    assert res.returncode == EntryMismatchError.exit_code, res.stderr
    assert "entry 7" in res.stderr


def test_entry_deleted(log: Log) -> None:
    _sql(log.db, "DELETE FROM ledger_entries WHERE idx = 7")
    res = log.verify("--full")
    assert res.returncode == EntryMissingError.exit_code, res.stderr
    assert "entry 7 is missing" in res.stderr


def test_tail_truncated_rollback(log: Log) -> None:
    shutil.copyfile(log.backup20, log.db)  # the database restored to its state at 20 entries
    res = log.verify()
    assert res.returncode == RollbackError.exit_code, res.stderr
    assert "20" in res.stderr and "300" in res.stderr
    # The state file still remembers 300: the rollback stays detected on the next run.
    assert "\n300\n" in json.loads(log.state.read_text())["checkpoint"]


def test_forked_checkpoint(log: Log, tmp_path: Path) -> None:
    # The key holder rewrites history: entry 5 differs, the log grows to 310 and is re-signed.
    forked = tmp_path / "forked.db"
    entries = [_entry(i) for i in range(310)]
    entries[5] = _entry(5, policy="team/evil")
    _append(forked, entries)
    _checkpoint(forked, log.key_file)
    shutil.copyfile(forked, log.db)
    for suffix in ("-wal", "-shm"):
        Path(str(log.db) + suffix).unlink(missing_ok=True)
    res = log.verify()
    assert res.returncode == ConsistencyError.exit_code, res.stderr
    assert "fork" in res.stderr


def test_checkpoint_signed_by_another_key(log: Log) -> None:
    conn = connect(log.db)
    note = Ledger.latest_checkpoint(conn)
    assert note is not None
    cp = Checkpoint.from_text(parse_note(note).text)
    conn.close()
    impostor = NoteSigner.generate(ORIGIN)  # same name, different key
    _sql(
        log.db,
        "UPDATE ledger_checkpoints SET note = ? WHERE size = ?",
        (sign_checkpoint(cp, impostor), cp.size),
    )
    res = log.verify()
    assert res.returncode == UnknownKeyError.exit_code, res.stderr


def test_checkpoint_with_a_bad_signature(log: Log) -> None:
    conn = connect(log.db)
    note = Ledger.latest_checkpoint(conn)
    assert note is not None
    conn.close()
    # Claim a larger tree under the genuine key's signature line.
    forged = note.replace(b"\n300\n", b"\n301\n")
    _sql(log.db, "UPDATE ledger_checkpoints SET note = ? WHERE size = 300", (forged,))
    res = log.verify()
    assert res.returncode == SignatureError.exit_code, res.stderr


def test_exit_codes_are_distinct() -> None:
    codes = [
        e.exit_code
        for e in (
            EntryMismatchError,
            EntryMissingError,
            RollbackError,
            ConsistencyError,
            UnknownKeyError,
            SignatureError,
        )
    ]
    assert len(set(codes)) == len(codes) and 0 not in codes


def test_usage_errors(log: Log, tmp_path: Path) -> None:
    assert _cli("verify", "--log-db", str(tmp_path / "nope.db"), "--key", log.vkey).returncode == 2
    assert _cli("verify", "--log-db", str(log.db), "--key", "not-a-key+zz+AA").returncode == 10
    assert _cli("keygen", "--name", ORIGIN, "--out", str(log.key_file)).returncode == 2  # never overwrite


def _serve(db: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = [
        sys.executable,
        "-m",
        "confide",
        "ledger",
        "serve",
        "--log-db",
        str(db),
        "--listen",
        "127.0.0.1:0",
    ]
    proc = subprocess.Popen([*argv, *extra], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert " at http://127.0.0.1:" in line, line
    return proc, line.split(" at ", 1)[1].strip()


def test_verify_over_http(log: Log) -> None:
    proc, url = _serve(log.db, "--serve-entries")
    try:
        base = ["verify", "--url", url, "--state", str(log.state), "--key", log.vkey]
        res = _cli(*base, "--full")
        assert res.returncode == 0, res.stderr
        assert "consistent with the last seen size 300" in res.stdout
        _sql(log.db, "UPDATE ledger_entries SET data = ? WHERE idx = 42", (_entry(42, policy="team/x"),))
        res = _cli(*base, "--full")
        assert res.returncode == EntryMismatchError.exit_code and "entry 42" in res.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    proc, url = _serve(log.db)  # entries not public: checkpoints and tiles still audit
    try:
        base = ["verify", "--url", url, "--state", str(log.state), "--key", log.vkey]
        assert _cli(*base).returncode == 0
        assert _cli(*base, "--full").returncode == EntryMissingError.exit_code
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    assert _cli("verify", "--url", "http://127.0.0.1:9", "--key", log.vkey).returncode == 40  # NetworkError
    assert _cli("verify", "--key", log.vkey).returncode == 2  # neither --log-db nor --url


def test_verify_reads_the_log_and_its_key_from_client_env(log: Log, tmp_path: Path) -> None:
    """After ``source client.env`` (CONFIDE_LOG_URL, CONFIDE_LOG_KEY), ``ledger verify`` needs no
    --url or --key (it required both, though client.env names them); --log-db, --url and --key
    given on the command line win."""
    proc, url = _serve(log.db)
    try:
        client_env = {"CONFIDE_LOG_URL": url, "CONFIDE_LOG_KEY": log.vkey}
        res = _cli("verify", "--state", str(log.state), env_extra=client_env)
        assert res.returncode == 0, res.stderr
        assert "consistent with the last seen size 300" in res.stdout
        # --log-db wins over CONFIDE_LOG_URL (not "give exactly one of ...").
        res = _cli("verify", "--log-db", str(log.db), env_extra={"CONFIDE_LOG_URL": "http://127.0.0.1:9"})
        assert res.returncode == 2 and "--key VKEY is required (or CONFIDE_LOG_KEY" in res.stderr
        res = _cli("verify", "--log-db", str(log.db), env_extra=client_env)
        assert res.returncode == 0, res.stderr
        # A --key given wins over CONFIDE_LOG_KEY: another log's key is refused.
        other = _cli("keygen", "--name", ORIGIN, "--out", str(tmp_path / "other.key")).stdout.strip()
        res = _cli("verify", "--key", other, env_extra=client_env)
        assert res.returncode == UnknownKeyError.exit_code, res.stderr
        res = _cli("verify", env_extra={"CONFIDE_LOG_KEY": log.vkey})
        assert res.returncode == 2 and "or CONFIDE_LOG_URL from client.env" in res.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def _policy_entries(who: Identity, salt: bool) -> tuple[bytes, bytes]:
    """A policy's creation and its update, with signed submissions (``--full`` checks them);
    ``salt``: version 2 entries, else version 1 ones as logs of before the salt hold them."""
    base = 'name: team/db\nversion: "0.3"\nservices:\n  - name: s\n    attestation:\n      tdx:\n        mr_td: "{m}"\n'
    out, predecessor = [], None
    for i, m in enumerate(("aa" * 48, "bb" * 48)):
        policy = loads_policy(base.format(m=m) + (f"predecessor: {predecessor}\n" if predecessor else ""))
        digest = policy_hash(policy)
        payload = {"hash": digest, "predecessor": predecessor, "signer": who.fingerprint,
                   "submission": jcs(policy_submission(policy, who, cas="ab" * 32)).decode()}  # fmt: skip
        kind = EntryType.POLICY_UPDATED if predecessor else EntryType.POLICY_CREATED
        at = format_time(T0 + timedelta(minutes=i))
        out.append(
            Entry(kind, at, "team/db", payload, None if not salt else bytes([i + 1]) * SALT_SIZE).to_bytes()
        )
        predecessor = digest
    return out[0], out[1]


def test_a_log_begun_with_version_1_entries_still_verifies(tmp_path: Path) -> None:
    """A log written before entries had a salt (version 1), then grown by a CAS that salts them
    (version 2): --full checks both, --state carries the audit across the change, and a mirror
    serving its entries (ledger serve --serve-entries) verifies too. Changing the salt of a
    version 2 entry, or removing it, is an entry mismatch."""
    key_file = tmp_path / "log.key"
    res = _cli("keygen", "--name", ORIGIN, "--out", str(key_file))
    assert res.returncode == 0, res.stderr
    vkey = res.stdout.strip()
    lg = Log(
        tmp_path / "cas.db",
        tmp_path / "state.json",
        key_file,
        vkey,
        NoteSigner.from_skey(key_file.read_text()),
        tmp_path / "unused",
    )
    alice = Identity.generate()
    created_v1, _ = _policy_entries(alice, salt=False)
    old = [Entry.from_bytes(_entry(i)) for i in range(10)]
    v1 = [created_v1] + [Entry(e.type, e.time, e.policy, e.payload, None).to_bytes() for e in old]
    assert all(b'"v":1}' in e and b'"salt"' not in e for e in v1)
    _append(lg.db, v1)
    _checkpoint(lg.db, key_file)
    res = lg.verify("--full")
    assert res.returncode == 0, res.stderr

    # the CAS upgraded: the update of the policy created above, and more, as version 2 entries
    _, updated_v2 = _policy_entries(alice, salt=True)
    v2 = [updated_v2] + [_entry(i) for i in range(10, 30)]
    assert all(Entry.from_bytes(e).version == 2 for e in v2)
    _append(lg.db, v2)
    _checkpoint(lg.db, key_file)
    res = lg.verify("--full", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["size"], out["previous_size"], out["entries_checked"]) == (32, 11, 32)

    proc, url = _serve(lg.db, "--serve-entries")
    try:
        res = _cli("verify", "--url", url, "--key", vkey, "--full")
        assert res.returncode == 0, res.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()

    index = 11 + 5
    entry = Entry.from_bytes(v2[5])
    for changed in (
        Entry(entry.type, entry.time, entry.policy, entry.payload, bytes(SALT_SIZE)),  # another salt
        Entry(entry.type, entry.time, entry.policy, entry.payload, None),  # the salt removed
    ):
        _sql(lg.db, "UPDATE ledger_entries SET data = ? WHERE idx = ?", (changed.to_bytes(), index))
        res = lg.verify("--full")
        assert res.returncode == EntryMismatchError.exit_code, res.stderr
        assert f"entry {index}" in res.stderr
    _sql(lg.db, "UPDATE ledger_entries SET data = ? WHERE idx = ?", (v2[5], index))
    res = lg.verify("--full")  # the twin: restored, it verifies again
    assert res.returncode == 0, res.stderr

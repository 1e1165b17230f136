"""``confide ledger history|accesses --state FILE`` against a real CAS over TLS (SQLite: the
database is rolled back by putting a copy of its file back, as an operator would): the first run
writes the state, a later run extends it, an omitted entry seen before is refused, a rolled-back
database is refused, a forked one is refused; bad state files give one line and stay as they
were."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from pathlib import Path

from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml

from cas_harness import CasProcess, log_size, wait_for_log
from confide import errors
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.note import NoteSigner

DB_FILES = ("cas.db", "cas.db-wal", "cas.db-shm")


def _entries(cas: CasProcess) -> int:
    """How many entries the CAS's ledger holds (its events' highest sequence number)."""
    with sqlite3.connect(cas.data_dir / "cas.db") as db:
        (top,) = db.execute("SELECT max(seq) FROM events").fetchone()
    db.close()
    return int(top or 0)


def _settled(cas: CasProcess) -> int:
    """Wait until a signed checkpoint covers every entry (the CAS signs within a second)."""
    n = _entries(cas)
    assert wait_for_log(cas.env, n) >= n
    return n


def _copy_db(src: Path, dst: Path) -> None:
    for name in DB_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def _refused(r: object, error: type[errors.ConfideError], state: Path, before: bytes) -> str:
    """``r`` failed with ``error``'s exit code, on one line of stderr, and ``state`` is unchanged."""
    assert r.returncode == error.exit_code, (r.returncode, r.stdout, r.stderr)  # type: ignore[attr-defined]
    lines = r.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith(f"error: {error.__name__}: "), lines
    assert r.stdout == ""  # type: ignore[attr-defined]
    assert state.read_bytes() == before
    return str(lines[0])


def test_a_policy_view_is_remembered_and_rollback_fork_and_omission_are_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "cas"
    backup = tmp_path / "backup"
    backup.mkdir()
    cas = CasProcess(data_dir, None).start()
    state = tmp_path / "view.json"
    script = app_script(tmp_path)

    def history(*extra: str) -> object:
        return confide(cas, "ledger", "history", "viewed", "--identity", str(alice), *extra)

    def accesses(*extra: str) -> object:
        return confide(cas, "ledger", "accesses", "viewed/s", "--identity", str(alice), *extra)

    def run_app() -> None:
        confide(
            cas, "run", "--config-id", "viewed/app", "--tee", "sim", "--", "/bin/sh", str(script), check=True
        )

    try:
        alice, _ = identity(cas, tmp_path, "alice")
        m = measure(cas, "/bin/sh", str(script))
        text = policy_yaml("viewed", m, extra_service='    environment:\n      S: "$$SCONE::s$$"\n',
                           body="secrets:\n  - name: s\n    kind: ascii\n")  # fmt: skip
        assert apply(cas, tmp_path, text, alice).returncode == 0
        run_app()
        first_size = _settled(cas)

        # First run: the state is written (0600), the output is what it is without --state.
        plain = json.loads(history("--json").stdout)
        r = history("--json", "--state", str(state))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["history"] == plain["history"] and out["checkpoint_size"] == first_size
        ours = out["state"]["entries_remembered"]  # every entry of the policy, shown or not
        assert out["state"] == {"previous_size": None, "entries_known": 0, "entries_remembered": ours}
        assert "(first run)" in r.stderr
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        r = accesses("--json", "--state", str(state))
        assert r.returncode == 0, r.stderr
        assert [a["included"] for a in json.loads(r.stdout)] == [True]
        doc = json.loads(state.read_text())
        assert doc["version"] == 2 and doc["log_key"] == cas.env["CONFIDE_LOG_KEY"]
        created = out["history"][0]["index"]
        (released,) = [a["index"] for a in json.loads(r.stdout)]
        assert list(doc["policies"]) == ["viewed"] and len(doc["policies"]["viewed"]) == ours >= 2
        assert {created, released} <= set(doc["policies"]["viewed"])
        # The text output is unchanged too; the state's line goes to stderr.
        r = accesses("--state", str(state))
        assert r.returncode == 0 and r.stdout == accesses().stdout, r.stderr
        assert f"viewed: {ours} entries seen before all returned, {ours} remembered" in r.stderr
    finally:
        cas.stop()
    _copy_db(data_dir, backup)  # the operator's copy, at `first_size` entries

    cas.start()  # more events: the next run passes and extends the state
    try:
        run_app()
        run_app()
        grown = _settled(cas)
        r = accesses("--json", "--state", str(state))
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert len(rows) == 3 and all(a["included"] for a in rows)
        doc = json.loads(state.read_text())
        ours = len(doc["policies"]["viewed"])
        assert {created, *(a["index"] for a in rows)} <= set(doc["policies"]["viewed"])
        assert f"\n{grown}\n" in doc["checkpoint"]
        r = history("--json", "--state", str(state))
        assert r.returncode == 0, r.stderr
        # (accesses remembered the new releases at the same checkpoint)
        assert json.loads(r.stdout)["state"] == {
            "previous_size": grown,
            "entries_known": ours,
            "entries_remembered": ours,
        }
        kept = state.read_bytes()
        remembered_size = grown

        # Bad state files: one line each, the file as it was, the CAS not asked to move on.
        truncated = tmp_path / "truncated.json"
        truncated.write_bytes(kept[: len(kept) // 2])
        _refused(history("--state", str(truncated)), errors.ParseError, truncated, kept[: len(kept) // 2])
        edited = tmp_path / "edited.json"
        edited.write_bytes(kept.replace(f"\\n{grown}\\n".encode(), f"\\n{grown + 5}\\n".encode()))
        assert edited.read_bytes() != kept
        _refused(history("--state", str(edited)), errors.SignatureError, edited, edited.read_bytes())
        other = NoteSigner.generate("other-cas.example/log")
        foreign = tmp_path / "foreign.json"
        foreign.write_text(json.dumps({
            "version": 2, "log_key": other.verifier.vkey, "policies": {"viewed": [0]},
            "checkpoint": sign_checkpoint(Checkpoint(other.name, 3, bytes(32)), other).decode(),
        }))  # fmt: skip
        line = _refused(
            accesses("--state", str(foreign)), errors.UnknownKeyError, foreign, foreign.read_bytes()
        )
        assert "another CAS's" in line

        # An entry seen before, left out: the CAS's events row of the first release deleted (the
        # tampering to detect). Without --state nothing notices; with it, refused.
        with sqlite3.connect(data_dir / "cas.db") as db:
            db.execute("DELETE FROM events WHERE seq = ?", (released + 1,))
        db.close()
        r = accesses("--json")
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 2, r.stderr
        line = _refused(accesses("--state", str(state)), errors.EntryMissingError, state, kept)
        assert f"no longer returns entry {released}, shown before" in line
    finally:
        cas.stop()

    _copy_db(backup, data_dir)  # the database rolled back to the copy
    cas.start()
    try:
        assert log_size(cas.env) < remembered_size  # its start added one entry to the copy's
        line = _refused(history("--state", str(state)), errors.RollbackError, state, kept)
        assert f"size {remembered_size} was seen before" in line
        # The rolled-back log grows past what was seen: another tree of that size, a fork.
        while _settled(cas) < remembered_size:
            run_app()
        _refused(history("--state", str(state)), errors.ConsistencyError, state, kept)
        _refused(accesses("--state", str(state)), errors.ConsistencyError, state, kept)
        # A new state file starts over (the fork is not detectable from it).
        fresh = tmp_path / "fresh.json"
        assert history("--state", str(fresh)).returncode == 0
    finally:
        cas.stop()

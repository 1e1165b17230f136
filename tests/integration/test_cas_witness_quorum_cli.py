"""``confide cas serve --witness-quorum`` for real: a CAS process over TLS, witnesses
(``WitnessServer``) in the test process, all on 127.0.0.1. A database rolled back to a copy is
refused at start (exit 67); a copy of the database run beside the CAS forks it, and the CAS halts
its releases and changes while it runs (503, ``/metrics``, a JSON log line); an unreachable
witness at start is refused (exit 40) unless a quorum is reached without it; ``cas attest``
shows the bound witnesses and refuses a lower quorum than expected."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from test_cas_e2e import apply, confide, identity, policy_yaml

from cas_harness import ROOT, CasProcess, log_size, wait_for_log
from confide import errors
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, NoteVerifier
from confide.sdk import Cas
from witness_servers import Witnesses


@pytest.fixture
def log_key(tmp_path: Path) -> NoteVerifier:
    """The log key of a CAS initialised in ``tmp_path/cas`` (a first start without witnesses:
    the operator then registers this key with the witnesses)."""
    first = CasProcess(tmp_path / "cas", None).start()
    first.stop()
    return NoteVerifier.from_vkey(first.env["CONFIDE_LOG_KEY"])


@pytest.fixture
def witnesses(tmp_path: Path, log_key: NoteVerifier) -> Iterator[Witnesses]:
    found = Witnesses(tmp_path, log_key, 2)
    try:
        yield found
    finally:
        found.close()


def _serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``cas serve`` expected to refuse to start (it exits; a start would time out)."""
    (data_dir / "client.env").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(data_dir), "--listen",
            "127.0.0.1:0", "--dev", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert not (data_dir / "client.env").exists()  # it never listened
    return r


def _db_files(data_dir: Path) -> list[Path]:
    return [data_dir / name for name in ("cas.db", "cas.db-wal", "cas.db-shm")]


def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not condition():  # type: ignore[operator]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _http(cas: CasProcess) -> httpx2.Client:
    return httpx2.Client(base_url=cas.env["CONFIDE_CAS_URL"], verify=_context(cas), timeout=10)


def _context(cas: CasProcess) -> object:
    import ssl

    context = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
    context.check_hostname = False
    return context


def _metric(cas: CasProcess, name: str) -> float:
    with _http(cas) as http:
        text = http.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, (name, text[-2000:])
    return float(lines[0].split()[1])


def _log_events(cas: CasProcess) -> list[dict[str, object]]:
    assert cas.log is not None
    return [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]


def test_a_rolled_back_database_is_refused_at_start(tmp_path: Path, witnesses: Witnesses) -> None:
    data_dir = tmp_path / "cas"
    cas = CasProcess(data_dir, None, extra_args=witnesses.args(quorum=2)).start()
    try:
        started = wait_for_log(cas.env, 1)
        assert witnesses.size(0) == witnesses.size(1) == started  # cosigned before it listened
        # `cas attest` shows the witnesses bound into the evidence, and refuses a lower quorum.
        r = confide(cas, "cas", "attest", "--expect-witnesses", "2")
        assert r.returncode == 0, r.stderr
        assert "witness quorum: 2 of 2 (as expected)" in r.stderr
        assert all(f"witness: {key.vkey}" in r.stderr for _, key in witnesses.specs)
        r = confide(cas, "cas", "attest", "--expect-witnesses", "3")
        assert r.returncode == errors.AppraisalError.exit_code, r.stderr
        assert "witness quorum is 2 (of 2), expected at least 3" in r.stderr
    finally:
        cas.stop()
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in _db_files(data_dir):
        if path.exists():
            shutil.copy2(path, backup / path.name)
    old_size = witnesses.size(0)

    cas.start()  # more changes, cosigned by both witnesses
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        assert apply(cas, tmp_path, policy_yaml("later", "00" * 48), alice).returncode == 0
        grown = wait_for_log(cas.env, old_size + 2)
        _wait(lambda: witnesses.size(0) == witnesses.size(1) == log_size(cas.env) >= grown, "the witnesses")
    finally:
        cas.stop()
    newest = witnesses.size(0)

    for path in _db_files(data_dir):  # the operator puts the old copy back
        path.unlink(missing_ok=True)
        if (backup / path.name).exists():
            shutil.copy2(backup / path.name, path)
    r = _serve(data_dir, *witnesses.args(quorum=2))
    assert r.returncode == errors.LogRollbackError.exit_code == 67, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: LogRollbackError: --witness-quorum 2: not starting: witness http://127.0.0.1:"
    )
    assert f"cosigned size {newest} of {witnesses.origin}, this log holds {old_size + 1}" in last, last
    assert witnesses.size(0) == witnesses.size(1) == newest  # the witnesses did not move

    # Without --witness-quorum, a start whose first checkpoint a witness refuses already
    # failed (every witness was needed at startup, none while running): it still does, now
    # with the rollback's exit code instead of a NetworkError's.
    r = _serve(data_dir, *witnesses.args())
    assert r.returncode == errors.LogRollbackError.exit_code, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: LogRollbackError: witness http://127.0.0.1:")


def test_a_fork_halts_releases_while_running(tmp_path: Path, witnesses: Witnesses) -> None:
    """A copy of the running CAS's data directory is started beside it (same keys): the copy's
    start is cosigned first, so the CAS's next checkpoint is another tree than the one the
    witnesses hold. The CAS halts: every POST but OCSP answers 503 with the LogRollbackError,
    ``/metrics`` shows it, one JSON line says it; reads go on. The copy, which the witnesses
    follow, goes on."""
    a = CasProcess(tmp_path / "cas", None, extra_args=witnesses.args(quorum=1)).start()
    b = CasProcess(tmp_path / "copy", None, extra_args=witnesses.args(quorum=1))
    try:
        alice, _ = identity(a, tmp_path, "alice")
        assert apply(a, tmp_path, policy_yaml("first", "00" * 48), alice).returncode == 0
        size = wait_for_log(a.env, 3)
        # The guard counts a round once a quorum of its witnesses cosigned.
        _wait(lambda: _metric(a, "confide_cas_witness_quorum_size") >= size, "a quorum")
        assert witnesses.size(0) >= size and witnesses.size(1) >= size
        assert _metric(a, "confide_cas_witness_halted") == 0.0
        # The copy: the keys and the simulated platform as they are, the database as it is now.
        shutil.copytree(tmp_path / "cas", tmp_path / "copy",
                        ignore=shutil.ignore_patterns("cas.db*", "admin.sock", "client.env"))  # fmt: skip
        with (
            sqlite3.connect(tmp_path / "cas" / "cas.db") as source,
            sqlite3.connect(tmp_path / "copy" / "cas.db") as copy,
        ):
            source.backup(copy)
        source.close()
        copy.close()
        b.start()
        assert b.env["CONFIDE_LOG_KEY"] == a.env["CONFIDE_LOG_KEY"]

        # The CAS changes something: its next checkpoint does not extend the copy's.
        assert apply(a, tmp_path, policy_yaml("second", "00" * 48), alice).returncode == 0
        _wait(lambda: _metric(a, "confide_cas_witness_halted") == 1.0, "the halt")
        assert _metric(a, "confide_cas_witness_refusing") == 1.0
        (line,) = [e for e in _log_events(a) if e.get("event") == "witness-rollback"]
        assert line["witness"] in ("w0.example", "w1.example") and "forked" in str(line["detail"])
        assert line["releases"] == "halted until restart"

        with _http(a) as http:
            for path in ("/v1/attest/nonce", "/v1/attest", "/v1/policies", "/v1/cas/key-release"):
                refused = http.post(path, json={})
                assert refused.status_code == 503, (path, refused.text)
                assert refused.json()["error"]["class"] == "LogRollbackError"
                assert refused.json()["error"]["exit_code"] == 67
            assert http.get("/v1/cas/evidence").status_code == 200  # reads go on
            assert http.get("/v1/log/checkpoint").status_code == 200
        r = apply(a, tmp_path, policy_yaml("third", "00" * 48), alice)
        assert r.returncode == errors.LogRollbackError.exit_code, r.stderr
        assert "forked" in r.stderr

        with _http(b) as http:  # the copy is the one the witnesses follow
            assert http.post("/v1/attest/nonce").status_code == 200
        assert _metric(b, "confide_cas_witness_halted") == 0.0
    finally:
        b.stop()
        a.stop()


def test_an_unreachable_witness_at_start(tmp_path: Path, witnesses: Witnesses, refused_port: int) -> None:
    data_dir = tmp_path / "cas"
    dead = NoteSigner.generate("dead.example", SIG_TYPE_COSIGNATURE_V1).verifier
    dead_args = ("--witness", f"http://127.0.0.1:{refused_port}={dead.vkey}")
    began = time.monotonic()
    r = _serve(data_dir, *dead_args, "--witness-quorum", "1")
    assert r.returncode == errors.NetworkError.exit_code, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: NetworkError: --witness-quorum 1: 0 of 1 witnesses cosigned checkpoint"), (
        last
    )
    assert "after 3 attempts, 1 needed, not starting (dead.example: witness http://127.0.0.1:" in last
    # docs/deploy.md "Scaling": the log key to register with the witnesses, from the pod's log
    log_vkey = NoteSigner.from_skey((data_dir / "log.key").read_text().strip()).verifier.vkey
    assert last.endswith(f"; the witnesses must know this log: {log_vkey}"), last
    assert time.monotonic() - began < 60  # bounded: three rounds, 1 s and 2 s apart

    # Its twin: the same dead witness beside two live ones, a quorum of 2 is reached without it.
    cas = CasProcess(
        data_dir, None, extra_args=(*witnesses.args(), *dead_args, "--witness-quorum", "2")
    ).start()
    try:
        assert _metric(cas, "confide_cas_witness_quorum") == 2.0
        with _http(cas) as http:
            text = http.get("/metrics").text
        assert 'confide_cas_witness_failures_total{witness="dead.example"}' in text
        assert 'confide_cas_witness_cosignatures_total{witness="w0.example"} 1.0' in text
        assert _metric(cas, "confide_cas_witness_quorum_age_seconds") >= 0.0
        failed = [e for e in _log_events(cas) if e.get("event") == "witness-failed"]
        assert failed and failed[-1]["cosigned"] == 2 and failed[-1]["quorum"] == 2
        assert [f["witness"] for f in failed[-1]["failures"]] == ["dead.example"]  # type: ignore[union-attr]
        listening = [e for e in _log_events(cas) if e.get("event") == "listening"][-1]  # this start's
        assert (listening["witnesses"], listening["witness_quorum"]) == (3, 2)
    finally:
        cas.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_witness_cosignature_is_stored(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """On both databases: a quorum of two cosigns each checkpoint, and the stored checkpoint
    carries both cosignatures (each one merged into the note read again), which an auditor
    requiring both witnesses (`ledger verify --witness A --witness B`) accepts."""
    db_url = request.getfixturevalue("postgres").new_database() if backend == "postgresql" else None
    first = CasProcess(tmp_path / "cas", db_url).start()
    first.stop()
    log_key = first.env["CONFIDE_LOG_KEY"]
    witnesses = Witnesses(tmp_path, NoteVerifier.from_vkey(log_key), 2)
    cas = CasProcess(tmp_path / "cas", db_url, extra_args=witnesses.args(quorum=2)).start()
    try:
        alice, _ = identity(cas, tmp_path, "alice")
        assert apply(cas, tmp_path, policy_yaml("stored", "00" * 48), alice).returncode == 0
        size = wait_for_log(cas.env, 3)
        _wait(lambda: min(witnesses.size(0), witnesses.size(1)) >= size, "the witnesses")
        args = ["ledger", "verify", "--url", cas.env["CONFIDE_LOG_URL"], "--key", log_key, "--json"]
        both = [a for _, key in witnesses.specs for a in ("--witness", key.vkey)]
        _wait(lambda: confide(cas, *args, *both).returncode == 0, "both cosignatures served")
        assert sorted(json.loads(confide(cas, *args, *both).stdout)["witnesses"]) == sorted(both[1::2])
        # --max-age: both cosignatures are seconds old (each checkpoint is cosigned as it is made)
        fresh = confide(cas, *args, *both, "--max-age", "5 minutes")
        assert fresh.returncode == 0 and json.loads(fresh.stdout)["max_age"] == 300, fresh.stdout
        # the SDK, the same check with the time given: two hours on, the log looks frozen
        with Cas.from_env(cas.env) as sdk:
            keys = both[1::2]
            assert sdk.verify_log(witnesses=keys, max_age="5 minutes").max_age == 300
            later = datetime.now(UTC) + timedelta(hours=2)
            with pytest.raises(errors.FreshnessError, match="frozen"):
                sdk.verify_log(witnesses=keys, max_age=timedelta(hours=1), now=later)
            with pytest.raises(errors.UsageError, match="max_age goes with witnesses"):
                sdk.verify_log(max_age="1h")
    finally:
        cas.stop()
        witnesses.close()

"""A real witness process on 127.0.0.1: the log gets cosignatures, the auditor requires them,
and the witness refuses a forked history."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.errors import LogRollbackError, UnknownKeyError
from confide.ledger.store import Ledger, connect, write_transaction

SRC = Path(__file__).resolve().parents[2] / "src"
ORIGIN = "cas.example/ledger"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "confide", "ledger", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _append(db: Path, entries: list[bytes]) -> None:
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, entries)
    conn.close()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, args in (
        ("log", ["--name", ORIGIN]),
        ("witness", ["--name", "witness.example/w1", "--witness"]),
    ):
        res = _cli("keygen", *args, "--out", str(tmp_path / f"{name}.key"))
        assert res.returncode == 0, res.stderr
        out[name] = res.stdout.strip()
    res = _cli("keygen", "--name", "witness.example/w2", "--witness", "--out", str(tmp_path / "other.key"))
    out["other"] = res.stdout.strip()
    return out


@pytest.fixture
def witness_url(tmp_path: Path, keys: dict[str, str]) -> Iterator[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = [sys.executable, "-m", "confide", "ledger", "witness", "serve"]
    argv += ["--state", str(tmp_path / "witness.json"), "--key", str(tmp_path / "witness.key")]
    argv += ["--log", keys["log"], "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert " at http://127.0.0.1:" in line, line
    url = line.split(" at ", 1)[1].strip().removesuffix("/add-checkpoint")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def test_witnessed_log(tmp_path: Path, keys: dict[str, str], witness_url: str) -> None:
    db = tmp_path / "cas.db"
    state = tmp_path / "auditor.json"
    _append(db, [f"e{i}".encode() for i in range(100)])
    assert _cli("checkpoint", "--log-db", str(db), "--signing-key", str(tmp_path / "log.key")).returncode == 0
    verify = ["verify", "--log-db", str(db), "--state", str(state), "--key", keys["log"]]

    res = _cli(*verify, "--witness", keys["witness"])
    assert res.returncode == UnknownKeyError.exit_code, "not yet cosigned"
    res = _cli(
        "request-cosignature",
        "--log-db",
        str(db),
        "--witness-url",
        witness_url,
        "--witness-key",
        keys["witness"],
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("— witness.example/w1 ")
    res = _cli(*verify, "--witness", keys["witness"])
    assert res.returncode == 0, res.stderr
    assert "cosigned by witness witness.example/w1" in res.stdout
    res = _cli(*verify, "--witness", keys["other"])  # negative twin: another witness did not cosign
    assert res.returncode == UnknownKeyError.exit_code

    # The log grows: the witness (at 100) needs a consistency proof, learnt through a 409.
    _append(db, [f"e{i}".encode() for i in range(100, 250)])
    assert _cli("checkpoint", "--log-db", str(db), "--signing-key", str(tmp_path / "log.key")).returncode == 0
    res = _cli(
        "request-cosignature",
        "--log-db",
        str(db),
        "--witness-url",
        witness_url,
        "--witness-key",
        keys["witness"],
    )
    assert res.returncode == 0, res.stderr
    assert _cli(*verify, "--witness", keys["witness"]).returncode == 0

    # The key holder forks history; the witness refuses to cosign it.
    forked = tmp_path / "forked.db"
    entries = [f"e{i}".encode() for i in range(260)]
    entries[3] = b"rewritten"
    _append(forked, entries)
    assert (
        _cli("checkpoint", "--log-db", str(forked), "--signing-key", str(tmp_path / "log.key")).returncode
        == 0
    )
    res = _cli(
        "request-cosignature",
        "--log-db",
        str(forked),
        "--witness-url",
        witness_url,
        "--witness-key",
        keys["witness"],
    )
    assert res.returncode == LogRollbackError.exit_code
    assert "refused the consistency proof from size 250, the size it cosigned, to 260" in res.stderr
    # The witness still holds the honest size 250.
    assert "\\n250\\n" in (tmp_path / "witness.json").read_text()

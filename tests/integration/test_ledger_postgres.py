"""The ledger on a real PostgreSQL: appends in the caller's transaction, proofs, several
appending processes (as CAS replicas would), the auditor over a PostgreSQL log.

A throwaway cluster is created with ``initdb`` (PostgreSQL 15 is installed on the project's
machines with its own cluster stopped), listening only on a Unix socket, and removed after.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confide.errors import ConsistencyError, UsageError
from confide.ledger.auditor import Auditor, LocalLogClient
from confide.ledger.db import connect_postgres
from confide.ledger.merkle import hash_leaf, mth, verify_consistency, verify_inclusion
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger, write_transaction

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    base = tempfile.mkdtemp(prefix="confide-pg-")
    data = os.path.join(base, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    opts = f"-k {base} -c listen_addresses='' -p 5439 -c fsync=off -c max_connections=50"
    subprocess.run([*as_user, pg_ctl, "-D", data, "-o", opts, "-w", "-l", os.path.join(base, "log"), "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"host={base} port=5439 user=postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dsn(pg_cluster: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = connect_postgres(pg_cluster + " dbname=postgres")
    admin.execute(f"CREATE DATABASE {name}")  # name is generated above, not input
    admin.close()
    return f"{pg_cluster} dbname={name}"


@pytest.fixture
def pg(dsn: str) -> Iterator[Any]:
    conn = connect_postgres(dsn)
    try:
        yield conn
    finally:
        conn.close()


def test_append_in_the_callers_transaction_and_proofs(pg: Any) -> None:
    conn = pg
    Ledger.init_schema(conn)
    Ledger.init_schema(conn)  # idempotent
    conn.execute("CREATE TABLE policies (name TEXT PRIMARY KEY)")
    ledger = Ledger()
    with pytest.raises(UsageError, match="open write transaction"):
        ledger.append(conn, b"outside")
    with pytest.raises(RuntimeError), write_transaction(conn):
        conn.execute("INSERT INTO policies VALUES ('p1')")
        ledger.append(conn, b"policy p1 created")
        raise RuntimeError("the state change fails")
    assert conn.execute("SELECT count(*) FROM policies").fetchone() == (0,)
    assert Ledger.size(conn) == 0
    entries = [f"entry {i}".encode() for i in range(1500)]
    with write_transaction(conn):
        conn.execute("INSERT INTO policies VALUES ('p1')")
        assert ledger.append(conn, entries[0]) == 0
    for start in range(1, 1500, 300):
        with write_transaction(conn):
            assert ledger.append_batch(conn, entries[start : start + 300]) == start
    for n in (1, 255, 256, 257, 1500):
        assert ledger.root(conn, n) == mth(entries[:n])
    root = ledger.root(conn)
    verify_inclusion(777, 1500, hash_leaf(entries[777]), ledger.inclusion_proof(conn, 777), root)
    verify_consistency(300, 1500, ledger.root(conn, 300), root, ledger.consistency_proof(conn, 300))
    assert Ledger.find_leaf(conn, hash_leaf(entries[1234])) == 1234
    # Checkpoints, the tlog-tiles view and the auditor work on PostgreSQL as on SQLite.
    signer = NoteSigner.generate("cas.example/ledger")
    ledger.sign_checkpoint(conn, signer)
    auditor = Auditor(LocalLogClient(conn), signer.verifier)
    first = auditor.update(None)
    assert first.checkpoint.size == 1500
    assert auditor.verify_entries(first.checkpoint) == 1500
    # Rewritten stored history (the interior nodes over entries 0..1023) makes the log's own
    # signer refuse: the tree no longer extends the checkpoint it signed.
    size = conn.execute("SELECT length(interior) FROM ledger_tiles WHERE level = 1 AND idx = 0").fetchone()[0]
    conn.execute("UPDATE ledger_tiles SET interior = %s WHERE level = 1 AND idx = 0", (os.urandom(size),))
    with write_transaction(conn):
        ledger.append(conn, b"more")
    with pytest.raises(ConsistencyError, match="refusing to sign"):
        ledger.sign_checkpoint(conn, signer)


def _replica(dsn: str, proc: int, rounds: int) -> None:
    sys.path.insert(0, SRC)
    conn: Any = connect_postgres(dsn)
    ledger = Ledger()
    for r in range(rounds):
        with write_transaction(conn):
            conn.execute("SELECT 1")  # the replica's own state change would go here
            ledger.append_batch(conn, [f"p{proc}-r{r}-{k}".encode() for k in range(1 + r % 3)])
    conn.close()


def test_concurrent_replicas_leave_one_linear_log(dsn: str, pg: Any) -> None:
    conn = pg
    Ledger.init_schema(conn)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_replica, args=(dsn, p, 40)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    rows = conn.execute("SELECT idx, data FROM ledger_entries ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == list(range(len(rows)))  # no gaps, no duplicates
    entries = [bytes(r[1]) for r in rows]
    assert len(entries) == 4 * sum(1 + r % 3 for r in range(40)) == Ledger.size(conn)
    for p in range(4):
        mine = [e for e in entries if e.startswith(f"p{p}-".encode())]
        assert mine == [f"p{p}-r{r}-{k}".encode() for r in range(40) for k in range(1 + r % 3)]
    assert Ledger().root(conn) == mth(entries)

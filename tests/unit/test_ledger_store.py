"""The SQLite tile store: appends in the caller's transaction, proofs from tiles, group commit,
concurrent appenders in several processes, and durability across SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confide.errors import StorageError, UsageError
from confide.ledger.checkpoint import open_checkpoint
from confide.ledger.merkle import (
    hash_leaf,
    inclusion_proof,
    mth,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from confide.ledger.note import NoteSigner
from confide.ledger.store import GroupCommitter, Ledger, connect, write_transaction

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _db(tmp_path: Path):  # type: ignore[no-untyped-def]
    conn = connect(tmp_path / "ledger.db")
    Ledger.init_schema(conn)
    return conn


def _all_entries(conn) -> list[bytes]:  # type: ignore[no-untyped-def]
    rows = conn.execute("SELECT idx, data FROM ledger_entries ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == list(range(len(rows))), "gap or duplicate in the log"
    return [bytes(r[1]) for r in rows]


def test_roots_and_proofs_from_tiles_match_the_definition(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    ledger = Ledger()
    entries = [f"entry {i}".encode() for i in range(66_000)]
    with write_transaction(conn):
        ledger.append_batch(conn, entries[:1])
    for i in range(1, 600):  # single appends across the first tile boundaries
        with write_transaction(conn):
            assert ledger.append(conn, entries[i]) == i
    with write_transaction(conn):
        assert ledger.append_batch(conn, entries[600:]) == 600
    assert Ledger.size(conn) == len(entries)
    for n in (1, 2, 255, 256, 257, 511, 512, 65535, 65536, 65537, 66_000):
        assert ledger.root(conn, n) == mth(entries[:n])
    for n, i in ((66_000, 0), (66_000, 65_999), (65_537, 65_536), (300, 299), (257, 3)):
        root = ledger.root(conn, n)
        verify_inclusion(i, n, hash_leaf(entries[i]), ledger.inclusion_proof(conn, i, n), root)
    for m, n in ((1, 66_000), (256, 65_537), (65_536, 66_000), (300, 301), (7, 7)):
        verify_consistency(
            m, n, ledger.root(conn, m), ledger.root(conn, n), ledger.consistency_proof(conn, m, n)
        )
    # The stored interior nodes agree with what a client computes from the C2SP tiles alone.
    for n in (300, 65_537, 66_000):
        assert subtree_hash(Ledger.tile_nodes(conn, n), 0, n) == ledger.root(conn, n)
        assert inclusion_proof(Ledger.tile_nodes(conn, n), n // 3, n) == ledger.inclusion_proof(
            conn, n // 3, n
        )
    assert Ledger.find_leaf(conn, hash_leaf(entries[12_345])) == 12_345
    assert Ledger.find_leaf(conn, hash_leaf(b"never appended")) is None
    index, proof = ledger.inclusion_proof_by_hash(conn, hash_leaf(entries[4321]), 5000)
    assert index == 4321
    verify_inclusion(index, 5000, hash_leaf(entries[4321]), proof, ledger.root(conn, 5000))
    with pytest.raises(UsageError, match="no entry"):
        ledger.inclusion_proof_by_hash(conn, hash_leaf(entries[6000]), 5000)  # appended later than 5000


def test_append_joins_the_callers_transaction(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute("CREATE TABLE policies (name TEXT PRIMARY KEY)")
    ledger = Ledger()
    with pytest.raises(UsageError, match="open write transaction"):
        ledger.append(conn, b"outside any transaction")
    with pytest.raises(RuntimeError), write_transaction(conn):
        conn.execute("INSERT INTO policies VALUES ('p1')")
        ledger.append(conn, b"policy p1 created")
        raise RuntimeError("the state change fails")
    assert conn.execute("SELECT count(*) FROM policies").fetchone()[0] == 0
    assert Ledger.size(conn) == 0  # rolled back together
    with write_transaction(conn):
        conn.execute("INSERT INTO policies VALUES ('p1')")
        assert ledger.append(conn, b"policy p1 created") == 0
    assert Ledger.size(conn) == 1
    assert Ledger.entry(conn, 0) == b"policy p1 created"


def test_entry_limits(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    with write_transaction(conn):
        with pytest.raises(UsageError, match="65535"):
            Ledger().append(conn, b"x" * 65_536)
        Ledger().append(conn, b"x" * 65_535)
        with pytest.raises(UsageError):
            Ledger().append_batch(conn, [])


def test_tampered_partial_tile_is_detected_on_append(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    with write_transaction(conn):
        Ledger().append_batch(conn, [b"a", b"b", b"c"])
    conn.execute("UPDATE ledger_tiles SET hashes = substr(hashes, 1, 32) WHERE level = 0")
    with pytest.raises(StorageError, match="partial tile"), write_transaction(conn):
        Ledger().append(conn, b"d")


def test_group_commit_batches_and_acknowledges_each_entry(tmp_path: Path) -> None:
    path = tmp_path / "gc.db"
    results: dict[bytes, int] = {}
    lock = threading.Lock()
    with GroupCommitter(path) as gc:

        def worker(w: int) -> None:
            for i in range(300):
                e = f"w{w}-{i}".encode()
                idx = gc.append(e)
                with lock:
                    results[e] = idx

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        commits = gc.commits
        with pytest.raises(UsageError, match="65535"):
            gc.submit(b"x" * 65_536)  # refused up front: it cannot fail others' batch
    assert commits < 2400  # several entries per commit
    conn = connect(path)
    entries = _all_entries(conn)
    assert len(entries) == 2400
    for e, idx in results.items():
        assert entries[idx] == e
    assert Ledger().root(conn) == mth(entries)


def test_group_commit_checkpoints_every_acknowledged_entry_within_the_interval(tmp_path: Path) -> None:
    signer = NoteSigner.generate("example.com/log")
    path = tmp_path / "ckpt.db"
    reader = connect(path, durable=False)
    with GroupCommitter(path, signer=signer, checkpoint_interval=0.2) as gc:
        last = max(gc.append(f"e{i}".encode()) for i in range(50))
        acked_at = time.monotonic()
        covered = None
        while time.monotonic() - acked_at < 30:  # no other append, nor the close, makes it come
            note = Ledger.latest_checkpoint(reader)
            if note is not None and open_checkpoint(note, signer.verifier).checkpoint.size > last:
                covered = time.monotonic() - acked_at
                break
            time.sleep(0.02)
        # 0.2 s, and what a loaded machine adds to a thread's wake-up, a signature and an fsync
        assert covered is not None and covered < 3.0, "acknowledged entries not checkpointed in time"
        assert gc.checkpoint_error is None
    note = Ledger.latest_checkpoint(reader)
    assert note is not None
    cp = open_checkpoint(note, signer.verifier).checkpoint
    assert (cp.size, cp.root) == (50, mth([f"e{i}".encode() for i in range(50)]))


def _appender(path: str, proc: int, rounds: int) -> None:
    sys.path.insert(0, SRC)
    conn = connect(path)
    ledger = Ledger()
    for r in range(rounds):
        batch = [f"p{proc}-r{r}-{k}".encode() for k in range(1 + (r % 3))]
        with write_transaction(conn):
            ledger.append_batch(conn, batch)
    conn.close()


def test_concurrent_appenders_in_several_processes_leave_one_linear_log(tmp_path: Path) -> None:
    path = tmp_path / "multi.db"
    Ledger.init_schema(connect(path))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(path), p, 60)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    conn = connect(path)
    entries = _all_entries(conn)
    per_proc = sum(1 + (r % 3) for r in range(60))
    assert len(entries) == 4 * per_proc == Ledger.size(conn)
    assert len(set(entries)) == len(entries)
    for p in range(4):  # each process's own entries keep their order
        mine = [e for e in entries if e.startswith(f"p{p}-".encode())]
        assert mine == [f"p{p}-r{r}-{k}".encode() for r in range(60) for k in range(1 + (r % 3))]
    assert Ledger().root(conn) == mth(entries)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {src!r})
    from confide.ledger.store import GroupCommitter
    gc = GroupCommitter({path!r})
    out_lock = threading.Lock()
    def worker(w):
        i = 0
        while True:
            e = ("w%d-%d" % (w, i)).encode()
            idx = gc.append(e)
            with out_lock:
                sys.stdout.write("%d %s\\n" % (idx, e.decode()))
                sys.stdout.flush()
            i += 1
    for w in range(4):
        threading.Thread(target=worker, args=(w,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.slow
def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "kill.db"
    script = KILL_SCRIPT.format(src=SRC, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: dict[int, str] = {}
    deadline = time.monotonic() + 180  # 3000 durable appends take a few seconds, more on a loaded machine
    while len(acked) < 3000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        idx, entry = line.split()
        acked[int(idx)] = entry
    os.kill(proc.pid, signal.SIGKILL)  # mid-load: the writer thread is between commits or in one
    rest, _ = proc.communicate(timeout=30)
    for line in rest.splitlines():  # acknowledgements already written before the kill
        if line.count(" ") == 1:
            idx, entry = line.split()
            acked[int(idx)] = entry
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 3000
    conn = connect(path)
    entries = _all_entries(conn)
    for idx, entry in acked.items():
        assert entries[idx] == entry.encode(), f"acknowledged entry {idx} lost"
    assert Ledger.size(conn) == len(entries)
    assert Ledger().root(conn) == mth(entries)  # tiles and entries agree after the crash


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=8), st.data())
def test_any_batching_gives_the_same_tree(tmp_path: Path, batches: list[int], data: st.DataObject) -> None:
    db = Path(tempfile.mkdtemp(dir=tmp_path)) / "prop.db"
    conn = connect(db, durable=False)
    Ledger.init_schema(conn)
    ledger = Ledger()
    entries: list[bytes] = []
    for size in batches:
        new = [f"{len(entries) + i}".encode() for i in range(size)]
        with write_transaction(conn):
            assert ledger.append_batch(conn, new) == len(entries)
        entries += new
    n = len(entries)
    m = data.draw(st.integers(1, n), label="size")
    i = data.draw(st.integers(0, m - 1), label="index")
    k = data.draw(st.integers(0, m), label="old size")
    root = ledger.root(conn, m)
    assert root == mth(entries[:m])
    verify_inclusion(i, m, hash_leaf(entries[i]), ledger.inclusion_proof(conn, i, m), root)
    verify_consistency(k, m, mth(entries[:k]), root, ledger.consistency_proof(conn, k, m))
    assert ledger.inclusion_proof(conn, i, m) == inclusion_proof(Ledger.tile_nodes(conn, m), i, m)
    conn.close()

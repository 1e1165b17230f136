"""Ledger benchmark: durable appends/s (group commit) next to the in-memory limit, proof and
checkpoint latency on a large log, peak RSS.

    .venv/bin/python bench/ledger.py --entries 10000000 --dir /tmp/ledger-bench

Phases:
1. in-memory limit: leaf hashing + compact-range root (no storage), and the same tile-store
   append path on an in-memory SQLite database (no fsync) — the ceiling for any durable rate;
2. durable appends: GroupCommitter (synchronous=FULL, one fsync per batch) fed by producer
   threads; every append is acknowledged only after its commit;
3. a large log built by batch insert (non-durable, as a restore would), then p50/p99 of
   inclusion proofs, consistency proofs (each from a cold node source: tiles read from
   SQLite per proof) and checkpoint signing (root + consistency check + Ed25519 + insert);
4. peak RSS of the process.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from confide.ledger.encoding import Entry, EntryType
from confide.ledger.merkle import CompactRange, hash_leaf, verify_consistency, verify_inclusion
from confide.ledger.note import NoteSigner
from confide.ledger.store import GroupCommitter, Ledger, connect, write_transaction

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def sample_entry(i: int) -> bytes:
    return Entry.create(
        EntryType.ATTESTATION,
        AT,
        {"service": f"svc-{i % 97}", "platform": "sev-snp", "verdict": "accepted", "n": i},
        policy="team/db",
    ).to_bytes()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def bench_memory(n: int) -> tuple[float, float]:
    entries = [sample_entry(i) for i in range(n)]
    t = time.perf_counter()
    rng = CompactRange()
    for e in entries:
        rng.append(hash_leaf(e))
    rng.root()
    pure = n / (time.perf_counter() - t)
    conn = connect(":memory:", durable=False)
    Ledger.init_schema(conn)
    ledger = Ledger()
    t = time.perf_counter()
    for start in range(0, n, 1000):
        with write_transaction(conn):
            ledger.append_batch(conn, entries[start : start + 1000])
    store = n / (time.perf_counter() - t)
    return pure, store


def bench_durable(path: Path, seconds: float, producers: int) -> tuple[float, float, float, int, int]:
    entry = sample_entry(0)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    count = 0
    with GroupCommitter(path) as gc:

        def produce() -> None:
            nonlocal count
            pending: list[tuple[float, Future[int]]] = []
            while time.perf_counter() < stop:
                for _ in range(256):  # keep up to 256 appends in flight per producer
                    pending.append((time.perf_counter(), gc.submit(entry)))
                done = []
                for t0, fut in pending:
                    fut.result()
                    done.append(time.perf_counter() - t0)
                pending.clear()
                with lock:
                    latencies.extend(done)
                    count += len(done)

        t = time.perf_counter()
        threads = [threading.Thread(target=produce) for _ in range(producers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
        commits = gc.commits
    return count / elapsed, pct(latencies, 50) * 1e3, pct(latencies, 99) * 1e3, count, commits


def build_large(path: Path, n: int) -> float:
    conn = connect(path, durable=False)
    Ledger.init_schema(conn)
    ledger = Ledger()
    have = Ledger.size(conn)
    t = time.perf_counter()
    batch = 100_000
    template = sample_entry(0)
    for start in range(have, n, batch):
        k = min(batch, n - start)
        entries = [template[:-2] + str(start + i).encode() + b"}}" for i in range(k)]
        with write_transaction(conn):
            ledger.append_batch(conn, entries)
        if (start // batch) % 10 == 0:
            print(f"  built {start + k:,} entries in {time.perf_counter() - t:.0f}s", flush=True)
    conn.close()
    return time.perf_counter() - t


def bench_proofs(path: Path, samples: int) -> dict[str, float]:
    conn = connect(path, durable=False)
    ledger = Ledger()
    n = Ledger.size(conn)
    root = ledger.root(conn, n)
    rnd = random.Random(1)
    incl: list[float] = []
    for _ in range(samples):
        i = rnd.randrange(n)
        t = time.perf_counter()
        proof = ledger.inclusion_proof(conn, i, n)
        incl.append(time.perf_counter() - t)
        data = Ledger.entry(conn, i)
        assert data is not None
        verify_inclusion(i, n, hash_leaf(data), proof, root)
    cons: list[float] = []
    for _ in range(samples):
        m = rnd.randrange(1, n)
        t = time.perf_counter()
        proof = ledger.consistency_proof(conn, m, n)
        cons.append(time.perf_counter() - t)
        if len(cons) <= 50:
            verify_consistency(m, n, ledger.root(conn, m), root, proof)
    signer = NoteSigner.generate("bench.example/ledger")
    ledger.sign_checkpoint(conn, signer)
    ckpt: list[float] = []
    for i in range(200):
        with write_transaction(conn):
            ledger.append_batch(conn, [sample_entry(i)] * 10)
        t = time.perf_counter()
        ledger.sign_checkpoint(conn, signer)
        ckpt.append(time.perf_counter() - t)
    conn.close()
    return {
        "size": n,
        "incl_p50": pct(incl, 50) * 1e3,
        "incl_p99": pct(incl, 99) * 1e3,
        "cons_p50": pct(cons, 50) * 1e3,
        "cons_p99": pct(cons, 99) * 1e3,
        "ckpt_p50": pct(ckpt, 50) * 1e3,
        "ckpt_p99": pct(ckpt, 99) * 1e3,
        "ckpt_mean": statistics.mean(ckpt) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000_000, help="size of the large log")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/confide-ledger-bench"))
    ap.add_argument("--memory-entries", type=int, default=200_000)
    ap.add_argument("--durable-seconds", type=float, default=10.0)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"entry size: {len(sample_entry(0))} bytes (canonical attestation entry)")

    pure, store = bench_memory(args.memory_entries)
    print(
        f"in-memory limit: {pure:,.0f} leaf appends/s (hash + compact range); "
        f"{store:,.0f} appends/s through the tile store on :memory: SQLite"
    )

    durable_db = args.dir / "durable.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(durable_db) + suffix).unlink(missing_ok=True)
    rate, p50, p99, count, commits = bench_durable(durable_db, args.durable_seconds, args.producers)
    print(
        f"durable appends (group commit, synchronous=FULL): {rate:,.0f}/s "
        f"({count:,} appends in {commits:,} commits, {count / max(commits, 1):.0f}/commit); "
        f"ack latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )

    big = args.dir / f"large-{args.entries}.db"
    built = build_large(big, args.entries)
    print(f"built a log of {args.entries:,} entries in {built:.0f}s ({big.stat().st_size / 2**30:.2f} GiB)")
    for label in ("first pass", "second pass"):
        r = bench_proofs(big, args.samples)
        print(
            f"{label}, at {r['size']:,} entries: inclusion proof p50 {r['incl_p50']:.3f} ms "
            f"p99 {r['incl_p99']:.3f} ms; consistency proof p50 {r['cons_p50']:.3f} ms "
            f"p99 {r['cons_p99']:.3f} ms; checkpoint p50 {r['ckpt_p50']:.2f} ms p99 {r['ckpt_p99']:.2f} ms"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()

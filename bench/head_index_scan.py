"""Benchmark: what the head index's scan of the ledger costs at a start (confide.cas.head_index,
docs/cas.md "What a policy's current version rests on").

A SQLite CAS database (migrated as ``cas serve`` does) whose ledger gets ``--entries`` entries
appended in batches of 1,000 with the CAS's own encoder: attestation-like entries (a payload
of the size an attestation's outcome has) and one ``policy.updated`` entry per
``--head-every`` entries, continuing each of ``--policies`` policies' chains. Then, each in a
fresh :class:`HeadIndex` (a process's start):

* ``full scan``: no snapshot (a schema-16 database's first start, or a deleted snapshot): every
  entry read, hashed and compared with its tile's leaf hash;
* ``from snapshot``: a snapshot stored at the end, then ``--tail`` more entries appended: the
  scan reads only those;
* the snapshot's size (its JSON text).

Validation of each head entry against its version's row is replaced by a dictionary lookup
(the CAS verifies one version row's MAC per head entry: a few microseconds each).

    .venv/bin/python bench/head_index_scan.py [--entries 1000000] [--tail 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import Connection  # noqa: E402

from confide.cas.db import Database, raw_connection  # noqa: E402
from confide.cas.head_index import HeadIndex  # noqa: E402
from confide.cas.secrets import Sealer  # noqa: E402
from confide.ledger.encoding import EntryType, encode_entry, format_time  # noqa: E402
from confide.ledger.store import Ledger  # noqa: E402

OUTCOME = {
    "outcome": "released", "service": "svc", "platform": "sim", "hash": "ab" * 32,
    "measurement": "cd" * 48, "evidence_sha256": "ef" * 32, "session": "01" * 16,
    "runtime_key_sha256": "23" * 32, "tcb": {"status": "UpToDate", "svn": 7},
    "secrets": ["db_password", "tls_key", "api_token"], "volumes": ["data"],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--tail", type=int, default=10_000)
    ap.add_argument("--policies", type=int, default=100)
    ap.add_argument("--head-every", type=int, default=1000)
    args = ap.parse_args()
    versions: dict[tuple[str, str], str | None] = {}
    latest: dict[str, str] = {}
    at = format_time(datetime.now(UTC))
    counter = [0]

    def batch(n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            counter[0] += 1
            if counter[0] % args.head_every == 0:
                name = f"policy-{counter[0] // args.head_every % args.policies}"
                digest = os.urandom(32).hex()
                prev = latest.get(name)
                versions[(name, digest)] = prev
                latest[name] = digest
                kind = EntryType.POLICY_CREATED if prev is None else EntryType.POLICY_UPDATED
                out.append(
                    encode_entry(kind, at, name, {"hash": digest, "predecessor": prev}, os.urandom(16))[0]
                )
            else:
                out.append(encode_entry(EntryType.ATTESTATION, at, "policy-0", OUTCOME, os.urandom(16))[0])
        return out

    def append(db: Database, n: int) -> None:
        ledger = Ledger()
        while n > 0:
            k = min(n, 1000)
            with db.write() as conn:
                ledger.append_batch(raw_connection(conn), batch(k))
            n -= k

    def validate(_conn: Connection, name: str, digest: str) -> str | None:
        return versions[(name, digest)]

    sealer = Sealer(bytes(32))
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'cas.db'}")
        db.migrate()
        t0 = time.perf_counter()
        append(db, args.entries)
        t_append = time.perf_counter() - t0
        index = HeadIndex(sealer, validate, db)
        t0 = time.perf_counter()
        with db.read() as conn:
            index.refresh(conn)
        t_full = time.perf_counter() - t0
        with db.write() as conn:
            index.store(conn, 0.0)
            [(text,)] = raw_connection(conn).execute("SELECT heads FROM policy_head_anchor").fetchall()
        append(db, args.tail)
        again = HeadIndex(sealer, validate, db)
        t0 = time.perf_counter()
        with db.read() as conn:
            again.refresh(conn)
        t_tail = time.perf_counter() - t0
        db.dispose()
        file_size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    print(
        f"ledger: {args.entries:,} entries ({file_size / 1e6:.0f} MB database), appended in {t_append:.1f} s"
    )
    print(f"full scan (no snapshot):        {t_full:.2f} s  ({t_full / args.entries * 1e6:.2f} us per entry)")
    print(f"from snapshot, {args.tail:,} new:   {t_tail * 1e3:.1f} ms")
    print(f"snapshot: {len(text):,} bytes for {args.policies} policies")


if __name__ == "__main__":
    main()

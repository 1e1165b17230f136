"""Which SQLite B-trees an attestation writes, counted in the write-ahead log (not a timing).

Runs ``bench/attest_profile.py``'s in-process flows (the CAS's ASGI app, the group-commit writer,
SQLite WAL with ``synchronous=FULL``, the ledger sink) against a fresh ``--dev`` CAS whose
connections have the WAL auto-checkpoint switched off; after ``--warmup`` flows the WAL is
checkpointed and truncated, then ``-n`` flows run with ``--concurrency`` clients. Every frame of
the WAL is then read (its header names the page it holds) and each page is attributed to the
table or index it belongs to (SQLite's ``dbstat`` virtual table). Prints the frames and bytes
of WAL per flow and per transaction, and the frames per flow of each B-tree.

The group commit's batch grows with the concurrency (8 clients: ~7-8 attestations per
transaction, as in ``bench/attest_load.py``'s served CAS). The pages a random-keyed index
dirties per insert depend on its size, so a long-running CAS (24 h of sessions) writes more of
them than this short run.

    PYTHONPATH=src .venv/bin/python bench/wal_pages.py [-n 800] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attest_profile as ap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=800, help="counted flows")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="confide-wal-"))
    try:
        cas, cas_evidence, _key, _cert, env, _signer = ap.prepare(
            work / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
        )
        cas.apply(
            ap.policy_submission(ap.loads_policy(ap.POLICY), ap.Identity.generate(), cas=cas.tls_spki_sha256)
        )
        platform = ap.SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))

        @event.listens_for(cas.db.engine, "connect")
        def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

        cas.db.dispose()  # the pooled connections again, with the listener
        app = ap.create_app(cas, cas_evidence=cas_evidence)
        writer = ap.Writer()
        path = next(work.rglob("*.db"))
        wal = Path(f"{path}-wal")

        async def flows() -> None:
            await ap.run_flows(app, platform, args.warmup, args.concurrency, writer, None)
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await ap.run_flows(app, platform, args.n, args.concurrency, writer, None)

        uvloop.run(flows())
        data = wal.read_bytes()
        page_size = struct.unpack(">I", data[8:12])[0]
        frames: collections.Counter[int] = collections.Counter()
        commits = count = 0
        pos = 32  # the WAL header; each frame: a 24-byte header (page number, commit size), the page
        while pos + 24 + page_size <= len(data):
            page, commit = struct.unpack(">II", data[pos : pos + 8])
            frames[page] += 1
            count += 1
            commits += commit != 0
            pos += 24 + page_size
        with sqlite3.connect(path) as conn:
            owner = dict((p, n) for n, p in conn.execute("SELECT name, pageno FROM dbstat"))
        by_tree: collections.Counter[str] = collections.Counter()
        for page, k in frames.items():
            by_tree[owner.get(page, "(free or unattributed)")] += k
        n = args.n
        print(
            f"{n} flows, concurrency {args.concurrency}: {commits} transactions "
            f"({n / max(1, commits):.1f} attestations each), {count} WAL frames of {page_size} bytes: "
            f"{count / n:.2f} frames ({count * page_size / n / 1024:.1f} KiB) per flow, "
            f"{count / max(1, commits):.1f} per transaction"
        )
        for name, k in by_tree.most_common():
            print(f"  {name:40s} {k / n:6.2f} frames per flow  {k / max(1, commits):6.2f} per transaction")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

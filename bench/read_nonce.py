"""Benchmark: what a read costs the CAS now that each is served once (docs/cas.md "Reading a
policy"): the nonce's MAC checked and the nonce spent in a write transaction before the read.

An in-process CAS (``prepare``, SQLite in a temporary directory, as ``cas serve --dev``,
``synchronous=FULL``) with one policy; batches of 20 reads, alternating:

* ``v2 work`` (the peer): what a ``confide/read/v2`` request cost the CAS, its signature check
  and the read itself (``_show``), the same request each time (it carried no state);
* ``v3, own write``: :meth:`Cas.show` as the in-process API runs it, a fresh signed request over
  a fresh nonce each time (signed before the timing: the client's work), its nonce spent in a
  write transaction of its own (one commit, one fsync, per read);
* ``v3, group commit``: the same requests from ``--threads`` threads at once, their nonces spent
  by the HTTP API's group commit (``WriteBatcher``: one transaction for the spends queued
  together), against ``v2 work`` from as many threads.

    .venv/bin/python bench/read_nonce.py [--batches 100] [--threads 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sim_request import POLICY  # noqa: E402

from confide.cas.client import policy_submission  # noqa: E402
from confide.cas.core import READ_TYPE, Cas, sign_document, verify_signed  # noqa: E402
from confide.cas.db import WriteBatcher  # noqa: E402
from confide.cas.server import prepare  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.policy.loader import loads_policy  # noqa: E402

BATCH = 20


def _request(cas: Cas, name: str, who: Identity) -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": name, "nonce": cas.new_read_nonce(name, "show"),
            "cas": cas.tls_spki_sha256, "route": "show"}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cas, *_ = prepare(Path(tmp) / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
        owner = Identity.generate()
        policy = loads_policy(POLICY)
        cas.apply(policy_submission(policy, owner, cas=cas.tls_spki_sha256))
        name = policy.name
        peer_doc = _request(cas, name, owner)

        def v2_work(doc: dict[str, Any] = peer_doc) -> object:
            return cas._show(*verify_signed(doc, READ_TYPE))

        try:
            # Sequential, alternating batches; the 10th percentile of each (a shared machine's
            # load only ever makes a batch slower).
            peer: list[float] = []
            own: list[float] = []
            for _ in range(args.batches):
                docs = [_request(cas, name, owner) for _ in range(BATCH)]
                start = time.perf_counter()
                for _ in range(BATCH):
                    v2_work()
                peer.append((time.perf_counter() - start) / BATCH)
                start = time.perf_counter()
                for doc in docs:
                    cas.show(doc)
                own.append((time.perf_counter() - start) / BATCH)
            peer.sort()
            own.sort()
            k = len(peer) // 10
            t_peer, t_own = peer[k], own[k]

            # Concurrent: the group commit, as under the HTTP API.
            writer = WriteBatcher(cas.db)

            def spend(job: Any) -> Any:
                return writer.submit(job).result()

            n = args.batches * BATCH
            docs = [_request(cas, name, owner) for _ in range(n)]
            with ThreadPoolExecutor(args.threads) as pool:
                start = time.perf_counter()
                list(pool.map(lambda _: v2_work(), range(n)))
                peer_rate = n / (time.perf_counter() - start)
                start = time.perf_counter()
                list(pool.map(lambda doc: cas.show(doc, spend), docs))
                group_rate = n / (time.perf_counter() - start)
            writer.close()
            commits, jobs = writer.commits, writer.committed_jobs
        finally:
            cas.db.dispose()
    print(f"v2 work (peer), sequential:       {t_peer * 1e6:9.1f} us/read")
    print(f"v3, own write, sequential:        {t_own * 1e6:9.1f} us/read  ({t_own / t_peer:.2f}x)")
    print(f"v2 work (peer), {args.threads} threads:        {peer_rate:9.0f} reads/s")
    print(
        f"v3, group commit, {args.threads} threads:      {group_rate:9.0f} reads/s  "
        f"({peer_rate / group_rate:.2f}x the time; {jobs} spends in {commits} transactions)"
    )


if __name__ == "__main__":
    main()
